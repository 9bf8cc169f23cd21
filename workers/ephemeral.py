"""Ephemeral workers: each assignment runs in a fresh process that exits when it is done (seed 002).

The worker process stays the Celery consumer of its queues (delivery, prefetch 1, ``acks_late`` and the
reclaimer are unchanged). For each ``cogo.work`` message its :class:`Spawner` starts a child — the worker's own
command line and environment, plus ``COGO_ASSIGNMENT_ID`` — and waits for it; the child (:func:`run_one`) claims
the assignment, runs its handler under lease and TTL (``Runtime.handle``), writes the outcome and exits, so no
state is carried from one assignment to the next. The consumer acks once the child is gone.

What can go wrong is what can go wrong to any worker: a child that dies (``kill -9``, a crash) loses its attempt,
which the reclaimer retries when its lease runs out; a child still alive ``ttl_ms`` + ``COGO_EPHEMERAL_GRACE_S``
after it started (a handler that ignores its TTL) is killed, and its attempt goes the same way. A Kubernetes Job
with ``COGO_ASSIGNMENT_ID`` set runs the same :func:`run_one` (``k8s/``, ``docs/ephemeral.md``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy import Engine, select

from bus import faults, ledger
from bus.envelope import Assignment, AssignmentEnvelope
from bus.errors import CogoError
from bus.schema import agent_messages as m
from bus.settings import Settings
from workers.handler import Handler

log = logging.getLogger(__name__)

ASSIGNMENT_ENV = "COGO_ASSIGNMENT_ID"
"""The variable that makes a worker process run that one assignment and exit instead of consuming its queues."""
TAIL_BYTES = 2_000
"""How much of a child's stderr the consumer logs when the child did not end cleanly."""
DEFAULT_TTL_S = Assignment.model_fields["ttl_ms"].default / 1000
"""The deadline of an assignment whose contract cannot be read (its child fails it at once as unroutable)."""
_SECRET_MARKS = ("KEY", "SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIAL")
"""A variable whose name holds one of these (in any case) has a secret value."""
MIN_SECRET_LEN = 4
"""Shorter values are not scrubbed: replacing every ``0`` or ``yes`` in the log would shred it."""


def run_one(settings: Settings, *, name: str, handlers: Mapping[tuple[str, str], Handler], assignment_id: str) -> None:
    """The child: claim ``assignment_id``, run it under lease and TTL, write its outcome. It returns (exit 0)
    whenever the ledger holds what happened, a duplicate included; anything else raises."""
    from bus.celery_app import make_celery
    from bus.db import make_engine
    from bus.outbox import Publisher
    from workers.runtime import Runtime

    engine = make_engine(settings.database_url, pool_size=1)
    runtime = Runtime(engine=engine, publisher=Publisher(make_celery(settings, name=f"{name}-ephemeral")),
                      settings=settings, handlers=handlers)
    try:
        status = runtime.handle(assignment_id)
    finally:
        engine.dispose()
    log.info("%s ran %s in pid %d: %s", name, assignment_id, os.getpid(), status)


@dataclass(frozen=True)
class Ended:
    """How one child ended: its exit code (negative: the signal that ended it), whether the consumer killed it
    past its deadline, and the end of its stderr (secrets scrubbed)."""

    code: int
    killed: bool
    stderr_tail: str


class Spawner:
    """The consumer's side: one fresh child per assignment, waited for, killed past ``ttl_ms`` + grace.

    Args:
        engine: the ledger, read once per message for the assignment's status and TTL.
        settings: ``ephemeral_grace_s`` is read from it.
        command: the child's command line (the worker's own: ``ecosystem/entrypoints.py``).
        env: the child's environment, ``COGO_ASSIGNMENT_ID`` aside (default: this process's, exactly).
    """

    def __init__(self, *, engine: Engine, settings: Settings, command: Sequence[str],
                 env: Mapping[str, str] | None = None):
        self.engine, self.command, self.grace_s = engine, list(command), settings.ephemeral_grace_s
        self.env = dict(os.environ if env is None else env)

    def handle(self, message_id: str) -> str:
        """Run ``message_id`` in a child; returns ``duplicate`` (not dispatched: no child started), ``ended``
        (the child exited 0) or ``lost`` (it died or was killed: the lease rule retries the attempt)."""
        ttl_s = faults.retrying(lambda: self._ttl_s(message_id), what=f"the status of {message_id}")
        if ttl_s is None:
            return "duplicate"
        ended = self.run(message_id, ttl_s + self.grace_s)
        if ended.killed:
            log.error("ephemeral child of %s was still running %.1fs after it started (its TTL plus "
                      "COGO_EPHEMERAL_GRACE_S): killed (exit %d); its attempt is retried when its lease runs out; "
                      "stderr ends with:\n%s", message_id, ttl_s + self.grace_s, ended.code, ended.stderr_tail)
            return "lost"
        if ended.code != 0:
            log.error("ephemeral child of %s exited with code %d; an attempt it claimed is retried when its lease "
                      "runs out; stderr ends with:\n%s", message_id, ended.code, ended.stderr_tail)
            return "lost"
        return "ended"

    def run(self, message_id: str, limit_s: float) -> Ended:
        """Start the child for ``message_id`` and wait for it at most ``limit_s``, then kill it."""
        with tempfile.TemporaryFile() as stderr:
            child = subprocess.Popen(self.command, env={**self.env, ASSIGNMENT_ENV: message_id},
                                     stdin=subprocess.DEVNULL, stderr=stderr)
            killed = False
            try:
                code = child.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                child.kill()
                code, killed = child.wait(), True
            except BaseException:  # the consumer itself is stopping: take the child with it
                child.kill()
                child.wait()
                raise
            tail = "" if code == 0 and not killed else scrub(_tail(stderr), self.env)
        return Ended(code, killed, tail)

    def _ttl_s(self, message_id: str) -> float | None:
        """The assignment's TTL in seconds, or None when it is not waiting for a worker (``dispatched``)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(m.c.status, m.c.payload).where(m.c.id == message_id)).first()
        if row is None or row.status != ledger.DISPATCHED:
            return None
        try:
            return AssignmentEnvelope.of(row.payload).contract().ttl_ms / 1000
        except CogoError:
            return DEFAULT_TTL_S


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - TAIL_BYTES))
    return stream.read().decode("utf-8", "replace").strip() or "(nothing)"


def scrub(text: str, env: Mapping[str, str]) -> str:
    """``text`` with every secret of ``env`` replaced by its variable's name.

    The secrets are the value of every variable whose name looks secret (``_SECRET_MARKS``, in any case: an
    ``OPENAI_API_KEY`` as much as a ``COGO_…_TOKEN``) and the password of every URL-valued variable, both as
    written (percent-encoded) and decoded. Values shorter than ``MIN_SECRET_LEN`` are left alone.
    """
    secrets: dict[str, str] = {}
    for var, value in env.items():
        if any(mark in var.upper() for mark in _SECRET_MARKS):
            secrets.setdefault(value, f"<{var}>")
        for password in _url_passwords(value):
            secrets.setdefault(password, f"<password of {var}>")
    for value in sorted((v for v in secrets if len(v) >= MIN_SECRET_LEN), key=len, reverse=True):
        text = text.replace(value, secrets[value])
    return text


def _url_passwords(value: str) -> set[str]:
    """The password of URL ``value`` as written and decoded (and re-encoded), or nothing when it is no URL."""
    if "://" not in value:
        return set()
    try:
        written = urlsplit(value).password
    except ValueError:
        return set()
    if not written:
        return set()
    decoded = unquote(written)
    return {written, decoded, quote(decoded, safe="")}
