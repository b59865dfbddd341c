// Where the console's rows come from. Two sources with one interface:
//
//   count              number of rows the scrollbar represents
//   rowAt(i)           the event of row i, or null while it loads
//   indexOfSeq(seq)    the row showing a sequence, or -1
//   ensure(first, last) ask for rows first..last (loads what is missing)
//   put(event)         a live event from the SSE stream
//
// SequenceSource: row i is sequence i + 1. Events are loaded in fixed windows
// of sequences from the JSON pages API (`after_sequence`, `limit`), kept in an
// LRU of windows, so a 1,000,000-line log never sits in the page whole.
// FilteredSource: the rows matching a stream/level filter, loaded forward in
// pages (infinite scroll), then followed live.

export const WINDOW_SIZE = 500; // events per window (one JSON page request)
export const MAX_WINDOWS = 64; // windows kept in memory (~32,000 events)
const RETRY_MS = 1500; // wait before asking again for a window that came back short or failed
const MAX_INFLIGHT = 3; // concurrent page requests

export class SequenceSource {
  /**
   * fetchPage(afterSequence, limit, signal) -> {events, next_after_sequence, has_more}
   * onUpdate() is called when rows arrive; onError(error) when a page fails.
   */
  constructor({ fetchPage, onUpdate = () => {}, onError = () => {}, windowSize = WINDOW_SIZE, maxWindows = MAX_WINDOWS }) {
    this.fetchPage = fetchPage;
    this.onUpdate = onUpdate;
    this.onError = onError;
    this.windowSize = windowSize;
    this.maxWindows = maxWindows;
    this.count = 0;
    this.windows = new Map(); // index -> {events: [], fetchedUpTo, fetchedAt, controller}
    this.wanted = [];
    this.inflight = 0;
    this.stopped = false;
    this.requests = 0; // page requests made (tests and diagnostics)
  }

  /** Grow the number of rows (a finished run's event_count, or the live tail). */
  setCount(n) {
    if (n > this.count) this.count = n;
  }

  seqAt(index) {
    return index + 1;
  }

  indexOfSeq(seq) {
    return seq >= 1 && seq <= this.count ? seq - 1 : -1;
  }

  rowAt(index) {
    const seq = index + 1;
    const w = this.windows.get(Math.floor(index / this.windowSize));
    return w ? (w.events[(seq - 1) % this.windowSize] ?? null) : null;
  }

  /** Store one event (live or loaded); ignores anything it already has. */
  put(event) {
    const seq = event.sequence;
    if (!Number.isInteger(seq) || seq < 1) return false;
    const index = Math.floor((seq - 1) / this.windowSize);
    let w = this.windows.get(index);
    if (!w) {
      w = this.newWindow(index);
    }
    const slot = (seq - 1) % this.windowSize;
    if (w.events[slot]) return false;
    w.events[slot] = event;
    w.filled += 1;
    if (seq > this.count) this.count = seq;
    return true;
  }

  newWindow(index) {
    const w = { events: new Array(this.windowSize), filled: 0, fetchedUpTo: 0, fetchedAt: 0, controller: null };
    this.windows.set(index, w);
    this.evict();
    return w;
  }

  /** Make sure rows first..last (and a window either side) are loaded or loading. */
  ensure(first, last) {
    this.ensureRanges([[first, last]]);
  }

  /** Same for several runs of rows (the rows around a folded section). */
  ensureRanges(ranges) {
    if (this.stopped || this.count === 0 || !ranges.length) return;
    const first = ranges[0][0];
    const lastRow = Math.min(ranges.at(-1)[1], this.count - 1);
    const firstW = Math.floor(Math.max(0, first) / this.windowSize);
    const lastW = Math.floor(Math.max(0, lastRow) / this.windowSize);
    const maxW = Math.floor((this.count - 1) / this.windowSize);
    const wanted = [];
    for (const [a, b] of ranges) {
      const wa = Math.floor(Math.max(0, a) / this.windowSize);
      const wb = Math.floor(Math.max(0, Math.min(b, this.count - 1)) / this.windowSize);
      for (let i = wa; i <= wb; i += 1) if (!wanted.includes(i)) wanted.push(i);
    }
    this.visibleWindows = wanted.length; // these first; the neighbours only once they are in
    if (lastW < maxW) wanted.push(lastW + 1);
    if (firstW > 0) wanted.push(firstW - 1);
    this.wanted = wanted;
    // LRU: the windows in view are the most recently used.
    for (const i of [...wanted].reverse()) {
      const w = this.windows.get(i);
      if (w) {
        this.windows.delete(i);
        this.windows.set(i, w);
      }
    }
    // Requests for windows scrolled far away are no longer worth their bytes.
    for (const [i, w] of this.windows) {
      if (w.controller && !wanted.includes(i)) {
        w.controller.abort();
        w.controller = null;
      }
    }
    this.pump();
  }

