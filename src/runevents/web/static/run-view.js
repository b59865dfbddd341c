// The run view: header, phases, summary and the console of one run.
//
// Data flow: `GET {run}` gives the row (and the summary once ended). A live run
// opens ONE EventSource from after_sequence=0; every event goes through the
// pure reducer (header, phases, summary), the section index (folding, errors)
// and into the log source (console rows, by sequence). The browser reconnects a
// dropped stream by itself with Last-Event-ID; if the stream closes for good
// before run.completed, we reopen it after the last sequence we hold. Either
// way a sequence is applied once (reducer, index and source ignore repeats).
// A finished run opens no stream: its event_count sizes the console, whose
// windows load from the JSON pages API as they scroll into view, and its
// outline (`{run}/outline`) feeds the section index.
//
// The URL holds what a shared link should show: ?q=, ?stream=, ?level= and #seq=N.

import { ApiError, downloadNdjson, eventStreamUrl, eventsPage, findRun, getRun, outlinePage, rememberRun, searchEvents, textUrl } from "./api.js";
import { VirtualConsole } from "./console.js";
import { h, replaceChildren } from "./dom.js";
import { formatNumber, isActive } from "./format.js";
import { FilteredSource, SequenceSource } from "./log-source.js";
import { initialRunState, reduceRun, withRun } from "./reducer.js";
import { seqFromHash, workspaceUrl } from "./router.js";
import { RunActions, renderOptions } from "./run-actions.js";
import { renderExpired, renderFailure, renderMeta, renderPhases, renderSummary } from "./run-panels.js";
import { ConsoleSearch } from "./run-search.js";
import { FoldedSource, SectionIndex } from "./sections.js";
import { LiveStream } from "./run-stream.js";
import { ViewToggles, toggle } from "./view-toggles.js";
import { errorMessage, notice, statusBadge, toast } from "./widgets.js";

const FILTER_PAGE = 1000; // rows per filtered page (the search API's maximum)
const ROW_POLL_MS = 5000; // a live run's row is re-read this often (its status leads the badge)
const RUN_ID = /^run_[0-9A-HJKMNP-TV-Z]{26}$/;

