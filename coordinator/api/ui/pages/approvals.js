// Approvals: every pending request the key may see, with approve and reject buttons (the HITL gateway of seed
// 002). Who decided is the signed-in key's principal: the API takes it from the key, never from the page.

import {api} from "../api.js";
import {clear, empty, errorBox, h, loading, runLink} from "../dom.js";
import {approvalPanel} from "./run.js";

export async function mount(root, ctx) {
  const list = h("div", {id: "approvals-list"}, loading("pending approvals"));
  const canDecide = ctx.me.is_admin || ctx.me.scopes.includes("approvals:decide");
  root.append(h("div", {class: "page-head"}, h("h1", {}, "Approvals"),
    h("p", {class: "muted"}, canDecide ? `You decide as ${ctx.me.name}.`
      : "This key can read approvals but lacks the approvals:decide scope to answer them.")), list);
  const view = {decided: new Map()};
  const refresh = async () => {
    try {
      const found = await api("/api/approvals", {query: {limit: 1000}});
      clear(list).append(render(found.approvals, view, canDecide, ctx, refresh));
    } catch (err) {
      clear(list).append(errorBox(err, "Listing approvals"));
    }
  };
  await refresh();
  const soon = ctx.debounce(500, refresh);
  ctx.on("approval", soon);
  ctx.on("hello", soon);
  ctx.every(30000, refresh);
}

function render(approvals, view, canDecide, ctx, refresh) {
  if (!approvals.length) {
    return empty("No pending approvals", "Nothing waits for a person. A workflow's approval node (e.g. upgrade's " +
      "“approve”) asks here, and on the run's own page.");
  }
  return h("div", {class: "approval-list"}, approvals.map((a) => h("section", {class: "card approval-card",
    "data-run": a.run_id},
  h("div", {class: "approval-head"}, h("span", {}, "Run ", runLink(a.run_id), " · node ", h("code", {}, a.node_id)),
    ctx.me.is_admin ? h("span", {class: "muted"}, `tenant ${a.tenant}`) : null),
  approvalPanel(a, view, canDecide, refresh))));
}
