"""What the dashboard reads: its static files and their headers, ``/api/me``, a run's graph, and an assignment's
artifact (confined to the artifacts directory, whatever its ``result_url`` says)."""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path

import pytest
from sqlalchemy import event, select, update

from bus.schema import agent_messages
from bus.settings import Settings
from coordinator.api.dashboard import FILES, UI_DIR
from coordinator.artifacts import MAX_BYTES
from coordinator.schema import approvals
from tests.support.api import app_of, http, make_key
from tests.support.harness import Fleet, registry_of, settle, submit
from workers.handler import WorkResult

PICTURE = """
name: picture
start: work
nodes:
  work: {kind: task, route: {service: t, role: work}, agent: {agent_id: w}, output: work, next: split,
         retry: {maximum_attempts: 2}}
  split: {kind: parallel, branches: [left, right], join: merge}
  left: {kind: task, route: {service: t, role: side}, agent: {agent_id: s}, next: merge}
  right: {kind: task, route: {service: t, role: side}, agent: {agent_id: s}, next: merge}
  merge: {kind: join, mode: all, next: check}
  check: {kind: gate, success_rate: {value: context.work.rate, threshold: 0.8}, pass: ask, fail: work}
  ask: {kind: approval, prompt: "ship it?", approve: child, reject: done}
  child: {kind: subworkflow, workflow: echo, next: done}
  done: {kind: end, output: {ok: "`true`"}}
"""


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", broker_url="memory://", policy_file=Path(os.devnull)).checked()


def _work(ctx, _payload) -> WorkResult:
    """Writes ``edits.json`` like the codegen worker, and names it in ``result_url``."""
    path = ctx.artifacts_dir / "edits.json"
    path.write_text(json.dumps({"edits": [{"path": "add.py", "action": "create", "content": "<script>x</script>"}]}))
    return WorkResult(output={"rate": 1.0}, result_url=path.resolve().as_uri())


