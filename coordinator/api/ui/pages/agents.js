// Agents (admin): every registered worker process with its state and heartbeat, and what each route can take.

import {api} from "../api.js";
import {badge, card, clear, empty, errorBox, h, loading, table} from "../dom.js";
import {ago, count, iso} from "../format.js";

export async function mount(root, ctx) {
  const body = h("div", {id: "agents-body"}, loading("agents"));
  root.append(h("div", {class: "page-head"}, h("h1", {}, "Agents")), body);
  const refresh = async () => {
    try {
      clear(body).append(render(await api("/api/agents")));
    } catch (err) {
      clear(body).append(errorBox(err, "Reading the agents"));
    }
  };
  await refresh();
  ctx.every(10000, refresh);
}

function render(found) {
  const routes = table([
    {label: "Route", cell: (r) => h("code", {}, r.route)},
    {label: "Live agents", class: "num", cell: (r) => r.live ? count(r.live) : h("span", {class: "error-text"}, "none")},
    {label: "Capacity", class: "num", cell: (r) => count(r.capacity)},
    {label: "Versions", cell: (r) => r.versions.join(", ") || "—"},
    {label: "Models", cell: (r) => r.models === null ? "any" : r.models.join(", ") || "—"},
    {label: "Last seen", cell: (r) => h("span", {title: iso(r.last_seen_at)}, ago(r.last_seen_at))},
  ], found.routes, {class: "agent-routes", rowClass: (r) => (r.live ? "" : "row-failed")});
  const agents = found.agents.length ? table([
    {label: "Agent", cell: (a) => h("code", {}, String(a.agent_id))},
    {label: "State", cell: (a) => badge(a.state)},
    {label: "Process", cell: (a) => `${a.process} · ${a.hostname} pid ${a.pid}`},
    {label: "Routes", cell: (a) => a.routes.join(", ")},
    {label: "Capacity", class: "num", cell: (a) => count(a.capacity)},
    {label: "Heartbeat", cell: (a) => h("span", {title: iso(a.heartbeat_at)}, ago(a.heartbeat_at))},
    {label: "Version", cell: (a) => `${a.version} (cogo ${a.software})`},
  ], found.agents, {class: "agents"}) : empty("No agent registered", "Workers register when they start (cogo up).");
  return h("div", {}, card("Routes: who can take their work", routes, {id: "routes"}),
    card("Registered agents", h("div", {}, agents, h("p", {class: "muted small"},
      `An agent is gone after ${found.gone_after_heartbeats} missed heartbeats.`)), {id: "agents"}));
}
