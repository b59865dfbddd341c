// The HTTP API client (contract sections 4-7). Every request of the UI goes through here.
//
// The session is an HttpOnly cookie set by `POST /api/v1/session`, so requests
// carry no Authorization header; same-origin fetch and EventSource send the
// cookie by themselves, and browsers add the `Origin` header the server checks
// on state-changing requests.

import { ulidTime } from "./format.js";

const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

/** `{run}` of the contract: the path of one run. */
export function runPath(workspaceId, configurationId, runId) {
  return `${BASE}/workspaces/${enc(workspaceId)}/configurations/${enc(configurationId)}/runs/${enc(runId)}`;
}

let unauthorizedHandler = null;

/** Called (once per failing request) when the API answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

async function errorFrom(response) {
  let code = null;
  let message = null;
  try {
    const body = await response.json();
    code = body?.error?.code ?? null;
    message = body?.error?.message ?? null;
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, code, message ?? `${response.status} ${response.statusText}`);
}

async function request(method, path, { body, query, signal, accept = "application/json", quiet401 = false } = {}) {
  let url = path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value === null || value === undefined || value === "") continue;
      if (Array.isArray(value)) value.forEach((v) => qs.append(key, v));
      else qs.append(key, String(value));
    }
    const text = qs.toString();
    if (text) url += `?${text}`;
  }
  const headers = { Accept: accept };
  const init = { method, headers, signal, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && !quiet401 && unauthorizedHandler) unauthorizedHandler(error);
    throw error;
  }
  return response;
}

async function json(method, path, options) {
  const response = await request(method, path, options);
  if (response.status === 204) return null;
  return response.json();
}

// ---- session and directory -------------------------------------------------

/** The signed-in principal `{name, role, workspaces}`, or null when signed out. */
export async function getSession() {
  try {
    return await json("GET", `${BASE}/session`, { quiet401: true });
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null;
    throw error;
  }
}

export function signIn(token) {
  return json("POST", `${BASE}/session`, { body: { token }, quiet401: true });
}

export function signOut() {
  return json("DELETE", `${BASE}/session`, { quiet401: true });
}

export async function listWorkspaces() {
  const body = await json("GET", `${BASE}/workspaces`);
  return (body?.items ?? []).map((item) => item.workspace_id);
}

export async function listConfigurations() {
  const body = await json("GET", `${BASE}/configurations`);
  return body?.items ?? [];
}

// ---- runs ------------------------------------------------------------------

/** One page of a workspace's runs, newest first: `{items, next_cursor}`. */
export function listRuns(workspaceId, filters = {}, { signal } = {}) {
  return json("GET", `${BASE}/workspaces/${enc(workspaceId)}/runs`, { query: filters, signal });
}

export function createRun(workspaceId, configurationId, options = {}, { mode = "execute", rerunOf = null } = {}) {
  const body = { mode, options };
  if (rerunOf) body.rerun_of = rerunOf;
  return json("POST", `${BASE}/workspaces/${enc(workspaceId)}/configurations/${enc(configurationId)}/runs`, { body });
}

/** `{run, summary}` */
export function getRun(path, { signal } = {}) {
  return json("GET", path, { signal });
}

export function cancelRun(path) {
  return json("POST", `${path}/cancel`);
}

// The run view's URL has no configuration id, the API's run path does: remember
// it for the runs this browser has seen, and find it by creation time otherwise.
const CFG_CACHE_KEY = "runevents.runConfigurations";

export function rememberRun(run) {
  try {
    const cache = JSON.parse(sessionStorage.getItem(CFG_CACHE_KEY) || "{}");
    cache[run.id] = run.configuration_id;
    const keys = Object.keys(cache);
    if (keys.length > 2000) for (const key of keys.slice(0, keys.length - 2000)) delete cache[key];
    sessionStorage.setItem(CFG_CACHE_KEY, JSON.stringify(cache));
  } catch {
    /* storage unavailable: lookups fall back to the list */
  }
}

function rememberedConfiguration(runId) {
  try {
    return JSON.parse(sessionStorage.getItem(CFG_CACHE_KEY) || "{}")[runId] ?? null;
  } catch {
    return null;
  }
}

/**
 * `{run, summary, path}` of a run known by workspace and id only: from the ids
 * this browser has seen, else `GET /api/v1/runs/{run_id}`, else the runs list
 * (run ids are ULIDs, so their creation time narrows that query to a few runs).
 */
