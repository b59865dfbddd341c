// The virtual console: renders only the rows in view, at a fixed row height,
// from a log source (log-source.js), however many rows the log has.
//
// Layout: a scrolling viewport holds a sticky "screen" (exactly the viewport's
// height; the rows are drawn into it) followed by a spacer that gives the
// scrollbar its length. Browsers cap an element's height (~17-33 million px),
// so past MAX_SCROLL_PX the scrollbar is scaled: `pos` is the position in
// content pixels and scrollTop = pos / ratio. Wheel and keys move `pos` directly
// (smooth at any size); dragging the scrollbar maps back through the ratio.
//
// Follow-the-tail: while `following`, new rows keep the view at the bottom.
// Only the user stops it (issue 19): a wheel or key scroll upwards, dragging the
// scrollbar, or a click in the log. A scroll event that no input caused (the
// viewport shrank when a panel above grew, the browser clamped scrollTop) never
// does: the view is put back at the bottom. "Jump to latest" (or scrolling back
// to the bottom, or End) resumes following.
//
// Wrap: rows grow to fit their text; scrolling still moves by rows, and at the
// bottom the rows are anchored to the bottom edge so the last line is in view.

import { ansiToHtml, stripAnsi } from "./ansi.js";
import { escapeHtml } from "./dom.js";
import { formatClock, formatDateTime, formatDuration, formatNumber, timeZoneName } from "./format.js";

export const ROW_HEIGHT = 20; // px, must match .ln in styles.css
const MAX_SCROLL_PX = 8_000_000; // well under every browser's element height cap
const INTENT_MS = 400; // a scroll event this soon after a wheel or key input is the user's

/** One line of text for a non-console event (shown dimmed in the console). */
export function describeEvent(event) {
  const p = event.payload ?? {};
  const dur = Number.isFinite(p.duration_ms) ? ` in ${formatDuration(p.duration_ms)}` : "";
  switch (event.type) {
    case "console.line":
      return stripAnsi(p.message);
    case "run.queued":
      return `run queued${p.mode ? ` (${p.mode})` : ""}`;
    case "build.created":
      return `build created${p.reason ? `: ${p.reason}` : ""}`;
    case "build.started":
      return "build started";
    case "build.phase.started":
      return `build phase ${p.phase ?? "?"} started${p.message ? ` — ${p.message}` : ""}`;
    case "build.phase.completed":
      return `build phase ${p.phase ?? "?"} ${p.status ?? "completed"}${dur}`;
    case "build.completed":
      return `build ${p.status ?? "completed"}${p.exit_code != null ? ` (exit ${p.exit_code})` : ""}${dur}`;
    case "run.started":
      return "run started";
    case "run.phase.started":
      return `phase ${p.phase ?? "?"} started${p.message ? ` — ${p.message}` : ""}`;
    case "run.phase.completed":
      return `phase ${p.phase ?? "?"} ${p.status ?? "completed"}${dur}`;
    case "run.table.summary": {
      const where = [p.source_file, p.source_sheet].filter(Boolean).join(" / ");
      const rows = p.row_count != null ? `${formatNumber(p.row_count)} rows` : "rows unknown";
      const cols = p.column_count != null ? ` × ${p.column_count} columns` : "";
      return `table ${p.table_id ?? "?"}: ${rows}${cols}${where ? ` (${where})` : ""}`;
    }
    case "run.validation.summary":
      return `validation: ${formatNumber(p.issues_total ?? 0)} issues${p.max_severity ? `, max ${p.max_severity}` : ""}`;
    case "run.validation.issue": {
      const at = [p.field ? `field ${p.field}` : null, p.row != null ? `row ${p.row}` : null].filter(Boolean).join(", ");
      return `[${p.severity ?? "?"}] ${p.code ?? "issue"}${at ? ` (${at})` : ""}${p.message ? `: ${p.message}` : ""}`;
    }
    case "run.error":
      return `error in ${p.stage ?? "?"}${p.phase ? `/${p.phase}` : ""}: ${p.code ?? ""}${p.message ? ` — ${p.message}` : ""}`;
    case "run.completed": {
      const ex = p.execution ?? {};
      const parts = [ex.exit_code != null ? `exit ${ex.exit_code}` : null, Number.isFinite(ex.duration_ms) ? formatDuration(ex.duration_ms) : null].filter(Boolean);
      const failure = p.failure?.message ? ` — ${p.failure.message}` : "";
      return `run ${p.status ?? "completed"}${parts.length ? ` (${parts.join(", ")})` : ""}${failure}`;
    }
    default: {
      const text = JSON.stringify(p);
      return `${event.type} ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`;
    }
  }
}

