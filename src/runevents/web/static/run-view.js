// The run view: header, phases, summary and the console of one run.
//
// Data flow: `GET {run}` gives the row (and the summary once ended). A live run
// opens ONE EventSource from after_sequence=0; every event goes through the
// pure reducer (header, phases, summary) and into the log source (console rows,
// by sequence). The browser reconnects a dropped stream by itself with
// Last-Event-ID; if the stream closes for good before run.completed, we reopen
// it after the last sequence we hold. Either way a sequence is applied once
// (the reducer and the source both ignore what they already have).
// A finished run opens no stream: its event_count sizes the console, whose
// windows load from the JSON pages API as they scroll into view.

import {
  ApiError,
  cancelRun,
  downloadNdjson,
  eventStreamUrl,
  eventsPage,
  findRun,
  getRun,
  rememberRun,
  searchEvents,
} from "./api.js";
import { VirtualConsole, describeEvent } from "./console.js";
import { h, replaceChildren } from "./dom.js";
import { formatDateTime, formatNumber, isActive } from "./format.js";
import { FilteredSource, SequenceSource } from "./log-source.js";
import { initialRunState, reduceRun, withRun } from "./reducer.js";
import { workspaceUrl, seqFromHash } from "./router.js";
import { renderFailure, renderMeta, renderPhases, renderSummary } from "./run-panels.js";
import { errorMessage, notice, statusBadge, toast } from "./widgets.js";

const SEARCH_PAGE = 200; // matches per search request
const FILTER_PAGE = 1000; // rows per filtered page (the search API's maximum)
const RECONNECT_MS = 2000; // wait before reopening a stream that closed for good

