"""Settings: one frozen object built from the environment and checked when it is built."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from bus.errors import ConfigError

_BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "pyamqp://", "memory://")
_DATABASE_SCHEMES = ("sqlite://", "sqlite+pysqlite://", "postgresql://", "postgresql+psycopg://")


@dataclass(frozen=True)
class Settings:
    """Everything a cogo process needs to know, with its default and unit in the name.

    Every field maps to ``COGO_<FIELD>`` in upper case (``COGO_BROKER_URL`` …).
    """

    home: Path = Path(".cogo")
    """Where the embedded default keeps its SQLite ledger, Redis socket, logs and artifacts."""
    broker_url: str = ""
    """Celery broker (Redis or RabbitMQ). Empty: ``cogo up`` starts the embedded Redis."""
    database_url: str = ""
    """The ledger (SQLite or PostgreSQL). Empty: ``sqlite:///<home>/cogo.db``."""
    shards: int = 1
    """How many brain/dispatcher shards; a run's shard is ``stable_hash(run_id) % shards``."""
    lease_s: float = 30.0
    """How long a worker holds an assignment before the reclaimer may take it back."""
    stale_s: float = 10.0
    """Age after which a queued or dispatched row that nobody took is sent again."""
    reclaim_interval_s: float = 2.0
    """How often the reclaimer looks for stuck rows."""
    retention_days: float = 7.0
    """How long settled rows and their events are kept before the retention loop prunes them."""
    retention_interval_s: float = 60.0
    """How often the retention loop runs."""
    api_host: str = "127.0.0.1"
    """Where ``orchestrator-chat`` (the HTTP API) listens."""
    api_port: int = 8080
    """Port of the HTTP API."""
    metrics_port: int = 9108
    """Port of ``cogo-metrics-server``."""
    flower_port: int = 5555
    """Port of Flower."""
    artifacts_dir: Path = Path("")
    """Where workers write artifacts. Empty: ``<home>/artifacts``."""
    workflows_dir: Path = Path("")
    """Extra workflow definitions (``*.yaml``) loaded beside the built-in ones. Empty: none."""
    task_events: bool = False
    """Send Celery task events (Flower switches them on when it runs)."""
    allowed_models: str = ""
    """Comma-separated models the executor-dispatcher admits (e.g. ``cogo-local,gpt-4o-mini``). Empty: any."""
    llm_url: str = ""
    """OpenAI-compatible endpoint for the codegen worker. Empty: the deterministic local model."""
    llm_api_key: str = ""
    """API key for ``llm_url``."""
    log_level: str = "INFO"
    """Log level of every process."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build and check the settings from ``COGO_*`` variables.

        Raises:
            ConfigError: naming the variable and what it expected.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            var = f"COGO_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(var, raw, f.type)
        return cls(**values).checked()

    def checked(self) -> Settings:
        """Return these settings with derived defaults filled in, or raise ConfigError."""
        if self.shards < 1 or self.shards > 1024:
            raise ConfigError(f"COGO_SHARDS must be between 1 and 1024, got {self.shards}")
        for name in ("lease_s", "stale_s", "reclaim_interval_s", "retention_days", "retention_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"COGO_{name.upper()} must be a positive number, got {getattr(self, name)}")
        if self.broker_url and not self.broker_url.startswith(_BROKER_SCHEMES):
            raise ConfigError(
                f"COGO_BROKER_URL must start with one of {', '.join(_BROKER_SCHEMES)}, got {self.broker_url!r}")
        database_url = self.database_url or f"sqlite:///{(self.home / 'cogo.db').resolve()}"
        if not database_url.startswith(_DATABASE_SCHEMES):
            raise ConfigError(
                f"COGO_DATABASE_URL must start with one of {', '.join(_DATABASE_SCHEMES)}, got {database_url!r}")
        artifacts = self.artifacts_dir if str(self.artifacts_dir) not in ("", ".") else self.home / "artifacts"
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"COGO_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        return replace(self, database_url=database_url, artifacts_dir=artifacts, log_level=self.log_level.upper())

    @property
    def model_allow_list(self) -> frozenset[str] | None:
        """``allowed_models`` as a set, or None when every model is allowed."""
        models = frozenset(m.strip() for m in self.allowed_models.split(",") if m.strip())
        return models or None

    def to_env(self) -> dict[str, str]:
        """The settings as ``COGO_*`` variables, to hand to a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f"COGO_{f.name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def _parse(var: str, raw: str, kind: object) -> object:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError:
        expected = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(kind, kind)
        raise ConfigError(f"{var} must be {expected}, got {raw!r}", details={"variable": var}) from None
    return raw