/** CSS classes of a row: kind, stream, level. */
function rowClasses(event) {
  const p = event.payload ?? {};
  if (event.type === "console.line") {
    return `ln k-line s-${p.stream === "stderr" ? "stderr" : "stdout"} l-${p.level ?? "info"}${p.scope === "build" ? " sc-build" : ""}`;
  }
  let level = "info";
  if (event.type === "run.error") level = "error";
  else if (event.type === "run.validation.issue") level = ["error", "critical"].includes(p.severity) ? "error" : "warning";
  else if (event.type === "run.completed") level = p.status === "succeeded" ? "ok" : p.status === "failed" ? "error" : "warning";
  return `ln k-meta l-${level}`;
}

/** The inner HTML of one row. */
export function rowHtml(event, highlight = null, header = null, now = Date.now()) {
  const seq = event.sequence;
  const p = event.payload ?? {};
  const time = `<span class="ln-time" title="${escapeHtml(`${formatDateTime(event.created_at)} ${timeZoneName()}`)}">${escapeHtml(formatClock(event.created_at))}</span>`;
  if (header) return `${`<a class="ln-no" href="#seq=${seq}" tabindex="-1" aria-label="Line ${seq}">${seq}</a>`}${time}${sectionHtml(event, header, now)}`;
  const no = `<a class="ln-no" href="#seq=${seq}" tabindex="-1" aria-label="Line ${seq}">${seq}</a>`;
  let tag = "";
  let msg;
  if (event.type === "console.line") {
    if (p.stream === "stderr") tag = '<span class="ln-tag tag-err" title="stderr">err</span>';
    else if (p.scope === "build") tag = '<span class="ln-tag tag-build" title="build output">bld</span>';
    else tag = '<span class="ln-tag" aria-hidden="true"></span>';
    msg = ansiToHtml(p.message, highlight);
  } else {
    tag = '<span class="ln-tag tag-meta" aria-hidden="true">›</span>';
    // search matches console lines only, so only they are marked (the count covers what is marked)
    msg = escapeHtml(describeEvent(event));
  }
  return `${no}${time}${tag}<span class="ln-msg">${msg}</span>`;
}

const PHASE_ICON = { succeeded: "✓", failed: "✕", cancelled: "⊘", skipped: "–" };
// A phase's status is the producer's string (contract 2.1 stores telemetry as sent): it
// only picks a class from this list, never goes into the HTML itself.
const STATUS_CLASS = new Set(["running", "done", "group", ...Object.keys(PHASE_ICON)]);

/** A section's header row: fold toggle, status, name, duration. */
function sectionHtml(event, { section, collapsed }, now) {
  const open = section.endSeq === null;
  const given = section.kind === "phase" ? (open ? "running" : (section.status ?? "done")) : "group";
  const status = STATUS_CLASS.has(given) ? given : "other";
  const icon = section.kind === "phase" ? (open ? "●" : (PHASE_ICON[section.status] ?? "•")) : "";
  const duration = Number.isFinite(section.durationMs)
    ? formatDuration(section.durationMs)
    : open && section.startedMs !== null
      ? `${formatDuration(now - section.startedMs)}…`
      : "";
  const label = section.kind === "phase" ? `${section.scope === "build" ? "build: " : ""}${section.name}` : section.name;
  return (
    `<span class="ln-section-head" style="--depth:${section.depth}">` +
    `<button type="button" class="fold-toggle" data-fold="${event.sequence}" aria-expanded="${!collapsed}" aria-label="${collapsed ? "Unfold" : "Fold"} ${escapeHtml(label)}">${collapsed ? "▸" : "▾"}</button>` +
    `<span class="sec-icon st-${status}" aria-hidden="true">${icon}</span>` +
    `<span class="sec-name">${escapeHtml(label)}</span>` +
    (duration ? `<span class="sec-dur">${duration}</span>` : "") +
    `</span>`
  );
}

