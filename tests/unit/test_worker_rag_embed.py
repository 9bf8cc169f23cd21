"""The rag-embed handler: chunking and deterministic, normalised feature-hashing embeddings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment, Budget
from bus.errors import BudgetExceeded, TTLExpired, WorkFailed
from workers.handler import WorkContext
from workers.rag_embed import DIMS, chunk_text, cosine, embed, embed_text

DOCS = [{"id": "redis", "text": "Redis is an in-memory data store used as a message broker by Celery."},
        {"id": "cooking", "text": "Slowly caramelise the onions in butter before adding the stock."}]


def context(tmp_path: Path, assignment_id: str = "emb", *, max_tokens: int = 100_000, ttl_s: float = 60) -> WorkContext:
    assignment = Assignment(agent_id="rag", budget=Budget(maxTokens=max_tokens))
    return WorkContext(assignment_id=assignment_id,
                       run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=assignment, deadline=time.time() + ttl_s, artifacts_root=tmp_path)


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_embed_writes_one_normalised_row_per_chunk(tmp_path):
    ctx = context(tmp_path)
    result = embed(ctx, {"documents": DOCS})
    assert result.output == {"chunks": 2, "documents": 2, "dims": DIMS,
                             "index_path": str((tmp_path / "emb" / "embeddings.jsonl").resolve())}
    assert result.result_url == Path(result.output["index_path"]).as_uri()
    written = rows(result.output["index_path"])
    assert [(r["id"], r["doc_id"], r["chunk"]) for r in written] == [("redis#0", "redis", 0),
                                                                       ("cooking#0", "cooking", 0)]
    assert written[0]["text"] == DOCS[0]["text"]
    for row in written:
        assert len(row["vector"]) == DIMS
        assert math.sqrt(sum(v * v for v in row["vector"])) == pytest.approx(1.0)
    assert ctx.usage.tokens == sum(len(d["text"].split()) for d in DOCS)


def test_embeddings_are_deterministic_across_runs_and_processes(tmp_path):
    first = Path(embed(context(tmp_path, "a"), {"documents": DOCS}).output["index_path"]).read_bytes()
    second = Path(embed(context(tmp_path, "b"), {"documents": DOCS}).output["index_path"]).read_bytes()
    assert first == second
    # Another interpreter with another string-hash seed must compute the very same vector.
    code = "import json, sys; from workers.rag_embed import embed_text; print(json.dumps(embed_text(sys.argv[1])))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code, DOCS[0]["text"]], capture_output=True, text=True,
                           env=env, timeout=60, check=True)
    assert json.loads(other.stdout) == embed_text(DOCS[0]["text"])


def test_similar_texts_are_closer_than_unrelated_ones():
    query = embed_text("Celery uses Redis as its message broker")
    assert cosine(query, embed_text(DOCS[0]["text"])) > cosine(query, embed_text(DOCS[1]["text"])) + 0.2
    assert cosine(query, query) == pytest.approx(1.0)


def test_a_text_without_words_embeds_to_zeros():
    assert embed_text("  ... !!! ") == [0.0] * DIMS


def test_chunks_overlap_and_keep_the_original_layout():
    text = "\n".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text, words=10, overlap=3)
    assert [c.split() for c in chunks] == [[f"w{i}" for i in range(s, min(s + 10, 25))] for s in (0, 7, 14, 21)]
    assert chunks[0] == "\n".join(f"w{i}" for i in range(10))
    assert chunk_text("") == []
    assert chunk_text("one two", words=10, overlap=3) == ["one two"]


def test_documents_can_come_from_a_directory(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Alpha\nRedis and Celery.")
    (docs / "sub" / "b.txt").write_text("Beta text.")
    (docs / "ignored.py").write_text("print('not a document')")
    result = embed(context(tmp_path), {"path": str(docs)})
    assert [r["doc_id"] for r in rows(result.output["index_path"])] == ["a.md", "sub/b.txt"]
    assert result.output["documents"] == 2


@pytest.mark.parametrize("input", [{}, {"documents": [{"id": 1, "text": "x"}]},
                                   {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
                                   {"path": "/no/such/directory"}])
def test_bad_input_is_a_permanent_failure(tmp_path, input):
    with pytest.raises(WorkFailed) as raised:
        embed(context(tmp_path), input)
    assert raised.value.retryable is False and raised.value.code.startswith("input.")


def test_words_count_against_the_token_budget(tmp_path):
    with pytest.raises(BudgetExceeded):
        embed(context(tmp_path, max_tokens=5), {"documents": DOCS})


def test_a_past_deadline_raises_ttl_expired(tmp_path):
    with pytest.raises(TTLExpired):
        embed(context(tmp_path, ttl_s=-1), {"documents": DOCS})
