// Foldable sections of the console, as GitHub's step groups and GitLab's
// collapsible sections (issue 19):
//
//   * each phase (`run.phase.started` / `build.phase.started`) opens a section that
//     its `*.phase.completed` closes; without one it runs to the next phase start
//     of the same scope, or to the run's end. Lines belong to the phase started
//     before them.
//   * console lines printed with GitHub's `::group::NAME` ... `::endgroup::` or
//     GitLab's `section_start:TS:NAME[collapsed=true]\r\e[0KHeader` ...
//     `section_end:TS:NAME` open and close sections nested inside.
//
// SectionIndex reads events in sequence order (the live stream, or the outline
// route for a finished run: the same events, so both fold alike) and also keeps
// the error lines ("first error / next error"). FoldedSource wraps the
// console's SequenceSource and hides the rows of folded sections.

import { stripAnsi } from "./ansi.js";

// escape sequences only: GitLab's markers carry a "\r" before their header,
// which stripAnsi would treat as a terminal overwrite
const ESCAPES = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;
// must match runevents/outline.py ERROR_TEXT (the outline route's prefilter)
const ERROR_TEXT = /^\s*(Traceback \(most recent call last\)|##\[error\]|(error|fatal)\b\s*[:!]|[A-Za-z_][\w.]*(Error|Exception):\s)/i;

/** Whether a console line's payload is an error (level error, or reads as one). */
export function isErrorLine(payload) {
  if (payload?.level === "error") return true;
  return typeof payload?.message === "string" && ERROR_TEXT.test(stripAnsi(payload.message));
}

/** A section marker in a console message: {kind, name, key, collapsed} or null. */
export function parseMarker(message) {
  if (typeof message !== "string") return null;
  const text = message.replace(ESCAPES, "").trimStart();
  if (text.startsWith("::group::")) return { kind: "open", style: "github", name: text.slice(9).trim() || "group", collapsed: true };
  if (text.startsWith("::endgroup::")) return { kind: "close", style: "github" };
  let m = /^section_start:\d+:([A-Za-z0-9_.-]+)(\[[^\]]*\])?\r?(.*)$/s.exec(text);
  if (m) {
    const header = m[3].replace(/^\r/, "").trim();
    return { kind: "open", style: "gitlab", key: m[1], name: header || m[1], collapsed: /collapsed=true/.test(m[2] ?? "") };
  }
  m = /^section_end:\d+:([A-Za-z0-9_.-]+)/.exec(text);
  if (m) return { kind: "close", style: "gitlab", key: m[1] };
  return null;
}

function ms(iso) {
  const t = Date.parse(iso ?? "");
  return Number.isNaN(t) ? null : t;
}

export class SectionIndex {
  constructor() {
    this.sections = []; // in header order
    this.byHeader = new Map(); // header sequence -> section
    this.openPhases = new Map(); // scope -> section
    this.openGroups = []; // stack
    this.errors = []; // sequences of error lines and run.error events
    this.lastSeq = 0;
    this.version = 0;
  }

  close(section, endSeq, at) {
    if (section.endSeq !== null) return;
    section.endSeq = endSeq;
    if (section.durationMs === null && section.startedMs !== null && ms(at) !== null) section.durationMs = ms(at) - section.startedMs;
  }

  closeGroupsAbove(depth, endSeq, at) {
    while (this.openGroups.length && this.openGroups.at(-1).depth >= depth) this.close(this.openGroups.pop(), endSeq, at);
  }

  open(fields, event) {
    const section = {
      kind: "group",
      scope: null,
      status: null,
      durationMs: null,
      collapsedDefault: false,
      ...fields,
      headerSeq: event.sequence,
      endSeq: null,
      startedMs: ms(event.created_at),
    };
    this.sections.push(section);
    this.byHeader.set(section.headerSeq, section);
    return section;
  }

  /** Read one event (in sequence order; anything already seen is ignored). */
  add(event) {
    const seq = event?.sequence;
    if (!Number.isInteger(seq) || seq <= this.lastSeq) return false;
    this.lastSeq = seq;
    const p = event.payload ?? {};
    const type = event.type;
    let changed = false;
    if (type === "run.phase.started" || type === "build.phase.started") {
      const scope = type.startsWith("build") ? "build" : "run";
      const previous = this.openPhases.get(scope);
      if (previous) {
        this.closeGroupsAbove(1, seq - 1, event.created_at);
        this.close(previous, seq - 1, event.created_at);
      }
      this.openPhases.set(scope, this.open({ kind: "phase", scope, name: String(p.phase ?? "?"), depth: 0 }, event));
      changed = true;
    } else if (type === "run.phase.completed" || type === "build.phase.completed") {
      const scope = type.startsWith("build") ? "build" : "run";
      const phase = this.openPhases.get(scope);
      if (phase && phase.name === String(p.phase ?? "")) {
        this.closeGroupsAbove(1, seq - 1, event.created_at);
        phase.status = p.status ?? "succeeded";
        if (Number.isFinite(p.duration_ms)) phase.durationMs = p.duration_ms;
        this.close(phase, seq, event.created_at);
        this.openPhases.delete(scope);
        changed = true;
      }
    } else if (type === "run.completed" || type === "build.completed") {
      const scopes = type === "run.completed" ? ["run", "build"] : ["build"];
      if (type === "run.completed") this.closeGroupsAbove(0, seq - 1, event.created_at);
      for (const scope of scopes) {
        const phase = this.openPhases.get(scope);
        if (phase) {
          this.close(phase, seq - 1, event.created_at);
          this.openPhases.delete(scope);
        }
      }
      changed = true;
    } else if (type === "run.error") {
      this.errors.push(seq);
      changed = true;
    } else if (type === "console.line") {
      const marker = parseMarker(p.message);
      if (marker?.kind === "open") {
        const depth = 1 + this.openGroups.length;
        this.openGroups.push(this.open({ kind: marker.style, name: marker.name, key: marker.key ?? null, depth, collapsedDefault: marker.collapsed }, event));
        changed = true;
      } else if (marker?.kind === "close") {
        // GitLab closes by name (and everything opened inside it); GitHub the innermost group
        const i = marker.key ? this.openGroups.findLastIndex((g) => g.key === marker.key) : this.openGroups.length - 1;
        if (i >= 0) {
          this.closeGroupsAbove(this.openGroups[i].depth + 1, seq - 1, event.created_at);
          this.close(this.openGroups.pop(), seq, event.created_at);
          changed = true;
        }
      } else if (isErrorLine(p)) {
        this.errors.push(seq);
        changed = true;
      }
    }
    if (changed) this.version += 1;
    return changed;
  }

