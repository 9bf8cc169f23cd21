// One run: why it is where it is (explain, in words), what a person must do (its pending approval), what it
// cost against its budget, its workflow as a graph with each node's state, and its timeline — all live.

import {api} from "../api.js";
import {showArtifact} from "../artifact.js";
import {meter} from "../charts.js";
import {badge, card, clear, empty, errorBox, h, loading, pretty, runLink, s, shortId, table} from "../dom.js";
import {ago, count, iso, percent, seconds, took, usd, when} from "../format.js";
import {drawGraph, STATE_HELP} from "../graph.js";

const EVENTS_SHOWN = 300;
const EVENTS_PAGE = 10000;  // GET /api/runs/{id}/events answers at most this many at once
const SETTLE_MS = 30000;
// Event ids may commit out of order (PostgreSQL): the page re-reads the run's events above a low mark and drops by id
// the ones it has. The mark is the highest id the page had in hand SETTLE_MS ago by its own clock (an id still
// missing below it by now is one that never commits) — as bus/cursor.py does for the server's readers.

export async function mount(root, ctx) {
  const runId = ctx.parts[1];
  const view = {runId, run: null, graph: null, events: [], eventIds: new Set(), marks: [], eventsMark: 0,
    selected: null, explain: null, approvals: [], decided: new Map(), asked: null};
  const head = h("div", {class: "page-head run-head"}, loading("the run"));
  const why = h("div", {}, loading("what the run waits for"));
  const approval = h("div", {id: "approval-slot"});
  const spend = h("div", {}, loading("spend"));
  const graph = h("div", {class: "graph-wrap"}, loading("the graph"));
  const detail = h("div", {class: "node-detail", id: "node-detail"});
  const timeline = h("div", {}, loading("the timeline"));
  const result = h("div", {});
  root.append(head);
  let first;
  try {
    first = await api(`/api/runs/${encodeURIComponent(runId)}`);
  } catch (err) {
    clear(head).append(h("h1", {}, "Run not found"));
    root.append(errorBox(err, `Reading run ${runId}`),
      h("p", {}, "The run does not exist, or this key's tenant cannot see it. ", h("a", {href: "#/runs"}, "All runs")));
    return;
  }
  root.append(
    h("div", {class: "run-top"},
      card("Why it is where it is", h("div", {}, approval, why), {id: "explain", class: "explain"}),
      card("Spend", spend, {id: "spend"})),
    card("Workflow", h("div", {class: "graph-layout"}, graph, detail), {id: "graph", wide: true,
      aside: legend()}),
    card("Timeline", timeline, {id: "timeline", wide: true}),
    card("Result", result, {id: "result", wide: true}));

  const drawAll = () => {
    clear(head).append(...header(view.run));
    clear(why).append(explainView(view.explain));
    const asked = `${view.approvals.map((a) => a.id).join()}|${[...view.decided.keys()].join()}`;
    if (asked !== view.asked) {  // redrawn only when it changes: a comment being typed survives a refresh
      view.asked = asked;
      clear(approval).append(...approvalView(view, ctx, refresh));
    }
    clear(spend).append(spendView(view.graph.spend));
    clear(graph).append(drawGraph(view.graph, {selected: view.selected, onSelect: (id) => {
      view.selected = id;
      drawAll();
    }}));
    clear(detail).append(...[nodeDetail(view)].flat());
    clear(timeline).append(timelineView(view));
    clear(result).append(resultView(view.run));
  };

  async function refresh() {
    const base = `/api/runs/${encodeURIComponent(runId)}`;
    try {
      const [runRow, explain, graphFound, approvals] = await Promise.all([api(base), api(`${base}/explain`),
        api(`${base}/graph`), api("/api/approvals", {query: {run_id: runId, status: "pending"}}),
        readEvents(base, view)]);
      Object.assign(view, {run: runRow, explain, graph: graphFound, approvals: approvals.approvals});
      drawAll();
    } catch (err) {
      clear(why).append(errorBox(err, "Refreshing the run"));
    }
  }

  view.run = first;
  await refresh();
  // The stream starts where the ledger is (late commits below it included); what committed between the read above
  // and its start comes with the refresh its hello asks for.
  ctx.watch({run_id: runId});
  const soon = ctx.debounce(400, refresh);
  const redrawTimeline = ctx.debounce(200, () => clear(timeline).append(timelineView(view)));
  ctx.on("trace", (e) => {
    if (e.run_id !== runId) return;
    addEvents(view, [e]);
    redrawTimeline();
    soon();
  });
  ctx.on("run", (r) => { if (r.run_id === runId || r.parent_run_id === runId) soon(); });
  ctx.on("approval", (a) => { if (a.run_id === runId) soon(); });
  ctx.on("hello", soon);
  ctx.every(10000, () => { if (view.run && !["completed", "failed", "cancelled"].includes(view.run.status)) soon(); });
}

