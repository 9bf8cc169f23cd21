// Overview: the seed's cards — decision quality, bus wait per route, failures over time, recent gate verdicts
// with their artifacts, fleet health, pending approvals — refreshed as events arrive.

import {api} from "../api.js";
import {showArtifact} from "../artifact.js";
import {bars} from "../charts.js";
import {adminOnly, badge, card, clear, empty, errorBox, h, loading, runLink, table} from "../dom.js";
import {ago, count, iso, ms, percent, seconds, when} from "../format.js";

const WINDOWS = [["3600", "last hour"], ["86400", "last 24 h"], ["604800", "last 7 days"]];

/** Render a card's body from a load; the card shows "loading", then the data or the API's error. */
async function fill(body, load, render, what) {
  return spread(load(), what, [[body, render]]);
}

/** One answer rendered into several cards (each its own view of it), or its error into all of them. */
async function spread(answer, what, views) {
  try {
    const data = await answer;
    for (const [body, render] of views) clear(body).append(...[render(data)].flat());
  } catch (err) {
    for (const [body] of views) clear(body).append(errorBox(err, what));
  }
}

function slot(what) {
  return h("div", {class: "slot"}, loading(what));
}

export async function mount(root, ctx) {
  const windowS = ctx.query.get("window") || "86400";
  const chooser = h("select", {id: "window", "aria-label": "Time window"},
    WINDOWS.map(([value, label]) => h("option", {value, selected: value === windowS}, label)));
  chooser.addEventListener("change", () => { window.location.hash = `#/?window=${chooser.value}`; });

  const quality = slot("decision quality");
  const approvals = slot("approvals");
  const runs = slot("runs");
  const wait = slot("bus wait");
  const failures = slot("failures");
  const gates = slot("gate verdicts");
  const routes = slot("routes");
  const health = slot("fleet health");
  const alerts = slot("targets");
  root.append(
    h("div", {class: "page-head"}, h("h1", {}, "Overview"), h("label", {class: "inline"}, "Window ", chooser)),
    h("div", {class: "tiles"},
      card("Decision quality", quality, {id: "quality"}),
      card("Pending approvals", approvals, {id: "approvals"}),
      card("Runs", runs, {id: "runs"}),
      card("Bus wait", wait, {id: "wait"})),
    h("div", {class: "cards"},
      card("Failures over time", failures, {id: "failures", wide: true}),
      card("Recent gate verdicts", gates, {id: "gates", wide: true}),
      card("Alerts: seed 003's targets", alerts, {id: "targets", class: "full"}),
      card("Bus wait and run time per route", routes, {id: "routes", class: "full"}),
      card("Fleet health", health, {id: "health", class: "full"})));

  const refresh = () => {
    spread(api("/api/metrics/workflows/summary", {query: {window_s: windowS}}), "The workflow summary",
      [[quality, qualityTile], [runs, runsTile], [failures, (d) => failureChart(d, Number(windowS))],
        [gates, (d) => gateTable(d.recent_gates || [])]]);
    spread(api("/api/metrics/bus/latency", {query: {window_s: windowS}}), "The bus latency card",
      [[wait, waitTile], [routes, routeTable]]);
    spread(api("/api/approvals", {query: {limit: 1000}}), "Approvals", [[approvals, approvalsTile]]);
    spread(api("/api/metrics/targets"), "The targets card", [[alerts, targetTable]]);
  };
  const refreshHealth = () => {
    if (!ctx.me.is_admin) {
      clear(health).append(adminOnly("Fleet health", ctx.me));
      return;
    }
    fill(health, fleetHealth, renderHealth, "Fleet health");
  };
  refresh();
  refreshHealth();
  const soon = ctx.debounce(2000, refresh);
  ctx.on("run", soon);
  ctx.on("approval", soon);
  ctx.on("hello", soon);
  ctx.every(30000, refresh);
  ctx.every(20000, refreshHealth);
}

