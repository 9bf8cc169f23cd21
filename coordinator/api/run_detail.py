"""What the dashboard's run page reads beyond the run itself: its graph with each node's state, and the
artifacts its assignments wrote (``coordinator/run_graph.py``, ``coordinator/artifacts.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Response

from coordinator.api.auth import owned_run, scoped
from coordinator.api.deps import Services, services
from coordinator.artifacts import read_artifact
from coordinator.keys import Principal
from coordinator.run_graph import read_graph

router = APIRouter()

ARTIFACT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                    "Cache-Control": "no-store"}
"""An artifact is a worker's output, sent as a JSON string: never sniffed, framed or run, even opened directly."""


@router.get("/api/runs/{run_id}/graph")
def get_graph(run_id: str, s: Services = Depends(services),
              who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """The run's workflow as a graph: every node of its definition (kind, route, gate threshold and verdict,
    approval prompt, sub-workflow) with its state from the run's tokens (pending, running, waiting, done,
    failed, skipped), their counts by status and the newest tokens; every edge (next, pass/fail,
    approve/reject/timeout, failure, branch, join); the child runs; and the run's spend against its budget."""
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        return read_graph(conn, run_id, s.registry)


@router.get("/api/runs/{run_id}/artifacts/{assignment_id}")
def get_artifact(run_id: str, response: Response, assignment_id: str = Path(max_length=64),
                 s: Services = Depends(services), who: Principal = Depends(scoped("runs:read"))) -> dict[str, Any]:
    """The artifact one of the run's assignments wrote (its ``result_url``), as text in JSON:
    ``{name, content_type, content, truncated, size_bytes, binary}``, at most 1 MiB of it.

    Only a regular file inside the assignment's own directory, ``<artifacts>/<assignment_id>/``, is read (403
    ``artifact.outside`` otherwise: a ``result_url`` is the worker's word, and may name another tenant's file);
    404 ``artifact.unknown`` when the assignment is not the run's or wrote none, ``artifact.missing`` when
    its file is gone.
    """
    with s.engine.connect() as conn:
        owned_run(conn, run_id, who)
        artifact = read_artifact(conn, run_id, assignment_id, root=s.settings.artifacts_dir)
    response.headers.update(ARTIFACT_HEADERS)
    return artifact.as_json()