export class RunView {
  constructor(root, { workspaceId, runId, canWrite }) {
    this.root = root;
    this.workspaceId = workspaceId;
    this.runId = runId;
    this.canWrite = canWrite;
    this.state = initialRunState();
    this.es = null;
    this.sseOpens = 0;
    this.expired = false;
    this.destroyed = false;
    this.pendingSeq = seqFromHash(location.hash);
    this.search = { q: "", matches: [], next: 0, hasMore: false, loading: false };
    this.frame = 0;
    this.onHashChange = () => {
      const seq = seqFromHash(location.hash);
      if (seq) this.jumpToSeq(seq);
    };
    this.onKeyDown = (event) => {
      // "/" focuses the search box, as in most log viewers
      if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target.closest?.("input, textarea, select, [contenteditable]")) return;
      if (!this.searchInput || this.searchInput.disabled) return;
      event.preventDefault();
      this.searchInput.focus();
    };
  }

  async mount() {
    replaceChildren(this.root, h("p", { class: "loading", role: "status" }, "Loading run…"));
    let found;
    try {
      found = await findRun(this.workspaceId, this.runId);
    } catch (error) {
      if (this.destroyed) return;
      replaceChildren(
        this.root,
        this.crumbs(),
        notice("error", error.status === 404 ? "Run not found" : "Could not load the run", errorMessage(error)),
      );
      return;
    }
    if (this.destroyed) return;
    this.path = found.path;
    rememberRun(found.run);
    this.state = initialRunState(found.run, found.summary);
    this.build();
    this.renderPanels();
    window.addEventListener("hashchange", this.onHashChange);
    document.addEventListener("keydown", this.onKeyDown);
    if (found.run.log_state === "expired") {
      this.showExpired();
      return;
    }
    this.fullSource = new SequenceSource({
      fetchPage: (after, limit, signal) => eventsPage(this.path, after, limit, { signal }),
      onUpdate: () => this.console.refresh(),
      onError: (error) => this.onLogError(error),
    });
    const live = isActive(found.run.status) || found.run.log_state === "live";
    if (!live) {
      this.fullSource.setCount(found.run.event_count ?? 0);
      this.console.following = false;
    }
    this.console.setSource(this.fullSource);
    this.updateFollow();
    if (this.pendingSeq) this.tryPendingJump();
    if (live) this.openStream();
    this.ticker = setInterval(() => {
      if (!this.state.completed) this.renderPanels();
    }, 1000);
  }

  crumbs() {
    return h(
      "nav",
      { class: "crumbs", "aria-label": "Breadcrumb" },
      h("a", { href: workspaceUrl(this.workspaceId) }, this.workspaceId),
      h("span", { "aria-hidden": "true" }, " / "),
      h("span", { "aria-current": "page" }, this.runId),
    );
  }

  build() {
    const run = this.state.run;
    this.badgeHost = h("span", { class: "run-badge" });
    this.cancelBtn = h("button", { class: "btn btn-danger", type: "button", onclick: () => this.cancel() }, "Cancel run");
    this.downloadBtn = h("button", { class: "btn", type: "button", onclick: () => this.download() }, "Download NDJSON");
    this.metaHost = h("div", { class: "meta-host" });
    this.failureHost = h("div", { class: "failure-host" });
    this.phasesHost = h("section", { class: "panel phases-panel", "aria-label": "Phases" });
    this.summaryHost = h("div", { class: "panel summary-panel" });
    this.searchInput = h("input", {
      type: "search",
      class: "input",
      placeholder: "Search the whole log  ( / )",
      "aria-label": "Search the log",
      name: "q",
      autocomplete: "off",
    });
    this.streamSelect = h(
      "select",
      { class: "input", "aria-label": "Stream", onchange: () => this.applyFilter() },
      h("option", { value: "" }, "All streams"),
      h("option", { value: "stdout" }, "stdout"),
      h("option", { value: "stderr" }, "stderr"),
    );
    this.levelSelect = h(
      "select",
      { class: "input", "aria-label": "Level", onchange: () => this.applyFilter() },
      h("option", { value: "" }, "All levels"),
      ...["debug", "info", "warning", "error"].map((l) => h("option", { value: l }, l)),
    );
    this.followBtn = h(
      "button",
      { class: "btn btn-toggle", type: "button", "aria-pressed": "true", onclick: () => this.toggleFollow() },
      "Follow",
    );
    this.jumpBtn = h(
      "button",
      { class: "btn btn-primary jump-latest", type: "button", hidden: true, onclick: () => this.console.jumpToLatest() },
      "Jump to latest ↓",
    );
    this.connectionEl = h("span", { class: "connection", "data-testid": "connection" });
    this.statusLine = h("div", { class: "console-status", "aria-live": "off", "data-testid": "console-status" });
    this.resultsEl = h("aside", { class: "search-results", hidden: true, "aria-label": "Search results" });
    this.consoleHost = h("div", { class: "console-host", "data-testid": "console" });
    const searchForm = h(
      "form",
      {
        class: "search-form",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          this.runSearch();
        },
      },
      this.searchInput,
      h("button", { class: "btn", type: "submit" }, "Search"),
    );
    replaceChildren(
      this.root,
      h(
        "div",
        { class: "run-view" },
        this.crumbs(),
        h(
          "header",
          { class: "run-head" },
          h(
            "div",
            { class: "run-title" },
            this.badgeHost,
            h("h1", null, run.configuration_id, " ", h("small", { class: "run-id" }, run.id)),
            run.external ? h("span", { class: "chip" }, "external") : null,
          ),
          h("div", { class: "run-actions" }, this.cancelBtn, this.downloadBtn),
        ),
        this.metaHost,
        this.failureHost,
        h("div", { class: "run-panels" }, this.phasesHost, this.summaryHost),
        h(
          "div",
          { class: "console-toolbar" },
          searchForm,
          h("div", { class: "filters" }, this.streamSelect, this.levelSelect, this.followBtn, this.connectionEl),
        ),
        h("div", { class: "console-area" }, this.consoleHost, this.jumpBtn, this.resultsEl),
        this.statusLine,
      ),
    );
    this.console = new VirtualConsole(this.consoleHost, {
      onFollowChange: () => this.updateFollow(),
      onRender: (info) => this.renderStatusLine(info),
    });
    this.console.setEmptyText(isActive(run.status) ? "Waiting for output…" : "No events.");
    // `?hl=TEXT` (a hit of the workspace search): mark that text in the rows
    const hl = new URLSearchParams(location.search).get("hl");
    if (hl) this.console.setHighlight(new RegExp(hl.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "g"));
    document.title = `${run.configuration_id} · ${run.id} · runevents`;
  }

  // ---- rendering ----------------------------------------------------------

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.renderPanels();
      this.console.refresh();
    });
  }

  renderPanels() {
    if (!this.metaHost) return;
    const s = this.state;
    const now = Date.now();
    replaceChildren(this.badgeHost, statusBadge(s.status));
    this.cancelBtn.hidden = !(this.canWrite && !s.completed && isActive(s.status));
    this.downloadBtn.disabled = this.expired;
    replaceChildren(this.metaHost, renderMeta(s, now));
    replaceChildren(this.failureHost, renderFailure(s));
    replaceChildren(this.phasesHost, h("h2", null, "Phases"), renderPhases(s, now));
    if (this.summaryRendered !== s.summary || !s.completed) {
      this.summaryRendered = s.summary;
      replaceChildren(this.summaryHost, renderSummary(s));
    }
    this.root.dataset.status = s.status;
  }

  renderStatusLine({ first, last, count }) {
    const source = this.console.source;
    const filtered = source instanceof FilteredSource;
    const rows = filtered ? source.rows.length : count;
    const parts = [];
    parts.push(filtered ? `${formatNumber(rows)}${source.hasMore ? "+" : ""} matching lines` : `${formatNumber(rows)} lines`);
    if (count > 0) parts.push(`showing ${formatNumber(Math.min(first + 1, rows))}–${formatNumber(Math.min(last + 1, rows))}`);
    if (!filtered && this.fullSource) parts.push(`${formatNumber(this.fullSource.loadedEvents())} in memory`);
    this.statusLine.textContent = parts.join(" · ");
    this.statusLine.dataset.count = String(rows);
  }

  updateFollow() {
    const following = this.console.following;
    this.followBtn.setAttribute("aria-pressed", String(following));
    this.jumpBtn.hidden = following || this.console.count === 0;
    this.consoleHost.dataset.following = String(following);
  }

  toggleFollow() {
    if (this.console.following) this.console.setFollowing(false);
    else this.console.jumpToLatest();
    this.updateFollow();
  }

  setConnection(text, kind) {
    this.connectionEl.textContent = text;
    this.connectionEl.className = `connection conn-${kind}`;
  }

  // ---- live stream ------------------------------------------------------------

  openStream() {
    if (this.destroyed || this.es) return;
    const es = new EventSource(eventStreamUrl(this.path, this.state.lastSequence));
    this.es = es;
    this.sseOpens += 1;
    this.setConnection("connecting…", "wait");
    es.onopen = () => this.setConnection("live", "live");
    es.addEventListener("ade.event", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      this.onEvent(event);
    });
    es.onerror = () => {
      if (this.es !== es) return;
      if (es.readyState === EventSource.CONNECTING) {
        // the browser retries by itself, sending Last-Event-ID
        this.setConnection("reconnecting…", "wait");
        return;
      }
      es.close();
      this.es = null;
      if (this.state.completed) return;
      this.setConnection("reconnecting…", "wait");
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = setTimeout(() => this.recoverStream(), RECONNECT_MS);
    };
  }

  /** The stream closed for good (204, an HTTP error): check the run, then resume. */
  async recoverStream() {
    if (this.destroyed || this.es) return;
    try {
      const { run, summary } = await getRun(this.path);
      this.state = withRun(this.state, run, summary);
      this.fullSource.setCount(Math.max(this.state.lastSequence, isActive(run.status) ? 0 : run.event_count));
      this.scheduleRender();
      if (!isActive(run.status) && this.state.lastSequence >= run.event_count) {
        this.streamEnded();
        return;
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
    }
    this.openStream();
  }

  closeStream() {
    clearTimeout(this.reconnectTimer);
    if (this.es) {
      this.es.close();
      this.es = null;
    }
  }

  onEvent(event) {
    const before = this.state;
    this.state = reduceRun(this.state, event);
    if (this.state.lastSequence === before.lastSequence) return; // already had it
    this.fullSource.put(event);
    if (this.filteredSource) this.filteredSource.put(event);
    if (this.pendingSeq) this.tryPendingJump();
    this.scheduleRender();
    if (event.type === "run.completed") {
      this.closeStream();
      this.streamEnded();
    }
  }

  /** After run.completed: fetch the final row and summary (the row may lag the event a moment). */
  async streamEnded() {
    this.setConnection("ended", "done");
    this.console.setEmptyText("No events.");
    for (let attempt = 0; attempt < 6 && !this.destroyed; attempt += 1) {
      try {
        const { run, summary } = await getRun(this.path);
        if (this.destroyed) return;
        this.state = withRun(this.state, run, summary);
        this.scheduleRender();
        if (!isActive(run.status)) return;
      } catch {
        return; // the header keeps what the events said
      }
      await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
    }
  }

  // ---- navigation inside the log ---------------------------------------------

  tryPendingJump() {
    const seq = this.pendingSeq;
    if (seq && this.fullSource && seq <= this.fullSource.count) {
      this.pendingSeq = null;
      requestAnimationFrame(() => this.jumpToSeq(seq));
    }
  }

  /** Scroll to a sequence and mark its line (the `#seq=N` permalink). */
  jumpToSeq(seq) {
    if (!this.console || this.expired) return;
    let source = this.console.source;
    if (source instanceof FilteredSource && source.indexOfSeq(seq) < 0) {
      this.streamSelect.value = "";
      this.levelSelect.value = "";
      this.applyFilter();
      source = this.console.source;
    }
    const index = source.indexOfSeq(seq);
    if (index < 0) {
      this.pendingSeq = seq; // not written yet: jump when it arrives
      return;
    }
    this.console.highlightSeq = seq;
    this.console.scrollToIndex(index);
    this.updateFollow();
  }

  applyFilter() {
    const stream = this.streamSelect.value || null;
    const level = this.levelSelect.value || null;
    this.filteredSource?.stop();
    this.filteredSource = null;
    if (!stream && !level) {
      this.console.setSource(this.fullSource, { keepPosition: false });
      this.updateFollow();
      return;
    }
    const predicate = (e) =>
      e.type === "console.line" && (!stream || e.payload?.stream === stream) && (!level || e.payload?.level === level);
    this.filteredSource = new FilteredSource({
      predicate,
      fetchMore: async (after, signal) => {
        const page = await searchEvents(this.path, { stream, level, afterSequence: after, limit: FILTER_PAGE }, { signal });
        return { events: page.matches, nextAfter: page.next_after_sequence, hasMore: page.has_more };
      },
      onUpdate: () => this.console.refresh(),
      onError: (error) => this.onLogError(error),
    });
    this.console.setSource(this.filteredSource);
    this.console.setEmptyText("No matching lines.");
    this.updateFollow();
  }

  // ---- search ---------------------------------------------------------------

  async runSearch(more = false) {
    const q = this.searchInput.value.trim();
    if (!q) {
      this.closeSearch();
      return;
    }
    if (!more) {
      this.searchController?.abort();
      this.search = { q, matches: [], next: 0, hasMore: false, loading: true };
      this.console.setHighlight(new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gi"));
    }
    this.search.loading = true;
    this.renderResults();
    const controller = new AbortController();
    this.searchController = controller;
    try {
      const page = await searchEvents(
        this.path,
        {
          q,
          stream: this.streamSelect.value || null,
          level: this.levelSelect.value || null,
          afterSequence: this.search.next,
          limit: SEARCH_PAGE,
        },
        { signal: controller.signal },
      );
      this.search.matches.push(...page.matches);
      this.search.next = page.next_after_sequence;
      this.search.hasMore = page.has_more;
      this.search.error = null;
    } catch (error) {
      if (error.name === "AbortError") return;
      this.search.error = error.code === "log_expired" ? "The log has expired." : errorMessage(error);
    }
    this.search.loading = false;
    this.renderResults();
    if (!more && this.search.matches.length) this.jumpToSeq(this.search.matches[0].sequence);
  }

  closeSearch() {
    this.searchController?.abort();
    this.resultsEl.hidden = true;
    this.console.setHighlight(null);
  }

  renderResults() {
    const { q, matches, hasMore, loading, error } = this.search;
    const items = matches.map((m) =>
      h(
        "li",
        null,
        h(
          "button",
          {
            type: "button",
            class: "result",
            dataset: { seq: m.sequence },
            onclick: () => {
              history.replaceState(null, "", `#seq=${m.sequence}`);
              this.jumpToSeq(m.sequence);
            },
            onkeydown: (event) => this.resultKeys(event),
          },
          h("span", { class: "result-seq" }, m.sequence),
          h("span", { class: `result-text${m.payload?.stream === "stderr" ? " s-stderr" : ""}` }, describeEvent(m)),
        ),
      ),
    );
    const count = `${formatNumber(matches.length)}${hasMore ? "+" : ""} match${matches.length === 1 ? "" : "es"} for “${q}”`;
    replaceChildren(
      this.resultsEl,
      h(
        "div",
        { class: "results-head" },
        h("span", { role: "status", "data-testid": "search-count" }, loading && !matches.length ? "Searching…" : count),
        h("button", { type: "button", class: "btn btn-small", onclick: () => this.closeSearch(), "aria-label": "Close search results" }, "✕"),
      ),
      error ? notice("error", "Search failed", error) : null,
      h("ol", { class: "results-list" }, items),
      hasMore
        ? h("button", { type: "button", class: "btn btn-small", disabled: loading, onclick: () => this.runSearch(true) }, loading ? "Searching…" : "More matches")
        : null,
    );
    this.resultsEl.hidden = false;
  }

  resultKeys(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp" && event.key !== "Escape") return;
    event.preventDefault();
    if (event.key === "Escape") {
      this.closeSearch();
      this.searchInput.focus();
      return;
    }
    const li = event.target.closest("li");
    const next = event.key === "ArrowDown" ? li?.nextElementSibling : li?.previousElementSibling;
    next?.querySelector("button")?.focus();
  }

  // ---- actions and states ---------------------------------------------------

  async cancel() {
    this.cancelBtn.disabled = true;
    try {
      const { run } = await cancelRun(this.path);
      this.state = withRun(this.state, run);
      toast("Cancel requested.");
    } catch (error) {
      toast(error.status === 409 ? "The run has already ended." : errorMessage(error), "error");
    } finally {
      this.cancelBtn.disabled = false;
      this.renderPanels();
    }
  }

  async download() {
    this.downloadBtn.disabled = true;
    const label = this.downloadBtn.textContent;
    this.downloadBtn.textContent = "Downloading…";
    try {
      const size = await downloadNdjson(this.path, `${this.runId}.ndjson`);
      toast(`Downloaded ${formatNumber(size)} bytes.`);
    } catch (error) {
      if (error.code === "log_expired") this.showExpired();
      else toast(errorMessage(error), "error");
    } finally {
      this.downloadBtn.textContent = label;
      this.downloadBtn.disabled = this.expired;
    }
  }

  onLogError(error) {
    if (error instanceof ApiError && (error.status === 410 || error.code === "log_expired")) {
      this.showExpired();
    } else if (!(error instanceof ApiError && error.status === 401)) {
      toast(`Could not load lines: ${errorMessage(error)}`, "error");
    }
  }

  showExpired() {
    if (this.expired) return;
    this.expired = true;
    this.closeStream();
    this.fullSource?.stop();
    this.filteredSource?.stop();
    for (const el of [this.searchInput, this.streamSelect, this.levelSelect, this.followBtn, this.downloadBtn]) el.disabled = true;
    this.console?.destroy();
    this.console = null;
    this.jumpBtn.hidden = true;
    this.statusLine.textContent = "";
    const completed = this.state.completedAt ? ` It ended ${formatDateTime(this.state.completedAt)}.` : "";
    replaceChildren(
      this.consoleHost,
      h(
        "div",
        { class: "expired", role: "status", "data-testid": "log-expired" },
        h("div", { class: "expired-icon", "aria-hidden": "true" }, "⌛"),
        h("h2", null, "Log expired"),
        h("p", null, `This run's event log was removed by retention.${completed} The run and its summary remain available above.`),
      ),
    );
    this.renderPanels();
  }

  /** What the tests read (window.__runevents.view). */
  debug() {
    return {
      status: this.state.status,
      lastSequence: this.state.lastSequence,
      duplicates: this.state.duplicates,
      sseOpens: this.sseOpens,
      streamOpen: Boolean(this.es),
      following: this.console?.following ?? false,
      count: this.console?.count ?? 0,
      visible: this.console?.visibleSequences() ?? [],
      loadedEvents: this.fullSource?.loadedEvents() ?? 0,
      pageRequests: this.fullSource?.requests ?? 0,
      expired: this.expired,
    };
  }

  destroy() {
    this.destroyed = true;
    this.closeStream();
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    window.removeEventListener("hashchange", this.onHashChange);
    document.removeEventListener("keydown", this.onKeyDown);
    this.fullSource?.stop();
    this.filteredSource?.stop();
    this.searchController?.abort();
    this.console?.destroy();
  }
}
