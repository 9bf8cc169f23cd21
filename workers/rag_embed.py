"""cogo-rag-embed: documents → overlapping chunks → deterministic local embeddings (``embeddings.jsonl``).

Input: ``{"documents": [{"id": str, "text": str}]}`` or ``{"path": dir}`` (its ``.md``/``.txt`` files).
Embeddings are feature-hashed word unigrams and bigrams, signed, in ``DIMS`` dimensions and
L2-normalised: no model, no numpy, same text → same vector on every host and Python version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.errors import WorkFailed
from workers.handler import WorkContext, WorkResult

ROUTE = ("rag", "embed")
DIMS = 256
CHUNK_WORDS = 200
"""Words per chunk."""
OVERLAP_WORDS = 40
"""Words shared by consecutive chunks, so a sentence cut at a boundary is still whole in one of them."""
SUFFIXES = (".md", ".txt")
MAX_INPUT_BYTES = 50 * 1024 * 1024
"""Most text one assignment may embed."""

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\w+")


def embed(ctx: WorkContext, input: dict[str, Any]) -> WorkResult:
    """Chunk and embed the documents into ``artifacts/<taskId>/embeddings.jsonl``."""
    documents = read_documents(input)
    path = ctx.artifacts_dir / "embeddings.jsonl"
    chunks = 0
    with path.open("w", encoding="utf-8") as out:
        for doc in documents:
            ctx.check_deadline()
            pieces = chunk_text(doc["text"])
            # Local embeddings cost nothing, but the words processed still count against maxTokens,
            # like a hosted embedding API would: a budget bounds the work an assignment may do.
            ctx.meter(tokens=sum(len(_WORD.findall(p)) for p in pieces))
            for index, piece in enumerate(pieces):
                row = {"id": f"{doc['id']}#{index}", "doc_id": doc["id"], "chunk": index, "text": piece,
                       "vector": embed_text(piece)}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            chunks += len(pieces)
    output = {"chunks": chunks, "documents": len(documents), "dims": DIMS, "index_path": str(path.resolve())}
    return WorkResult(output=output, result_url=path.resolve().as_uri())


def read_documents(input: dict[str, Any]) -> list[dict[str, str]]:
    """The documents of an input: given inline, or the ``.md``/``.txt`` files under ``path``.

    Raises:
        WorkFailed: ``input.invalid`` (malformed, duplicate ids, too large) or ``input.not_found``.
    """
    if "documents" in input:
        documents = input["documents"]
        if not isinstance(documents, list) or not all(
                isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("text"), str)
                for d in documents):
            raise WorkFailed("documents must be a list of {id: str, text: str}", retryable=False,
                             code="input.invalid")
    elif "path" in input:
        documents = list(_read_directory(input["path"]))
    else:
        raise WorkFailed("rag-embed needs 'documents' or 'path'", retryable=False, code="input.invalid")
    ids = [d["id"] for d in documents]
    if len(set(ids)) != len(ids):
        raise WorkFailed("document ids must be unique", retryable=False, code="input.invalid")
    if sum(len(d["text"]) for d in documents) > MAX_INPUT_BYTES:
        raise WorkFailed(f"documents hold more than {MAX_INPUT_BYTES} characters", retryable=False,
                         code="input.invalid")
    return [{"id": d["id"], "text": d["text"]} for d in documents]


def _read_directory(raw: object) -> Iterator[dict[str, str]]:
    root = Path(raw) if isinstance(raw, str) and raw else None
    if root is None or not root.is_dir():
        raise WorkFailed(f"path {raw!r} is not a directory", retryable=False, code="input.not_found")
    for file in sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
        yield {"id": file.relative_to(root).as_posix(),
               "text": file.read_text(encoding="utf-8", errors="replace")}


def chunk_text(text: str, words: int = CHUNK_WORDS, overlap: int = OVERLAP_WORDS) -> list[str]:
    """Windows of ``words`` words overlapping by ``overlap``, cut from the original text (layout kept)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    step = max(1, words - overlap)
    chunks = []
    for start in range(0, len(spans), step):
        window = spans[start:start + words]
        chunks.append(text[window[0][0]:window[-1][1]])
        if start + words >= len(spans):
            break
    return chunks


def features(text: str) -> list[str]:
    """The hashed features of a text: lower-cased word unigrams and bigrams."""
    tokens = _TOKEN.findall(text.casefold())
    return [f"w:{t}" for t in tokens] + [f"b:{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def embed_text(text: str, dims: int = DIMS) -> list[float]:
    """A ``dims``-dimensional, L2-normalised embedding of ``text`` (all zeros for a text without words)."""
    vector = [0.0] * dims
    for feature in features(text):
        # blake2b, not hash(): Python salts str hashes per process, and vectors must match everywhere.
        digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
        # The sign bit makes collisions cancel out on average instead of piling up.
        vector[digest % dims] += 1.0 if (digest >> 63) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two embeddings (their dot product, as both are normalised)."""
    return sum(x * y for x, y in zip(a, b, strict=True))


HANDLERS = {ROUTE: embed}