  missing(index) {
    const w = this.windows.get(index);
    const upper = Math.min((index + 1) * this.windowSize, this.count);
    const expected = upper - index * this.windowSize;
    if (!w) return expected > 0;
    return w.filled < expected;
  }

  pump() {
    for (const [k, index] of this.wanted.entries()) {
      if (this.inflight >= MAX_INFLIGHT) return;
      if (!this.missing(index)) continue;
      if (k >= this.visibleWindows && this.inflight > 0) return; // prefetch when idle
      let w = this.windows.get(index);
      if (w?.controller) continue;
      if (w && w.fetchedAt && performance.now() - w.fetchedAt < RETRY_MS) {
        this.retryLater();
        continue;
      }
      if (!w) w = this.newWindow(index);
      this.load(index, w);
    }
  }

  retryLater() {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.pump();
    }, RETRY_MS);
  }

  async load(index, w) {
    const controller = new AbortController();
    w.controller = controller;
    this.inflight += 1;
    this.requests += 1;
    try {
      const page = await this.fetchPage(index * this.windowSize, this.windowSize, controller.signal);
      let added = 0;
      for (const event of page.events ?? []) {
        const seq = event.sequence;
        if (Math.floor((seq - 1) / this.windowSize) !== index) continue;
        const slot = (seq - 1) % this.windowSize;
        if (!w.events[slot]) {
          w.events[slot] = event;
          w.filled += 1;
          added += 1;
        }
        if (seq > this.count) this.count = seq;
      }
      w.fetchedUpTo = Math.max(w.fetchedUpTo, page.next_after_sequence ?? 0);
      if (added) this.onUpdate();
    } catch (error) {
      if (error.name !== "AbortError") this.onError(error);
    } finally {
      w.fetchedAt = performance.now();
      if (w.controller === controller) w.controller = null;
      this.inflight -= 1;
      if (!this.windows.has(index)) {
        /* evicted meanwhile */
      }
      if (!this.stopped) this.pump();
    }
  }

  evict() {
    if (this.windows.size <= this.maxWindows) return;
    for (const [i, w] of this.windows) {
      if (this.windows.size <= this.maxWindows) break;
      if (this.wanted.includes(i) || w.controller) continue;
      this.windows.delete(i);
    }
  }

  /** Number of events held in memory (never the whole log). */
  loadedEvents() {
    let n = 0;
    for (const w of this.windows.values()) n += w.filled;
    return n;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    for (const w of this.windows.values()) w.controller?.abort();
  }
}

export class FilteredSource {
  /**
   * fetchMore(afterSequence, signal) -> {events, nextAfter, hasMore}: the next
   * matching events after a position. predicate(event) says whether a live
   * event belongs here.
   */
  constructor({ fetchMore, predicate, onUpdate = () => {}, onError = () => {} }) {
    this.fetchMore = fetchMore;
    this.predicate = predicate;
    this.onUpdate = onUpdate;
    this.onError = onError;
    this.rows = [];
    this.scannedTo = 0;
    this.hasMore = true;
    this.pending = []; // live events that arrived while the scan was still behind
    this.controller = null;
    this.stopped = false;
    this.failedAt = 0;
  }

  get count() {
    return this.rows.length + (this.hasMore ? 1 : 0);
  }

  seqAt(index) {
    return this.rows[index]?.sequence ?? null;
  }

  rowAt(index) {
    return this.rows[index] ?? null;
  }

  indexOfSeq(seq) {
    let lo = 0;
    let hi = this.rows.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.rows[mid].sequence;
      if (s === seq) return mid;
      if (s < seq) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  put(event) {
    if (!this.predicate(event)) return false;
    if (this.hasMore) {
      this.pending.push(event);
      return false;
    }
    return this.append(event);
  }

  append(event) {
    const last = this.rows.at(-1)?.sequence ?? 0;
    if (event.sequence <= Math.max(last, this.scannedTo)) return false;
    this.rows.push(event);
    return true;
  }

  ensure(first, last) {
    if (this.stopped || !this.hasMore || this.controller) return;
    if (last < this.rows.length - 200) return;
    if (this.failedAt && performance.now() - this.failedAt < RETRY_MS) return;
    this.loadMore();
  }

  async loadMore() {
    const controller = new AbortController();
    this.controller = controller;
    try {
      const page = await this.fetchMore(this.scannedTo, controller.signal);
      const last = this.rows.at(-1)?.sequence ?? 0;
      for (const event of page.events) if (event.sequence > last) this.rows.push(event);
      this.scannedTo = Math.max(this.scannedTo, page.nextAfter);
      this.hasMore = page.hasMore;
      if (!this.hasMore) {
        for (const event of this.pending) this.append(event);
        this.pending = [];
      }
      this.onUpdate();
    } catch (error) {
      if (error.name !== "AbortError") {
        this.failedAt = performance.now();
        this.onError(error);
      }
    } finally {
      if (this.controller === controller) this.controller = null;
    }
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }
}