export class VirtualConsole {
  /**
   * `onFollowChange(following)` when following starts or stops;
   * `onRender(info)` after each render ({first, last, count}).
   */
  constructor(root, { onFollowChange = () => {}, onRender = () => {} } = {}) {
    this.root = root;
    this.onFollowChange = onFollowChange;
    this.onRender = onRender;
    this.source = null;
    this.pos = 0;
    this.following = true;
    this.highlightSeq = null;
    this.cursorSeq = null;
    this.highlight = null;
    this.emptyText = "No lines yet.";
    this.pool = [];
    this.frame = 0;
    this.expectedScrollTop = -1;
    this.intentUntil = 0; // wheel/keys: scroll events until then are the user's
    this.dragging = false; // a pointer is down on the scrollbar
    this.wrap = false;

    this.viewport = document.createElement("div");
    this.viewport.className = "console-viewport";
    this.viewport.tabIndex = 0;
    this.viewport.setAttribute("role", "region");
    this.viewport.setAttribute("aria-label", "Console output. Arrow keys, Page Up/Down, Home and End scroll.");
    this.screen = document.createElement("div");
    this.screen.className = "console-screen";
    this.rowsEl = document.createElement("div");
    this.rowsEl.className = "console-rows";
    this.rowsEl.setAttribute("role", "list");
    this.empty = document.createElement("div");
    this.empty.className = "console-empty";
    this.spacer = document.createElement("div");
    this.spacer.className = "console-spacer";
    this.screen.append(this.rowsEl, this.empty);
    this.viewport.append(this.screen, this.spacer);
    root.append(this.viewport);

    this.onWheel = this.onWheel.bind(this);
    this.onScroll = this.onScroll.bind(this);
    this.onKey = this.onKey.bind(this);
    this.onPointerDown = this.onPointerDown.bind(this);
    this.onPointerUp = () => {
      this.dragging = false;
    };
    this.onClick = this.onClick.bind(this);
    this.viewport.addEventListener("wheel", this.onWheel, { passive: false });
    this.viewport.addEventListener("scroll", this.onScroll, { passive: true });
    this.viewport.addEventListener("keydown", this.onKey);
    this.viewport.addEventListener("pointerdown", this.onPointerDown);
    this.viewport.addEventListener("click", this.onClick);
    window.addEventListener("pointerup", this.onPointerUp);
    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(this.viewport);
    this.layout();
  }

  setSource(source, { keepPosition = false } = {}) {
    this.source = source;
    if (!keepPosition) this.pos = 0;
    this.pool.forEach((el) => {
      el._key = null;
    });
    this.refresh();
  }

  setEmptyText(text) {
    this.emptyText = text;
    this.refresh();
  }

  /** Wrap long lines (rows grow) or keep one line per row (scroll sideways). */
  setWrap(on) {
    this.wrap = Boolean(on);
    this.viewport.classList.toggle("wrap", this.wrap);
    this.rowsEl.style.transform = "";
    this.refresh();
  }

  /** Show or hide the time column. */
  setTimestamps(on) {
    this.viewport.classList.toggle("no-time", !on);
  }

  /** Redraw every row (section headers changed, a duration ticked). */
  redraw() {
    this.pool.forEach((el) => {
      el._key = null;
    });
    this.refresh();
  }

  /** A RegExp whose matches are marked in the rows (search), or null. */
  setHighlight(regex) {
    this.highlight = regex;
    this.pool.forEach((el) => {
      el._key = null;
    });
    this.refresh();
  }

  get count() {
    return this.source?.count ?? 0;
  }

  get viewHeight() {
    return this.viewport.clientHeight || 1;
  }

  get contentHeight() {
    return this.count * ROW_HEIGHT;
  }

  get maxPos() {
    return Math.max(0, this.contentHeight - this.viewHeight);
  }

  get scrollSpace() {
    return Math.min(this.contentHeight, MAX_SCROLL_PX);
  }

  /** Content pixels per scrollbar pixel (1 unless the log is huge). */
  get ratio() {
    const maxScroll = Math.max(0, this.scrollSpace - this.viewHeight);
    return maxScroll > 0 ? this.maxPos / maxScroll : 1;
  }

  layout() {
    this.screen.style.height = `${this.viewHeight}px`;
    this.refresh();
  }

  refresh() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  setFollowing(on) {
    if (this.following === on) return;
    this.following = on;
    this.onFollowChange(on);
  }

  jumpToLatest() {
    this.setFollowing(true);
    this.pos = this.maxPos;
    this.render();
  }