  headerAt(seq) {
    return this.byHeader.get(seq) ?? null;
  }

  /** The phase sections, in order (the phases panel links to their headers). */
  phases() {
    return this.sections.filter((s) => s.kind === "phase");
  }

  /** Sections whose body holds `seq`. */
  containing(seq) {
    return this.sections.filter((s) => s.headerSeq < seq && (s.endSeq === null || seq <= s.endSeq));
  }
}

/**
 * The console's rows with folded sections left out. Same interface as the
 * sources of log-source.js; row i is the i-th sequence that is not inside a
 * folded section.
 */
export class FoldedSource {
  constructor(base, index) {
    this.base = base;
    this.index = index;
    this.collapsed = new Map(); // header sequence -> folded (overrides the default)
    this.cacheKey = "";
    this.ranges = [];
  }

  isCollapsed(section) {
    return this.collapsed.has(section.headerSeq) ? this.collapsed.get(section.headerSeq) : section.collapsedDefault;
  }

  setCollapsed(seq, on) {
    this.collapsed.set(seq, on);
    this.cacheKey = "";
  }

  toggle(seq) {
    const section = this.index.headerAt(seq);
    if (section) this.setCollapsed(seq, !this.isCollapsed(section));
  }

  /** Unfold every section that hides `seq`. */
  reveal(seq) {
    for (const s of this.index.containing(seq)) if (this.isCollapsed(s)) this.setCollapsed(s.headerSeq, false);
  }

  /** Hidden sequence ranges [a, b], sorted and merged. */
  hidden() {
    const total = this.base.count;
    const key = `${this.index.version}|${total}|${this.collapsed.size}`;
    if (key === this.cacheKey) return this.ranges;
    const raw = [];
    for (const s of this.index.sections) {
      if (!this.isCollapsed(s)) continue;
      const a = s.headerSeq + 1;
      const b = Math.min(s.endSeq ?? total, total);
      if (b >= a) raw.push([a, b]);
    }
    raw.sort((x, y) => x[0] - y[0]);
    const merged = [];
    for (const r of raw) {
      const last = merged.at(-1);
      if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
      else merged.push([...r]);
    }
    let before = 0;
    for (const r of merged) {
      r.push(before); // hidden rows before this range
      before += r[1] - r[0] + 1;
    }
    this.hiddenTotal = before;
    this.ranges = merged;
    this.cacheKey = key;
    return merged;
  }

  get count() {
    this.hidden();
    return Math.max(0, this.base.count - this.hiddenTotal);
  }

  seqAt(index) {
    let seq = index + 1;
    for (const [a, b] of this.hidden()) {
      if (a > seq) break;
      seq += b - a + 1;
    }
    return seq <= this.base.count ? seq : null;
  }

  indexOfSeq(seq) {
    if (seq < 1 || seq > this.base.count) return -1;
    let hiddenBefore = 0;
    for (const [a, b] of this.hidden()) {
      if (seq < a) break;
      if (seq <= b) return -1;
      hiddenBefore += b - a + 1;
    }
    return seq - 1 - hiddenBefore;
  }

  rowAt(index) {
    const seq = this.seqAt(index);
    return seq === null ? null : this.base.rowAt(seq - 1);
  }

  headerAt(seq) {
    const section = this.index.headerAt(seq);
    return section ? { section, collapsed: this.isCollapsed(section) } : null;
  }

  ensure(first, last) {
    const a = this.seqAt(Math.max(0, first));
    const b = this.seqAt(Math.max(0, Math.min(last, this.count - 1)));
    if (a === null || b === null) return;
    if (b - a <= (last - first) + 2) {
      this.base.ensure(a - 1, b - 1);
      return;
    }
    // a folded section in view: load only the runs of rows actually shown
    const ranges = [];
    for (let i = first; i <= last; i += 1) {
      const seq = this.seqAt(i);
      if (seq === null) break;
      const r = ranges.at(-1);
      if (r && seq === r[1] + 2) r[1] = seq - 1;
      else ranges.push([seq - 1, seq - 1]);
    }
    this.base.ensureRanges(ranges);
  }

  put(event) {
    return this.base.put(event);
  }

  loadedEvents() {
    return this.base.loadedEvents();
  }

  stop() {
    this.base.stop();
  }
}
