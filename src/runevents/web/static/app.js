// Entry point: session, the top bar (workspace switcher, who is signed in),
// the sign-in form, and mounting one view per route.

import { getSession, listConfigurations, listWorkspaces, onUnauthorized, signIn, signOut } from "./api.js";
import { h, replaceChildren } from "./dom.js";
import { Router, searchUrl, workspaceUrl } from "./router.js";
import { RunView } from "./run-view.js";
import { RunsListView } from "./runs-list.js";
import { SearchView } from "./search-view.js";
import { errorMessage, notice } from "./widgets.js";

const WRITE_ROLES = ["write", "admin"];

class App {
  constructor() {
    this.main = document.getElementById("main");
    this.bar = document.getElementById("topbar");
    this.session = null;
    this.workspaces = [];
    this.configurations = [];
    this.view = null;
    this.router = new Router((route) => this.show(route));
    onUnauthorized(() => this.showSignIn("Your session has ended. Sign in again."));
    window.__runevents = { app: this, view: () => this.view?.debug?.() ?? null };
  }

  async start() {
    try {
      this.session = await getSession();
    } catch (error) {
      this.fatal(error);
      return;
    }
    if (!this.session) {
      this.showSignIn();
      return;
    }
    this.begin();
  }

  /** Signed in: route at once; the directory (workspaces, configurations) loads alongside. */
  begin() {
    this.directory = this.loadDirectory().then(() => this.renderBar(this.currentWorkspace));
    this.renderBar();
    this.router.invalidate();
    this.router.start();
  }

  async loadDirectory() {
    const [workspaces, configurations] = await Promise.all([
      listWorkspaces().catch(() => []),
      listConfigurations().catch(() => []),
    ]);
    this.configurations = configurations;
    const explicit = this.session.workspaces.filter((w) => w !== "*");
    const all = new Set([...workspaces, ...configurations.map((c) => c.workspace_id), ...explicit]);
    this.workspaces = [...all].sort();
  }

  canWrite(workspaceId) {
    const s = this.session;
    return Boolean(s && WRITE_ROLES.includes(s.role) && (s.workspaces.includes("*") || s.workspaces.includes(workspaceId)));
  }

  get openMode() {
    return this.session?.name === "open" && this.session.workspaces.includes("*");
  }

  renderBar(current = null) {
    const select = h(
      "select",
      {
        class: "input ws-select",
        "aria-label": "Workspace",
        onchange: (event) => this.router.navigate(workspaceUrl(event.target.value)),
      },
      this.workspaces.map((w) => h("option", { value: w, selected: w === current }, w)),

    );
    const who = this.session
      ? h(
          "div",
          { class: "who" },
          this.openMode
            ? h("span", { class: "chip chip-warn", title: "No tokens configured: every request acts as admin" }, "open mode")
            : [
                h("span", { class: "who-name", "data-testid": "who" }, this.session.name),
                h("span", { class: "chip" }, this.session.role),
                h("button", { type: "button", class: "btn btn-small", onclick: () => this.signOut() }, "Sign out"),
              ],
        )
      : null;
    replaceChildren(
      this.bar,
      h("a", { class: "brand", href: "/" }, h("span", { class: "brand-mark", "aria-hidden": "true" }, "▚"), "runevents"),
      this.session && this.workspaces.length ? h("label", { class: "ws" }, h("span", { class: "sr-only" }, "Workspace"), select) : null,
      this.session && current ? h("a", { class: "nav-link", href: searchUrl(current), "data-testid": "search-link" }, "Search") : null,
      h("div", { class: "spacer" }),
      who,
    );
  }

  mount(view) {
    this.view?.destroy();
    this.view = view;
    view?.mount();
  }

  async show(route) {
    const { name, params } = route;
    this.currentWorkspace = params.workspaceId ?? null;
    if (name === "home" || name === "runs" || name === "search") {
      this.mount(null);
      await this.directory; // the list needs the configurations; home needs the workspaces
      if (this.router.current !== `${location.pathname}${location.search}`) return; // navigated meanwhile
    }
    if (name === "home") {
      if (this.workspaces.length) {
        const first = this.workspaces.includes("demo") ? "demo" : this.workspaces[0];
        this.router.navigate(workspaceUrl(first), { replace: true });
      } else {
        this.mount(null);
        this.renderBar();
        replaceChildren(
          this.main,
          notice("info", "No workspaces yet", "A workspace appears with its first run or configuration. Start the server with --demo for an example."),
        );
      }
      return;
    }
    if (name === "notFound") {
      this.mount(null);
      replaceChildren(this.main, notice("error", "Page not found", `Nothing lives at ${location.pathname}. `, h("a", { href: "/" }, "Go to the runs list")));
      return;
    }
    const ws = params.workspaceId;
    if (name === "runs" && !this.workspaces.includes(ws)) {
      // maybe created since the directory loaded: look again before saying it is unknown
      this.directory = this.loadDirectory();
      await this.directory;
      if (this.router.current !== `${location.pathname}${location.search}`) return;
      if (!this.workspaces.includes(ws)) {
        this.renderBar(); // an unknown workspace is not added to the picker
        replaceChildren(
          this.main,
          notice(
            "error",
            "Unknown workspace",
            `There is no workspace “${ws}” (it has no runs or configurations you can see). `,
            h("a", { href: "/" }, "Go to your workspaces"),
          ),
        );
        this.main.dataset.notFound = "workspace";
        return;
      }
    }
    delete this.main.dataset.notFound;
    this.renderBar(ws);
    if (name === "runs") {
      this.mount(new RunsListView(this.main, { workspaceId: ws, configurations: this.configurations, canWrite: this.canWrite(ws), router: this.router }));
    } else if (name === "search") {
      this.mount(new SearchView(this.main, { workspaceId: ws, configurations: this.configurations, router: this.router }));
    } else if (name === "run") {
      this.mount(new RunView(this.main, { workspaceId: ws, runId: params.runId, canWrite: this.canWrite(ws), router: this.router }));
    }
    this.main.focus({ preventScroll: true });
  }

  showSignIn(message = null) {
    this.mount(null);
    this.session = null;
    this.router.invalidate();
    this.renderBar();
    const input = h("input", {
      type: "password",
      class: "input",
      id: "token",
      name: "token",
      autocomplete: "current-password",
      required: true,
      "aria-describedby": "token-help",
    });
    const error = h("div", { class: "signin-error", role: "alert" });
    const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
    const form = h(
      "form",
      {
        class: "signin",
        onsubmit: async (event) => {
          event.preventDefault();
          button.disabled = true;
          error.textContent = "";
          try {
            await signIn(input.value.trim());
            this.session = await getSession();
            if (!this.session) throw new Error("Signed in, but the session was not kept (are cookies enabled?)");
            this.begin();
          } catch (e) {
            error.textContent = e.status === 401 ? "Unknown token." : errorMessage(e);
            button.disabled = false;
            input.select();
          }
        },
      },
      h("h1", null, "Sign in"),
      message ? h("p", { class: "notice notice-warning" }, message) : null,
      h("label", { for: "token" }, "API token"),
      input,
      h("p", { id: "token-help", class: "muted" }, "Paste a token created with ", h("code", null, "runevents token new"), ". It is exchanged for a session cookie and not stored in the page."),
      error,
      button,
    );
    replaceChildren(this.main, form);
    input.focus();
  }

  async signOut() {
    try {
      await signOut();
    } finally {
      this.showSignIn();
    }
  }

  fatal(error) {
    replaceChildren(this.main, notice("error", "The server cannot be reached", errorMessage(error)));
  }
}

new App().start();
