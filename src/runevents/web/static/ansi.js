// ANSI SGR rendering: console text with escape codes -> escaped HTML with spans.
//
// Small and self-contained on purpose: console lines are short and rendered a
// screenful at a time. Supported: reset, bold, dim, italic, underline, inverse,
// strikethrough, the 16 colours (as classes, so light/dark themes can tune them),
// 256-colour and 24-bit colours (inline styles). Every other escape sequence
// (cursor movement, erase, OSC titles and hyperlinks) is dropped. A carriage
// return inside a line keeps only the text after it, as a terminal would show.

import { escapeHtml } from "./dom.js";

// CSI ... final byte | OSC ... (BEL | ESC \) | two-byte escapes
const ESCAPE_RE = /\x1b\[([0-9;:?<=>]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
// other C0 controls except tab, and DEL
const CONTROL_RE = /[\x00-\x08\x0b-\x1f\x7f]/g;

function emptyStyle() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, inverse: false, strike: false };
}

function color256(n) {
  if (n < 16) return n;
  if (n < 232) {
    const i = n - 16;
    const level = (v) => (v === 0 ? 0 : 55 + v * 40);
    return `rgb(${level(Math.floor(i / 36))},${level(Math.floor(i / 6) % 6)},${level(i % 6)})`;
  }
  const g = 8 + (n - 232) * 10;
  return `rgb(${g},${g},${g})`;
}

// Reads an extended colour (38/48) starting at params[i]; returns [colour, nextIndex].
function extendedColor(params, i) {
  const mode = params[i + 1];
  if (mode === 5 && params.length > i + 2) {
    const n = params[i + 2];
    return [n >= 0 && n <= 255 ? color256(n) : null, i + 3];
  }
  if (mode === 2 && params.length > i + 4) {
    const [r, g, b] = params.slice(i + 2, i + 5).map((v) => Math.max(0, Math.min(255, v || 0)));
    return [`rgb(${r},${g},${b})`, i + 5];
  }
  return [null, params.length];
}

function applyColonParam(style, raw) {
  const sub = raw.split(":").map((v) => (v === "" ? 0 : Number(v)));
  const head = sub[0];
  if ((head === 38 || head === 48) && sub.length >= 3) {
    let colour = null;
    if (sub[1] === 5) colour = color256(sub[2]);
    else if (sub[1] === 2) {
      const [r, g, b] = sub.slice(-3).map((v) => Math.max(0, Math.min(255, v || 0)));
      colour = `rgb(${r},${g},${b})`;
    }
    if (head === 38) style.fg = colour;
    else style.bg = colour;
  } else if (head === 4) {
    style.underline = sub[1] !== 0;
  }
}

/** Apply one SGR parameter string ("1;31", "38;5;208", "") to `style` in place. */
export function applySgr(style, paramText) {
  if (paramText === "") {
    Object.assign(style, emptyStyle());
    return style;
  }
  const raw = paramText.split(";");
  const params = raw.map((v) => (v.includes(":") ? NaN : v === "" ? 0 : Number(v)));
  for (let i = 0; i < params.length; ) {
    const p = params[i];
    if (Number.isNaN(p)) {
      applyColonParam(style, raw[i]);
      i += 1;
      continue;
    }
    if (p === 38 || p === 48) {
      const [colour, next] = extendedColor(params, i);
      if (p === 38) style.fg = colour;
      else style.bg = colour;
      i = next;
      continue;
    }
    if (p === 0) Object.assign(style, emptyStyle());
    else if (p === 1) style.bold = true;
    else if (p === 2) style.dim = true;
    else if (p === 3) style.italic = true;
    else if (p === 4) style.underline = true;
    else if (p === 7) style.inverse = true;
    else if (p === 9) style.strike = true;
    else if (p === 21 || p === 22) {
      style.bold = false;
      style.dim = false;
    } else if (p === 23) style.italic = false;
    else if (p === 24) style.underline = false;
    else if (p === 27) style.inverse = false;
    else if (p === 29) style.strike = false;
    else if (p >= 30 && p <= 37) style.fg = p - 30;
    else if (p === 39) style.fg = null;
    else if (p >= 40 && p <= 47) style.bg = p - 40;
    else if (p === 49) style.bg = null;
    else if (p >= 90 && p <= 97) style.fg = p - 90 + 8;
    else if (p >= 100 && p <= 107) style.bg = p - 100 + 8;
    i += 1;
  }
  return style;
}

function isPlain(style) {
  return (
    style.fg === null &&
    style.bg === null &&
    !style.bold &&
    !style.dim &&
    !style.italic &&
    !style.underline &&
    !style.inverse &&
    !style.strike
  );
}

function openTag(style) {
  const classes = [];
  const css = [];
  let { fg, bg } = style;
  if (style.inverse) {
    // Swap; an unset colour becomes the console's own foreground/background.
    [fg, bg] = [bg ?? "var(--console-bg)", fg ?? "var(--console-fg)"];
  }
  if (typeof fg === "number") classes.push(`a-f${fg}`);
  else if (fg) css.push(`color:${fg}`);
  if (typeof bg === "number") classes.push(`a-b${bg}`);
  else if (bg) css.push(`background-color:${bg}`);
  if (style.bold) classes.push("a-bold");
  if (style.dim) classes.push("a-dim");
  if (style.italic) classes.push("a-it");
  if (style.underline) classes.push("a-ul");
  if (style.strike) classes.push("a-st");
  const cls = classes.length ? ` class="${classes.join(" ")}"` : "";
  const sty = css.length ? ` style="${css.join(";")}"` : "";
  return `<span${cls}${sty}>`;
}

/** What a terminal would show of one line: the text after the last carriage return. */
export function lastOverwrite(text) {
  const trimmed = text.replace(/[\r\n]+$/, "");
  const cr = trimmed.lastIndexOf("\r");
  return cr >= 0 ? trimmed.slice(cr + 1) : trimmed;
}

function escapeWithHighlight(text, highlight) {
  if (!highlight) return escapeHtml(text);
  highlight.lastIndex = 0;
  let out = "";
  let last = 0;
  for (const m of text.matchAll(highlight)) {
    if (m[0] === "") break;
    out += `${escapeHtml(text.slice(last, m.index))}<mark>${escapeHtml(m[0])}</mark>`;
    last = m.index + m[0].length;
  }
  return out + escapeHtml(text.slice(last));
}

/**
 * Render one console message to HTML. `highlight` is an optional global RegExp
 * whose matches (within a run of same-styled text) are wrapped in <mark>.
 */
export function ansiToHtml(message, highlight = null) {
  const text = lastOverwrite(String(message ?? ""));
  const style = emptyStyle();
  let out = "";
  let open = false;
  let last = 0;
  const flush = (chunk) => {
    const clean = chunk.replace(CONTROL_RE, "");
    if (clean) out += escapeWithHighlight(clean, highlight);
  };
  for (const m of text.matchAll(ESCAPE_RE)) {
    flush(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[2] !== "m" || m[1] === undefined || /[?<=>]/.test(m[1])) continue;
    applySgr(style, m[1]);
    if (open) out += "</span>";
    open = !isPlain(style);
    if (open) out += openTag(style);
  }
  flush(text.slice(last));
  if (open) out += "</span>";
  return out;
}

/** The message without any escape sequence (for search, copying, titles). */
export function stripAnsi(message) {
  return lastOverwrite(String(message ?? ""))
    .replace(ESCAPE_RE, "")
    .replace(CONTROL_RE, "");
}
