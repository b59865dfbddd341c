// The run view's state as a pure reducer over events (no DOM, no I/O).
//
//   state = reduceEvents(initialRunState(run, summary), events)
//
// The state never holds console lines (those live in the log source, by
// sequence); it holds what the header, the phases and the summary panel show.
// An event whose sequence is not past `lastSequence` is counted in `duplicates`
// and otherwise ignored, so a replay overlapping what was already seen is harmless.

import { SEVERITIES, isActive, toMillis } from "./format.js";

const SUMMARY_FIELDS = ["status", "started_at", "completed_at", "exit_code"];
const ACTIVE_RANK = { queued: 0, building: 1, running: 2 };

/**
 * A live status only moves forward (queued -> building -> running): replaying
 * a run's `run.queued` must not turn the row's `running` back into `queued`
 * (issue 19: an external run that was streaming showed `queued`).
 */
function advance(s, status) {
  if (s.completed) return;
  if ((ACTIVE_RANK[status] ?? 0) >= (ACTIVE_RANK[s.status] ?? -1)) s.status = status;
}

/** The state for a run row (and its summary, once the run has ended). */
export function initialRunState(run = null, summary = null) {
  const state = {
    run,
    status: run?.status ?? "queued",
    createdAt: run?.created_at ?? null,
    startedAt: run?.started_at ?? null,
    completedAt: run?.completed_at ?? null,
    exitCode: run?.exit_code ?? null,
    failure: null,
    completed: run ? !isActive(run.status) : false,
    lastSequence: 0,
    applied: 0,
    duplicates: 0,
    build: null,
    phases: [],
    console: { lines: 0, byStream: {}, byLevel: {} },
    tables: {},
    validation: null,
    issueCounts: {},
    errors: [],
    summary: null,
  };
  return summary ? withSummary(state, summary) : state;
}

/** Fold a run summary (from `GET {run}` or the `run.completed` payload) into the state. */
export function withSummary(state, summary) {
  if (!summary) return state;
  const execution = summary.execution ?? {};
  const next = {
    ...state,
    summary,
    status: summary.status ?? state.status,
    failure: summary.failure ?? state.failure,
    exitCode: execution.exit_code ?? state.exitCode,
    startedAt: execution.started_at ?? state.startedAt,
    completedAt: execution.completed_at ?? state.completedAt,
    completed: true,
  };
  if (Array.isArray(summary.phases) && summary.phases.length >= state.phases.length) {
    next.phases = summary.phases.map((p) => ({
      scope: p.scope ?? "run",
      phase: p.phase,
      status: p.status ?? null,
      durationMs: p.duration_ms ?? null,
      startedAt: null,
      completedAt: null,
      message: null,
      open: false,
    }));
  }
  return next;
}

/** Update the state from a newer run row (polling or `GET {run}` after completion). */
export function withRun(state, run, summary = null) {
  let next = { ...state, run };
  for (const field of SUMMARY_FIELDS) {
    if (run[field] === null || run[field] === undefined) continue;
    // A row read just before the server stored run.completed must not undo it.
    if (field === "status") {
      if (!isActive(run.status)) next.status = run.status;
      else advance(next, run.status);
    }
    if (field === "started_at") next.startedAt = run.started_at;
    if (field === "completed_at") next.completedAt = run.completed_at;
    if (field === "exit_code") next.exitCode = run.exit_code;
  }
  if (!isActive(run.status)) next.completed = true;
  if (summary) next = withSummary(next, summary);
  return next;
}

function closeOpenPhase(phases, scope, at, status = null, durationMs = null) {
  for (let i = phases.length - 1; i >= 0; i -= 1) {
    const p = phases[i];
    if (p.scope !== scope || !p.open) continue;
    const start = toMillis(p.startedAt);
    const end = toMillis(at);
    phases[i] = {
      ...p,
      open: false,
      status: status ?? p.status,
      completedAt: at,
      durationMs: durationMs ?? (start !== null && end !== null ? end - start : null),
    };
    return true;
  }
  return false;
}

function phaseStarted(state, scope, event) {
  const phases = state.phases.slice();
  // A new phase of a scope ends the previous one (design: "time to the next phase start").
  closeOpenPhase(phases, scope, event.created_at);
  phases.push({
    scope,
    phase: String(event.payload?.phase ?? "?"),
    status: null,
    startedAt: event.created_at,
    completedAt: null,
    durationMs: null,
    message: event.payload?.message ?? null,
    open: true,
  });
  return { ...state, phases };
}

function phaseCompleted(state, scope, event) {
  const payload = event.payload ?? {};
  const phases = state.phases.slice();
  const name = String(payload.phase ?? "");
  const idx = phases.findLastIndex((p) => p.scope === scope && p.phase === name);
  const duration = Number.isInteger(payload.duration_ms) ? payload.duration_ms : null;
  if (idx >= 0) {
    const p = phases[idx];
    const start = toMillis(p.startedAt);
    const end = toMillis(event.created_at);
    phases[idx] = {
      ...p,
      open: false,
      status: payload.status ?? "succeeded",
      completedAt: event.created_at,
      durationMs: duration ?? (start !== null && end !== null ? end - start : p.durationMs),
    };
  } else {
    phases.push({
      scope,
      phase: name || "?",
      status: payload.status ?? "succeeded",
      startedAt: null,
      completedAt: event.created_at,
      durationMs: duration,
      message: null,
      open: false,
    });
  }
  return { ...state, phases };
}

