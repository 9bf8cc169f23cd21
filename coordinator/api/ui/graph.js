// A run's workflow as an SVG picture: layered left to right from the start node, loops drawn as arcs below,
// each node coloured by its state. Everything is built with DOM calls (s(...)); node ids and labels are text.

import {s} from "./dom.js";
import {shortId} from "./dom.js";

const W = 160;
const H = 64;
const GAP_X = 72;
const GAP_Y = 28;
const PAD = 24;
const LOOP_DIP = 46;

const KIND_LABEL = {
  task: "task", gate: "gate", approval: "approval", notify: "notify", parallel: "fan-out", foreach: "for each",
  join: "join", subworkflow: "sub-workflow", wait: "wait", end: "end",
};

/** Find the edges that go back (loops), with a depth-first walk from the start. */
function backEdges(nodes, edges, start) {
  const out = new Map(nodes.map((n) => [n.id, []]));
  edges.forEach((e, i) => out.get(e.from)?.push([e.to, i]));
  const back = new Set();
  const state = new Map();  // 1: on the stack, 2: done
  const visit = (id) => {
    state.set(id, 1);
    for (const [to, i] of out.get(id) || []) {
      if (state.get(to) === 1) back.add(i);
      else if (!state.has(to)) visit(to);
    }
    state.set(id, 2);
  };
  visit(start);
  nodes.forEach((n) => { if (!state.has(n.id)) visit(n.id); });
  return back;
}

/** Layers by longest path over the forward edges, then each layer ordered by its predecessors' positions. */
export function layout(graph) {
  const {nodes, edges, start} = graph;
  const back = backEdges(nodes, edges, start);
  const forward = edges.filter((e, i) => !back.has(i) && e.from !== e.to);
  const indegree = new Map(nodes.map((n) => [n.id, 0]));
  forward.forEach((e) => indegree.set(e.to, (indegree.get(e.to) || 0) + 1));
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  const queue = nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  queue.sort((a, b) => (a === start ? -1 : b === start ? 1 : 0));
  while (queue.length) {
    const id = queue.shift();
    for (const e of forward.filter((f) => f.from === id)) {
      layer.set(e.to, Math.max(layer.get(e.to), layer.get(id) + 1));
      indegree.set(e.to, indegree.get(e.to) - 1);
      if (indegree.get(e.to) === 0) queue.push(e.to);
    }
  }
  const layers = [];
  nodes.forEach((n) => (layers[layer.get(n.id)] ||= []).push(n.id));
  const position = new Map();
  layers.forEach((ids) => ids.forEach((id, i) => position.set(id, i)));
  for (let sweep = 0; sweep < 2; sweep++) {
    layers.forEach((ids, depth) => {
      if (!depth) return;
      const weight = (id) => {
        const from = forward.filter((e) => e.to === id).map((e) => position.get(e.from));
        return from.length ? from.reduce((a, b) => a + b, 0) / from.length : position.get(id);
      };
      ids.sort((a, b) => weight(a) - weight(b));
      ids.forEach((id, i) => position.set(id, i));
    });
  }
  const tallest = Math.max(...layers.map((ids) => ids.length));
  const boxes = new Map();
  layers.forEach((ids, depth) => {
    const offset = ((tallest - ids.length) * (H + GAP_Y)) / 2;
    ids.forEach((id, i) => boxes.set(id, {x: PAD + depth * (W + GAP_X), y: PAD + offset + i * (H + GAP_Y)}));
  });
  const width = PAD * 2 + layers.length * W + (layers.length - 1) * GAP_X;
  const skips = new Set(edges.map((e, i) => i).filter((i) => !back.has(i) && crosses(edges[i], boxes, layer)));
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y + (back.size || skips.size ? LOOP_DIP + 10 : 0);
  return {boxes, back, skips, width, height};
}

/** Whether a forward edge's straight curve would run through a node of a layer it passes over. */
function crosses(edge, boxes, layer) {
  const from = layer.get(edge.from);
  const to = layer.get(edge.to);
  if (to - from < 2) return false;
  const a = boxes.get(edge.from);
  const b = boxes.get(edge.to);
  for (const [id, box] of boxes) {
    const depth = layer.get(id);
    if (depth <= from || depth >= to) continue;
    const y = a.y + ((b.y - a.y) * (depth - from)) / (to - from);  // where the curve is, near that layer
    if (Math.abs(y - box.y) < H) return true;
  }
  return false;
}

