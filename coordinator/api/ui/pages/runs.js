// Runs: newest first, filtered by status, intent and (for an admin) tenant; kept current by the live stream.

import {api} from "../api.js";
import {badge, clear, empty, errorBox, h, loading, runLink, table} from "../dom.js";
import {ago, iso, took} from "../format.js";

const STATUSES = ["", "pending", "running", "waiting", "completed", "failed", "cancelled"];
const LIMIT = 200;

export async function mount(root, ctx) {
  const filters = {status: ctx.query.get("status") || "", intent: ctx.query.get("intent") || "",
    tenant: ctx.me.is_admin ? ctx.query.get("tenant") || "" : ""};
  const status = h("select", {name: "status", id: "filter-status"},
    STATUSES.map((st) => h("option", {value: st, selected: st === filters.status}, st || "any status")));
  const intent = h("select", {name: "intent", id: "filter-intent"}, h("option", {value: ""}, "any intent"));
  const tenant = ctx.me.is_admin
    ? h("input", {name: "tenant", id: "filter-tenant", placeholder: "any tenant", value: filters.tenant, size: 14})
    : null;
  const form = h("form", {class: "filters", id: "run-filters"},
    h("label", {}, "Status ", status), h("label", {}, "Intent ", intent),
    tenant ? h("label", {}, "Tenant ", tenant) : h("span", {class: "muted"}, `tenant ${ctx.me.tenant}`),
    h("button", {type: "submit"}, "Filter"));
  const apply = () => {
    const q = new URLSearchParams();
    for (const [name, el] of [["status", status], ["intent", intent], ["tenant", tenant]]) {
      if (el && el.value.trim()) q.set(name, el.value.trim());
    }
    window.location.hash = `#/runs${q.toString() ? `?${q}` : ""}`;
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  status.addEventListener("change", apply);
  intent.addEventListener("change", apply);
  const list = h("div", {id: "runs-list"}, loading("runs"));
  const starter = h("div", {id: "new-run"});
  const canStart = ctx.me.is_admin || ctx.me.scopes.includes("intents:write");
  const newRun = h("button", {type: "button", class: "primary", id: "new-run-button", hidden: !canStart}, "New run");
  root.append(h("div", {class: "page-head"}, h("div", {class: "title-row"}, h("h1", {}, "Runs"), newRun), form),
    starter, h("section", {class: "card"}, list));

  const intents = api("/api/intents").then((found) => {
    for (const i of found.intents) intent.append(h("option", {value: i.name, selected: i.name === filters.intent}, i.name));
    if (filters.intent && ![...intent.options].some((o) => o.value === filters.intent)) {
      intent.append(h("option", {value: filters.intent, selected: true}, filters.intent));
    }
    return found.intents;
  }).catch(() => []);
  newRun.addEventListener("click", async () => {
    if (starter.firstChild) {
      clear(starter);
      return;
    }
    starter.append(startForm(await intents, ctx));
  });

  const refresh = async () => {
    try {
      const found = await api("/api/runs", {query: {...filters, limit: LIMIT}});
      clear(list).append(render(found.runs, filters, ctx));
    } catch (err) {
      clear(list).append(errorBox(err, "Listing runs"));
    }
  };
  await refresh();
  const soon = ctx.debounce(700, refresh);
  ctx.on("run", soon);
  ctx.on("hello", soon);
  ctx.every(15000, () => list.querySelectorAll("[data-ago]").forEach((el) => {
    el.textContent = ago(Number(el.dataset.ago));
  }));
}

function render(runs, filters, ctx) {
  if (!runs.length) {
    const filtered = filters.status || filters.intent || filters.tenant;
    return empty(filtered ? "No run matches these filters" : "No runs yet",
      filtered ? "Clear a filter to see more." : "Submit an intent: cogo submit codegen --tenant demo " +
        "--payload '{\"spec\": \"a function add(a, b)\"}' (or POST /api/intents).");
  }
  return h("div", {},
    table([
      {label: "Run", cell: (r) => runLink(r.id)},
      {label: "Intent", cell: (r) => h("span", {}, String(r.intent), r.workflow !== r.intent
        ? h("span", {class: "muted"}, ` · ${r.workflow}`) : null)},
      ctx.me.is_admin ? {label: "Tenant", cell: (r) => String(r.tenant)} : null,
      {label: "Status", cell: (r) => badge(r.status)},
      {label: "Parent", cell: (r) => r.parent_run_id ? runLink(r.parent_run_id) : h("span", {class: "muted"}, "—")},
      {label: "Started", cell: (r) => h("span", {title: iso(r.created_at), "data-ago": r.created_at}, ago(r.created_at))},
      {label: "Took", class: "num", cell: (r) => took(r)},
    ].filter(Boolean), runs, {class: "runs", rowId: (r) => r.id, rowClass: (r) => `row-${r.status}`}),
    runs.length >= LIMIT ? h("p", {class: "muted small"}, `The newest ${LIMIT} runs; filter to see older ones.`) : null);
}

/** An example payload from an intent's input schema: every required string property, empty. */
function example(schema) {
  const props = schema && schema.properties ? schema.properties : {};
  const required = new Set([...(schema.required || []), ...((schema.anyOf || [])[0]?.required || [])]);
  const out = {};
  for (const [name, prop] of Object.entries(props)) {
    if (!required.has(name)) continue;
    out[name] = prop.type === "array" ? [] : prop.type === "object" ? {} : prop.type === "number" ? 0 : "";
  }
  return out;
}

/** Start a run from the page: an intent, its tenant and its payload (checked by the API against the schema). */
function startForm(intents, ctx) {
  const choose = h("select", {name: "intent", id: "new-intent", required: true},
    intents.map((i) => h("option", {value: i.name}, `${i.name} — ${i.description || i.workflow}`)));
  const tenant = h("input", {name: "tenant", id: "new-tenant", value: ctx.me.tenant, readonly: !ctx.me.is_admin,
    required: true, size: 16});
  const payload = h("textarea", {name: "payload", id: "new-payload", rows: 5, spellcheck: "false"});
  const problem = h("div", {});
  const fillExample = () => {
    const found = intents.find((i) => i.name === choose.value);
    payload.value = JSON.stringify(example(found ? found.input_schema : {}), null, 2);
  };
  choose.addEventListener("change", fillExample);
  fillExample();
  const form = h("form", {class: "card start-form", id: "start-form"},
    h("h2", {}, "Start a run"),
    h("div", {class: "filters"}, h("label", {}, "Intent ", choose), h("label", {}, "Tenant ", tenant)),
    h("label", {for: "new-payload", class: "muted"}, "Payload (JSON; the intent's schema checks it)"), payload,
    problem, h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Start")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(problem);
    let body;
    try {
      body = JSON.parse(payload.value || "{}");
    } catch (err) {
      problem.append(errorBox({code: "payload.not_json", message: err.message}, "Reading the payload"));
      return;
    }
    try {
      const started = await api("/api/intents", {method: "POST",
        body: {tenant: tenant.value.trim(), intent: choose.value, payload: body}});
      window.location.hash = `#/runs/${encodeURIComponent(started.id)}`;
    } catch (err) {
      problem.append(errorBox(err, "Starting the run"));
    }
  });
  return form;
}
