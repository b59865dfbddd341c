// Search across a workspace's runs (contract section 12): a query, filters kept
// in the URL, hits listed as they stream in (newest runs first), each linking to
// the run view at `#seq=N` with the matched text highlighted there; "More hits"
// continues with the answer's cursor.

import { rememberRun, searchRuns } from "./api.js";
import { ansiToHtml } from "./ansi.js";
import { h, replaceChildren } from "./dom.js";
import { ALL_STATUSES, formatBytes, formatDateTime, formatNumber, formatRelative } from "./format.js";
import { runUrl } from "./router.js";
import { errorMessage, notice } from "./widgets.js";

const PAGE = 100; // hits per request (the API's default)
const RANGES = { "": "Any time", "1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days" };
const RANGE_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };

/** The search form's state from a URL query string. */
export function searchFromQuery(search) {
  const q = new URLSearchParams(search);
  return {
    q: q.get("q") ?? "",
    regex: q.get("regex") === "true",
    configuration_id: q.get("configuration_id") ?? "",
    status: q.getAll("status").filter((s) => ALL_STATUSES.includes(s)),
    range: q.get("range") in RANGE_MS ? q.get("range") : "",
    stream: ["stdout", "stderr"].includes(q.get("stream")) ? q.get("stream") : "",
    level: ["debug", "info", "warning", "error"].includes(q.get("level")) ? q.get("level") : "",
  };
}