function qualityTile(summary) {
  const value = summary.decision_quality;
  const tone = value === null || value === undefined ? "" : value >= 0.85 ? "good" : value >= 0.7 ? "warn" : "bad";
  return [h("div", {class: ["big", tone], title: summary.decision_quality_definition || "", "data-value": value ?? ""},
    value === null || value === undefined ? "—" : percent(value)),
  h("p", {class: "muted small"}, `${count(summary.decision_quality_n)} assignments · target ≥ 85 %`),
  h("p", {class: "definition small"}, summary.decision_quality_definition || "")];
}

function approvalsTile(found) {
  const n = found.approvals.length;
  return [h("div", {class: ["big", n ? "warn" : "good"], "data-value": n}, String(n)),
    n ? h("p", {}, h("a", {href: "#/approvals"}, n === 1 ? "1 run waits for a person →" : `${n} runs wait for a person →`))
      : h("p", {class: "muted small"}, "No pending approvals: nothing waits for a person.")];
}

function runsTile(summary) {
  const totals = {};
  for (const statuses of Object.values(summary.runs || {})) {
    for (const [status, n] of Object.entries(statuses)) totals[status] = (totals[status] || 0) + n;
  }
  const order = ["running", "waiting", "pending", "completed", "failed", "cancelled"];
  const shown = order.filter((st) => totals[st]);
  if (!shown.length) return empty("No runs in this window", "Submit an intent: cogo submit codegen --tenant demo …");
  const workflows = Object.entries(summary.runs || {}).sort((a, b) => a[0].localeCompare(b[0]));
  return [h("div", {class: "status-counts"}, shown.map((st) => h("a", {href: `#/runs?status=${st}`, class: "count-pill"},
    badge(st), h("span", {class: "num"}, count(totals[st]))))),
  h("ul", {class: "by-workflow small"}, workflows.slice(0, 6).map(([name, statuses]) => h("li", {},
    h("code", {}, name), " ", h("span", {class: "muted"}, Object.entries(statuses).map(([st, n]) => `${n} ${st}`)
      .join(", ")))))];
}

/** Seed 003's targets as the generated Prometheus alert rules judge them: met, breached (the alert would fire
 * once it lasts) or nothing to judge yet. */
function targetTable(found) {
  const value = (t) => t.value === null || t.value === undefined ? "—"
    : t.name === "average queue wait" ? seconds(t.value) : percent(t.value);
  const state = (t) => t.ok === null || t.ok === undefined ? badge("no data", null, "pending")
    : t.ok ? badge("met", null, "passed") : badge("breached", null, "failed");
  return table([
    {label: "Target", cell: (t) => t.name},
    {label: "Now", class: "num", cell: (t) => h("span", {"data-value": t.value ?? ""}, value(t))},
    {label: "Goal", class: "num", cell: (t) => t.target},
    {label: "State", cell: state},
    {label: "Over", class: "num", cell: (t) => `${seconds(t.window_s)} · ${count(t.n)}`},
    {label: "Alert rule", cell: (t) => h("code", {}, t.alert)},
  ], found.targets || [], {rowId: (t) => t.alert});
}

function waitTile(latency) {
  const q = latency.queue_wait_ms || {};
  return [h("div", {class: "big"}, h("span", {title: "median"}, ms(q.p50)), h("span", {class: "sep"}, " / "),
    h("span", {title: "90th percentile"}, ms(q.p90))),
  h("p", {class: "muted small"}, `queue wait p50 / p90 over ${count(q.n)} assignments · target average < 5 s`)];
}