export class RunView {
  constructor(root, { workspaceId, runId, canWrite, router }) {
    this.root = root;
    this.workspaceId = workspaceId;
    this.runId = runId;
    this.canWrite = canWrite;
    this.router = router;
    this.state = initialRunState();
    this.index = new SectionIndex();
    this.expired = false;
    this.destroyed = false;
    this.pendingSeq = seqFromHash(location.hash);
    const query = new URLSearchParams(location.search);
    this.initial = { q: query.get("q") ?? "", stream: query.get("stream") ?? "", level: query.get("level") ?? "" };
    this.errorIndex = -1;
    this.frame = 0;
    this.onHashChange = () => {
      const seq = seqFromHash(location.hash);
      if (seq) this.jumpToSeq(seq);
    };
    this.onKeyDown = (event) => {
      if (event.key === "Escape" && this.toggles?.fullscreen) {
        this.toggles.setFullscreen(false);
        return;
      }
      // "/" focuses the search box, as in most log viewers
      if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target.closest?.("input, textarea, select, [contenteditable]")) return;
      if (!this.search || this.search.input.disabled) return;
      event.preventDefault();
      this.search.input.focus();
    };
  }

  async mount() {
    if (!RUN_ID.test(this.runId)) {
      replaceChildren(
        this.root,
        this.crumbs(),
        notice("error", "Not a run id", `“${this.runId}” is not a run id. Run ids look like run_01JD3Z8K2M4N6P8Q0R2S4T6V8W; copy one from the runs list.`),
      );
      return;
    }
    replaceChildren(this.root, h("p", { class: "loading", role: "status" }, "Loading run…"));
    let found;
    try {
      found = await findRun(this.workspaceId, this.runId);
    } catch (error) {
      if (this.destroyed) return;
      replaceChildren(
        this.root,
        this.crumbs(),
        notice("error", error.status === 404 ? "Run not found" : "Could not load the run", error.status === 404 ? `There is no run ${this.runId} in workspace ${this.workspaceId}.` : errorMessage(error)),
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
      onUpdate: () => {
        this.console.refresh();
        this.firstLines?.();
      },
      onError: (error) => this.onLogError(error),
    });
    this.folded = new FoldedSource(this.fullSource, this.index);
    const live = isActive(found.run.status) || found.run.log_state === "live";
    // a failed run opens at its first error, unless the link points somewhere
    this.openAtFailure = !isActive(found.run.status) && found.run.status === "failed" && !this.pendingSeq && !this.initial.q;
    if (!live) {
      this.fullSource.setCount(found.run.event_count ?? 0);
      this.console.following = false;
    }
    this.console.setSource(this.folded);
    this.updateFollow();
    this.loadQueued();
    if (this.initial.stream || this.initial.level) this.applyFilter({ fromUrl: true });
    if (this.initial.q) {
      this.search.input.value = this.initial.q;
      this.search.start(this.initial.q);
    }
    if (this.pendingSeq) this.tryPendingJump();
    if (live) this.openStream();
    else {
      // the outline scans the whole log: ask for it once the first lines are in
      const start = () => {
        this.firstLines = null;
        clearTimeout(this.outlineTimer);
        this.loadOutline();
      };
      this.firstLines = start;
      this.outlineTimer = setTimeout(start, 1500);
    }
    this.ticker = setInterval(() => {
      if (this.state.completed) return;
      this.renderPanels();
      this.console?.refresh(); // open sections' durations (their rows redraw on every render)
    }, 1000);
    this.rowPoller = setInterval(() => this.pollRow(), ROW_POLL_MS);
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
    this.actions = new RunActions({
      workspaceId: this.workspaceId,
      path: this.path,
      canWrite: this.canWrite,
      router: this.router,
      onCancelled: (updated) => {
        this.state = withRun(this.state, updated);
        this.renderPanels();
      },
    });
    this.metaHost = h("div", { class: "meta-host" });
    this.failureHost = h("div", { class: "failure-host" });
    this.phasesHost = h("section", { class: "panel phases-panel", "aria-label": "Phases" });
    this.summaryHost = h("div", { class: "panel summary-panel" });
    this.search = new ConsoleSearch({
      path: this.path,
      filters: () => ({ stream: this.streamSelect.value || null, level: this.levelSelect.value || null }),
      onJump: (seq) => this.jumpToSeq(seq, { filtered: true }),
      onQuery: (q) => {
        this.console?.setHighlight(this.search.regex);
        this.updateUrl();
        if (!q) this.console?.setHighlight(null);
      },
    });
    const select = (label, options, value) => {
      const el = h("select", { class: "input", "aria-label": label, onchange: () => this.applyFilter() }, options.map(([v, text]) => h("option", { value: v }, text)));
      if (options.some(([v]) => v === value)) el.value = value;
      return el;
    };
    this.streamSelect = select("Stream", [["", "All streams"], ["stdout", "stdout"], ["stderr", "stderr"]], this.initial.stream);
    this.levelSelect = select("Level", [["", "All levels"], ...["debug", "info", "warning", "error"].map((l) => [l, l])], this.initial.level);
    this.followBtn = toggle("Follow", true, () => this.toggleFollow());
    this.toggles = new ViewToggles({ view: null, console: () => this.console });
    this.errorCount = h("span", { class: "search-count", "data-testid": "error-count" });
    this.errorNav = h(
      "div",
      { class: "error-nav", hidden: true },
      h("button", { type: "button", class: "btn btn-small", onclick: () => this.gotoError(0) }, "First error"),
      this.errorCount,
      h("button", { type: "button", class: "btn btn-small", onclick: () => this.gotoError(this.errorIndex + 1) }, "Next error"),
    );
    this.downloadBtn = h("button", { class: "btn btn-small", type: "button", onclick: () => this.download() }, "Download NDJSON");
    this.rawLink = h("a", { class: "btn btn-small", href: textUrl(this.path), target: "_blank", rel: "noopener", "data-external": "" }, "View raw");
    this.textLink = h("a", { class: "btn btn-small", href: textUrl(this.path, { download: true }), download: `${this.runId}.log`, "data-external": "" }, "Download text");
    this.jumpBtn = h("button", { class: "btn btn-primary btn-small jump-latest", type: "button", hidden: true, onclick: () => this.console.jumpToLatest() }, "Jump to latest ↓");
    this.connectionEl = h("span", { class: "connection", "data-testid": "connection" });
    this.statusLine = h("div", { class: "console-status", "aria-live": "off", "data-testid": "console-status" });
    this.consoleHost = h("div", { class: "console-host", "data-testid": "console" });
    this.view = h(
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
        h("div", { class: "run-head-actions" }, h("div", { class: "log-actions" }, this.rawLink, this.textLink, this.downloadBtn), this.actions.el),
      ),
      this.metaHost,
      this.failureHost,
      h("div", { class: "run-panels" }, this.phasesHost, this.summaryHost),
      h(
        "div",
        { class: "log-pane" },
        h(
          "div",
          { class: "console-toolbar" },
          this.search.el,
          h("div", { class: "filters" }, this.streamSelect, this.levelSelect, this.errorNav),
          h("div", { class: "filters" }, this.followBtn, ...this.toggles.buttons, this.connectionEl),
        ),
        h("div", { class: "console-area" }, this.consoleHost),
        h("div", { class: "console-foot" }, this.statusLine, this.jumpBtn),
      ),
    );
    replaceChildren(this.root, this.view);
    this.toggles.view = this.view;
    this.console = new VirtualConsole(this.consoleHost, {
      onFollowChange: () => this.updateFollow(),
      onRender: (info) => this.renderStatusLine(info),
    });
    this.toggles.apply();
    this.console.setEmptyText(isActive(run.status) ? "Waiting for output…" : "No events.");
    // `?hl=TEXT` (a hit of the workspace search): mark that text in the rows
    const hl = new URLSearchParams(location.search).get("hl");
    if (hl) this.console.setHighlight(new RegExp(hl.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "g"));
    document.title = `${run.configuration_id} · ${run.id} · runevents`;
  }

  // ---- view settings ----------------------------------------------------------

  /** ?q=, ?stream=, ?level= follow the view, so a filtered view can be shared. */
  updateUrl() {
    const query = new URLSearchParams();
    if (this.search?.q) query.set("q", this.search.q);
    if (this.streamSelect?.value) query.set("stream", this.streamSelect.value);
    if (this.levelSelect?.value) query.set("level", this.levelSelect.value);
    const text = query.toString();
    const url = `${location.pathname}${text ? `?${text}` : ""}${location.hash}`;
    if (this.router) this.router.replaceQuietly(url);
    else history.replaceState(null, "", url);
  }

  // ---- rendering ----------------------------------------------------------

  scheduleRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.renderPanels();
      this.console?.refresh();
    });
  }

  renderPanels() {
    if (!this.metaHost) return;
    const s = this.state;
    const now = Date.now();
    replaceChildren(this.badgeHost, statusBadge(s.status));
    this.actions.render(s);
    this.downloadBtn.disabled = this.expired;
    const meta = renderMeta(s, now);
    meta.append(...renderOptions(this.workspaceId, this.actions.queued));
    replaceChildren(this.metaHost, meta);
    replaceChildren(this.failureHost, renderFailure(s));
    replaceChildren(this.phasesHost, h("h2", null, "Phases"), renderPhases(s, now, { onPhase: (i) => this.gotoPhase(i) }));
    if (this.summaryRendered !== s.summary || !s.completed) {
      this.summaryRendered = s.summary;
      replaceChildren(this.summaryHost, renderSummary(s));
    }
    const errors = this.index.errors.length;
    this.errorNav.hidden = errors === 0 || this.expired;
    this.errorCount.textContent = errors ? `${this.errorIndex >= 0 ? `error ${this.errorIndex + 1} of ` : ""}${formatNumber(errors)}${this.errorIndex >= 0 ? "" : ` error${errors === 1 ? "" : "s"}`}` : "";
    this.root.dataset.status = s.status;
  }

  renderStatusLine({ first, last, count }) {
    const source = this.console.source;
    const filtered = source instanceof FilteredSource;
    const rows = filtered ? source.rows.length : count;
    const parts = [];
    parts.push(filtered ? `${formatNumber(rows)}${source.hasMore ? "+" : ""} matching lines` : `${formatNumber(rows)} lines`);
    if (!filtered && this.fullSource && this.fullSource.count !== count) parts.push(`${formatNumber(this.fullSource.count - count)} folded`);
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

  // ---- data: the run.queued event, the outline, the row ------------------------

  async loadQueued() {
    try {
      const page = await eventsPage(this.path, 0, 1);
      const first = page.events?.[0];
      if (first?.type === "run.queued" && !this.destroyed) {
        this.actions.queued = first.payload ?? {};
        this.renderPanels();
      }
    } catch {
      /* the options line stays away; the log itself reports errors */
    }
  }

  /** A finished run's sections and errors, from the outline route (paged). */
  async loadOutline() {
    let after = 0;
    try {
      for (;;) {
        const page = await outlinePage(this.path, after);
        if (this.destroyed) return;
        for (const event of page.events) this.index.add(event);
        after = page.next_after_sequence;
        if (!page.has_more) break;
      }
    } catch (error) {
      this.onLogError(error);
    }
    this.outlineLoaded = true;
    this.afterSections();
  }

  /** Sections are known: fold as GitHub does on a failed run, and open at its failure. */
  afterSections() {
    if (this.destroyed || !this.console) return;
    if (this.openAtFailure) {
      this.openAtFailure = false;
      const failedPhase = this.index.phases().find((p) => p.status === "failed");
      // the other phases fold away; the failed one stays open
      for (const p of this.index.phases()) if (p !== failedPhase && p.status === "succeeded") this.folded.setCollapsed(p.headerSeq, true);
      const target = this.index.errors[0] ?? failedPhase?.headerSeq;
      if (target) {
        this.errorIndex = this.index.errors.indexOf(target);
        this.jumpToSeq(target, { third: true });
      }
    }
    this.scheduleRender();
  }

  async pollRow() {
    if (this.destroyed || this.state.completed || !this.path) return;
    try {
      const { run, summary } = await getRun(this.path);
      if (this.destroyed) return;
      this.state = withRun(this.state, run, isActive(run.status) ? null : summary);
      this.scheduleRender();
    } catch {
      /* the stream keeps the page current; the next poll tries again */
    }
  }

  // ---- live stream ------------------------------------------------------------

  openStream() {
    if (this.destroyed) return;
    this.stream ??= new LiveStream({
      url: (after) => eventStreamUrl(this.path, after),
      lastSequence: () => this.state.lastSequence,
      onEvent: (event) => this.onEvent(event),
      onConnection: (text, kind) => this.setConnection(text, kind),
      onClosed: () => this.recoverStream(),
      ended: () => this.state.completed,
    });
    this.stream.open();
  }

  /** The stream closed for good (204, an HTTP error): check the run, then resume. */
  async recoverStream() {
    if (this.destroyed || this.stream?.isOpen) return;
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
    this.stream?.close();
  }

  onEvent(event) {
    const before = this.state;
    this.state = reduceRun(this.state, event);
    if (this.state.lastSequence === before.lastSequence) return; // already had it
    this.index.add(event);
    this.fullSource.put(event);
    if (this.filteredSource) this.filteredSource.put(event);
    this.search.live(event);
    if (this.pendingSeq) this.tryPendingJump();
    this.scheduleRender();
    if (event.type === "run.completed") {
      this.closeStream();
      this.streamEnded();
      this.afterSections();
    }
  }

  /** After run.completed: fetch the final row and summary (the row may lag the event a moment). */
  async streamEnded() {
    this.setConnection("ended", "done");
    this.console?.setEmptyText("No events.");
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

  /** Scroll to a sequence and mark its line (permalinks, search, errors, phases). */
  async jumpToSeq(seq, { filtered = false, third = false } = {}) {
    if (!this.console || this.expired) return;
    let source = this.console.source;
    // a search match is in the filtered rows: load them up to it rather than drop the filter
    while (filtered && source instanceof FilteredSource && source.indexOfSeq(seq) < 0 && source.hasMore && !source.stopped) {
      const before = source.scannedTo;
      await source.loadMore();
      if (this.console?.source !== source) return;
      if (source.scannedTo === before) break; // failed: the toast said why
    }
    if (source instanceof FilteredSource && source.indexOfSeq(seq) < 0) {
      this.streamSelect.value = "";
      this.levelSelect.value = "";
      this.applyFilter();
      source = this.console.source;
    }
    if (source === this.folded) this.folded.reveal(seq);
    const index = source.indexOfSeq(seq);
    if (index < 0) {
      this.pendingSeq = seq; // not written yet: jump when it arrives
      return;
    }
    this.console.highlightSeq = seq;
    this.console.redraw();
    this.console.scrollToIndex(index, { third });
    this.updateFollow();
  }

  gotoError(i) {
    const errors = this.index.errors;
    if (!errors.length) return;
    this.errorIndex = ((i % errors.length) + errors.length) % errors.length;
    this.jumpToSeq(errors[this.errorIndex], { third: true });
    this.renderPanels();
  }

  gotoPhase(i) {
    const section = this.index.phases()[i];
    if (!section) return;
    if (this.console.source !== this.folded) {
      this.streamSelect.value = "";
      this.levelSelect.value = "";
      this.applyFilter();
    }
    this.folded.setCollapsed(section.headerSeq, false);
    this.jumpToSeq(section.headerSeq);
  }

  applyFilter({ fromUrl = false } = {}) {
    const stream = this.streamSelect.value || null;
    const level = this.levelSelect.value || null;
    this.filteredSource?.stop();
    this.filteredSource = null;
    if (!fromUrl) {
      this.updateUrl();
      if (this.search.q) this.search.start(this.search.q); // the matches follow the filters
    }
    if (!stream && !level) {
      this.console.setSource(this.folded, { keepPosition: false });
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

  // ---- actions and states ---------------------------------------------------

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
    for (const el of [this.search.input, this.streamSelect, this.levelSelect, this.followBtn, this.downloadBtn]) el.disabled = true;
    this.rawLink.hidden = true;
    this.textLink.hidden = true;
    this.console?.destroy();
    this.console = null;
    this.jumpBtn.hidden = true;
    this.statusLine.textContent = "";
    replaceChildren(this.consoleHost, renderExpired(this.state));
    this.renderPanels();
  }

  /** What the tests read (window.__runevents.view). */
  debug() {
    return {
      status: this.state.status,
      lastSequence: this.state.lastSequence,
      duplicates: this.state.duplicates,
      sseOpens: this.stream?.opens ?? 0,
      streamOpen: Boolean(this.stream?.isOpen),
      following: this.console?.following ?? false,
      count: this.console?.count ?? 0,
      total: this.fullSource?.count ?? 0,
      visible: this.console?.visibleSequences() ?? [],
      highlighted: this.console?.highlightSeq ?? null,
      loadedEvents: this.fullSource?.loadedEvents() ?? 0,
      pageRequests: this.fullSource?.requests ?? 0,
      expired: this.expired,
      sections: this.index.sections.map((s) => ({ kind: s.kind, name: s.name, header: s.headerSeq, end: s.endSeq, collapsed: this.folded?.isCollapsed(s) ?? false })),
      errors: [...this.index.errors],
      outlineLoaded: Boolean(this.outlineLoaded),
    };
  }

  destroy() {
    this.destroyed = true;
    this.stream?.stop();
    clearInterval(this.ticker);
    clearInterval(this.rowPoller);
    clearTimeout(this.outlineTimer);
    cancelAnimationFrame(this.frame);
    window.removeEventListener("hashchange", this.onHashChange);
    document.removeEventListener("keydown", this.onKeyDown);
    this.fullSource?.stop();
    this.filteredSource?.stop();
    this.search?.destroy();
    this.console?.destroy();
  }
}