/** The point at ``t`` of a cubic Bézier curve: where an edge's label sits (past the middle, where edges that
 * leave one node apart have already spread). */
function cubicAt(p0, p1, p2, p3, t = 0.6) {
  const u = 1 - t;
  const at = (a, b, c, d) => u * u * u * a + 3 * u * u * t * b + 3 * u * t * t * c + t * t * t * d;
  return {x: at(p0.x, p1.x, p2.x, p3.x), y: at(p0.y, p1.y, p2.y, p3.y)};
}

function edgePath(a, b, isBack, bottom, isSkip) {
  if (isSkip) {  // under the nodes it passes over, into the target from below
    const p0 = {x: a.x + W * 0.7, y: a.y + H};
    const p3 = {x: b.x + W * 0.3, y: b.y + H + 2};
    const dip = bottom + LOOP_DIP * 0.55;
    const p1 = {x: p0.x, y: dip};
    const p2 = {x: p3.x, y: dip};
    return {d: `M${p0.x},${p0.y} C${p1.x},${p1.y} ${p2.x},${p2.y} ${p3.x},${p3.y}`,
      mid: cubicAt(p0, p1, p2, p3, 0.5)};
  }
  if (!isBack) {
    const p0 = {x: a.x + W, y: a.y + H / 2};
    const p3 = {x: b.x - 2, y: b.y + H / 2};
    const dx = Math.max(30, (p3.x - p0.x) / 2);
    const p1 = {x: p0.x + dx, y: p0.y};
    const p2 = {x: p3.x - dx, y: p3.y};
    return {d: `M${p0.x},${p0.y} C${p1.x},${p1.y} ${p2.x},${p2.y} ${p3.x},${p3.y}`, mid: cubicAt(p0, p1, p2, p3)};
  }
  const p0 = {x: a.x + W / 2, y: a.y + H};
  const p3 = {x: b.x + W / 2, y: b.y + H + 2};
  const dip = bottom + LOOP_DIP;
  const p1 = {x: p0.x, y: dip};
  const p2 = {x: p3.x, y: dip};
  return {d: `M${p0.x},${p0.y} C${p1.x},${p1.y} ${p2.x},${p2.y} ${p3.x},${p3.y}`, mid: cubicAt(p0, p1, p2, p3)};
}

const REACHED = new Set(["running", "waiting", "done", "failed"]);

/** What a node's third line says: its progress in a few words. */
export function nodeLine(node) {
  const counts = node.counts || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (node.kind === "gate" && node.verdict) {
    const value = typeof node.verdict.value === "number" ? node.verdict.value.toFixed(2) : String(node.verdict.value);
    const threshold = typeof node.threshold === "number" ? ` vs ${node.threshold.toFixed(2)}` : "";
    return `${node.verdict.passed ? "passed" : "failed"} · ${value}${threshold}`;
  }
  const waiting = (node.tokens || []).find((t) => t.status === "waiting");
  if (node.state === "waiting" && waiting && waiting.wait_kind) return `waiting for ${waiting.wait_kind}`;
  if (node.state === "running") {
    const t = (node.tokens || []).find((x) => x.status === "pending" || x.status === "dispatched");
    return t && t.attempt > 1 ? `running · attempt ${t.attempt}` : "running";
  }
  if (total > 1) return `${node.state} · ×${total}`;
  return node.state;
}

/** Edges between the same two nodes drawn once, their labels joined ("reject / timeout"). */
function mergeParallel(edges) {
  const merged = new Map();
  for (const e of edges) {
    const key = `${e.from}\u0000${e.to}`;
    const seen = merged.get(key);
    if (!seen) merged.set(key, {...e});
    else seen.label = [seen.label || seen.kind, e.label || e.kind].join(" / ");
  }
  return [...merged.values()];
}

/**
 * The picture of graph (GET /api/runs/{id}/graph). onSelect(nodeId) is called when a node is clicked or
 * chosen with the keyboard; selected is the id to outline.
 */
