// Small shared pieces of UI: status and severity badges, notices, toasts.

import { h } from "./dom.js";

const STATUS_ICONS = {
  queued: "◷",
  building: "⚙",
  running: "●",
  succeeded: "✓",
  failed: "✕",
  cancelled: "⊘",
};

export function statusBadge(status) {
  return h(
    "span",
    { class: `badge st-${status}`, "data-status": status },
    h("span", { class: "badge-icon", "aria-hidden": "true" }, STATUS_ICONS[status] ?? "•"),
    status,
  );
}

export function severityBadge(severity, count = null) {
  if (!severity) return h("span", { class: "muted" }, "—");
  return h(
    "span",
    { class: `sev sev-${severity}`, title: `max validation severity: ${severity}` },
    count === null ? severity : `${count} ${severity}`,
  );
}

/** A block message: kind is "info", "error" or "warning". */
export function notice(kind, title, ...body) {
  return h(
    "div",
    { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("strong", null, title),
    body.length ? h("div", { class: "notice-body" }, ...body) : null,
  );
}

let toastRoot = null;

/** A transient message at the bottom of the screen (announced to screen readers). */
export function toast(message, kind = "info", ms = 4000) {
  if (!toastRoot) {
    toastRoot = h("div", { class: "toasts", role: "status", "aria-live": "polite" });
    document.body.append(toastRoot);
  }
  const el = h("div", { class: `toast toast-${kind}` }, message);
  toastRoot.append(el);
  setTimeout(() => el.remove(), ms);
}

/** A human message for an API error. */
export function errorMessage(error) {
  if (!error) return "Unknown error";
  if (error.status === 403) return "You do not have access to this (403).";
  if (error.status === 404) return error.message || "Not found (404).";
  if (error.name === "TypeError") return "The server cannot be reached.";
  return error.message || String(error);
}
