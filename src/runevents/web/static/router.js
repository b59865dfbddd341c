// History-API router for the contract's UI paths (section 9):
//   /                                   -> the first workspace
//   /workspaces/{ws}                    -> runs list
//   /workspaces/{ws}/runs/{run_id}      -> run view (#seq=N points at a line)
//   /workspaces/{ws}/search             -> search across the workspace's runs

/** The route of a pathname: `{name, params}`; name is "home", "runs", "run", "search" or "notFound". */
export function parseRoute(pathname) {
  let parts;
  try {
    parts = pathname.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return { name: "notFound", params: {} }; // a malformed %-escape (URIError): no such page
  }
  if (parts.length === 0) return { name: "home", params: {} };
  if (parts[0] === "workspaces" && parts.length === 2) {
    return { name: "runs", params: { workspaceId: parts[1] } };
  }
  if (parts[0] === "workspaces" && parts.length === 3 && parts[2] === "search") {
    return { name: "search", params: { workspaceId: parts[1] } };
  }
  if (parts[0] === "workspaces" && parts.length === 4 && parts[2] === "runs") {
    return { name: "run", params: { workspaceId: parts[1], runId: parts[3] } };
  }
  return { name: "notFound", params: {} };
}

export function workspaceUrl(workspaceId, query = "") {
  return `/workspaces/${encodeURIComponent(workspaceId)}${query}`;
}

export function searchUrl(workspaceId, query = "") {
  return `/workspaces/${encodeURIComponent(workspaceId)}/search${query}`;
}

export function runUrl(workspaceId, runId, seq = null) {
  const base = `/workspaces/${encodeURIComponent(workspaceId)}/runs/${encodeURIComponent(runId)}`;
  return seq ? `${base}#seq=${seq}` : base;
}

/** The line a `#seq=N` hash points at, or null. */
export function seqFromHash(hash) {
  const m = /^#seq=(\d+)$/.exec(hash ?? "");
  return m ? Number(m[1]) : null;
}

export class Router {
  /** `onRoute(route, location)` is called for every navigation, including the first. */
  constructor(onRoute) {
    this.onRoute = onRoute;
    this.current = null;
    window.addEventListener("popstate", () => this.dispatch());
    document.addEventListener("click", (event) => this.interceptClick(event));
  }

  start() {
    this.dispatch();
  }

  navigate(url, { replace = false } = {}) {
    const target = new URL(url, location.href);
    const samePage = target.pathname === location.pathname && target.search === location.search;
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
    if (samePage && target.hash) {
      window.dispatchEvent(new HashChangeEvent("hashchange"));
      return;
    }
    this.dispatch();
  }

  dispatch() {
    const route = parseRoute(location.pathname);
    const key = `${location.pathname}${location.search}`;
    if (this.current === key) return;
    this.current = key;
    this.onRoute(route, location);
  }

  /** Change the URL (e.g. a view's filters in the query) without re-rendering the view. */
  replaceQuietly(url) {
    const target = new URL(url, location.href);
    history.replaceState(null, "", target);
    this.current = `${target.pathname}${target.search}`;
  }

  /** Forget the current route so that the next dispatch re-renders it. */
  invalidate() {
    this.current = null;
  }

  interceptClick(event) {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const a = event.target.closest?.("a[href]");
    if (!a || a.target || a.hasAttribute("download") || a.dataset.external !== undefined) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) return;
    if (url.pathname.startsWith("/api/") || url.pathname.startsWith("/static/")) return;
    if (url.pathname === location.pathname && url.search === location.search) return; // hash links
    event.preventDefault();
    this.navigate(url.href);
  }
}