function failureChart(summary, windowS) {
  const byHour = new Map((summary.failures_by_hour || []).map((f) => [Math.floor(f.hour_start / 3600), f.failed]));
  const now = Math.floor(Date.now() / 1000 / 3600);
  const hours = Math.min(168, Math.max(1, Math.ceil(windowS / 3600)));
  const points = [];
  for (let hour = now - hours + 1; hour <= now; hour++) {
    const value = byHour.get(hour) || 0;
    const d = new Date(hour * 3600 * 1000);
    const tickEvery = hours <= 24 ? 6 : 24;
    points.push({label: when(hour * 3600), value, title: `${when(hour * 3600)} + 1 h: ${value} failed`,
      tick: d.getHours() % tickEvery === 0 ? (hours <= 24 ? `${String(d.getHours()).padStart(2, "0")}:00`
        : `${d.getMonth() + 1}/${d.getDate()}`) : ""});
  }
  const total = points.reduce((a, p) => a + p.value, 0);
  return [bars(points, {unit: " failed"}),
    h("p", {class: "muted small"}, total ? `${count(total)} failed runs in the window, per hour` :
      "No failed runs in this window.")];
}

function gateTable(gatesFound) {
  if (!gatesFound.length) {
    return empty("No gate verdicts yet", "Gates judge a step's result (e.g. codegen-build-test's test success rate). " +
      "Run one: cogo submit codegen --tenant demo --payload '{\"spec\": \"…\"}'.");
  }
  return table([
    {label: "Run", cell: (g) => runLink(g.run_id)},
    {label: "Gate", cell: (g) => h("code", {}, String(g.node))},
    {label: "Verdict", cell: (g) => badge(g.passed ? "passed" : "failed")},
    {label: "Value", class: "num", cell: (g) => typeof g.value === "number" ? g.value.toFixed(2) : String(g.value ?? "—")},
    {label: "When", cell: (g) => h("span", {title: iso(g.at)}, ago(g.at))},
    {label: "Evidence", cell: (g) => g.assignment_id
      ? h("button", {type: "button", class: "link", "data-artifact": g.assignment_id,
        onclick: () => showArtifact(g.run_id, g.assignment_id, `Gate ${g.node} of run ${g.run_id}`)}, "View report")
      : h("span", {class: "muted"}, "no artifact")},
  ], gatesFound, {class: "gates"});
}

function routeTable(latency) {
  const entries = Object.entries(latency.routes || {});
  if (!entries.length) return empty("No assignments in this window", "Bus wait is measured per route once work runs.");
  const slow = (v) => typeof v === "number" && v >= 5000 ? "bad" : "";
  return table([
    {label: "Route", cell: ([route]) => h("code", {}, route)},
    {label: "Wait p50", class: "num", cell: ([, r]) => h("span", {class: slow(r.queue_wait_ms?.p50)}, ms(r.queue_wait_ms?.p50))},
    {label: "Wait p90", class: "num", cell: ([, r]) => h("span", {class: slow(r.queue_wait_ms?.p90)}, ms(r.queue_wait_ms?.p90))},
    {label: "Run p50", class: "num", cell: ([, r]) => ms(r.run_ms?.p50)},
    {label: "Run p90", class: "num", cell: ([, r]) => ms(r.run_ms?.p90)},
    {label: "Assignments", class: "num", cell: ([, r]) => count(r.queue_wait_ms?.n ?? r.run_ms?.n)},
  ], entries.sort((a, b) => a[0].localeCompare(b[0])), {class: "routes"});
}

async function fleetHealth() {
  const [fleet, agents, state] = await Promise.allSettled([api("/api/fleet"), api("/api/agents"),
    api("/api/orchestrator/state")]);
  return {fleet, agents, state};
}

function settled(result, what, render) {
  return result.status === "fulfilled" ? render(result.value) : errorBox(result.reason, what);
}

function renderHealth({fleet, agents, state}) {
  return h("div", {class: "health"},
    settled(fleet, "The fleet", processesView),
    h("div", {},
      fleet.status === "fulfilled" ? queuesView(fleet.value) : null,
      settled(agents, "The agents", agentsView),
      settled(state, "The circuits", circuitsView)));
}

const PROCESS_TONE = {running: "up", up: "up", unknown: "waiting"};