  /** Whether row `index` is entirely on screen. */
  isIndexVisible(index) {
    const top = index * ROW_HEIGHT;
    return top >= this.pos && top + ROW_HEIGHT <= this.pos + this.viewHeight;
  }

  /** Scroll so that row `index` is in view (centred unless it already is), and stop following. */
  scrollToIndex(index, { center = true, third = false } = {}) {
    this.setFollowing(false);
    if (third) {
      // an error: a few lines of context above it, what follows (the traceback) below
      this.pos = Math.max(0, Math.min(this.maxPos, index * ROW_HEIGHT - Math.floor(this.viewHeight / 4)));
      this.render();
      return;
    }
    if (this.isIndexVisible(index)) {
      this.render();
      return;
    }
    const target = index * ROW_HEIGHT - (center ? Math.floor(this.viewHeight / 2 - ROW_HEIGHT) : 0);
    this.pos = Math.max(0, Math.min(this.maxPos, target));
    this.render();
  }

  /** Move by `delta` content pixels on the user's behalf. */
  scrollBy(delta) {
    this.pos = Math.max(0, Math.min(this.maxPos, this.pos + delta));
    if (delta < 0 && this.pos < this.maxPos) this.setFollowing(false);
    else if (this.pos >= this.maxPos) this.setFollowing(true);
    this.render();
  }

  onPointerDown(event) {
    // on the scrollbar (right of the content box): a drag, whatever it scrolls is the user's
    if (event.target === this.viewport && event.offsetX >= this.viewport.clientWidth) {
      this.dragging = true;
      return;
    }
    // a click in the log (selecting text, reading a line) stops following, as on GitHub;
    // the fold toggles and line links are actions of their own
    if (event.target.closest?.(".fold-toggle, a.ln-no")) return;
    if (this.rowsEl.contains(event.target) && this.count > 0) this.setFollowing(false);
  }

  onClick(event) {
    const toggle = event.target.closest?.(".fold-toggle");
    if (!toggle || !this.source?.toggle) return;
    event.preventDefault();
    const seq = Number(toggle.dataset.fold);
    this.source.toggle(seq);
    this.redraw();
    this.onFold?.(seq);
  }

  onWheel(event) {
    if (Math.abs(event.deltaX) > Math.abs(event.deltaY)) return; // horizontal: let the screen scroll
    event.preventDefault();
    this.intentUntil = performance.now() + INTENT_MS;
    const unit = event.deltaMode === 1 ? ROW_HEIGHT : event.deltaMode === 2 ? this.viewHeight : 1;
    this.scrollBy(event.deltaY * unit);
  }

  onScroll() {
    const top = this.viewport.scrollTop;
    if (Math.abs(top - this.expectedScrollTop) < 1) return; // our own write
    const user = this.dragging || performance.now() < this.intentUntil;
    if (this.following && !user) {
      // the layout moved (a resize, new content): not a reason to stop following
      this.render();
      return;
    }
    const previous = this.pos;
    this.pos = Math.max(0, Math.min(this.maxPos, top * this.ratio));
    const atBottom = top + this.viewHeight >= this.viewport.scrollHeight - 2;
    if (atBottom) this.pos = this.maxPos;
    if (this.pos < previous && !atBottom) this.setFollowing(false);
    else if (atBottom) this.setFollowing(true);
    this.render();
  }

  onKey(event) {
    this.intentUntil = performance.now() + INTENT_MS;
    const page = Math.max(ROW_HEIGHT, this.viewHeight - ROW_HEIGHT);
    const keys = {
      ArrowDown: ROW_HEIGHT,
      ArrowUp: -ROW_HEIGHT,
      PageDown: page,
      PageUp: -page,
      " ": event.shiftKey ? -page : page,
    };
    if (event.key in keys) {
      event.preventDefault();
      this.scrollBy(keys[event.key]);
    } else if (event.key === "Home") {
      event.preventDefault();
      this.setFollowing(false);
      this.pos = 0;
      this.render();
    } else if (event.key === "End") {
      event.preventDefault();
      this.jumpToLatest();
    }
  }

