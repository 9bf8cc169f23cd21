// The dashboard's shell: sign-in, the nav bar, hash routes, and the one live stream the pages listen to.

import {api, session, whenRefused} from "./api.js";
import {adminOnly, clear, errorBox, h} from "./dom.js";
import {Live} from "./live.js";
import * as agents from "./pages/agents.js";
import * as approvals from "./pages/approvals.js";
import * as circuits from "./pages/circuits.js";
import * as deadLetters from "./pages/dead_letters.js";
import * as overview from "./pages/overview.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as spend from "./pages/spend.js";

// A key in the fragment (#key=…, as `cogo up` prints it) signs in; it leaves the address bar at once, before anything
// else can fail. Fragments are never sent to a server, so the key is in no request line and no log. A link is not
// trusted to replace a session: with a key signed in already, the page asks first, saying whose key the link holds
// (anyone can send a link that signs a browser into their own tenant).
let linkKey = keyFromFragment();

const PAGES = [
  {path: "", label: "Overview", page: overview},
  {path: "runs", label: "Runs", page: runs},
  {path: "approvals", label: "Approvals", page: approvals},
  {path: "spend", label: "Spend", page: spend},
  {path: "agents", label: "Agents", page: agents, admin: true},
  {path: "circuits", label: "Circuits", page: circuits, admin: true},
  {path: "dead-letters", label: "Dead letters", page: deadLetters},
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const liveBadge = document.getElementById("live");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const banner = document.getElementById("banner");

let me = null;
let current = null;
const live = new Live({onState: showLiveState, onRefused: () => signOut("The API refused the key (auth.invalid).")});

/** The key of a #key=… fragment ("" when it is empty or malformed), or null without one; it leaves the address bar. */
function keyFromFragment() {
  const hash = window.location.hash;
  if (!hash.startsWith("#key=")) return null;
  window.history.replaceState(null, "", `${window.location.pathname}${window.location.search}#/`);
  return (decoded(hash.slice("#key=".length)) ?? "").trim();
}

/** decodeURIComponent, or null for a malformed escape (`%`, `%zz`) instead of an exception. */
function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

function principalText(found) {
  return `${found.name} (${found.is_admin ? "admin: every tenant" : `tenant ${found.tenant}`})`;
}

function showLiveState(state, detail) {
  liveBadge.className = `live ${state}`;
  liveBadge.textContent = state === "live" ? "live" : state === "connecting" ? "connecting…" : "reconnecting";
  liveBadge.title = state === "live" ? "Live updates: on" : `Live updates: ${detail || state}`;
}

function parseRoute() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map((part) => decoded(part) ?? part);
  return {parts, query: new URLSearchParams(query)};
}

function renderNav(active) {
  clear(nav);
  for (const entry of PAGES) {
    if (entry.admin && !me.is_admin) continue;
    const link = h("a", {href: `#/${entry.path}`, class: entry.path === active ? "active" : null,
      "data-page": entry.path || "overview"}, entry.label);
    if (entry.path === "approvals") link.append(h("span", {id: "approvals-count", class: "count", hidden: true}));
    nav.append(link);
  }
  refreshApprovalsCount();
}

async function refreshApprovalsCount() {
  const badge = document.getElementById("approvals-count");
  if (!badge) return;
  try {
    const found = await api("/api/approvals", {query: {limit: 1000}});
    badge.textContent = String(found.approvals.length);
    badge.hidden = found.approvals.length === 0;
  } catch {
    badge.hidden = true;
  }
}

/** Everything a page gets: who signed in, the route, the live stream, and timers and listeners that end with it.
 * Once the page is left, nothing it asks for starts any more (a page still loading when left stays quiet). */
function pageContext(route) {
  const cleanups = [];
  let left = false;
  return {
    me,
    parts: route.parts,
    query: route.query,
    get left() {
      return left;
    },
    watch(params) {
      if (!left) live.open(params);
    },
    on(kind, handler) {
      if (!left) cleanups.push(live.on(kind, handler));
    },
    every(ms, fn) {
      if (left) return;
      const id = setInterval(fn, ms);
      cleanups.push(() => clearInterval(id));
    },
    debounce(ms, fn) {
      let timer = null;
      cleanups.push(() => clearTimeout(timer));
      return () => {
        clearTimeout(timer);
        if (!left) timer = setTimeout(fn, ms);
      };
    },
    cleanup() {
      left = true;
      cleanups.splice(0).forEach((fn) => fn());
    },
  };
}

async function route() {
  if (!me) return;
  if (current) current.cleanup();
  const parsed = parseRoute();
  const [first = "", second] = parsed.parts;
  const entry = PAGES.find((p) => p.path === first);
  renderNav(entry ? first : "");
  const ctx = pageContext(parsed);
  current = ctx;
  ctx.on("approval", debouncedCount);
  const root = clear(main);
  if (!(first === "runs" && second)) live.open({});
  if (first === "runs" && second) {
    await mount(run, root, ctx);
  } else if (!entry) {
    root.append(errorBox({code: "not_found", message: `There is no page #/${parsed.parts.join("/")}.`}, "Navigation"),
      h("p", {}, h("a", {href: "#/"}, "Go to the overview")));
  } else if (entry.admin && !me.is_admin) {
    root.append(h("h1", {}, entry.label), adminOnly(entry.label, me));
  } else {
    await mount(entry.page, root, ctx);
  }
}

async function mount(page, root, ctx) {
  try {
    await page.mount(root, ctx);
  } catch (err) {
    if (current === ctx) root.append(errorBox(err, "Loading this page"));
  }
}

