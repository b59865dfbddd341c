// Search in the console, as in an editor: "n of m", Enter / Shift+Enter (or the
// arrows) move through the matches in the log itself (issue 19).
//
// The matches are paged from the server (`{run}/search`, 1,000 sequences a
// page, fetched as the user moves past the last one); `m` is counted by the
// server over the whole log (`{run}/search/count`), with no cap. On a live run
// each new console line that matches is added to the count and, once every
// page is in, to the list. The count covers exactly the lines the console marks:
// console lines whose message holds the term, case-insensitively.

import { countMatches, searchEvents } from "./api.js";
import { h } from "./dom.js";
import { formatNumber } from "./format.js";
import { errorMessage } from "./widgets.js";

const PAGE = 1000; // the search route's maximum

export function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export class ConsoleSearch {
  /**
   * `filters()` -> {stream, level}; `onJump(seq)` shows a match;
   * `onQuery(q)` when the term changes (the URL keeps it).
   */
  constructor({ path, filters, onJump, onQuery }) {
    this.path = path;
    this.filters = filters;
    this.onJump = onJump;
    this.onQuery = onQuery;
    this.reset("");
    this.input = h("input", {
      type: "search",
      class: "input",
      placeholder: "Search the log  ( / )",
      "aria-label": "Search the log",
      name: "q",
      autocomplete: "off",
      onkeydown: (event) => this.onKey(event),
    });
    this.countEl = h("span", { class: "search-count", role: "status", "data-testid": "search-count" });
    this.prevBtn = h("button", { type: "button", class: "btn btn-small", "aria-label": "Previous match", title: "Previous match (Shift+Enter)", onclick: () => this.step(-1) }, "↑");
    this.nextBtn = h("button", { type: "button", class: "btn btn-small", "aria-label": "Next match", title: "Next match (Enter)", onclick: () => this.step(1) }, "↓");
    this.closeBtn = h("button", { type: "button", class: "btn btn-small", "aria-label": "Clear search", onclick: () => this.clear() }, "✕");
    this.el = h(
      "form",
      {
        class: "search-form",
        role: "search",
        onsubmit: (event) => event.preventDefault(),
      },
      this.input,
      h("div", { class: "search-nav" }, this.countEl, this.prevBtn, this.nextBtn, this.closeBtn),
    );
    this.render();
  }

  reset(q) {
    this.controller?.abort();
    this.controller = new AbortController();
    this.q = q;
    this.seqs = [];
    this.after = 0;
    this.hasMore = false;
    this.total = null;
    this.scannedTo = 0;
    this.index = -1;
    this.loading = false;
    this.error = null;
  }

  /** The RegExp the console marks matches with, or null. */
  get regex() {
    return this.q ? new RegExp(escapeRegExp(this.q), "gi") : null;
  }

  onKey(event) {
    if (event.key === "Enter") {
      event.preventDefault();
      const q = this.input.value.trim();
      if (q !== this.q) this.start(q);
      else this.step(event.shiftKey ? -1 : 1);
    } else if (event.key === "Escape") {
      this.clear();
    }
  }

  clear() {
    this.input.value = "";
    this.start("");
  }

  /** A new term (or the filters changed): count, load the first page, show match 1. */
  async start(q) {
    this.reset(q);
    this.onQuery(q);
    this.render();
    if (!q) return;
    const { signal } = this.controller;
    this.loading = true;
    this.render();
    const counting = countMatches(this.path, { q, ...this.filters() }, { signal })
      .then((body) => {
        if (signal.aborted) return;
        // matches that arrived live before the count returned are in the count already
        this.total = body.total;
        this.scannedTo = body.scanned_to;
        this.render();
      })
      .catch(() => {
        /* the n of m falls back to the pages loaded */
      });
    try {
      await this.loadMore(signal);
    } catch (error) {
      if (error.name === "AbortError") return;
      this.error = errorMessage(error);
    }
    this.loading = false;
    if (this.seqs.length) {
      this.index = 0;
      this.onJump(this.seqs[0]);
    }
    this.render();
    await counting;
  }

  async loadMore(signal = this.controller.signal) {
    const page = await searchEvents(this.path, { q: this.q, ...this.filters(), afterSequence: this.after, limit: PAGE }, { signal });
    for (const m of page.matches) if (m.sequence > (this.seqs.at(-1) ?? 0)) this.seqs.push(m.sequence);
    this.after = page.next_after_sequence;
    this.hasMore = page.has_more;
  }

  /** Move to the next (1) or previous (-1) match, wrapping around. */
  async step(direction) {
    if (!this.q || this.loading) return;
    this.loading = true;
    try {
      if (direction > 0) {
        if (this.index + 1 < this.seqs.length) this.index += 1;
        else if (this.hasMore) {
          await this.loadMore();
          this.index = Math.min(this.index + 1, this.seqs.length - 1);
        } else this.index = 0;
      } else if (this.index > 0) this.index -= 1;
      else {
        while (this.hasMore) await this.loadMore();
        this.index = this.seqs.length - 1;
      }
    } catch (error) {
      if (error.name !== "AbortError") this.error = errorMessage(error);
    }
    this.loading = false;
    if (this.index >= 0 && this.seqs.length) this.onJump(this.seqs[this.index]);
    this.render();
  }

  /** A live event: a new match joins the count (and the list once every page is in). */
  live(event) {
    if (!this.q || event.type !== "console.line") return;
    const p = event.payload ?? {};
    const { stream, level } = this.filters();
    if ((stream && p.stream !== stream) || (level && p.level !== level)) return;
    if (typeof p.message !== "string" || !p.message.toLowerCase().includes(this.q.toLowerCase())) return;
    if (this.total !== null && event.sequence > this.scannedTo) {
      this.total += 1;
      this.scannedTo = event.sequence;
    }
    if (!this.hasMore && !this.loading && event.sequence > this.after) {
      this.seqs.push(event.sequence);
      this.after = event.sequence;
    }
    this.render();
  }

  countText() {
    if (!this.q) return "";
    if (this.error) return "search failed";
    const total = this.total ?? this.seqs.length;
    if (this.loading && !this.seqs.length) return "searching…";
    if (!total && !this.seqs.length) return "no matches";
    const of = this.total !== null ? formatNumber(this.total) : `${formatNumber(this.seqs.length)}${this.hasMore ? "+" : ""}`;
    return `${this.index >= 0 ? formatNumber(this.index + 1) : "–"} of ${of}`;
  }

  render() {
    this.countEl.textContent = this.countText();
    if (this.error) this.countEl.title = this.error;
    const none = !this.q || !this.seqs.length;
    this.prevBtn.disabled = none;
    this.nextBtn.disabled = none;
    this.closeBtn.hidden = !this.q;
  }

  destroy() {
    this.controller?.abort();
  }
}