function toQuery(f) {
  const q = new URLSearchParams();
  if (f.q) q.set("q", f.q);
  if (f.regex) q.set("regex", "true");
  if (f.configuration_id) q.set("configuration_id", f.configuration_id);
  f.status.forEach((s) => q.append("status", s));
  for (const key of ["range", "stream", "level"]) if (f[key]) q.set(key, f[key]);
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** The API parameters of the form (the time range resolved now). */
function apiQuery(f, cursor) {
  return {
    q: f.q,
    regex: f.regex ? "true" : null,
    configuration_id: f.configuration_id || null,
    status: f.status,
    created_after: f.range ? new Date(Date.now() - RANGE_MS[f.range]).toISOString() : null,
    stream: f.stream || null,
    level: f.level || null,
    limit: PAGE,
    cursor,
  };
}

/** A RegExp marking the matched texts of a hit (spans are in code points). */
export function matchHighlight(hit) {
  const points = Array.from(hit.message);
  const texts = [...new Set(hit.match.map(([a, b]) => points.slice(a, b).join("")))].filter(Boolean);
  if (!texts.length) return null;
  return new RegExp(texts.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g");
}

/** The run view URL of a hit: its line, with the first matched text to highlight. */
export function hitUrl(workspaceId, hit) {
  const [a, b] = hit.match[0] ?? [0, 0];
  const text = Array.from(hit.message).slice(a, b).join("");
  const base = runUrl(workspaceId, hit.run_id);
  return `${base}${text ? `?hl=${encodeURIComponent(text)}` : ""}#seq=${hit.sequence}`;
}

export class SearchView {
  constructor(root, { workspaceId, configurations, router }) {
    this.root = root;
    this.workspaceId = workspaceId;
    this.configurations = configurations.filter((c) => c.workspace_id === workspaceId);
    this.router = router;
    this.form = searchFromQuery(location.search);
    this.hits = 0;
    this.totals = { runs: 0, scanned: 0, skipped: 0, ms: 0 };
    this.cursor = null;
    this.controller = null;
  }

  mount() {
    document.title = `Search ${this.workspaceId} · runevents`;
    this.build();
    if (this.form.q) this.run();
  }

  destroy() {
    this.controller?.abort();
  }

  debug() {
    return { hits: this.hits, cursor: this.cursor, totals: this.totals };
  }

  build() {
    const f = this.form;
    this.input = h("input", {
      type: "search",
      class: "input search-q",
      name: "q",
      value: f.q,
      placeholder: "Text in any run's console, e.g. ConnectionResetError",
      "aria-label": "Search text",
      autocomplete: "off",
      required: true,
      maxlength: 1000,
    });
    this.regexBox = h("input", { type: "checkbox", name: "regex", checked: f.regex });
    const select = (label, key, options) =>
      h(
        "select",
        { class: "input", "aria-label": label, name: key },
        options.map(([value, text]) => h("option", { value, selected: value === f[key] }, text)),
      );
    this.cfgSelect = select("Configuration", "configuration_id", [
      ["", "All configurations"],
      ...this.configurations.map((c) => [c.configuration_id, c.configuration_id]),
      ...(f.configuration_id && !this.configurations.some((c) => c.configuration_id === f.configuration_id)
        ? [[f.configuration_id, f.configuration_id]]
        : []),
    ]);
    this.rangeSelect = select("Time range", "range", Object.entries(RANGES));
    this.streamSelect = select("Stream", "stream", [["", "All streams"], ["stdout", "stdout"], ["stderr", "stderr"]]);
    this.levelSelect = select("Level", "level", [["", "All levels"], ...["debug", "info", "warning", "error"].map((l) => [l, l])]);
    this.statusButtons = ALL_STATUSES.map((s) =>
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
          },
        },
        s,
      ),
    );
    this.list = h("ol", { class: "search-hits", "data-testid": "search-hits" });
    this.statusEl = h("p", { class: "search-status muted", role: "status", "aria-live": "polite", "data-testid": "search-status" });
    this.moreHost = h("div", { class: "more-host" });
    const formEl = h(
      "form",
      {
        class: "search-page-form",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          this.readForm();
          this.router.replaceQuietly(`${location.pathname}${toQuery(this.form)}`);
          this.run();
        },
      },
      h("div", { class: "search-line" }, this.input, h("label", { class: "check" }, this.regexBox, " regex (RE2)"), h("button", { type: "submit", class: "btn btn-primary" }, "Search")),
      h(
        "div",
        { class: "filters-bar", role: "group", "aria-label": "Filters" },
        h("div", { class: "status-filter", role: "group", "aria-label": "Status" }, this.statusButtons),
        this.cfgSelect,
        this.rangeSelect,
        this.streamSelect,
        this.levelSelect,
      ),
    );
    replaceChildren(
      this.root,
      h(
        "div",
        { class: "search-view" },
        h("div", { class: "list-head" }, h("h1", null, "Search ", h("small", { class: "muted" }, this.workspaceId))),
        formEl,
        this.statusEl,
        this.list,
        this.moreHost,
      ),
    );
    this.input.focus();
  }

  readForm() {
    this.form = {
      q: this.input.value.trim(),
      regex: this.regexBox.checked,
      configuration_id: this.cfgSelect.value,
      status: this.statusButtons.filter((b) => b.getAttribute("aria-pressed") === "true").map((b) => b.dataset.status),
      range: this.rangeSelect.value,
      stream: this.streamSelect.value,
      level: this.levelSelect.value,
    };
  }

  /** A new search (or, with `more`, the next hits after the cursor). */
  async run(more = false) {
    if (!this.form.q) return;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    if (!more) {
      this.hits = 0;
      this.cursor = null;
      this.totals = { runs: 0, scanned: 0, skipped: 0, ms: 0 };
      this.list.replaceChildren();
    }
    replaceChildren(this.moreHost);
    this.statusEl.textContent = "Searching…";
    try {
      const done = await searchRuns(this.workspaceId, apiQuery(this.form, more ? this.cursor : null), (hit) => this.addHit(hit), {
        signal: controller.signal,
      });
      if (controller !== this.controller) return;
      this.cursor = done.cursor;
      this.totals.runs += done.runs_scanned;
      this.totals.scanned += done.bytes_scanned;
      this.totals.skipped += done.bytes_skipped;
      this.totals.ms += done.elapsed_ms;
      this.renderStatus();
    } catch (error) {
      if (error.name === "AbortError" || controller !== this.controller) return;
      this.statusEl.textContent = "";
      replaceChildren(this.moreHost, notice("error", error.code === "invalid_regex" ? "Invalid regular expression" : "Search failed", errorMessage(error)));
    }
  }

  renderStatus() {
    const t = this.totals;
    const n = this.hits;
    this.statusEl.textContent =
      `${formatNumber(n)}${this.cursor ? "+" : ""} hit${n === 1 ? "" : "s"} · ${formatNumber(t.runs)} runs searched · ` +
      `${formatBytes(t.scanned)} read, ${formatBytes(t.skipped)} skipped by the index · ${Math.round(t.ms)} ms`;
    if (!n && !this.cursor) this.statusEl.textContent = `No hits. ${this.statusEl.textContent}`;
    replaceChildren(
      this.moreHost,
      this.cursor ? h("button", { type: "button", class: "btn", "data-testid": "more-hits", onclick: () => this.run(true) }, "More hits") : null,
    );
  }

  addHit(hit) {
    this.hits += 1;
    const message = h("code", { class: "hit-message" });
    // ansiToHtml escapes the text and marks the matches inside styled spans
    message.innerHTML = ansiToHtml(hit.message, matchHighlight(hit));
    this.list.append(
      h(
        "li",
        { class: "search-hit", dataset: { runId: hit.run_id, seq: String(hit.sequence) } },
        h(
          "div",
          { class: "hit-head" },
          h(
            "a",
            {
              href: hitUrl(this.workspaceId, hit),
              class: "run-link",
              onclick: () => rememberRun({ id: hit.run_id, workspace_id: this.workspaceId, configuration_id: hit.configuration_id }),
            },
            `${hit.run_id} #${hit.sequence}`,
          ),
          h("span", { class: "chip" }, hit.configuration_id),
          h("time", { datetime: hit.created_at, title: formatDateTime(hit.created_at) }, formatRelative(hit.created_at)),
        ),
        message,
      ),
    );
  }
}
