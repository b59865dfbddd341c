// The runs list of a workspace: filters (kept in the URL), newest first, cursor
// pagination ("Load more"), live refresh by polling while the tab is visible,
// a "Start run" button per configuration and cancel for active runs.

import { cancelRun, createRun, listRuns, rememberRun, runPath } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import {
  ALL_STATUSES,
  formatDateTime,
  formatDuration,
  formatNumber,
  formatRelative,
  isActive,
  runDurationMs,
} from "./format.js";
import { runUrl } from "./router.js";
import { errorMessage, notice, severityBadge, statusBadge, toast } from "./widgets.js";

const PAGE_SIZE = 50;
const POLL_MS = 2500; // refresh period while visible
const MAX_REFRESH = 500; // the API's maximum page: rows refreshed per poll

const RANGES = {
  "": { label: "Any time", ms: null },
  "1h": { label: "Last hour", ms: 3600e3 },
  "24h": { label: "Last 24 hours", ms: 86400e3 },
  "7d": { label: "Last 7 days", ms: 7 * 86400e3 },
  "30d": { label: "Last 30 days", ms: 30 * 86400e3 },
  custom: { label: "Custom range…", ms: null },
};

/** Filters from a URL query string. */
export function filtersFromQuery(search) {
  const q = new URLSearchParams(search);
  return {
    status: q.getAll("status").filter((s) => ALL_STATUSES.includes(s)),
    configuration_id: q.get("configuration_id") ?? "",
    range: q.get("range") ?? "",
    from: q.get("from") ?? "",
    to: q.get("to") ?? "",
  };
}

