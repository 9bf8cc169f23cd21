// Circuits (admin): each (service, role, model) circuit breaker — closed, open (shedding work) or half open.

import {api} from "../api.js";
import {badge, clear, empty, errorBox, h, loading, table} from "../dom.js";
import {ago, count, iso} from "../format.js";

export async function mount(root, ctx) {
  const body = h("div", {id: "circuits-body"}, loading("circuits"));
  root.append(h("div", {class: "page-head"}, h("h1", {}, "Circuits")), body);
  const refresh = async () => {
    try {
      clear(body).append(render(await api("/api/orchestrator/state")));
    } catch (err) {
      clear(body).append(errorBox(err, "Reading the circuits"));
    }
  };
  await refresh();
  const soon = ctx.debounce(2000, refresh);
  ctx.on("trace", (e) => { if (String(e.type).startsWith("dispatch.circuit.")) soon(); });
  ctx.every(15000, refresh);
}

function render(state) {
  const circuits = state.circuits || [];
  if (!circuits.length) {
    return empty("No circuit has tripped or been tracked yet",
      "A circuit is kept per (service, role, model) once its route sees work; it opens after repeated failures.");
  }
  const order = {open: 0, half_open: 1, closed: 2};
  const sorted = [...circuits].sort((a, b) => (order[a.state] ?? 3) - (order[b.state] ?? 3));
  return h("section", {class: "card"}, table([
    {label: "Route", cell: (c) => h("code", {}, `${c.service}.${c.role}`)},
    {label: "Model", cell: (c) => String(c.model)},
    {label: "State", cell: (c) => badge(c.state)},
    {label: "Failures in a row", class: "num", cell: (c) => count(c.consecutive_failures)},
    {label: "Window", class: "num", cell: (c) => `${count(c.window_failures)} of ${count(c.window_total)} failed`},
    {label: "Opened", cell: (c) => c.opened_at ? h("span", {title: iso(c.opened_at)}, ago(c.opened_at)) : "—"},
    {label: "Retry", cell: (c) => c.retry_at ? h("span", {title: iso(c.retry_at)}, ago(c.retry_at)) : "—"},
    {label: "Why", cell: (c) => h("span", {class: "muted"}, String(c.reason ?? ""))},
  ], sorted, {class: "circuits"}));
}