function bump(map, key) {
  if (key === undefined || key === null) return map;
  return { ...map, [key]: (map[key] ?? 0) + 1 };
}

function closeAllPhases(phases, at, onlyScope = null) {
  const next = phases.slice();
  const open = next.filter((p) => p.open && (onlyScope === null || p.scope === onlyScope));
  for (const scope of new Set(open.map((p) => p.scope))) {
    while (closeOpenPhase(next, scope, at)) {
      /* close every open phase of this scope */
    }
  }
  return next;
}

/** The reducer: one event in, a new state out. Pure. */
export function reduceRun(state, event) {
  const seq = event?.sequence;
  if (!Number.isInteger(seq)) return state;
  if (seq <= state.lastSequence) return { ...state, duplicates: state.duplicates + 1 };
  let s = { ...state, lastSequence: seq, applied: state.applied + 1 };
  const payload = event.payload ?? {};
  switch (event.type) {
    case "run.queued":
      advance(s, "queued");
      s.createdAt = s.createdAt ?? event.created_at;
      break;
    case "build.created":
    case "build.started":
      advance(s, "building");
      s.build = { ...(s.build ?? {}), status: payload.status ?? "building", reason: payload.reason ?? null };
      break;
    case "build.completed":
      s.build = {
        ...(s.build ?? {}),
        status: payload.status ?? "completed",
        exitCode: payload.exit_code ?? null,
        durationMs: payload.duration_ms ?? null,
      };
      s.phases = closeAllPhases(s.phases, event.created_at, "build");
      break;
    case "build.phase.started":
      s = phaseStarted(s, "build", event);
      break;
    case "build.phase.completed":
      s = phaseCompleted(s, "build", event);
      break;
    case "run.started":
      advance(s, "running");
      s.startedAt = s.startedAt ?? event.created_at;
      break;
    case "run.phase.started":
      s = phaseStarted(s, "run", event);
      break;
    case "run.phase.completed":
      s = phaseCompleted(s, "run", event);
      break;
    case "console.line":
      s.console = {
        lines: s.console.lines + 1,
        byStream: bump(s.console.byStream, payload.stream),
        byLevel: bump(s.console.byLevel, payload.level),
      };
      break;
    case "run.table.summary":
      if (typeof payload.table_id === "string") {
        s.tables = { ...s.tables, [payload.table_id]: payload };
      }
      break;
    case "run.validation.summary":
      s.validation = {
        issues_total: payload.issues_total ?? 0,
        issues_by_severity: payload.issues_by_severity ?? {},
        max_severity: payload.max_severity ?? null,
      };
      break;
    case "run.validation.issue":
      s.issueCounts = bump(s.issueCounts, payload.severity ?? "unknown");
      break;
    case "run.error":
      s.errors = [...s.errors, { stage: payload.stage, code: payload.code, message: payload.message, phase: payload.phase }];
      break;
    case "run.completed": {
      const execution = payload.execution ?? {};
      s.status = payload.status ?? s.status;
      s.completed = true;
      s.completedAt = execution.completed_at ?? event.created_at;
      s.startedAt = execution.started_at ?? s.startedAt;
      s.exitCode = execution.exit_code ?? s.exitCode;
      const lastError = s.errors.at(-1);
      s.failure = payload.failure ?? (s.status === "failed" && lastError ? lastError : null);
      s.phases = closeAllPhases(s.phases, event.created_at);
      if (payload.summary && typeof payload.summary === "object") s = withSummary(s, payload.summary);
      break;
    }
    default:
      break;
  }
  return s;
}

/** Fold many events. */
export function reduceEvents(state, events) {
  let s = state;
  for (const event of events) s = reduceRun(s, event);
  return s;
}

/** Validation counts as the summary panel shows them (summary, else live telemetry). */
export function validationView(state) {
  if (state.summary?.validation) return state.summary.validation;
  if (state.validation) return state.validation;
  const tables = Object.values(state.tables);
  const bySeverity = {};
  let total = 0;
  const fromTables = tables.filter((t) => t.validation && typeof t.validation === "object");
  const source = fromTables.length
    ? fromTables.map((t) => t.validation.issues_by_severity ?? {})
    : [state.issueCounts];
  for (const counts of source) {
    for (const [sev, n] of Object.entries(counts)) {
      if (!Number.isInteger(n)) continue;
      bySeverity[sev] = (bySeverity[sev] ?? 0) + n;
      total += n;
    }
  }
  let max = null;
  for (const sev of SEVERITIES) if ((bySeverity[sev] ?? 0) > 0) max = sev;
  return { issues_total: total, issues_by_severity: bySeverity, max_severity: max };
}

/** Table counts as the summary panel shows them (summary, else live telemetry). */
export function tablesView(state) {
  if (state.summary?.tables) return state.summary.tables;
  const tables = Object.values(state.tables);
  const files = new Set(tables.map((t) => t.source_file).filter(Boolean));
  let rows = 0;
  for (const t of tables) {
    if (!Number.isInteger(t.row_count)) {
      rows = null;
      break;
    }
    rows += t.row_count;
  }
  return { input_file_count: files.size, table_count: tables.length, row_count: rows, by_file: [] };
}
