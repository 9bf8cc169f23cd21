"""The kg-build handler: entities and co-occurrence edges from a small hand-made document."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment
from bus.errors import TTLExpired, WorkFailed
from workers.handler import WorkContext
from workers.kg_build import build_graph, extract_entities
from workers.rag_embed import embed

DOC = """# Fleet overview

Celery workers read assignments from Redis. The Executor Dispatcher enforces each budget
through `WorkContext.meter`. Workers consume queues.

PostgreSQL holds the ledger in agent_messages, and Redis carries the Celery messages; see bus.ledger
for the taskId of each row.
"""


def context(tmp_path: Path, assignment_id: str = "kg", *, ttl_s: float = 60) -> WorkContext:
    return WorkContext(assignment_id=assignment_id,
                       run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=Assignment(agent_id="kg"), deadline=time.time() + ttl_s, artifacts_root=tmp_path)


def test_entities_are_terms_and_identifiers_without_sentence_openers():
    assert extract_entities(DOC) == {
        "WorkContext.meter": "identifier", "agent_messages": "identifier", "bus.ledger": "identifier",
        "taskId": "identifier", "Celery": "term", "Redis": "term", "Executor Dispatcher": "term",
        "PostgreSQL": "term"}
    # "Fleet" (a heading's first word), "Workers" and "The" open sentences and are not names.


def test_the_graph_of_a_small_document(tmp_path):
    result = build_graph(context(tmp_path), {"documents": [{"id": "doc", "text": DOC}]})
    graph = json.loads(Path(result.output["graph_path"]).read_text())
    names = [n["id"] for n in graph["nodes"]]
    assert names == sorted(["WorkContext.meter", "agent_messages", "bus.ledger", "taskId", "Celery", "Redis",
                            "Executor Dispatcher", "PostgreSQL"])
    assert result.output == {"nodes": 8, "edges": 28, "graph_path": str((tmp_path / "kg" / "graph.json").resolve())}
    assert result.result_url == Path(result.output["graph_path"]).as_uri()
    edge = {(e["source"], e["target"]): e["weight"] for e in graph["edges"]}
    assert edge[("Celery", "Redis")] == 1 and all(a < b for a, b in edge)


def test_edge_weights_count_the_chunks_two_entities_share(tmp_path):
    documents = [{"id": "1", "text": "Redis feeds Celery."}, {"id": "2", "text": "Celery talks to Redis."},
                 {"id": "3", "text": "Only PostgreSQL here."}]
    index = embed(context(tmp_path, "emb"), {"documents": documents}).output["index_path"]
    result = build_graph(context(tmp_path), {"index_path": index})
    graph = json.loads(Path(result.output["graph_path"]).read_text())
    assert graph["edges"] == [{"source": "Celery", "target": "Redis", "weight": 2}]
    assert {n["id"]: n["chunks"] for n in graph["nodes"]} == {"Celery": 2, "Redis": 2, "PostgreSQL": 1}


def test_an_index_outside_the_artifacts_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text('{"text": "Redis"}\n')
    with pytest.raises(WorkFailed) as raised:
        build_graph(context(tmp_path / "artifacts"), {"index_path": str(outside)})
    assert raised.value.code == "input.unsafe" and raised.value.retryable is False


def test_a_malformed_index_is_a_permanent_failure(tmp_path):
    index = tmp_path / "emb" / "embeddings.jsonl"
    index.parent.mkdir()
    index.write_text('{"text": "Redis"}\nnot json\n')
    with pytest.raises(WorkFailed) as raised:
        build_graph(context(tmp_path), {"index_path": index.as_uri()})
    assert raised.value.code == "input.invalid" and ":2 " in str(raised.value)


def test_a_past_deadline_raises_ttl_expired(tmp_path):
    with pytest.raises(TTLExpired):
        build_graph(context(tmp_path, ttl_s=-1), {"documents": [{"id": "d", "text": DOC}]})
