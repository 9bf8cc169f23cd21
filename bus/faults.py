"""Infrastructure faults: a dropped database connection, a database restart, a broker outage.

They are nobody's fault but the infrastructure's, so they must never count against the message being
handled (a brain event's crash budget, an assignment's admission): the operation is retried with
backoff, and if the outage outlasts the retries the message is left to the ledger — its row is still
open, so the reclaimer sends it again once the infrastructure is back. ``is_infrastructure`` is the one
place that tells such a fault from an error the message itself caused.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from bus.errors import BrokerUnavailable, LedgerUnavailable
from bus.retry import RetryPolicy, compute_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

INFRASTRUCTURE_RETRY = RetryPolicy(maximum_attempts=6, initial_interval_ms=100, backoff_coefficient=2.0,
                                   maximum_interval_ms=2_000, jitter=0.2)
"""How long a consumer keeps one message through an outage (≈ 3 s) before leaving it to the reclaimer."""

_SQLALCHEMY = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)
"""Lost or refused connections, a database shutting down or restarting, a locked SQLite file, a full pool."""


def _driver_types() -> tuple[type[BaseException], ...]:
    """Driver and transport errors that mean "the service is not there right now"."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, LedgerUnavailable, BrokerUnavailable]
    try:
        import psycopg
        found += [psycopg.OperationalError, psycopg.InterfaceError]  # AdminShutdown is an OperationalError
    except ImportError:  # psycopg is only needed for PostgreSQL
        pass
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError
        found.append(KombuOperationalError)
    except ImportError:
        pass
    try:
        import redis.exceptions
        found += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    return tuple(found)


_DRIVER = _driver_types()


_SQLITE_OUTAGES = ("locked", "busy", "disk i/o", "unable to open", "readonly", "database or disk is full")
"""What a SQLite ``OperationalError`` says when the file, not the statement, is the problem."""


def _statement_errors() -> tuple[type[BaseException], ...]:
    """Driver ``OperationalError`` subclasses that the statement itself causes: they would fail every retry."""
    try:
        import psycopg.errors as pg
    except ImportError:
        return ()
    return (pg.QueryCanceled, pg.ProgramLimitExceeded)


_STATEMENT = _statement_errors()


def _caused_by_the_statement(exc: BaseException) -> bool:
    """An error dressed as operational that comes from what is being written (too big, too slow, bad SQL)."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, _STATEMENT):
        return True
    import sqlite3
    if isinstance(orig, sqlite3.OperationalError):
        return not any(word in str(orig).lower() for word in _SQLITE_OUTAGES)
    return False


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is an infrastructure fault rather than the message's own.

    A ``DBAPIError`` counts when SQLAlchemy invalidated the connection for it (the server went away
    mid-statement) or when it is an ``OperationalError``; data, integrity and programming errors do not.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _caused_by_the_statement(current):
            return False
        if isinstance(current, _SQLALCHEMY) or isinstance(current, _DRIVER):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__
    return False


def retrying(operation: Callable[[], T], *, what: str, policy: RetryPolicy = INFRASTRUCTURE_RETRY,
             sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> T:
    """Call ``operation``; on an infrastructure fault back off (``compute_backoff``) and call it again.

    Any other exception propagates at once, untouched.

    Raises:
        LedgerUnavailable: (or ``BrokerUnavailable`` for a broker fault) the fault outlasted
            ``policy.maximum_attempts`` tries; the message stays open in the ledger for the reclaimer.
    """
    attempt = 1
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            if attempt >= policy.maximum_attempts:
                log.warning("%s: infrastructure still failing after %d tries, leaving it to the reclaimer: %s",
                            what, attempt, exc)
                unavailable = BrokerUnavailable if _is_broker(exc) else LedgerUnavailable
                raise unavailable(f"{what}: {type(exc).__name__}: {exc}"[:2000]) from exc
            backoff_s = compute_backoff(attempt, policy, rng) / 1000
            log.warning("%s: infrastructure fault (try %d), again in %.2f s: %s", what, attempt, backoff_s, exc)
            sleep(backoff_s)
            attempt += 1


def _is_broker(exc: BaseException) -> bool:
    if isinstance(exc, BrokerUnavailable):
        return True
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError
    except ImportError:
        return False
    return isinstance(exc, KombuOperationalError)