/** Read the run's events above the page's low mark (page after page when there are many). */
async function readEvents(base, view) {
  let after = view.eventsMark;
  for (let page = 0; page < 5; page++) {
    const found = (await api(`${base}/events`, {query: {after_id: after}})).events;
    addEvents(view, found);
    if (found.length < EVENTS_PAGE) return;
    after = found[found.length - 1].id;
  }
}

/** Add the events not in hand yet, each where its id puts it, and move the low mark. */
function addEvents(view, events) {
  let high = view.marks.length ? view.marks[view.marks.length - 1][0] : view.eventsMark;
  const now = Date.now();
  for (const e of events) {
    if (view.eventIds.has(e.id)) continue;
    view.eventIds.add(e.id);
    high = Math.max(high, e.id);
    if (e.category === "sql") continue;
    let at = view.events.length;
    while (at > 0 && view.events[at - 1].id > e.id) at--;
    view.events.splice(at, 0, e);
  }
  const last = view.marks[view.marks.length - 1];
  if (last && high > last[0] && Math.floor(now / 1000) === Math.floor(last[1] / 1000)) {
    view.marks[view.marks.length - 1] = [high, now];  // one mark a second: a few dozen at most
  } else if (high > view.eventsMark && (!last || high > last[0])) view.marks.push([high, now]);
  while (view.marks.length && view.marks[0][1] <= now - SETTLE_MS) view.eventsMark = view.marks.shift()[0];
}

function header(run) {
  return [h("h1", {}, "Run ", h("span", {class: "mono", title: run.id}, run.id), " ", badge(run.status, "big-badge")),
    h("p", {class: "meta"},
      h("span", {}, `${run.intent}`), h("span", {class: "muted"}, ` · workflow ${run.workflow} v${run.workflow_version}`),
      h("span", {class: "muted"}, ` · tenant ${run.tenant}`),
      h("span", {class: "muted", title: iso(run.created_at)}, ` · started ${ago(run.created_at)}`),
      h("span", {class: "muted"}, ` · ${run.ended_at ? "took" : "running for"} ${took(run).replace(" so far", "")}`),
      run.parent_run_id ? h("span", {}, " · child of ", runLink(run.parent_run_id)) : null)];
}

function explainView(explain) {
  if (!explain) return loading("explain");
  const items = explain.waiting_for || [];
  return h("div", {class: "explain-body"},
    h("p", {class: "summary", id: "explain-summary"}, explain.summary),
    items.length > 1 ? h("ul", {}, items.map((i) => h("li", {}, i.summary))) : null,
    ...items.filter((i) => i.last_decision && i.last_decision.reason).slice(0, 3).map((i) =>
      h("p", {class: "muted small"}, `${i.node_id}: last decision ${i.last_decision.type} — ${i.last_decision.reason}`)),
    explain.error ? h("p", {class: "error-text"}, h("code", {}, String(explain.error.code ?? "")), " ",
      String(explain.error.message ?? "")) : null);
}

function approvalView(view, ctx, refresh) {
  if (!view.approvals.length) return [];
  const canDecide = ctx.me.is_admin || ctx.me.scopes.includes("approvals:decide");
  return view.approvals.map((a) => approvalPanel(a, view, canDecide, refresh));
}