  render() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
    }
    const count = this.count;
    const viewH = this.viewHeight;
    if (this.following) this.pos = this.maxPos;
    this.pos = Math.max(0, Math.min(this.maxPos, this.pos));

    // scrollbar: spacer gives the scroll height; the screen itself is viewH tall
    const spacerH = Math.max(0, this.scrollSpace - viewH);
    if (this.spacer._h !== spacerH) {
      this.spacer.style.height = `${spacerH}px`;
      this.spacer._h = spacerH;
    }
    const screenH = `${viewH}px`;
    if (this.screen.style.height !== screenH) this.screen.style.height = screenH; // never a stale height
    const scrollTop = Math.round(this.pos / this.ratio);
    if (Math.abs(this.viewport.scrollTop - scrollTop) >= 1) {
      this.expectedScrollTop = scrollTop;
      this.viewport.scrollTop = scrollTop;
      this.expectedScrollTop = this.viewport.scrollTop;
    } else {
      this.expectedScrollTop = this.viewport.scrollTop;
    }

    const first = Math.floor(this.pos / ROW_HEIGHT);
    const offset = this.pos - first * ROW_HEIGHT;
    const visible = Math.ceil((viewH + offset) / ROW_HEIGHT);
    const last = Math.min(count - 1, first + visible - 1);
    const atBottom = this.pos >= this.maxPos && count > 0;
    if (!this.wrap) this.rowsEl.style.transform = `translateY(${-offset}px)`;
    const digits = String(Math.max(count, 1)).length;
    this.rowsEl.style.setProperty("--gutter", `${digits + 1}ch`);

    const needed = Math.max(0, last - first + 1);
    while (this.pool.length < needed) {
      const el = document.createElement("div");
      el.setAttribute("role", "listitem");
      this.rowsEl.append(el);
      this.pool.push(el);
    }
    for (let k = 0; k < this.pool.length; k += 1) {
      const el = this.pool[k];
      if (k >= needed) {
        if (el._key !== "hidden") {
          el.hidden = true;
          el._key = "hidden";
          el.className = "";
          el.removeAttribute("data-seq");
          el.textContent = "";
        }
        continue;
      }
      const index = first + k;
      const event = this.source.rowAt(index);
      const seq = event ? event.sequence : (this.source.seqAt(index) ?? null);
      const marked = seq !== null && seq === this.highlightSeq;
      const header = event && this.source.headerAt ? this.source.headerAt(seq) : null;
      const key = event ? `${seq}|${marked}${header ? `|${header.collapsed}|${header.section.endSeq}|${header.section.status}` : ""}` : `loading|${seq}`;
      if (el._key === key && !(header && header.section.endSeq === null)) continue;
      el._key = key;
      el.hidden = false;
      if (event) {
        el.className = rowClasses(event) + (marked ? " ln-hl" : "") + (header ? ` ln-section${header.collapsed ? " folded" : ""}` : "");
        el.dataset.seq = seq;
        el.innerHTML = rowHtml(event, this.highlight, header);
      } else {
        el.className = "ln ln-loading";
        el.dataset.seq = seq ?? "";
        el.innerHTML = seq !== null
          ? `<span class="ln-no">${seq}</span><span class="ln-msg">loading…</span>`
          : '<span class="ln-no"></span><span class="ln-msg">loading more…</span>';
      }
    }
    if (this.wrap) {
      // rows are as tall as their text: at the bottom, anchor the last row to the bottom edge
      const height = this.rowsEl.offsetHeight;
      const shift = atBottom && height > viewH ? viewH - height : 0;
      this.rowsEl.style.transform = `translateY(${shift}px)`;
    }
    this.empty.hidden = count > 0;
    if (count === 0) this.empty.textContent = this.emptyText;
    if (this.source && count > 0) this.source.ensure(first, last);
    this.onRender({ first, last, count });
  }

  /** Sequences of the rows currently drawn (tests and diagnostics). */
  visibleSequences() {
    return this.pool.filter((el) => !el.hidden && el.dataset.seq).map((el) => Number(el.dataset.seq));
  }

  destroy() {
    cancelAnimationFrame(this.frame);
    this.resizeObserver.disconnect();
    this.viewport.removeEventListener("wheel", this.onWheel);
    this.viewport.removeEventListener("scroll", this.onScroll);
    this.viewport.removeEventListener("keydown", this.onKey);
    this.viewport.removeEventListener("pointerdown", this.onPointerDown);
    this.viewport.removeEventListener("click", this.onClick);
    window.removeEventListener("pointerup", this.onPointerUp);
    this.root.replaceChildren();
  }
}