export function drawGraph(found, {onSelect, selected} = {}) {
  const graph = {...found, edges: mergeParallel(found.edges)};
  const {boxes, back, skips, width, height} = layout(graph);
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const bottom = Math.max(...[...boxes.values()].map((b) => b.y + H));
  const marker = (id) => s("marker", {id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse", class: id}, s("path", {d: "M0,0 L10,5 L0,10 z"}));
  const svg = s("svg", {class: "wf-graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "data-width": width,
    "aria-label": `workflow ${graph.workflow}: ${graph.nodes.length} nodes`},
  s("defs", {}, ["arrow", "arrow-good", "arrow-bad", "arrow-taken"].map(marker)));
  const edgeLayer = s("g", {class: "edges"});
  const labelLayer = s("g", {class: "edge-labels"});
  graph.edges.forEach((e, i) => {
    const a = boxes.get(e.from);
    const b = boxes.get(e.to);
    if (!a || !b) return;
    const {d, mid} = edgePath(a, b, back.has(i), bottom, skips.has(i));
    const taken = REACHED.has(byId.get(e.from)?.state) && REACHED.has(byId.get(e.to)?.state);
    const tone = ["pass", "approve"].includes(e.kind) ? "good" : ["fail", "reject", "failure", "timeout"]
      .includes(e.kind) ? "bad" : "";
    const arrow = taken ? "arrow-taken" : tone ? `arrow-${tone}` : "arrow";
    edgeLayer.append(s("path", {d, class: ["edge", `edge-${e.kind}`, tone && `tone-${tone}`, taken && "taken",
      (back.has(i) || skips.has(i)) && "loop"], "marker-end": `url(#${arrow})`, "data-from": e.from, "data-to": e.to},
    s("title", {}, `${e.from} → ${e.to} (${e.kind}${e.label && e.label !== e.kind ? `: ${e.label}` : ""})`)));
    if (e.label) {
      const text = e.label.length > 22 ? `${e.label.slice(0, 21)}…` : e.label;
      labelLayer.append(s("text", {x: mid.x, y: mid.y - 4, class: "edge-label", "text-anchor": "middle"}, text));
    }
  });
  svg.append(edgeLayer);
  for (const node of graph.nodes) {
    const box = boxes.get(node.id);
    const name = node.id.length > 20 ? `${node.id.slice(0, 19)}…` : node.id;
    const kind = KIND_LABEL[node.kind] || node.kind;
    const group = s("g", {class: ["node", `st-${node.state}`, `kind-${node.kind}`, node.id === selected && "selected"],
      transform: `translate(${box.x},${box.y})`, tabindex: 0, role: "button", "data-node": node.id,
      "data-state": node.state, "aria-label": `${node.id}: ${kind}, ${node.state}`},
    s("title", {}, `${node.id} (${kind}) — ${node.state}${node.description ? `\n${node.description}` : ""}`),
    s("rect", {width: W, height: H, rx: node.kind === "end" ? H / 2 : 8, class: "node-box"}),
    s("rect", {width: 6, height: H, rx: 3, class: "node-stripe"}),
    s("text", {x: 16, y: 18, class: "node-kind"}, kind.toUpperCase()),
    s("text", {x: 16, y: 37, class: "node-name"}, name),
    s("text", {x: 16, y: 55, class: "node-line"}, nodeLine(node)));
    if (node.id === graph.start) group.append(s("text", {x: 2, y: -6, class: "node-kind start"}, "▶ START"));
    const select = () => onSelect && onSelect(node.id);
    group.addEventListener("click", select);
    group.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(); } });
    svg.append(group);
    const children = (graph.children || []).filter((c) => c.node_id === node.id);
    if (children.length) {
      const first = children[0];
      svg.append(s("a", {href: `#/runs/${encodeURIComponent(first.run_id)}`, class: "child-link"},
        s("text", {x: box.x + 8, y: box.y + H + 15},
          `↳ child ${shortId(first.run_id)}${children.length > 1 ? ` +${children.length - 1}` : ""}`)));
    }
  }
  svg.append(labelLayer);  // on top: a label is never hidden under a node
  return svg;
}

export const STATE_HELP = {
  pending: "not reached yet",
  running: "a step is at work",
  waiting: "waits for a person, a timer, a signal, a child run or its branches",
  done: "finished",
  failed: "its last attempt failed",
  skipped: "the run ended without it, or it was cancelled",
};