/** A pending approval with its prompt, a comment box and the approve and reject buttons. */
export function approvalPanel(a, view, canDecide, onDecided) {
  const decided = view.decided.get(a.id);
  const comment = h("input", {type: "text", name: "comment", maxlength: 10000, placeholder: "Comment (optional)",
    "aria-label": "Comment"});
  const outcome = h("div", {class: "decision-outcome"});
  const act = async (decision, button) => {
    for (const b of panel.querySelectorAll("button")) b.disabled = true;
    button.textContent = decision === "approve" ? "Approving…" : "Rejecting…";
    try {
      const answer = await api(`/api/approvals/${encodeURIComponent(a.id)}/${decision}`,
        {method: "POST", body: {comment: comment.value}});
      view.decided.set(a.id, answer);
      clear(outcome).append(decidedLine(answer));
      if (onDecided) onDecided();
    } catch (err) {
      clear(outcome).append(errorBox(err, decision === "approve" ? "Approving" : "Rejecting"));
      for (const b of panel.querySelectorAll("button")) b.disabled = false;
      button.textContent = decision === "approve" ? "Approve" : "Reject";
    }
  };
  const approve = h("button", {type: "button", class: "approve", "data-action": "approve", disabled: !!decided || !canDecide});
  approve.textContent = "Approve";
  approve.addEventListener("click", () => act("approve", approve));
  const reject = h("button", {type: "button", class: "reject", "data-action": "reject", disabled: !!decided || !canDecide});
  reject.textContent = "Reject";
  reject.addEventListener("click", () => act("reject", reject));
  const panel = h("div", {class: "approval-panel", "data-approval": a.id},
    h("p", {class: "prompt"}, h("strong", {}, "A person must decide: "), String(a.prompt ?? "Approve?")),
    h("p", {class: "muted small"}, `node ${a.node_id} · asked ${ago(a.requested_at)}`,
      a.expires_at ? ` · answer due ${ago(a.expires_at)}` : ""),
    decided ? null : h("div", {class: "actions"}, comment, approve, reject),
    canDecide ? null : h("p", {class: "muted small"}, "This key lacks the approvals:decide scope."),
    outcome);
  if (decided) outcome.append(decidedLine(decided));
  return panel;
}

function decidedLine(answer) {
  return h("p", {class: "ok-text"}, `${answer.decision === "approve" ? "Approved" : "Rejected"} by ${answer.by}; ` +
    "the run is applying the decision.");
}

function spendView(sp) {
  const maxCost = sp.budget.max_cost_usd;
  const maxTokens = sp.budget.max_tokens;
  const cost = Math.max(sp.spent_cost_usd || 0, sp.tree_spent_cost_usd || 0);
  const used = Math.max(sp.spent_tokens || 0, sp.tree_spent_tokens || 0);
  const row = (label, value, max, text) => h("div", {class: "spend-row"},
    h("div", {class: "spend-label"}, h("span", {}, label), h("span", {class: "num"}, text)),
    typeof max === "number" && max > 0 ? meter(value, max) : null);
  return h("div", {class: "spend"},
    row("Cost", cost, maxCost, typeof maxCost === "number" ? `${usd(cost)} of ${usd(maxCost)} (${percent(cost / maxCost)})`
      : `${usd(cost)} (no budget)`),
    row("Tokens", used, maxTokens, typeof maxTokens === "number"
      ? `${count(used)} of ${count(maxTokens)} (${percent(used / maxTokens)})` : `${count(used)} (no budget)`),
    sp.tree_in_flight ? h("p", {class: "muted small"}, `${sp.tree_in_flight} assignment(s) in flight hold ` +
      `${usd(sp.tree_held_cost_usd)} and ${count(sp.tree_held_tokens)} tokens of the budget`) : null,
    sp.tree_spent_cost_usd > sp.spent_cost_usd ? h("p", {class: "muted small"},
      `This run itself: ${usd(sp.spent_cost_usd)}; its child runs: ${usd(sp.tree_spent_cost_usd - sp.spent_cost_usd)}`)
      : null);
}

