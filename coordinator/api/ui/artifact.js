// An assignment's artifact (edits.json, report.json …) shown inline: fetched as JSON text from
// GET /api/runs/{run}/artifacts/{assignment} and shown in <pre> blocks — never rendered as HTML.

import {api} from "./api.js";
import {clear, dialog, errorBox, h, loading, pretty} from "./dom.js";
import {bytes, percent} from "./format.js";

/** Open the artifact of ``assignmentId`` (one of ``runId``'s assignments) in a dialog. */
export function showArtifact(runId, assignmentId, title) {
  const body = h("div", {class: "artifact"}, loading("the artifact"));
  const box = dialog(title || "Artifact", body);
  box.dataset.artifact = assignmentId;
  api(`/api/runs/${encodeURIComponent(runId)}/artifacts/${encodeURIComponent(assignmentId)}`)
    .then((found) => clear(body).append(...renderArtifact(found)))
    .catch((err) => clear(body).append(errorBox(err, "Reading the artifact")));
  return box;
}

export function renderArtifact(found) {
  const head = h("p", {class: "muted"}, h("code", {}, found.name), ` · ${found.content_type} · ${bytes(found.size_bytes)}`);
  if (found.binary) return [head, h("p", {}, "This file is binary: it is not shown.")];
  const parts = [head];
  if (found.truncated) {
    parts.push(h("p", {class: "notice"}, `Only the first ${bytes(found.content.length)} are shown (the file is larger).`));
  }
  let parsed;
  if (found.content_type === "application/json" && !found.truncated) {
    try {
      parsed = JSON.parse(found.content);
    } catch {
      parsed = undefined;
    }
  }
  if (parsed && Array.isArray(parsed.edits)) parts.push(...editsView(parsed));
  else if (parsed && parsed.tests && parsed.build) parts.push(...reportView(parsed));
  const raw = h("pre", {class: "code", "data-raw": ""}, parsed !== undefined ? pretty(parsed) : found.content);
  parts.push(parsed && (Array.isArray(parsed.edits) || parsed.tests)
    ? h("details", {}, h("summary", {}, "The whole file"), raw) : raw);
  return parts;
}

function editsView(data) {
  return [h("p", {}, `${data.edits.length} file(s) written`, data.summary ? ` — ${data.summary}` : ""),
    ...data.edits.map((e) => h("section", {class: "file"},
      h("h3", {}, h("code", {}, String(e.path ?? "?")), " ", h("span", {class: "muted"}, String(e.action ?? ""))),
      h("pre", {class: "code"}, String(e.content ?? ""))))];
}

function reportView(data) {
  const t = data.tests || {};
  const rate = typeof data.success_rate === "number" ? percent(data.success_rate) : "—";
  return [h("dl", {class: "facts"},
    h("dt", {}, "Build"), h("dd", {}, data.build.ok ? "ok" : "failed"),
    h("dt", {}, "Tests"), h("dd", {}, `${t.passed ?? 0} passed, ${t.failed ?? 0} failed, ${t.errors ?? 0} errors`),
    h("dt", {}, "Success rate"), h("dd", {}, rate),
    h("dt", {}, "Sandbox"), h("dd", {}, String(data.sandbox ?? "—"))),
  t.output_tail ? h("details", {}, h("summary", {}, "Test output (tail)"), h("pre", {class: "code"},
    String(t.output_tail))) : null].filter(Boolean);
}
