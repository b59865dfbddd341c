// Pure formatting helpers (no DOM): durations, times, numbers, run status.

export const ACTIVE_STATUSES = ["queued", "building", "running"];
export const ENDED_STATUSES = ["succeeded", "failed", "cancelled"];
export const ALL_STATUSES = [...ACTIVE_STATUSES, ...ENDED_STATUSES];
export const SEVERITIES = ["info", "warning", "error", "critical"];

export function isActive(status) {
  return ACTIVE_STATUSES.includes(status);
}

/** Milliseconds since the epoch of an RFC 3339 string, or null. */
export function toMillis(iso) {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

/** "850 ms", "12.3 s", "4m 05s", "2h 03m", "3d 04h". */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.floor(s);
  const pad = (n) => String(n).padStart(2, "0");
  if (total < 3600) return `${Math.floor(total / 60)}m ${pad(total % 60)}s`;
  if (total < 86400) return `${Math.floor(total / 3600)}h ${pad(Math.floor((total % 3600) / 60))}m`;
  return `${Math.floor(total / 86400)}d ${pad(Math.floor((total % 86400) / 3600))}h`;
}

/** Duration of a run: completed - started, or now - started while it runs. */
export function runDurationMs(run, now = Date.now()) {
  const start = toMillis(run.started_at);
  if (start === null) return null;
  const end = toMillis(run.completed_at);
  return (end ?? now) - start;
}

/** Local date and time, "2026-11-24 06:00:00". */
export function formatDateTime(iso) {
  const ms = toMillis(iso);
  if (ms === null) return "—";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(
    d.getMinutes(),
  )}:${pad(d.getSeconds())}`;
}

/** Local time of day with milliseconds, "06:00:00.123". */
export function formatClock(iso) {
  const ms = toMillis(iso);
  if (ms === null) return "";
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago". */
export function formatRelative(iso, now = Date.now()) {
  const ms = toMillis(iso);
  if (ms === null) return "—";
  const s = Math.round((now - ms) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const NUMBER = new Intl.NumberFormat("en-US");

export function formatNumber(n) {
  if (n === null || n === undefined) return "—";
  return NUMBER.format(n);
}

/** "1.2 MB" style byte sizes. */
export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** Rank of a validation severity (unknown names rank below info). */
export function severityRank(severity) {
  return SEVERITIES.indexOf(severity);
}

/** A shortened run id for narrow places: "run_01J…X7Q". */
export function shortRunId(id) {
  if (!id || id.length <= 16) return id ?? "";
  return `${id.slice(0, 10)}…${id.slice(-4)}`;
}

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** Creation time (ms) encoded in a `run_` + ULID id, or null. */
export function ulidTime(runId) {
  const m = /^run_([0-9A-HJKMNP-TV-Z]{26})$/i.exec(runId ?? "");
  if (!m) return null;
  let ms = 0;
  for (const ch of m[1].slice(0, 10).toUpperCase()) {
    const v = CROCKFORD.indexOf(ch);
    if (v < 0) return null;
    ms = ms * 32 + v;
  }
  return ms;
}

/** The browser's time zone as shown beside times: "Europe/Berlin (UTC+01:00)", "UTC". */
let zoneCache = null; // an Intl.DateTimeFormat per call costs more than drawing the row

export function timeZoneName(at = new Date()) {
  zoneCache ??= Intl.DateTimeFormat().resolvedOptions().timeZone ?? "local";
  const zone = zoneCache;
  const minutes = -at.getTimezoneOffset();
  if (minutes === 0 && /^(UTC|Etc\/UTC|GMT|Etc\/GMT)$/.test(zone)) return "UTC";
  const sign = minutes < 0 ? "-" : "+";
  const abs = Math.abs(minutes);
  const offset = `UTC${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${String(abs % 60).padStart(2, "0")}`;
  return `${zone} (${offset})`;
}

/** The zone's short name for labels: "UTC", "GMT+1", "CET". */
export function shortZoneName(at = new Date()) {
  // once per page (a button label), never per row
  try {
    const part = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(at).find((p) => p.type === "timeZoneName");
    return part?.value ?? "local";
  } catch {
    return "local";
  }
}