function processesView(f) {
  const rows = [];
  rows.push({name: "API", state: "up", detail: `${f.api.hostname} pid ${f.api.pid}`});
  rows.push({name: "Broker", state: f.broker.reachable ? "up" : "down", detail: f.broker.error || "reachable"});
  for (const [setting, probe] of Object.entries(f.http || {})) {
    rows.push({name: setting === "metrics_port" ? "Metrics server" : setting === "flower_port" ? "Flower" : setting,
      state: probe.state === "up" ? "up" : "no answer", tone: probe.state === "up" ? "up" : "unknown",
      detail: probe.state === "up" ? probe.url : "not on the API's host", title: probe.detail});
  }
  const supervised = f.supervision && f.supervision.processes ? Object.entries(f.supervision.processes) : [];
  for (const [label, p] of supervised) {
    rows.push({name: label, state: p.state, detail: `pid ${p.pid} · ${p.restarts} restart(s)` +
      (p.last_exit_code !== null && p.last_exit_code !== undefined ? ` · last exit ${p.last_exit_code}` : "")});
  }
  if (!supervised.length) {
    for (const c of f.consumers || []) rows.push({name: c.name, state: "up", detail: `${c.queues.length} queue(s)`});
  }
  return h("div", {},
    h("h3", {}, "Processes"),
    table([{label: "Process", cell: (r) => h("span", {class: "mono"}, r.name)},
      {label: "State", cell: (r) => badge(r.state, null, r.tone ?? PROCESS_TONE[r.state])},
      {label: "", cell: (r) => h("span", {class: "muted", title: r.title || null}, String(r.detail ?? ""))}],
    rows, {class: "processes"}));
}

function queuesView(f) {
  const backlog = (f.queues || []).filter((q) => q.waiting > 0).sort((a, b) => (b.oldest_age_s || 0) - (a.oldest_age_s || 0));
  return h("div", {},
    h("h3", {}, "Queues"),
    backlog.length ? table([{label: "Queue", cell: (q) => h("code", {}, q.queue)},
      {label: "Waiting", class: "num", cell: (q) => count(q.waiting)},
      {label: "Oldest", class: "num", cell: (q) => seconds(q.oldest_age_s)},
      {label: "Running", class: "num", cell: (q) => count(q.running)}], backlog.slice(0, 8))
      : h("p", {class: "muted small"}, `No queue has work waiting (${count((f.queues || []).length)} queues).`));
}

function agentsView(a) {
  const byState = {};
  for (const agent of a.agents) byState[agent.state] = (byState[agent.state] || 0) + 1;
  const unserved = a.routes.filter((r) => r.live === 0);
  return h("div", {},
    h("h3", {}, h("a", {href: "#/agents"}, "Agents")),
    a.agents.length ? h("div", {class: "status-counts"}, Object.entries(byState).map(([st, n]) =>
      h("span", {class: "count-pill"}, badge(st), h("span", {class: "num"}, count(n)))))
      : empty("No agent registered", "Workers register when they start: cogo up starts them."),
    unserved.length ? h("p", {class: "warn-text"}, `No live agent serves ${unserved.map((r) => r.route).join(", ")}.`)
      : h("p", {class: "muted small"}, `Every one of ${a.routes.length} routes has a live agent.`));
}

function circuitsView(st) {
  const counts = st.circuit_counts || {};
  const open = (st.circuits || []).filter((c) => c.state !== "closed");
  return h("div", {},
    h("h3", {}, h("a", {href: "#/circuits"}, "Circuits")),
    h("div", {class: "status-counts"}, Object.entries(counts).map(([state, n]) =>
      h("span", {class: "count-pill"}, badge(state), h("span", {class: "num"}, count(n))))),
    open.length ? h("p", {class: "warn-text"}, `${open.length} circuit(s) not closed: ` +
      open.map((c) => `${c.service}.${c.role} (${c.model})`).join(", "))
      : h("p", {class: "muted small"}, "Every circuit is closed: no route is being shed."));
}