const debouncedCount = (() => {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(refreshApprovalsCount, 500);
  };
})();

/** Leave the current page and its stream: nothing of the old key may keep running once the key changes. */
function leavePage() {
  live.close();
  showLiveState("offline", "no page is watching");
  if (current) current.cleanup();
  current = null;
}

function signOut(message) {
  session.signOut();
  me = null;
  leavePage();
  showBanner(null);
  showSignIn(message);
}

/** Sign in with `key`, whose principal is `found` (from /api/me): the old key's page and stream end first. */
function useKey(key, found, {fromLink = false} = {}) {
  leavePage();
  session.signIn(key);
  me = found;
  showBanner(fromLink ? `Signed in from a link as ${principalText(found)}. Not you? Sign out.` : null);
  start();
}

function showBanner(text) {
  clear(banner);
  banner.hidden = !text;
  if (text) {
    banner.append(h("span", {}, text),
      h("button", {type: "button", class: "ghost", "aria-label": "Dismiss", onclick: () => showBanner(null)}, "×"));
  }
}

/** A #key=… link: sign in with it when no key is signed in; else ask, naming both keys, before switching. */
async function signInFromLink(key) {
  if (!key || key === session.key()) {
    if (!key) showBanner("The link's key was empty or malformed.");
    resumeSession();
    return;
  }
  let found;
  try {
    found = await api("/api/me", {key});
  } catch (err) {
    showBanner(`The link's key was refused (${err.code}).`);
    resumeSession();
    return;
  }
  let before = me;
  if (!before && session.key()) before = await api("/api/me").catch(() => null);
  if (!session.key()) {  // none signed in (or the stored one was just refused): the link signs in, and says as whom
    useKey(key, found, {fromLink: true});
    return;
  }
  confirmSwitch(key, found, before);
}

/** Back to the signed-in key's pages, or the sign-in form without one. */
function resumeSession() {
  if (me) route();
  else signInWithStoredKey();
}

function confirmSwitch(key, found, before) {
  leavePage();
  showBanner(null);
  const stay = h("button", {type: "button", id: "switch-stay"}, "Stay signed in as before");
  const go = h("button", {type: "button", class: "primary", id: "switch-go"}, `Switch to ${found.name}`);
  stay.addEventListener("click", () => {
    if (before) me = before;
    resumeSession();
  });
  go.addEventListener("click", () => useKey(key, found, {fromLink: true}));
  clear(main).append(h("section", {class: "signin card", id: "switch-key"},
    h("h1", {}, "Switch to another key?"),
    h("p", {}, "The link you opened holds another API key. Switch only if you expect it: anyone can send a link ",
      "that signs you in as them, so that what you do lands in their tenant."),
    h("dl", {class: "facts"},
      h("dt", {}, "Signed in now"), h("dd", {id: "switch-now"}, before ? principalText(before) : "a key"),
      h("dt", {}, "The link's key"), h("dd", {id: "switch-new"}, principalText(found))),
    h("div", {class: "actions"}, go, stay)));
  stay.focus();
}

function showSignIn(message) {
  clear(nav);
  who.textContent = "";
  signOutButton.hidden = true;
  showLiveState("offline", "signed out");
  const input = h("input", {type: "password", name: "key", id: "key", autocomplete: "off", required: true,
    placeholder: "cogo_k…", spellcheck: "false"});
  const problem = h("div", {class: "signin-problem"});
  if (message) problem.append(h("p", {class: "error-text"}, message));
  const form = h("form", {class: "signin card", id: "signin"},
    h("h1", {}, "Sign in to cogo"),
    h("p", {}, "Paste an API key. It stays in this browser tab only (session storage) and is sent as ",
      h("code", {}, "Authorization: Bearer"), " with each request."),
    h("label", {for: "key"}, "API key"), input, problem,
    h("button", {type: "submit", class: "primary"}, "Sign in"),
    h("p", {class: "muted"}, h("code", {}, "cogo up"), " prints a dashboard link that signs you in. The admin key is ",
      "in ", h("code", {}, "<COGO_HOME>/admin.key"), "; ", h("code", {}, "cogo keys create"), " makes one per tenant."));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    clear(problem);
    try {
      useKey(key, await api("/api/me", {key}));
    } catch (err) {
      problem.append(errorBox(err, "Sign-in"));
    }
  });
  clear(main).append(form);
  input.focus();
}

function start() {
  who.textContent = `${me.is_admin ? "admin" : `tenant ${me.tenant}`} · ${me.name}`;
  who.title = `scopes: ${me.scopes.join(", ")}`;
  signOutButton.hidden = false;
  if (!window.location.hash || window.location.hash === "#") window.history.replaceState(null, "", "#/");
  route();
}

async function boot() {
  whenRefused(() => signOut("The API refused the key: it is unknown, revoked or mistyped (auth.invalid)."));
  signOutButton.addEventListener("click", () => signOut());
  window.addEventListener("hashchange", () => {
    if (window.location.hash.startsWith("#key=")) {
      signInFromLink(keyFromFragment());
      return;
    }
    route();
  });
  if (linkKey !== null) {
    const key = linkKey;
    linkKey = null;
    signInFromLink(key);
    return;
  }
  signInWithStoredKey();
}

async function signInWithStoredKey() {
  if (!session.key()) {
    showSignIn();
    return;
  }
  try {
    me = await api("/api/me");
    start();
  } catch (err) {
    if (err.status !== 401) {
      clear(main).append(errorBox(err, "Reaching the API"), h("p", {}, "Reload the page to try again."));
    }
  }
}

boot();
