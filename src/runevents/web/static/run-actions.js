// The run view's actions beside the title: cancel (with a confirmation) and
// re-run (a new run of the same configuration, mode and options that names the
// old one in its run.queued event); and the run's options line.

import { cancelRun, createRun, rememberRun } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { runUrl } from "./router.js";
import { errorMessage, toast } from "./widgets.js";

export class RunActions {
  /** `onCancelled(run)` after a cancel was accepted. */
  constructor({ workspaceId, path, canWrite, router, onCancelled }) {
    this.workspaceId = workspaceId;
    this.path = path;
    this.canWrite = canWrite;
    this.router = router;
    this.onCancelled = onCancelled;
    this.queued = null; // the run.queued payload: mode, options, rerun_of
    this.confirming = false;
    this.el = h("div", { class: "run-actions" });
  }

  render(state) {
    const run = state.run ?? {};
    const live = !state.completed;
    const children = [];
    if (this.canWrite && live) {
      if (this.confirming) {
        children.push(
          h(
            "span",
            { class: "confirm", role: "group", "aria-label": "Confirm cancel" },
            h("span", null, "Cancel this run?"),
            h("button", { type: "button", class: "btn btn-danger", onclick: () => this.cancel() }, "Yes, cancel run"),
            h("button", { type: "button", class: "btn", onclick: () => this.setConfirming(false) }, "Keep running"),
          ),
        );
      } else {
        children.push(h("button", { type: "button", class: "btn btn-danger", onclick: () => this.setConfirming(true) }, "Cancel run"));
      }
    }
    if (this.canWrite && !live && !run.external && this.queued) {
      children.push(
        h(
          "button",
          { type: "button", class: "btn", title: "Start a new run with the same configuration and options", onclick: (e) => this.rerun(e.currentTarget) },
          "Re-run",
        ),
      );
    }
    this.state = state;
    replaceChildren(this.el, children);
  }

  setConfirming(on) {
    this.confirming = on;
    this.render(this.state);
    if (on) this.el.querySelector(".confirm .btn:last-child")?.focus();
  }

  async cancel() {
    this.confirming = false;
    try {
      const { run } = await cancelRun(this.path);
      toast("Cancel requested.");
      this.onCancelled(run);
    } catch (error) {
      toast(error.status === 409 ? "The run has already ended." : errorMessage(error), "error");
    }
    this.render(this.state);
  }

  async rerun(button) {
    const run = this.state.run;
    button.disabled = true;
    try {
      const { run: created } = await createRun(this.workspaceId, run.configuration_id, this.queued.options ?? {}, {
        mode: this.queued.mode ?? "execute",
        rerunOf: run.id,
      });
      rememberRun(created);
      this.router.navigate(runUrl(this.workspaceId, created.id));
    } catch (error) {
      toast(`Could not re-run: ${errorMessage(error)}`, "error");
      button.disabled = false;
    }
  }
}

/** The "Options" and "Re-run of" items of the run's details (from its run.queued payload). */
export function renderOptions(workspaceId, queued) {
  if (!queued) return [];
  const options = queued.options ?? {};
  const text = Object.keys(options).length ? JSON.stringify(options) : "none";
  const items = [h("div", { class: "meta-item run-options", "data-testid": "run-options" }, h("dt", null, "Options"), h("dd", null, text))];
  if (queued.rerun_of) {
    items.push(
      h("div", { class: "meta-item" }, h("dt", null, "Re-run of"), h("dd", null, h("a", { href: runUrl(workspaceId, queued.rerun_of), "data-testid": "rerun-of" }, queued.rerun_of))),
    );
  }
  return items;
}
