"""The Python client (SDK) of the HTTP API: submit intents, read runs and their introspection events."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from bus.errors import CogoError, NotFound

TERMINAL = frozenset({"completed", "failed", "cancelled"})


class ApiError(CogoError):
    """The API answered with an error; ``code`` is the API's stable error code."""

    code = "api.error"


AUTH_HINT = "set COGO_API_KEY or pass --api-key"
"""What a person does about a 401; the CLI adds where the embedded default keeps the key."""


class WaitTimeout(CogoError):
    """A wait reached its deadline before the condition held."""

    code = "wait.timeout"
    retryable = True


class Client:
    """A client of ``orchestrator-chat``.

    Args:
        base_url: where the API listens, e.g. ``http://127.0.0.1:8080``.
        api_key: sent as ``Authorization: Bearer <api_key>`` on every request, when given.
        timeout_s: per-request timeout.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- intents and runs ---------------------------------------------------------------------------
    def submit(self, intent: str, *, tenant: str = "default", payload: dict | None = None) -> str:
        """Submit an intent; returns the new run's id (the API answered ``202 {id}``)."""
        body = self._call("POST", "/api/intents", json={"tenant": tenant, "intent": intent,
                                                         "payload": payload or {}})
        return body["id"]

    def run(self, run_id: str) -> dict[str, Any]:
        """A run: status, workflow, context, output, error, timestamps."""
        return self._call("GET", f"/api/runs/{run_id}")

    def runs(self, *, tenant: str | None = None, status: str | None = None, intent: str | None = None,
             limit: int = 50) -> list[dict]:
        """Recent runs, newest first; ``intent`` keeps only the runs of that intent."""
        params = {k: v for k, v in {"tenant": tenant, "status": status, "intent": intent,
                                    "limit": limit}.items() if v}
        found = self._call("GET", "/api/runs", params=params)["runs"]
        # An API that does not filter by intent yet answers every intent: keep the asked one here.
        return [r for r in found if intent is None or r.get("intent") == intent]

    def intents(self) -> list[dict[str, Any]]:
        """Every intent the API accepts: ``{name, workflow, description, input_schema}``."""
        return self._call("GET", "/api/intents")["intents"]

    def fleet(self) -> dict[str, Any]:
        """The fleet as the API sees it: which Celery consumers answer, queue depths, what waits longest."""
        return self._call("GET", "/api/fleet")

    def orchestrator_state(self) -> dict[str, Any]:
        """The fleet's orchestrator state (admin): every circuit breaker with its state, failures and next probe."""
        return self._call("GET", "/api/orchestrator/state")

    def agents(self) -> dict[str, Any]:
        """The agent registry: every agent with its routes, state and last heartbeat, and each route's live ones."""
        return self._call("GET", "/api/agents")

    def cancel(self, run_id: str, *, reason: str = "cancelled by client") -> dict[str, Any]:
        """Ask the brain to cancel a run (and its children)."""
        return self._call("POST", f"/api/runs/{run_id}/cancel", json={"reason": reason})

    def wait(self, run_id: str, *, timeout_s: float = 60.0, poll_s: float = 0.1,
             on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Wait until the run ends; calls ``on_progress(run)`` on every poll.

        Raises:
            WaitTimeout: the run had not ended by the deadline.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(run_id)
            if on_progress:
                on_progress(run)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"run {run_id} still {run['status']} after {timeout_s}s",
                                  details={"run_id": run_id, "status": run["status"]})
            time.sleep(poll_s)

    # -- introspection ------------------------------------------------------------------------------
    def events(self, run_id: str, *, category: str | None = None, type: str | None = None,
               after_id: int = 0) -> list[dict[str, Any]]:
        """The run's introspection events in order; ``type`` filters by prefix (``decision.sync``)."""
        params = {k: v for k, v in {"category": category, "type": type, "after_id": after_id}.items() if v}
        return self._call("GET", f"/api/runs/{run_id}/events", params=params)["events"]

    def wait_for_event(self, run_id: str, type: str, *, timeout_s: float = 30.0,
                       poll_s: float = 0.1) -> dict[str, Any]:
        """Wait for the first event of ``type`` (a prefix) in the run.

        Raises:
            WaitTimeout: no such event by the deadline.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.events(run_id, type=type)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"no {type} event in run {run_id} after {timeout_s}s")
            time.sleep(poll_s)

    def explain(self, run_id: str) -> dict[str, Any]:
        """What the run is waiting for and why."""
        return self._call("GET", f"/api/runs/{run_id}/explain")

    def bus_events(self, run_id: str) -> list[dict[str, Any]]:
        """The ``bus_events`` audit rows of the run's messages, in order."""
        return self._call("GET", f"/api/runs/{run_id}/bus-events")["events"]

    # -- people and the outside world ---------------------------------------------------------------
    def approvals(self, *, tenant: str | None = None, status: str = "pending") -> list[dict[str, Any]]:
        """Approval requests, pending by default."""
        params = {k: v for k, v in {"tenant": tenant, "status": status}.items() if v}
        return self._call("GET", "/api/approvals", params=params)["approvals"]

    def approve(self, approval_id: str, *, comment: str = "") -> dict[str, Any]:
        """Approve a pending request; the run resumes. Who approves is the API key's principal."""
        return self._call("POST", f"/api/approvals/{approval_id}/approve", json={"comment": comment})

    def reject(self, approval_id: str, *, reason: str) -> dict[str, Any]:
        """Reject a pending request (``reason`` becomes its comment); the run takes the reject route."""
        return self._call("POST", f"/api/approvals/{approval_id}/reject", json={"comment": reason})

    def signal(self, run_id: str, name: str, data: dict | None = None) -> dict[str, Any]:
        """Deliver a named external event to a run waiting for it."""
        return self._call("POST", f"/api/runs/{run_id}/signals/{name}", json={"data": data or {}})

    # -- dead letters -------------------------------------------------------------------------------
    def dead_letters(self, *, tenant: str | None = None, state: str = "held", limit: int = 100
                     ) -> list[dict[str, Any]]:
        """Dead letters, oldest first: held now by default (``state``: held, requeued, discarded or all)."""
        params = {k: v for k, v in {"tenant": tenant, "state": state, "limit": limit}.items() if v}
        return self._call("GET", "/api/dead-letters", params=params)["dead_letters"]

    def dead_letter(self, letter_id: str) -> dict[str, Any]:
        """One dead letter with its whole history (audit rows and trace events, in order)."""
        return self._call("GET", f"/api/dead-letters/{letter_id}")

    def requeue_dead_letter(self, letter_id: str, *, budget: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-queue a held dead letter, with a new budget (``{maxCostUsd, maxTokens}``) when given."""
        return self._call("POST", f"/api/dead-letters/{letter_id}/requeue",
                          json={"budget": budget} if budget is not None else {})

    def discard_dead_letter(self, letter_id: str, *, reason: str = "") -> dict[str, Any]:
        """Discard a held dead letter: its run is told the failure it recorded."""
        return self._call("POST", f"/api/dead-letters/{letter_id}/discard", json={"reason": reason})

    def health(self) -> dict[str, Any]:
        """The API's health answer."""
        return self._call("GET", "/healthz")

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the cogo API at {self.base_url}: {exc}", code="api.unreachable",
                           details={"url": self.base_url}) from exc
        try:
            body = response.json() if response.content else {}
        except ValueError:
            raise ApiError(f"{self.base_url}{path} answered HTTP {response.status_code} with a body that is not "
                           f"JSON: is this a cogo API?", code="api.bad_response") from None
        err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        if response.status_code == 404:
            raise NotFound(err.get("message", f"{path} not found"), code=err.get("code", "not_found"))
        if response.status_code == 401:
            raise ApiError(err.get("message", "the API needs an API key"), code=err.get("code", "auth.required"),
                           details={**(err.get("details") or {}), "status": 401, "hint": AUTH_HINT})
        if response.status_code >= 400:
            raise ApiError(err.get("message", f"HTTP {response.status_code}"),
                           code=err.get("code", "api.error"), details=err.get("details", {}))
        return body