function legend() {
  return h("div", {class: "legend"}, Object.entries(STATE_HELP).map(([state, help]) =>
    h("span", {class: `legend-item st-${state}`, title: help}, h("i", {}), state)));
}

function nodeDetail(view) {
  const node = view.graph.nodes.find((n) => n.id === view.selected);
  if (!node) return h("p", {class: "muted"}, "Click a node to see its steps, attempts and artifacts (a gate's " +
    "evidence, a task's edits.json or report.json).");
  const facts = [["Kind", node.kind], ["State", badge(node.state)]];
  if (node.route) facts.push(["Route", h("code", {}, node.route)], ["Agent", node.agent],
    ["Attempts allowed", String(node.max_attempts)]);
  if (node.kind === "gate") {
    facts.push(["Checks", h("code", {}, String(node.check ?? ""))], ["Threshold", String(node.threshold ?? "—")]);
    if (node.verdict) facts.push(["Verdict", h("span", {}, badge(node.verdict.passed ? "passed" : "failed"),
      ` value ${String(node.verdict.value)}`)]);
  }
  if (node.prompt) facts.push(["Prompt", node.prompt]);
  if (node.workflow) facts.push(["Starts", node.workflow]);
  if (node.mode) facts.push(["Fires when", node.mode]);
  const counts = Object.entries(node.counts || {});
  if (counts.length) facts.push(["Tokens", counts.map(([st, n]) => `${n} ${st}`).join(", ")]);
  const evidence = node.evidence ? view.graph.nodes.find((n) => n.id === node.evidence) : null;
  const evidenceToken = evidence ? (evidence.tokens || []).find((t) => t.artifact) : null;
  const children = (view.graph.children || []).filter((c) => c.node_id === node.id);
  return [h("div", {"data-node-detail": node.id},
    h("h3", {}, node.id), node.description ? h("p", {class: "muted"}, node.description) : null,
    h("dl", {class: "facts"}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    evidenceToken ? h("p", {class: "evidence"}, `Judged the result of ${evidence.id}: `,
      artifactButton(view.runId, evidenceToken, `View ${evidenceToken.artifact}`)) : null,
    children.length ? h("div", {}, h("h4", {}, "Child runs"), h("ul", {}, children.map((c) =>
      h("li", {}, runLink(c.run_id), " ", badge(c.status), ` ${c.workflow}`)))) : null),
  h("div", {class: "node-tokens"}, (node.tokens || []).length ? [h("h4", {}, "Steps (newest first)"),
    tokenTable(view.runId, node.tokens)] : h("p", {class: "muted"}, `Not reached: ${STATE_HELP[node.state]}.`))];
}

function artifactButton(runId, token, label) {
  return h("button", {type: "button", class: "link", "data-artifact": token.assignment_id,
    onclick: () => showArtifact(runId, token.assignment_id, `${token.artifact} · assignment ${token.assignment_id}`)},
  label || `View ${token.artifact}`);
}

function tokenTable(runId, tokens) {
  return table([
    {label: "Token", cell: (t) => h("span", {class: "mono", title: t.id}, shortId(t.id))},
    {label: "Status", cell: (t) => badge(t.status)},
    {label: "Try", class: "num", cell: (t) => String(t.attempt)},
    {label: "Loop", class: "num", cell: (t) => String(t.iteration)},
    {label: "Branch", class: "num", cell: (t) => t.branch_index === null ? "—" : String(t.branch_index)},
    {label: "Result", cell: (t) => t.artifact ? artifactButton(runId, t) : t.child_run_id ? runLink(t.child_run_id)
      : t.error ? h("span", {class: "error-text", title: t.error.message}, t.error.code) : h("span", {class: "muted"}, "—")},
    {label: "Updated", cell: (t) => h("span", {title: iso(t.updated_at)}, ago(t.updated_at))},
  ], tokens, {class: "tokens"});
}

function digest(data) {
  if (!data || typeof data !== "object") return "";
  const parts = [];
  if (data.reason) parts.push(String(data.reason));
  for (const [k, v] of Object.entries(data)) {
    if (k === "reason") continue;
    const text = typeof v === "string" ? v : JSON.stringify(v);
    parts.push(`${k}=${text && text.length > 40 ? `${text.slice(0, 39)}…` : text}`);
  }
  const all = parts.join(" ");
  return all.length > 160 ? `${all.slice(0, 159)}…` : all;
}

function timelineView(view) {
  const events = view.events;
  if (!events.length) return empty("No events yet", "The brain writes the run's first events as soon as it starts it.");
  const start = view.run.created_at;
  const end = view.run.ended_at || Math.max(Date.now() / 1000, events[events.length - 1].created_at);
  const shown = events.slice(-EVENTS_SHOWN).reverse();
  return h("div", {},
    gantt(view, start, end),
    h("div", {class: "events-scroll"}, table([
      {label: "+time", class: "num", cell: (e) => h("span", {title: when(e.created_at)}, seconds(e.created_at - start))},
      {label: "Event", cell: (e) => h("span", {class: `ev ev-${e.category}`}, e.type)},
      {label: "Node", cell: (e) => e.node_id ? h("code", {}, e.node_id) : ""},
      {label: "What it saw", cell: (e) => h("span", {class: "digest"}, e.data_cut ? "(long: see the events API)"
        : digest(e.data))},
    ], shown, {class: "events", rowId: (e) => String(e.id)})),
    events.length > EVENTS_SHOWN ? h("p", {class: "muted small"}, `The newest ${EVENTS_SHOWN} of ${events.length} ` +
      "events; GET /api/runs/{id}/events has all of them.") : null);
}

/** One row per node, one bar per token: from its first event to its last (to now while it is active). */
function gantt(view, start, end) {
  const rows = new Map();
  for (const e of view.events) {
    if (!e.node_id) continue;
    if (!rows.has(e.node_id)) rows.set(e.node_id, new Map());
    const key = e.token_id || e.node_id;
    const bar = rows.get(e.node_id).get(key) || {from: e.created_at, to: e.created_at, n: 0};
    bar.to = e.created_at;
    bar.n += 1;
    rows.get(e.node_id).set(key, bar);
  }
  const states = new Map(view.graph.nodes.map((n) => [n.id, n.state]));
  const labelW = 150;
  const width = 1200;
  const rowH = 22;
  const span = Math.max(0.001, end - start);
  const x = (t) => labelW + ((t - start) / span) * (width - labelW - 10);
  const height = rows.size * rowH + 24;
  const svg = s("svg", {class: "gantt", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `timeline of ${rows.size} nodes over ${seconds(span)}`});
  let i = 0;
  for (const [nodeId, bars] of rows) {
    const y = i * rowH + 4;
    const state = states.get(nodeId) || "pending";
    svg.append(s("text", {x: labelW - 8, y: y + 14, class: "axis", "text-anchor": "end"},
      nodeId.length > 18 ? `${nodeId.slice(0, 17)}…` : nodeId));
    for (const [token, bar] of bars) {
      const active = state === "running" || state === "waiting";
      const to = active && bar === [...bars.values()].at(-1) ? end : bar.to;
      svg.append(s("rect", {x: x(bar.from), y: y + 3, width: Math.max(3, x(to) - x(bar.from)), height: rowH - 8, rx: 3,
        class: `gantt-bar st-${state}`}, s("title", {}, `${nodeId} · ${shortId(token)} · ${seconds(to - bar.from)} · ` +
        `${bar.n} events`)));
    }
    i += 1;
  }
  svg.append(s("text", {x: labelW, y: height - 4, class: "axis"}, "0 s"),
    s("text", {x: width - 10, y: height - 4, class: "axis", "text-anchor": "end"}, seconds(span)));
  return svg;
}

function resultView(run) {
  if (run.error) {
    return h("div", {}, h("p", {class: "error-text"}, h("code", {}, String(run.error.code ?? "error")), " ",
      String(run.error.message ?? "")), h("pre", {class: "code"}, pretty(run.error)));
  }
  if (run.output !== null && run.output !== undefined) return h("pre", {class: "code", id: "run-output"}, pretty(run.output));
  return h("p", {class: "muted"}, "No result yet: the run has not ended.");
}