@pytest.fixture
def world(engine, tmp_path):
    """Runs of two tenants of the picture workflow, each waiting at its approval; the API over the same ledger."""
    fleet = Fleet(engine, {("t", "work"): _work, ("t", "side"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(PICTURE, builtin=True), settings=_settings(tmp_path))
    runs = {tenant: submit(fleet, "picture", {}, tenant=tenant) for tenant in ("acme", "zeta")}
    settle(fleet)
    return fleet, app_of(fleet), runs


def _approval_of(engine, run_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(approvals.c.id).where(approvals.c.run_id == run_id)).scalar_one()


def _assignment(engine, run_id: str, route: tuple[str, str] = ("t", "work")) -> str:
    with engine.connect() as conn:
        return conn.execute(select(agent_messages.c.id).where(
            agent_messages.c.run_id == run_id, agent_messages.c.service == route[0],
            agent_messages.c.role == route[1], agent_messages.c.kind == "assignment")).scalars().first()


# -- the static files ------------------------------------------------------------------------------------------
def _imports(name: str, source: str) -> set[str]:
    """The dashboard files a module imports, as paths under ``/ui/``."""
    found = re.findall(r"""^import .* from "(\.{1,2}/[^"]+)";$""", source, re.MULTILINE)
    return {posixpath.normpath(posixpath.join(posixpath.dirname(name), spec)) for spec in found}


def test_the_dashboard_is_served_without_a_key_with_a_strict_policy_and_every_module_it_imports(sqlite_engine,
                                                                                                tmp_path):
    app = app_of(Fleet(sqlite_engine, {}, settings=_settings(tmp_path)))
    anonymous = http(app)
    assert anonymous.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert anonymous.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = anonymous.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp \
        and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline for the policy to allow
    seen, todo = set(), ["app.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        answer = anonymous.get(f"/ui/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8", name
        assert answer.headers["content-security-policy"] == csp
        todo += _imports(name, answer.text)
    assert {"app.js", "api.js", "live.js", "dom.js", "graph.js", "pages/run.js", "pages/overview.js"} <= seen
    assert anonymous.get("/ui/app.css").headers["content-type"] == "text/css; charset=utf-8"


@pytest.mark.parametrize("path", ["/ui/../dashboard.py", "/ui/%2e%2e/dashboard.py", "/ui/.hidden", "/ui/pages/",
                                  "/ui/../../server.py", "/ui/nothing.js", "/ui/README.md"])
def test_only_the_dashboards_own_files_are_served(sqlite_engine, tmp_path, path):
    answer = http(app_of(Fleet(sqlite_engine, {}, settings=_settings(tmp_path)))).get(path)
    assert answer.status_code == 404, answer.text
    assert "def " not in answer.text


def test_a_name_that_is_no_shipped_file_is_not_found_whatever_it_holds(sqlite_engine, tmp_path):
    """Names are looked up among the shipped files, never handed to the file system (a NUL byte, a name longer than
    the system allows)."""
    client = http(app_of(Fleet(sqlite_engine, {}, settings=_settings(tmp_path))))
    client.raise_server_exceptions = False
    for path in ["/ui/a%00.js", "/ui/" + "a" * 5000 + ".js", "/ui/pages/" + "b/" * 600 + "c.js", "/ui/%ff.js",
                 "/ui/app.js%00"]:
        answer = client.get(path)
        assert answer.status_code == 404, (path[:40], answer.status_code)
        assert answer.json()["error"]["code"] == "not_found"
    assert set(FILES) >= {"index.html", "app.js", "pages/run.js", "app.css"}
    assert client.get("/ui/pages/run.js").status_code == 200


def test_no_dashboard_file_loads_from_another_origin_or_turns_data_into_markup():
    sources = {p.relative_to(UI_DIR).as_posix(): p.read_text() for p in UI_DIR.rglob("*") if p.is_file()}
    assert "app.js" in sources and "index.html" in sources
    for name, text in sources.items():
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), name  # no CDN, no remote font
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function",
                             text), name


# -- who am I ---------------------------------------------------------------------------------------------------
def test_me_says_which_tenant_and_scopes_a_key_has(world):
    fleet, app, _runs = world
    assert http(app).get("/api/me").json()["error"]["code"] == "auth.required"
    reader = http(app, make_key(fleet.engine, "acme", ["runs:read"])).get("/api/me").json()
    assert reader == {"tenant": "acme", "name": "key:test acme", "scopes": ["runs:read"], "is_admin": False}
    assert http(app, make_key(fleet.engine, "ops", ["admin"])).get("/api/me").json()["is_admin"] is True


# -- the graph ----------------------------------------------------------------------------------------------------
def _nodes(graph: dict) -> dict[str, dict]:
    return {n["id"]: n for n in graph["nodes"]}


def test_the_graph_shows_every_node_and_edge_with_each_nodes_state_from_its_tokens(world):
    fleet, app, runs = world
    client = http(app, make_key(fleet.engine, "acme", ["runs:read", "approvals:decide"]))
    graph = client.get(f"/api/runs/{runs['acme']}/graph").json()
    assert (graph["workflow"], graph["start"], graph["status"]) == ("picture", "work", "waiting")
    nodes = _nodes(graph)
    assert {k: n["state"] for k, n in nodes.items()} == {
        "work": "done", "split": "done", "left": "done", "right": "done", "merge": "done", "check": "done",
        "ask": "waiting", "child": "pending", "done": "pending"}
    assert (nodes["work"]["kind"], nodes["work"]["route"], nodes["work"]["max_attempts"]) == ("task", "t.work", 2)
    assert nodes["check"]["verdict"] == {"passed": True, "value": 1.0}
    assert (nodes["check"]["threshold"], nodes["check"]["evidence"]) == (0.8, "work")
    assert nodes["ask"]["prompt"] == "ship it?" and nodes["ask"]["tokens"][0]["wait_kind"] == "approval"
    assert nodes["work"]["tokens"][0]["artifact"] == "edits.json"
    assert nodes["left"]["tokens"][0]["artifact"] is None
    assert nodes["child"]["workflow"] == "echo" and nodes["merge"]["mode"] == "all"
    assert all("output" not in t for n in graph["nodes"] for t in n["tokens"])
    edges = {(e["from"], e["to"], e["kind"]) for e in graph["edges"]}
    assert edges == {("work", "split", "next"), ("split", "left", "branch"), ("split", "right", "branch"),
                     ("split", "merge", "join"), ("left", "merge", "next"), ("right", "merge", "next"),
                     ("merge", "check", "next"), ("check", "ask", "pass"), ("check", "work", "fail"),
                     ("ask", "child", "approve"), ("ask", "done", "reject"), ("child", "done", "next")}
    spend = graph["spend"]
    assert set(spend) >= {"budget", "spent_tokens", "spent_cost_usd", "tree_spent_cost_usd", "tree_in_flight"}
    assert set(spend["budget"]) == {"max_cost_usd", "max_tokens"}

    # approved: the child run starts, ends, and the run completes; the child is a link on its node
    assert client.post(f"/api/approvals/{_approval_of(fleet.engine, runs['acme'])}/approve").status_code == 202
    settle(fleet)
    graph = client.get(f"/api/runs/{runs['acme']}/graph").json()
    assert graph["status"] == "completed"
    assert {n["id"]: n["state"] for n in graph["nodes"]}["child"] == "done"
    [child] = graph["children"]
    assert (child["node_id"], child["workflow"], child["status"]) == ("child", "echo", "completed")
    assert graph["children_count"] == 1
    assert client.get(f"/api/runs/{child['run_id']}/graph").json()["parent_run_id"] == runs["acme"]


def test_the_graph_reads_no_tokens_output_but_the_gates(world):
    """A task's output can be large (the run's context holds it): the graph reads the output column only of the
    gates' tokens, by id."""
    fleet, app, runs = world
    client = http(app, make_key(fleet.engine, "acme", ["runs:read"]))
    statements: list[str] = []

    def record(_conn, _cursor, statement, _parameters, _context, _many):
        statements.append(statement)

    event.listen(fleet.engine, "before_cursor_execute", record)
    try:
        graph = client.get(f"/api/runs/{runs['acme']}/graph").json()
    finally:
        event.remove(fleet.engine, "before_cursor_execute", record)
    assert _nodes(graph)["check"]["verdict"] == {"passed": True, "value": 1.0}
    token_reads = [st for st in statements if re.search(r"\bFROM tokens\b", st)]
    assert token_reads
    outputs = [st for st in token_reads if "tokens.output" in st]
    assert len(outputs) == 1 and "tokens.id IN" in outputs[0], outputs


def test_a_node_the_run_never_reached_is_skipped_once_it_ends(world):
    fleet, app, runs = world
    admin = http(app, make_key(fleet.engine, "ops", ["admin"]))
    assert admin.post(f"/api/approvals/{_approval_of(fleet.engine, runs['zeta'])}/reject").status_code == 202
    settle(fleet)
    states = {n["id"]: n["state"] for n in admin.get(f"/api/runs/{runs['zeta']}/graph").json()["nodes"]}
    assert (states["ask"], states["child"], states["done"]) == ("done", "skipped", "done")


def test_another_tenants_graph_and_artifacts_answer_404_with_nothing_of_theirs(world):
    fleet, app, runs = world
    acme = http(app, make_key(fleet.engine, "acme", ["runs:read"]))
    theirs = _assignment(fleet.engine, runs["zeta"])
    for path in (f"/api/runs/{runs['zeta']}/graph", f"/api/runs/{runs['zeta']}/artifacts/{theirs}"):
        answer = acme.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "run.unknown", path
        assert "zeta" not in answer.text and "edits" not in answer.text
    # their assignment through my own run: not mine either
    answer = acme.get(f"/api/runs/{runs['acme']}/artifacts/{theirs}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "artifact.unknown"
    assert "<script>" not in answer.text


# -- artifacts ----------------------------------------------------------------------------------------------------
@pytest.fixture
def artifacts(sqlite_engine, tmp_path):
    """One tenant's two runs (each with a work assignment that wrote edits.json), the API, and the artifacts dir."""
    settings = _settings(tmp_path)
    fleet = Fleet(sqlite_engine, {("t", "work"): _work, ("t", "side"): lambda ctx, p: WorkResult(output={})},
                  registry=registry_of(PICTURE, builtin=True), settings=settings)
    first, second = submit(fleet, "picture", {}), submit(fleet, "picture", {})
    settle(fleet)
    client = http(app_of(fleet), make_key(sqlite_engine, "acme", ["runs:read"]))
    return fleet, client, first, second, settings.artifacts_dir


def _point(engine, assignment_id: str, url: str | None) -> None:
    """A hostile worker's ``result_url``."""
    with engine.begin() as conn:
        conn.execute(update(agent_messages).where(agent_messages.c.id == assignment_id).values(result_url=url))


def test_an_artifact_is_answered_as_json_text_never_as_a_page(artifacts):
    fleet, client, run_id, _second, _root = artifacts
    answer = client.get(f"/api/runs/{run_id}/artifacts/{_assignment(fleet.engine, run_id)}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in answer.headers["content-security-policy"]
    body = answer.json()
    assert (body["name"], body["content_type"], body["truncated"], body["binary"]) == \
        ("edits.json", "application/json", False, False)
    assert json.loads(body["content"])["edits"][0]["content"] == "<script>x</script>"
    assert body["size_bytes"] == len(body["content"])


def test_a_large_artifact_is_cut_at_the_limit_and_flagged(artifacts):
    fleet, client, run_id, _second, root = artifacts
    assignment = _assignment(fleet.engine, run_id)
    big = root / assignment / "big.log"
    big.write_text("é" * MAX_BYTES)  # two bytes a character: the limit falls inside one
    _point(fleet.engine, assignment, big.as_uri())
    body = client.get(f"/api/runs/{run_id}/artifacts/{assignment}").json()
    assert body["truncated"] is True and body["size_bytes"] == 2 * MAX_BYTES
    assert body["content"] == "é" * (MAX_BYTES // 2) and body["content_type"] == "text/plain"


def test_an_artifact_outside_the_artifacts_directory_is_refused_however_it_is_reached(artifacts, tmp_path):
    fleet, client, run_id, _second, root = artifacts
    assignment = _assignment(fleet.engine, run_id)
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's secret")
    (root / assignment / "passwd").symlink_to("/etc/passwd")
    (root / assignment / "etc").symlink_to("/etc")
    (root / assignment / "up").symlink_to(tmp_path)
    attempts = [
        f"file://{root}/../secret.txt",
        f"file://{root / assignment}/../../secret.txt",
        f"file://{root}/%2e%2e/secret.txt",
        (root / assignment / "passwd").as_uri(),
        (root / assignment / "etc").as_uri() + "/passwd",
        (root / assignment / "up").as_uri() + "/secret.txt",
        f"{root}/../secret.txt",
        "file:///etc/passwd",
        "file://evil.example/etc/passwd",
        "http://127.0.0.1:1/edits.json",
        f"file://{root}",
        (root / assignment).as_uri(),
    ]
    for url in attempts:
        _point(fleet.engine, assignment, url)
        answer = client.get(f"/api/runs/{run_id}/artifacts/{assignment}")
        assert answer.status_code == 403, (url, answer.text)
        assert answer.json()["error"]["code"] == "artifact.outside", url
        assert "secret" not in answer.text and "root:" not in answer.text, url


def test_an_artifact_is_confined_to_its_own_assignments_directory(artifacts):
    """A worker's ``result_url`` may name another assignment's file — another run's, another tenant's — inside the
    artifacts directory: refused. Its own files, at any depth (the build-test report), are answered."""
    fleet, client, run_id, second, root = artifacts
    mine, other = _assignment(fleet.engine, run_id), _assignment(fleet.engine, second)
    (root / other / "secret.json").write_text('{"their": "secret"}')
    for url in [(root / other / "edits.json").as_uri(), (root / other / "secret.json").as_uri(),
                f"file://{root / mine}/../{other}/edits.json", f"{root / other}/edits.json"]:
        _point(fleet.engine, mine, url)
        answer = client.get(f"/api/runs/{run_id}/artifacts/{mine}")
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "artifact.outside", url
        assert "secret" not in answer.text and "edits" not in answer.text, url
    report = root / mine / "build-test" / "report.json"  # where workers/build_test.py writes it
    report.parent.mkdir()
    report.write_text(json.dumps({"success_rate": 1.0}))
    _point(fleet.engine, mine, report.resolve().as_uri())
    body = client.get(f"/api/runs/{run_id}/artifacts/{mine}").json()
    assert (body["name"], json.loads(body["content"])) == ("report.json", {"success_rate": 1.0})
    # its own directory swapped for a link to another's: refused too
    (root / mine).rename(root / f"{mine}.moved")
    (root / mine).symlink_to(root / other)
    _point(fleet.engine, mine, (root / mine / "edits.json").as_uri())
    answer = client.get(f"/api/runs/{run_id}/artifacts/{mine}")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "artifact.outside"


def test_an_assignment_of_another_run_or_none_or_a_missing_file_is_not_found(artifacts):
    fleet, client, run_id, second, root = artifacts
    mine, other = _assignment(fleet.engine, run_id), _assignment(fleet.engine, second)
    for assignment, code in [(other, "artifact.unknown"), ("no-such-assignment", "artifact.unknown")]:
        answer = client.get(f"/api/runs/{run_id}/artifacts/{assignment}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == code
    side = _assignment(fleet.engine, run_id, ("t", "side"))  # wrote no artifact
    assert client.get(f"/api/runs/{run_id}/artifacts/{side}").json()["error"]["code"] == "artifact.unknown"
    (root / mine / "edits.json").unlink()
    answer = client.get(f"/api/runs/{run_id}/artifacts/{mine}")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "artifact.missing"


def test_a_binary_artifact_is_named_but_not_shown(artifacts):
    fleet, client, run_id, _second, root = artifacts
    assignment = _assignment(fleet.engine, run_id)
    blob = root / assignment / "model.bin"
    blob.write_bytes(bytes(range(256)))
    _point(fleet.engine, assignment, blob.as_uri())
    body = client.get(f"/api/runs/{run_id}/artifacts/{assignment}").json()
    assert (body["binary"], body["content"], body["name"]) == (True, None, "model.bin")
