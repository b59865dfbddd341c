// The run view's layout toggles (issue 19): wrap and timestamps (remembered),
// the header details (remembered) and a full-screen log (Esc leaves it).

import { h } from "./dom.js";
import { shortZoneName, timeZoneName } from "./format.js";
import { getPref, setPref } from "./prefs.js";

export function toggle(label, pressed, onclick, attrs = {}) {
  return h("button", { class: "btn btn-toggle", type: "button", "aria-pressed": String(pressed), onclick, ...attrs }, label);
}

export class ViewToggles {
  /** `view`: the run view's root element (classes); `console()`: the VirtualConsole, if any. */
  constructor({ view, console }) {
    this.view = view;
    this.console = console;
    this.wrap = getPref("wrap", window.matchMedia("(max-width: 640px)").matches); // phones wrap
    this.timestamps = getPref("timestamps", true);
    this.detailsHidden = getPref("detailsHidden", false);
    this.fullscreen = false;
    this.wrapBtn = toggle("Wrap", this.wrap, () => this.setWrap(!this.wrap), { title: "Wrap long lines" });
    this.timeBtn = toggle(`Times (${shortZoneName()})`, this.timestamps, () => this.setTimestamps(!this.timestamps), {
      title: `Show the time of each line (${timeZoneName()}); hover a time for the full date`,
      "aria-label": `Timestamps (${timeZoneName()})`,
    });
    this.detailsBtn = toggle("Details", !this.detailsHidden, () => this.setDetailsHidden(!this.detailsHidden), {
      title: "Show or hide the run's details and panels",
    });
    this.fullBtn = toggle("Full screen", false, () => this.setFullscreen(!this.fullscreen), { title: "The log fills the window (Esc to leave)" });
    this.buttons = [this.wrapBtn, this.timeBtn, this.detailsBtn, this.fullBtn];
  }

  /** Apply the remembered settings (once the console exists). */
  apply() {
    this.console()?.setWrap(this.wrap);
    this.console()?.setTimestamps(this.timestamps);
    this.setDetailsHidden(this.detailsHidden);
  }

  setWrap(on) {
    this.wrap = on;
    setPref("wrap", on);
    this.wrapBtn.setAttribute("aria-pressed", String(on));
    this.console()?.setWrap(on);
  }

  setTimestamps(on) {
    this.timestamps = on;
    setPref("timestamps", on);
    this.timeBtn.setAttribute("aria-pressed", String(on));
    this.console()?.setTimestamps(on);
  }

  setDetailsHidden(hidden) {
    this.detailsHidden = hidden;
    setPref("detailsHidden", hidden);
    this.detailsBtn.setAttribute("aria-pressed", String(!hidden));
    this.view.classList.toggle("details-hidden", hidden);
  }

  setFullscreen(on) {
    this.fullscreen = on;
    this.fullBtn.setAttribute("aria-pressed", String(on));
    this.view.classList.toggle("log-fullscreen", on);
  }
}
