"""Routes and queue names: a route is (service, role, shard, tenant); the queue is service.role.shard."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from bus.errors import ContractError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

ORCHESTRATOR = "orchestrator"
DECIDE = "decide"
EXECUTE = "execute"


def stable_hash(key: str) -> int:
    """A hash of ``key`` that is the same in every process and every Python run (unlike ``hash``)."""
    return zlib.crc32(key.encode("utf-8"))


def shard_for(root_run_id: str, shards: int) -> int:
    """The shard of a whole run tree, from its root run's id: every event, assignment and budget check of the
    root and of all its children goes to that one shard, so every transaction stays inside one shard."""
    return stable_hash(root_run_id) % shards


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes: the queue ``service.role.shard``, on behalf of ``tenant``."""

    service: str
    role: str
    shard: int = 0
    tenant: str = "default"

    def __post_init__(self) -> None:
        for field in ("service", "role"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _NAME.match(value):
                raise ContractError(
                    f"route {field} must be lower-case letters, digits and '-', starting with a letter "
                    f"(at most 63), got {value!r}", details={"field": field})
        if not isinstance(self.shard, int) or self.shard < 0:
            raise ContractError(f"route shard must be a non-negative integer, got {self.shard!r}")
        if not isinstance(self.tenant, str) or not self.tenant or len(self.tenant) > 128:
            raise ContractError(f"route tenant must be a non-empty string of at most 128, got {self.tenant!r}")

    @property
    def queue(self) -> str:
        """The Celery queue name of this route."""
        return queue_name(self.service, self.role, self.shard)


def queue_name(service: str, role: str, shard: int) -> str:
    """``service.role.shard``."""
    return f"{service}.{role}.{shard}"


def decide_queue(shard: int) -> str:
    """The brain queue of ``shard``."""
    return queue_name(ORCHESTRATOR, DECIDE, shard)


def execute_queue(shard: int) -> str:
    """The executor-dispatcher queue of ``shard``."""
    return queue_name(ORCHESTRATOR, EXECUTE, shard)
