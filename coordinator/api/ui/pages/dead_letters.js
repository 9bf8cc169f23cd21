// Dead letters: assignments held after their last attempt failed; an operator re-queues or discards each.

import {api} from "../api.js";
import {badge, clear, empty, errorBox, h, loading, runLink, shortId, table} from "../dom.js";
import {ago, count, iso, usd} from "../format.js";

const STATES = [["held", "held now"], ["requeued", "re-queued"], ["discarded", "discarded"], ["all", "all"]];

export async function mount(root, ctx) {
  const state = ctx.query.get("state") || "held";
  const chooser = h("select", {id: "letter-state", "aria-label": "Which letters"},
    STATES.map(([value, label]) => h("option", {value, selected: value === state}, label)));
  chooser.addEventListener("change", () => { window.location.hash = `#/dead-letters?state=${chooser.value}`; });
  const body = h("div", {id: "letters-body"}, loading("dead letters"));
  root.append(h("div", {class: "page-head"}, h("h1", {}, "Dead letters"), h("label", {class: "inline"}, "Show ", chooser)),
    body);
  const canAct = ctx.me.is_admin || ctx.me.scopes.includes("runs:cancel");
  const refresh = async () => {
    try {
      const found = await api("/api/dead-letters", {query: {state, limit: 500}});
      clear(body).append(render(found.dead_letters, state, canAct, refresh));
    } catch (err) {
      clear(body).append(errorBox(err, "Listing dead letters"));
    }
  };
  await refresh();
  const soon = ctx.debounce(1000, refresh);
  ctx.on("trace", (e) => { if (/^dispatch\.assignment\.(dead_lettered|requeued|discarded)$/.test(e.type)) soon(); });
  ctx.every(30000, refresh);
}

function render(letters, state, canAct, refresh) {
  if (!letters.length) {
    return empty(state === "held" ? "No dead letters held" : "No dead letters here",
      "An assignment is held here when its last attempt fails and its retry policy keeps dead letters.");
  }
  const act = async (letter, action, cell) => {
    cell.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      await api(`/api/dead-letters/${encodeURIComponent(letter.id)}/${action}`, {method: "POST", body: {}});
      refresh();
    } catch (err) {
      cell.append(errorBox(err, action === "requeue" ? "Re-queueing" : "Discarding"));
      cell.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  };
  const actions = (letter) => {
    if (!canAct || letter.dead_letter !== "held") return h("span", {class: "muted"}, "—");
    const cell = h("div", {class: "actions"});
    cell.append(h("button", {type: "button", onclick: () => act(letter, "requeue", cell)}, "Re-queue"),
      h("button", {type: "button", class: "reject", onclick: () => act(letter, "discard", cell)}, "Discard"));
    return cell;
  };
  return h("section", {class: "card"}, table([
    {label: "Assignment", cell: (l) => h("span", {class: "mono", title: l.id}, shortId(l.id))},
    {label: "Run", cell: (l) => runLink(l.run_id)},
    {label: "Tenant", cell: (l) => String(l.tenant)},
    {label: "Route", cell: (l) => h("code", {}, l.route)},
    {label: "State", cell: (l) => badge(l.dead_letter)},
    {label: "Attempts", class: "num", cell: (l) => `${count(l.attempts)} of ${count(l.max_attempts)}`},
    {label: "Last error", cell: (l) => h("span", {class: "error-text"}, String(l.last_error ?? ""))},
    {label: "Spent", class: "num", cell: (l) => usd(l.usage?.cost_usd)},
    {label: "Held since", cell: (l) => h("span", {title: iso(l.updated_at)}, ago(l.updated_at))},
    {label: "", cell: actions},
  ], letters, {class: "letters"}));
}