function filtersToQuery(f) {
  const q = new URLSearchParams();
  f.status.forEach((s) => q.append("status", s));
  if (f.configuration_id) q.set("configuration_id", f.configuration_id);
  if (f.range) q.set("range", f.range);
  if (f.range === "custom") {
    if (f.from) q.set("from", f.from);
    if (f.to) q.set("to", f.to);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** The API query of the filters, with the time range resolved now. */
function apiFilters(f) {
  const out = { status: f.status, configuration_id: f.configuration_id || null };
  const range = RANGES[f.range];
  if (range?.ms) out.created_after = new Date(Date.now() - range.ms).toISOString();
  if (f.range === "custom") {
    if (f.from) out.created_after = new Date(f.from).toISOString();
    if (f.to) out.created_before = new Date(f.to).toISOString();
  }
  return out;
}

export class RunsListView {
  constructor(root, { workspaceId, configurations, canWrite, router }) {
    this.root = root;
    this.workspaceId = workspaceId;
    this.configurations = configurations.filter((c) => c.workspace_id === workspaceId);
    this.canWrite = canWrite;
    this.router = router;
    this.filters = filtersFromQuery(location.search);
    this.items = [];
    this.nextCursor = null;
    this.loading = false;
    this.error = null;
    this.destroyed = false;
    this.onVisibility = () => {
      if (document.visibilityState === "visible") this.refresh();
    };
  }

  async mount() {
    document.title = `${this.workspaceId} · runevents`;
    this.build();
    await this.reload();
    this.poller = setInterval(() => {
      if (document.visibilityState === "visible") this.refresh();
    }, POLL_MS);
    this.ticker = setInterval(() => this.tickDurations(), 1000);
    document.addEventListener("visibilitychange", this.onVisibility);
  }

  build() {
    this.tableBody = h("tbody");
    this.moreHost = h("div", { class: "more-host" });
    this.messageHost = h("div", { class: "list-message" });
    this.countEl = h("span", { class: "muted", "aria-live": "polite" });
    replaceChildren(
      this.root,
      h(
        "div",
        { class: "list-view" },
        h("div", { class: "list-head" }, h("h1", null, "Runs ", h("small", { class: "muted" }, this.workspaceId)), this.countEl),
        this.renderConfigurations(),
        this.renderFilters(),
        this.messageHost,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "runs", "data-testid": "runs-table" },
            h("caption", { class: "sr-only" }, `Runs of workspace ${this.workspaceId}, newest first`),
            h(
              "thead",
              null,
              h(
                "tr",
                null,
                ["Status", "Run", "Configuration", "Created", "Duration", "Tables", "Rows", "Validation", ""].map((t) =>
                  h("th", { scope: "col" }, t),
                ),
              ),
            ),
            this.tableBody,
          ),
        ),
        this.moreHost,
      ),
    );
  }

  renderConfigurations() {
    if (!this.configurations.length) return null;
    this.optionsInput = h("textarea", {
      class: "input options-input",
      rows: 2,
      spellcheck: "false",
      "aria-label": "Run options (JSON object)",
      placeholder: '{"key": "value"}',
    });
    return h(
      "section",
      { class: "configs", "aria-label": "Configurations" },
      h(
        "ul",
        { class: "config-list" },
        this.configurations.map((c) =>
          h(
            "li",
            { class: "config" },
            h("div", { class: "config-text" }, h("strong", null, c.configuration_id), c.description ? h("span", { class: "muted" }, c.description) : null),
            this.canWrite
              ? h(
                  "button",
                  {
                    type: "button",
                    class: "btn btn-primary",
                    dataset: { configuration: c.configuration_id },
                    onclick: (event) => this.start(c.configuration_id, event.currentTarget),
                  },
                  "▶ Start run",
                )
              : null,
          ),
        ),
      ),
      this.canWrite ? h("details", { class: "options" }, h("summary", null, "Run options"), this.optionsInput) : null,
    );
  }

  renderFilters() {
    const f = this.filters;
    const statusButtons = ALL_STATUSES.map((s) =>
      h(
        "button",
        {
          type: "button",
          class: `chip-toggle st-${s}`,
          "aria-pressed": String(f.status.includes(s)),
          dataset: { status: s },
          onclick: (event) => {
            const on = event.currentTarget.getAttribute("aria-pressed") !== "true";
            event.currentTarget.setAttribute("aria-pressed", String(on));
            f.status = on ? [...f.status, s] : f.status.filter((x) => x !== s);
            this.filtersChanged();
          },
        },
        s,
      ),
    );
    const cfgSelect = h(
      "select",
      {
        class: "input",
        "aria-label": "Configuration",
        onchange: (event) => {
          f.configuration_id = event.target.value;
          this.filtersChanged();
        },
      },
      h("option", { value: "" }, "All configurations"),
      this.configurations.map((c) => h("option", { value: c.configuration_id, selected: c.configuration_id === f.configuration_id }, c.configuration_id)),
      f.configuration_id && !this.configurations.some((c) => c.configuration_id === f.configuration_id)
        ? h("option", { value: f.configuration_id, selected: true }, f.configuration_id)
        : null,
    );
    const from = h("input", { type: "datetime-local", class: "input", "aria-label": "Created after", value: f.from });
    const to = h("input", { type: "datetime-local", class: "input", "aria-label": "Created before", value: f.to });
    const custom = h("span", { class: "custom-range", hidden: f.range !== "custom" }, from, "–", to);
    for (const input of [from, to]) {
      input.addEventListener("change", () => {
        f.from = from.value;
        f.to = to.value;
        this.filtersChanged();
      });
    }
    const rangeSelect = h(
      "select",
      {
        class: "input",
        "aria-label": "Time range",
        onchange: (event) => {
          f.range = event.target.value;
          custom.hidden = f.range !== "custom";
          this.filtersChanged();
        },
      },
      Object.entries(RANGES).map(([key, r]) => h("option", { value: key, selected: key === f.range }, r.label)),
    );
    return h(
      "div",
      { class: "filters-bar", role: "group", "aria-label": "Filters" },
      h("div", { class: "status-filter", role: "group", "aria-label": "Status" }, statusButtons),
      cfgSelect,
      rangeSelect,
      custom,
    );
  }

  filtersChanged() {
    this.router.replaceQuietly(`${location.pathname}${filtersToQuery(this.filters)}`);
    this.reload();
  }

  async reload() {
    this.requestId = (this.requestId ?? 0) + 1;
    const id = this.requestId;
    this.loading = true;
    this.renderMessage();
    try {
      const page = await listRuns(this.workspaceId, { ...apiFilters(this.filters), limit: PAGE_SIZE });
      if (this.destroyed || id !== this.requestId) return;
      this.items = page.items;
      this.nextCursor = page.next_cursor;
      this.error = null;
    } catch (error) {
      if (id !== this.requestId) return;
      this.error = error;
    }
    this.loading = false;
    this.render();
  }

  /** Poll: refresh the rows shown (up to MAX_REFRESH), keeping rows loaded beyond that. */
  async refresh() {
    if (this.loading || this.destroyed) return;
    const id = this.requestId;
    const limit = Math.min(MAX_REFRESH, Math.max(PAGE_SIZE, this.items.length));
    try {
      const page = await listRuns(this.workspaceId, { ...apiFilters(this.filters), limit });
      if (this.destroyed || id !== this.requestId || this.loading) return;
      if (this.items.length <= limit) {
        this.items = page.items;
        this.nextCursor = page.next_cursor;
      } else {
        const fresh = new Set(page.items.map((r) => r.id));
        this.items = [...page.items, ...this.items.slice(limit).filter((r) => !fresh.has(r.id))];
      }
      this.error = null;
      this.render();
    } catch (error) {
      this.error = error;
      this.renderMessage();
    }
  }

  async loadMore() {
    if (!this.nextCursor || this.loading) return;
    this.loading = true;
    this.renderMore();
    try {
      const page = await listRuns(this.workspaceId, { ...apiFilters(this.filters), limit: PAGE_SIZE, cursor: this.nextCursor });
      const known = new Set(this.items.map((r) => r.id));
      this.items.push(...page.items.filter((r) => !known.has(r.id)));
      this.nextCursor = page.next_cursor;
    } catch (error) {
      toast(errorMessage(error), "error");
    }
    this.loading = false;
    this.render();
  }

  renderMessage() {
    if (this.error) {
      replaceChildren(this.messageHost, notice("error", "Could not load runs", errorMessage(this.error)));
    } else if (this.loading && !this.items.length) {
      replaceChildren(this.messageHost, h("p", { class: "loading", role: "status" }, "Loading runs…"));
    } else if (!this.items.length) {
      const filtered = this.filters.status.length || this.filters.configuration_id || this.filters.range;
      replaceChildren(
        this.messageHost,
        h("p", { class: "empty", role: "status" }, filtered ? "No runs match these filters." : "No runs yet in this workspace."),
      );
    } else {
      replaceChildren(this.messageHost);
    }
  }

  renderMore() {
    replaceChildren(
      this.moreHost,
      this.nextCursor
        ? h("button", { type: "button", class: "btn", disabled: this.loading, onclick: () => this.loadMore() }, this.loading ? "Loading…" : "Load more")
        : null,
    );
  }

  render() {
    this.renderMessage();
    this.renderMore();
    const n = this.items.length;
    this.countEl.textContent = n ? `${formatNumber(n)}${this.nextCursor ? "+" : ""} run${n === 1 && !this.nextCursor ? "" : "s"}` : "";
    // Keep the focused control across re-renders (polling must not steal focus).
    const focused = document.activeElement?.closest?.("tr[data-run-id]");
    const focusKey = focused ? [focused.dataset.runId, document.activeElement.dataset.role] : null;
    const rows = this.items.map((run) => this.renderRow(run));
    this.tableBody.replaceChildren(...rows);
    if (focusKey) {
      this.tableBody.querySelector(`tr[data-run-id="${CSS.escape(focusKey[0])}"] [data-role="${focusKey[1]}"]`)?.focus();
    }
  }

  renderRow(run) {
    const now = Date.now();
    const duration = runDurationMs(run, now);
    const tables = run.table_count ?? null;
    return h(
      "tr",
      {
        dataset: { runId: run.id, status: run.status },
        class: `run-row st-row-${run.status}`,
        // the whole row opens the run (the link inside stays the keyboard's way in)
        onclick: (event) => {
          if (event.target.closest("a, button") || getSelection()?.toString()) return;
          rememberRun(run);
          this.router.navigate(runUrl(this.workspaceId, run.id));
        },
      },
      h("td", { class: "c-status" }, statusBadge(run.status)),
      h(
        "td",
        { class: "c-run" },
        h("a", { href: runUrl(this.workspaceId, run.id), class: "run-link", dataset: { role: "open" }, onclick: () => rememberRun(run) }, run.id),
      ),
      h("td", { class: "c-cfg" }, run.configuration_id, run.external ? h("span", { class: "chip" }, "ext") : null),
      h("td", { class: "c-created" }, h("time", { datetime: run.created_at, title: formatDateTime(run.created_at) }, formatRelative(run.created_at, now))),
      h(
        "td",
        { class: "c-duration", dataset: isActive(run.status) && run.started_at ? { startedAt: run.started_at } : null },
        formatDuration(duration),
      ),
      h("td", { class: "c-num", "data-label": "Tables" }, formatNumber(tables)),
      h("td", { class: "c-num", "data-label": "Rows" }, formatNumber(run.row_count)),
      h("td", { class: "c-sev" }, severityBadge(run.max_validation_severity)),
      h(
        "td",
        { class: "c-actions" },
        this.canWrite && isActive(run.status)
          ? h(
              "button",
              {
                type: "button",
                class: "btn btn-small btn-danger",
                dataset: { role: "cancel" },
                disabled: run.cancel_requested,
                "aria-label": `Cancel run ${run.id}`,
                onclick: () => this.cancel(run),
              },
              run.cancel_requested ? "Cancelling…" : "Cancel",
            )
          : null,
      ),
    );
  }

  tickDurations() {
    const now = Date.now();
    for (const cell of this.tableBody.querySelectorAll("td[data-started-at]")) {
      cell.textContent = formatDuration(now - Date.parse(cell.dataset.startedAt));
    }
  }

  parseOptions() {
    const text = this.optionsInput?.value.trim();
    if (!text) return {};
    const value = JSON.parse(text);
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("Run options must be a JSON object.");
    return value;
  }

  async start(configurationId, button) {
    let options;
    try {
      options = this.parseOptions();
    } catch (error) {
      toast(`Invalid run options: ${error.message}`, "error");
      this.optionsInput?.focus();
      return;
    }
    button.disabled = true;
    try {
      const { run } = await createRun(this.workspaceId, configurationId, options);
      rememberRun(run);
      this.router.navigate(runUrl(this.workspaceId, run.id));
    } catch (error) {
      toast(`Could not start a run: ${errorMessage(error)}`, "error");
      button.disabled = false;
    }
  }

  async cancel(run) {
    try {
      await cancelRun(runPath(run.workspace_id, run.configuration_id, run.id));
      toast(`Cancel requested for ${run.id}.`);
    } catch (error) {
      toast(error.status === 409 ? "The run has already ended." : errorMessage(error), "error");
    }
    this.refresh();
  }

  destroy() {
    this.destroyed = true;
    clearInterval(this.poller);
    clearInterval(this.ticker);
    document.removeEventListener("visibilitychange", this.onVisibility);
  }
}
