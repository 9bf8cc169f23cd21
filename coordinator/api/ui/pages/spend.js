// Spend by tenant and model (GET /api/metrics/spend): what each tenant's runs cost, per model, in dollars and tokens.

import {api} from "../api.js";
import {meter} from "../charts.js";
import {clear, empty, errorBox, h, loading, table} from "../dom.js";
import {count, percent, usd} from "../format.js";

export async function mount(root, ctx) {
  const body = h("div", {id: "spend-body"}, loading("spend"));
  root.append(h("div", {class: "page-head"}, h("h1", {}, "Spend by tenant and model"),
    h("p", {class: "muted"}, ctx.me.is_admin ? "Every tenant." : `Tenant ${ctx.me.tenant} only.`)), body);
  const refresh = async () => {
    try {
      const found = await api("/api/metrics/spend");
      clear(body).append(render(found.by_tenant_model || []));
    } catch (err) {
      clear(body).append(errorBox(err, "Reading spend"));
    }
  };
  await refresh();
  const soon = ctx.debounce(3000, refresh);
  ctx.on("run", soon);
  ctx.every(10000, refresh);
}

function render(rows) {
  if (!rows.length) return empty("Nothing spent yet", "Spend is metered when a worker's model call settles.");
  const total = rows.reduce((a, r) => a + (r.cost_usd || 0), 0);
  const tokens = rows.reduce((a, r) => a + (r.tokens || 0), 0);
  const byCost = total > 0;  // a free model (cogo-local) costs nothing: then the share is of tokens
  const share = (r) => (byCost ? r.cost_usd || 0 : r.tokens || 0);
  const top = Math.max(...rows.map(share));
  const whole = byCost ? total : tokens;
  const sorted = [...rows].sort((a, b) => (b.cost_usd || 0) - (a.cost_usd || 0) || String(a.tenant).localeCompare(b.tenant));
  return h("div", {},
    h("div", {class: "tiles"},
      h("section", {class: "card"}, h("header", {}, h("h2", {}, "Total cost")), h("div", {class: "big"}, usd(total))),
      h("section", {class: "card"}, h("header", {}, h("h2", {}, "Total tokens")), h("div", {class: "big"}, count(tokens))),
      h("section", {class: "card"}, h("header", {}, h("h2", {}, "Tenants")),
        h("div", {class: "big"}, count(new Set(rows.map((r) => r.tenant)).size)))),
    h("section", {class: "card"}, table([
      {label: "Tenant", cell: (r) => String(r.tenant)},
      {label: "Model", cell: (r) => h("code", {}, String(r.model))},
      {label: "Cost", class: "num", cell: (r) => usd(r.cost_usd)},
      {label: "Tokens", class: "num", cell: (r) => count(r.tokens)},
      {label: byCost ? "Share of cost" : "Share of tokens", cell: (r) => h("span", {class: "share"},
        meter(share(r), top, {width: 160}), ` ${whole ? percent(share(r) / whole) : "—"}`)},
    ], sorted, {class: "spend-table"})));
}
