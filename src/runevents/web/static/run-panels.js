// The run view's panels, rendered from the reducer state: timing, failure,
// phases (with durations and progress) and the summary.

import { h } from "./dom.js";
import {
  SEVERITIES,
  formatBytes,
  formatDateTime,
  formatDuration,
  formatNumber,
  toMillis,
} from "./format.js";
import { tablesView, validationView } from "./reducer.js";
import { severityBadge } from "./widgets.js";

function runDuration(state, now) {
  const exec = state.summary?.execution;
  if (Number.isFinite(exec?.duration_ms)) return exec.duration_ms;
  const start = toMillis(state.startedAt);
  if (start === null) return null;
  const end = toMillis(state.completedAt);
  if (end === null && state.completed) return null;
  return (end ?? now) - start;
}

function item(label, value, attrs = null) {
  return h("div", { class: "meta-item", ...attrs }, h("dt", null, label), h("dd", null, value));
}

/** Created / started / duration / exit code / events. */
export function renderMeta(state, now = Date.now()) {
  const run = state.run ?? {};
  const duration = runDuration(state, now);
  const events = Math.max(state.lastSequence, run.event_count ?? 0);
  return h(
    "dl",
    { class: "meta" },
    item("Created", h("time", { datetime: state.createdAt ?? "" }, formatDateTime(state.createdAt))),
    item("Started", h("time", { datetime: state.startedAt ?? "" }, formatDateTime(state.startedAt))),
    item(
      state.completed ? "Duration" : "Running for",
      formatDuration(duration),
      { "data-field": "duration" },
    ),
    item("Exit code", state.exitCode ?? "—", { "data-field": "exit-code" }),
    item("Events", formatNumber(events), { "data-field": "events" }),
    run.events_bytes ? item("Log size", formatBytes(run.events_bytes)) : null,
    item("Log", run.log_state ?? "—"),
  );
}

/** The failure box of a failed run (or the latest run.error of a live one). */
export function renderFailure(state) {
  const failure = state.failure ?? (state.status === "failed" ? state.run?.failure : null);
  if (!failure) return null;
  return h(
    "div",
    { class: "notice notice-error failure", role: "alert", "data-testid": "failure" },
    h("strong", null, `Failed in ${failure.stage ?? "?"}`, failure.code ? ` · ${failure.code}` : ""),
    failure.message ? h("div", { class: "notice-body" }, failure.message) : null,
  );
}

function phaseDuration(phase, now) {
  if (Number.isFinite(phase.durationMs)) return phase.durationMs;
  const start = toMillis(phase.startedAt);
  if (phase.open && start !== null) return now - start;
  return null;
}

const PHASE_ICON = { succeeded: "✓", failed: "✕", cancelled: "⊘", skipped: "–" };

/** Build and run phases: a proportional timeline bar and a list with durations. */
export function renderPhases(state, now = Date.now(), { onPhase = null } = {}) {
  const phases = state.phases;
  if (!phases.length) {
    const waiting = !state.completed && (state.status === "queued" || state.status === "building");
    return h("p", { class: "muted phases-empty" }, waiting ? `Waiting (${state.status})…` : "No phases reported.");
  }
  const durations = phases.map((p) => phaseDuration(p, now) ?? 0);
  const total = durations.reduce((a, b) => a + b, 0) || 1;
  const bar = h(
    "div",
    { class: "phase-bar", "aria-hidden": "true" },
    phases.map((p, i) =>
      h("span", {
        class: `phase-seg ph-${p.open ? "open" : (p.status ?? "done")} sc-${p.scope}`,
        style: { flexGrow: String(Math.max(durations[i] / total, 0.02)) },
        title: `${p.scope}: ${p.phase} ${formatDuration(durations[i])}`,
      }),
    ),
  );
  const list = h(
    "ol",
    { class: "phase-list" },
    phases.map((p, i) =>
      h(
        "li",
        { class: `phase ph-${p.open ? "open" : (p.status ?? "done")}`, "data-phase": p.phase },
        h("span", { class: "phase-icon", "aria-hidden": "true" }, p.open ? "" : (PHASE_ICON[p.status] ?? "•")),
        h("span", { class: "phase-scope" }, p.scope),
        onPhase
          ? h("button", { type: "button", class: "phase-link", title: `Show ${p.phase} in the log`, onclick: () => onPhase(i) }, h("span", { class: "phase-name" }, p.phase))
          : h("span", { class: "phase-name" }, p.phase),
        h(
          "span",
          { class: "phase-dur" },
          p.open ? `${formatDuration(durations[i])}…` : formatDuration(phaseDuration(p, now)),
        ),
        p.open ? h("span", { class: "sr-only" }, "in progress") : null,
      ),
    ),
  );
  return h("div", { class: "phases" }, bar, list);
}

function stat(label, value, testid) {
  return h("div", { class: "stat", "data-testid": testid }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

/** Tables, rows and validation by severity (once the run completed; live telemetry before). */
export function renderSummary(state) {
  const tables = tablesView(state);
  const validation = validationView(state);
  const consoleCounts = state.summary?.console ?? {
    lines: state.console.lines,
    by_stream: state.console.byStream,
  };
  const bySev = validation.issues_by_severity ?? {};
  const sevNames = [...SEVERITIES.filter((s) => bySev[s]), ...Object.keys(bySev).filter((s) => !SEVERITIES.includes(s))];
  const stats = h(
    "div",
    { class: "stats" },
    stat("Tables", formatNumber(tables.table_count ?? 0), "stat-tables"),
    stat("Rows", formatNumber(tables.row_count), "stat-rows"),
    stat("Input files", formatNumber(tables.input_file_count ?? 0), "stat-files"),
    stat("Issues", formatNumber(validation.issues_total ?? 0), "stat-issues"),
    stat("Console lines", formatNumber(consoleCounts.lines ?? 0), "stat-lines"),
    stat("stderr lines", formatNumber(consoleCounts.by_stream?.stderr ?? 0), "stat-stderr"),
  );
  const severities = h(
    "div",
    { class: "severities" },
    h("span", { class: "muted" }, "Validation: "),
    sevNames.length ? sevNames.map((s) => severityBadge(s, formatNumber(bySev[s]))) : h("span", { class: "muted" }, "no issues"),
  );
  const byFile = (tables.by_file ?? []).length
    ? h(
        "table",
        { class: "by-file" },
        h("caption", { class: "sr-only" }, "Tables by input file"),
        h("thead", null, h("tr", null, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Tables"), h("th", { scope: "col" }, "Rows"), h("th", { scope: "col" }, "Issues"))),
        h(
          "tbody",
          null,
          tables.by_file.map((f) =>
            h("tr", null, h("td", null, f.source_file), h("td", null, formatNumber(f.table_count)), h("td", null, formatNumber(f.row_count)), h("td", null, formatNumber(f.issues_total ?? 0))),
          ),
        ),
      )
    : null;
  return h(
    "section",
    { class: "summary", "aria-label": "Summary", "data-testid": "summary" },
    h("h2", null, state.completed ? "Summary" : "So far"),
    stats,
    severities,
    byFile,
  );
}

/** What the console shows once retention removed the log. */
export function renderExpired(state) {
  const completed = state.completedAt ? ` It ended ${formatDateTime(state.completedAt)}.` : "";
  return h(
    "div",
    { class: "expired", role: "status", "data-testid": "log-expired" },
    h("div", { class: "expired-icon", "aria-hidden": "true" }, "⌛"),
    h("h2", null, "Log expired"),
    h("p", null, `This run's event log was removed by retention.${completed} The run and its summary remain available above.`),
  );
}