export async function findRun(workspaceId, runId, { signal } = {}) {
  const cached = rememberedConfiguration(runId);
  if (cached) {
    try {
      const path = runPath(workspaceId, cached, runId);
      const body = await getRun(path, { signal });
      return { ...body, path };
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }
  try {
    const body = await json("GET", `${BASE}/runs/${enc(runId)}`, { signal });
    if (body.run.workspace_id === workspaceId) {
      rememberRun(body.run);
      return { ...body, path: runPath(workspaceId, body.run.configuration_id, runId) };
    }
    throw new ApiError(404, "run_not_found", `No run ${runId} in workspace ${workspaceId}`);
  } catch (error) {
    // 404 is also what a server without the lookup route answers: look in the list then
    if (!(error instanceof ApiError && (error.status === 404 || error.status === 405))) throw error;
  }
  const created = ulidTime(runId);
  const attempts = [];
  if (created !== null) {
    const margin = 10 * 60 * 1000;
    attempts.push({
      created_after: new Date(created - margin).toISOString(),
      created_before: new Date(created + margin).toISOString(),
    });
  }
  attempts.push({});
  for (const window of attempts) {
    let cursor = null;
    for (let page = 0; page < 20; page += 1) {
      const body = await listRuns(workspaceId, { ...window, limit: 500, cursor }, { signal });
      const hit = body.items.find((run) => run.id === runId);
      if (hit) {
        rememberRun(hit);
        const path = runPath(workspaceId, hit.configuration_id, runId);
        return { ...(await getRun(path, { signal })), path };
      }
      cursor = body.next_cursor;
      if (!cursor) break;
    }
  }
  throw new ApiError(404, "run_not_found", `No run ${runId} in workspace ${workspaceId}`);
}

// ---- events ----------------------------------------------------------------

/** A JSON page of events: `{events, next_after_sequence, has_more}`. */
export function eventsPage(path, afterSequence, limit, { signal } = {}) {
  return json("GET", `${path}/events`, { query: { after_sequence: afterSequence, limit }, signal });
}

/** Server-assisted search: `{matches, next_after_sequence, has_more}`. */
export function searchEvents(path, { q, stream, level, afterSequence = 0, limit = 200 }, { signal } = {}) {
  return json("GET", `${path}/search`, {
    query: { q, stream, level, after_sequence: afterSequence, limit },
    signal,
  });
}

/** The SSE URL; a browser EventSource resumes from Last-Event-ID by itself. */
export function eventStreamUrl(path, afterSequence) {
  return `${path}/events?stream=true&after_sequence=${afterSequence}`;
}

/** Download the whole log as NDJSON (Accept header, so fetch + blob). */
export async function downloadNdjson(path, filename) {
  const response = await request("GET", `${path}/events`, { accept: "application/x-ndjson" });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return blob.size;
}

/** How many console lines the search matches in the whole log: `{total, scanned_to}`. */
export function countMatches(path, { q, stream, level }, { signal } = {}) {
  return json("GET", `${path}/search/count`, { query: { q, stream, level }, signal });
}

/** A page of the run's outline (phase and section markers, errors): `{events, next_after_sequence, has_more}`. */
export function outlinePage(path, afterSequence, { signal } = {}) {
  return json("GET", `${path}/outline`, { query: { after_sequence: afterSequence }, signal });
}

/** The raw log (plain console text); `download` makes it an attachment. */
export function textUrl(path, { download = false } = {}) {
  return `${path}/text${download ? "?download=true" : ""}`;
}

// ---- search across runs (contract section 12) -------------------------------

/**
 * Search a workspace's runs. `onHit(hit)` is called for each hit as it arrives
 * (the answer is NDJSON, streamed); resolves with the final `done` record.
 */
export async function searchRuns(workspaceId, query, onHit, { signal } = {}) {
  const response = await request("GET", `${BASE}/workspaces/${enc(workspaceId)}/search`, {
    query,
    signal,
    accept: "application/x-ndjson",
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let done = null;
  for (;;) {
    const { value, done: finished } = await reader.read();
    if (value) pending += decoder.decode(value, { stream: true });
    // NDJSON lines end at "\n" only (a message may hold U+2028 and friends, escaped or not)
    let cut;
    while ((cut = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, cut);
      pending = pending.slice(cut + 1);
      if (!line) continue;
      const record = JSON.parse(line);
      if (record.done === true) done = record;
      else onHit(record);
    }
    if (finished) break;
  }
  if (!done) throw new ApiError(0, "incomplete", "The search answer ended early; try again.");
  return done;
}
