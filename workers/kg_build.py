"""cogo-kg-builder: chunks → entities and co-occurrence edges → ``graph.json``.

Input: ``{"index_path": str}`` (rag-embed's ``embeddings.jsonl``) or ``{"documents": [...]}``.
Entities are capitalised terms ("Redis", "Executor Dispatcher", "TTL") and identifiers
(backticked, ``snake_case``, ``camelCase``, ``dotted.names``); two entities are linked with
weight n when they occur together in n chunks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Set
from itertools import combinations
from typing import Any

from bus.errors import WorkFailed
from workers.handler import WorkContext, WorkResult
from workers.rag_embed import chunk_text, read_documents
from workers.sandbox import confined

ROUTE = ("kg", "build")
MAX_ENTITIES_PER_CHUNK = 40
"""Entities kept per chunk, in order of appearance; edges grow with its square."""

_BACKTICKED = re.compile(r"`([^`\n]{1,80})`")
_IDENTIFIER = re.compile(
    r"\b(?:[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+"  # dotted.name (parts of 2+ chars, so not "e.g.")
    r"|[a-z][a-z0-9]*(?:_[a-z0-9]+)+"  # snake_case
    r"|[a-z]+[A-Z][A-Za-z0-9]*)\b")  # camelCase
_TERM = re.compile(r"\b[A-Z][A-Za-z0-9]+(?:[ \t]+[A-Z][A-Za-z0-9]+)*\b")
_STOPWORDS = frozenset("""
    a an the this that these those it its in on at for of and but or if when then we you they he she our
    each every all some to by with from as is are be not no so after before how what why where which
    there here see note use using also
""".split())


def build_graph(ctx: WorkContext, input: dict[str, Any]) -> WorkResult:
    """Extract entities and co-occurrence edges from every chunk into ``artifacts/<taskId>/graph.json``."""
    chunks = _read_chunks(ctx, input)
    seen: Counter[str] = Counter()
    kinds: dict[str, str] = {}
    pairs: Counter[tuple[str, str]] = Counter()
    known = set().union(*map(mid_sentence_terms, chunks))
    for index, text in enumerate(chunks):
        if index % 100 == 0:
            ctx.check_deadline()
        entities = extract_entities(text, known)
        for name, kind in entities.items():
            seen[name] += 1
            kinds.setdefault(name, kind)
        pairs.update(combinations(sorted(entities), 2))
    nodes = [{"id": name, "kind": kinds[name], "chunks": seen[name]} for name in sorted(seen)]
    edges = [{"source": a, "target": b, "weight": w} for (a, b), w in sorted(pairs.items())]
    path = ctx.artifacts_dir / "graph.json"
    path.write_text(json.dumps({"nodes": nodes, "edges": edges, "chunks": len(chunks)}, indent=1,
                               ensure_ascii=False), encoding="utf-8")
    output = {"nodes": len(nodes), "edges": len(edges), "graph_path": str(path.resolve())}
    return WorkResult(output=output, result_url=path.resolve().as_uri())


def extract_entities(text: str, known: Set[str] = frozenset()) -> dict[str, str]:
    """The entities of one chunk, ``{name: "identifier" | "term"}``: identifiers, then terms, as they appear.

    ``known`` holds terms seen capitalised mid-sentence elsewhere (``mid_sentence_terms``), which
    vouch for the same term where it opens a sentence.
    """
    found: dict[str, str] = {}
    for match in _BACKTICKED.finditer(text):
        found.setdefault(match[1].strip(), "identifier")
    # Blank out backticked spans so `WorkContext.meter` is not also read as the term "WorkContext".
    plain = _BACKTICKED.sub(lambda m: " " * len(m[0]), text)
    for match in _IDENTIFIER.finditer(plain):
        found.setdefault(match[0], "identifier")
    known = known | mid_sentence_terms(plain)
    for term, opens_sentence in _terms(plain):
        if opens_sentence and term not in known:
            # Any word opening a sentence is capitalised ("Workers consume …", "Only PostgreSQL …"):
            # drop that word unless it is shaped like a name (TTL, PostgreSQL, S3) or known.
            first, _, rest = term.partition(" ")
            term = term if _name_shaped(first) or first in known else rest
        if term:
            found.setdefault(term, "term")
    found.pop("", None)
    return dict(list(found.items())[:MAX_ENTITIES_PER_CHUNK])


def mid_sentence_terms(text: str) -> set[str]:
    """Capitalised terms that occur somewhere other than at the start of a sentence."""
    return {term for term, opens_sentence in _terms(text) if not opens_sentence}


def _terms(text: str) -> Iterator[tuple[str, bool]]:
    for match in _TERM.finditer(text):
        term = _trim(match[0])
        if term:
            # A leading stopword was the sentence's opener ("The Executor …"), not the term.
            opens = _starts_sentence(text, match.start()) and term.split()[0] == match[0].split()[0]
            yield term, opens


def _trim(term: str) -> str:
    words = term.split()
    while words and words[0].casefold() in _STOPWORDS:
        words.pop(0)
    while words and words[-1].casefold() in _STOPWORDS:
        words.pop()
    return " ".join(words)


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip(" \t*-#>\"'(")
    return not before or before[-1] in ".!?:\n"


def _name_shaped(word: str) -> bool:
    return any(c.isupper() or c.isdigit() for c in word[1:])


def _read_chunks(ctx: WorkContext, input: dict[str, Any]) -> list[str]:
    if "index_path" not in input:
        return [piece for doc in read_documents(input) for piece in chunk_text(doc["text"])]
    path = confined(ctx.artifacts_root, input["index_path"], what="index_path")
    chunks = []
    with path.open(encoding="utf-8") as rows:
        for number, line in enumerate(rows, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                chunks.append(row["text"] if isinstance(row["text"], str) else "")
            except (ValueError, KeyError, TypeError) as exc:
                raise WorkFailed(f"{path}:{number} is not an embeddings row: {exc}", retryable=False,
                                 code="input.invalid") from exc
    return chunks


HANDLERS = {ROUTE: build_graph}
