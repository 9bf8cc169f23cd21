"""Settings: one frozen object built from the environment and checked when it is built."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from bus.errors import ConfigError

_BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "pyamqp://", "memory://")
SANDBOX_MODES = ("auto", "bwrap", "unshare", "unconfined")
"""``COGO_SANDBOX`` values; ``unconfined`` is the operator's explicit acceptance of running generated code bare."""
DEAD_LETTER_MODES = ("fail", "hold")
"""``COGO_DEAD_LETTER`` values: report an exhausted assignment's failure at once, or hold it as a dead letter."""
_PROCESS_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
"""What a process name of the table looks like (``COGO_EPHEMERAL`` lists them)."""
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
    """How many shards; a run tree's shard is ``stable_hash(root_run_id) % shards`` (``bus/routing.py``)."""
    shard: int = -1
    """The one shard a brain or dispatcher process consumes (``cogo up`` starts one of each per shard);
    -1: every shard."""
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
    task_events: bool = True
    """Send Celery task events, so Flower's Tasks page sees every task (cost measured in ``bench/``)."""
    sql_events: bool = False
    """Record each SQL statement of the brain's steps and the dispatcher's admissions as ``sql.*`` events."""
    brain_batch_after_s: float = 0.02
    """A brain that takes an event this long after it was due applies its shard's other due events in the same
    transaction (``coordinator/brain.py``). Negative: never (one event per transaction)."""
    allowed_models: str = ""
    """Comma-separated models the executor-dispatcher admits (e.g. ``cogo-local,gpt-4o-mini``). Empty: any."""
    admission_policies: str = "agents,models,concurrency,budgets,period,circuits,rate"
    """The executor-dispatcher's admission policies, in order (``coordinator/admission/``): names of
    ``POLICIES`` or ``module:Class`` entries, comma-separated."""
    policy_file: Path = Path("")
    """The operator's policy table (YAML: per-tenant and per-route limits, rates, period budgets, fair-share
    weights, model prices), read again when it changes. Empty: ``<home>/policy.yaml`` if it exists."""
    agent_heartbeat_s: float = 2.0
    """How often a worker process writes its heartbeat to the agent registry (``bus/agents.py``); one that misses
    three is shown gone."""
    agent_wait_s: float = 60.0
    """How long the ``agents`` admission policy lets an assignment wait for a live agent of its route (or one
    serving its model and version) before failing it (``agents.no_available_agent``, ``agents.no_matching_agent``);
    zero or less: no wait."""
    circuit_failures: int = 5
    """A (service, role, model) circuit opens after this many consecutive failed attempts (``bus/circuits.py``)."""
    circuit_failure_rate: float = 0.5
    """… or when more than this share of its attempts failed within ``circuit_window_s`` …"""
    circuit_min_calls: int = 20
    """… counting only once the window holds at least this many attempts."""
    circuit_window_s: float = 60.0
    """The window of the failure rate, in seconds."""
    circuit_cooldown_s: float = 30.0
    """How long an opened circuit defers its work before one probe may go; doubled at each re-open."""
    circuit_cooldown_max_s: float = 600.0
    """The longest cool-down, however often the circuit re-opened."""
    llm_url: str = ""
    """OpenAI-compatible endpoint for the codegen worker. Empty: the deterministic local model."""
    llm_api_key: str = ""
    """API key for ``llm_url``."""
    log_level: str = "INFO"
    """Log level of every process."""
    ephemeral: str = ""
    """Worker processes whose every assignment runs in a fresh child process that exits when it is done
    (``docs/ephemeral.md``): comma-separated process names, or ``all`` for every worker. Empty: only those the
    process table marks ephemeral."""
    ephemeral_grace_s: float = 30.0
    """How long past its assignment's TTL an ephemeral child may run (to start, and to write its outcome through
    a database outage) before its consumer kills it."""
    flower_user: str = "cogo"
    """User name of Flower's basic auth."""
    flower_password: str = ""
    """Password of Flower's basic auth. Empty: generated once into ``<home>/flower.password`` (mode 0600)."""
    sandbox: str = "auto"
    """How build-test confines generated code: ``auto`` (best available, refuse if none), ``bwrap``,
    ``unshare``, or ``unconfined`` (no isolation: the operator accepts the risk)."""
    sandbox_memory_mb: int = 1024
    """Address-space limit of sandboxed code, in MiB."""
    sandbox_max_procs: int = 64
    """How many processes sandboxed code may run at once."""
    sandbox_cpu_s: int = 60
    """CPU-time limit of sandboxed code, in seconds."""
    sandbox_file_mb: int = 64
    """Largest file sandboxed code may write, in MiB."""
    jwt_hs256_secret: str = ""
    """Accept JWTs signed with this HS256 secret (claims ``tenant``, ``scopes``). Empty: no HS256 JWTs."""
    jwt_public_key_file: Path = Path("")
    """Accept RS256 JWTs verified by this PEM public key or JWKS file. Empty: no RS256 JWTs."""
    max_body_bytes: int = 1_048_576
    """Largest request body the API accepts (413 beyond it)."""
    rate_per_s: float = 50.0
    """Intents a tenant may submit per second, on average, across every API process (429 beyond it)."""
    rate_burst: int = 100
    """How many intents a tenant may submit at once before the rate limit applies."""
    max_run_cost_usd: float = 1000.0
    """Operator ceiling on any budget's ``maxCostUsd``."""
    max_run_tokens: int = 100_000_000
    """Operator ceiling on any budget's ``maxTokens``."""
    dead_letter: str = "fail"
    """What becomes of an assignment whose last attempt failed, unless its task's retry policy says
    (``dead_letter``): ``fail`` reports the failure to its run at once; ``hold`` keeps it as a dead letter the run
    waits for until an operator re-queues or discards it (``docs/dead-letters.md``)."""
    otel_endpoint: str = ""
    """Where every process sends its spans over OTLP/HTTP (a base URL such as ``http://collector:4318``; ``/v1/traces``
    is added), when the ``otel`` extra is installed (``docs/tracing.md``). Empty: the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, and without either, tracing is off. ``OTEL_SDK_DISABLED=true`` turns it off."""
    otel_traces_endpoint: str = ""
    """The traces URL itself, used as it is (nothing added), ahead of ``otel_endpoint``. Empty: the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (read only when neither ``COGO_OTEL_*`` endpoint is set)."""

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
        if not values.get("otel_endpoint") and not values.get("otel_traces_endpoint"):  # OpenTelemetry's own names
            for name, var in (("otel_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
                              ("otel_traces_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
                if env.get(var, "").strip():
                    values[name] = env[var].strip()
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            values["otel_endpoint"] = values["otel_traces_endpoint"] = ""
        elif values.get("otel_endpoint") or values.get("otel_traces_endpoint"):
            _check_otlp_protocol(env)
        return cls(**values).checked()

    def _check_shards(self) -> None:
        if self.shards < 1 or self.shards > 1024:
            raise ConfigError(f"COGO_SHARDS must be between 1 and 1024, got {self.shards}")
        if not -1 <= self.shard < self.shards:
            raise ConfigError(f"COGO_SHARD must be -1 (every shard) or a shard below COGO_SHARDS={self.shards}, "
                              f"got {self.shard}")

    def _check_ephemeral(self) -> None:
        bad = [n for n in sorted(self.ephemeral_names) if not _PROCESS_NAME.fullmatch(n)]
        if bad:
            raise ConfigError(f"COGO_EPHEMERAL must be a comma-separated list of process names or 'all', got "
                              f"{', '.join(map(repr, bad))}", details={"variable": "COGO_EPHEMERAL"})
        if not math.isfinite(self.ephemeral_grace_s) or self.ephemeral_grace_s <= 0:
            raise ConfigError(f"COGO_EPHEMERAL_GRACE_S must be a positive number, got {self.ephemeral_grace_s}")

    def _check_dead_letter(self) -> None:
        if self.dead_letter not in DEAD_LETTER_MODES:
            raise ConfigError(f"COGO_DEAD_LETTER must be one of {', '.join(DEAD_LETTER_MODES)}, got "
                              f"{self.dead_letter!r}", details={"variable": "COGO_DEAD_LETTER"})

    def _check_otel(self) -> None:
        for url, var, theirs in ((self.otel_endpoint, "COGO_OTEL_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
                                 (self.otel_traces_endpoint, "COGO_OTEL_TRACES_ENDPOINT",
                                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            if url and (not url.startswith(("http://", "https://")) or any(c.isspace() for c in url)):
                raise ConfigError(f"{var} (or {theirs}) must be an http:// or https:// URL (OTLP/HTTP), got "
                                  f"{_scheme_only(url)!r}", details={"variable": var})

    def _check_circuits(self) -> None:
        if self.circuit_failures < 1 or self.circuit_min_calls < 1:
            raise ConfigError("COGO_CIRCUIT_FAILURES and COGO_CIRCUIT_MIN_CALLS must be at least 1, got "
                              f"{self.circuit_failures} and {self.circuit_min_calls}")
        if not 0 < self.circuit_failure_rate <= 1:
            raise ConfigError("COGO_CIRCUIT_FAILURE_RATE must be above 0 and at most 1, got "
                              f"{self.circuit_failure_rate}")
        for name in ("circuit_window_s", "circuit_cooldown_s", "circuit_cooldown_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"COGO_{name.upper()} must be a positive number, got {getattr(self, name)}")

    def checked(self) -> Settings:
        """Return these settings with derived defaults filled in, or raise ConfigError."""
        self._check_shards()
        for name in ("lease_s", "stale_s", "reclaim_interval_s", "retention_days", "retention_interval_s",
                     "agent_heartbeat_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"COGO_{name.upper()} must be a positive number, got {getattr(self, name)}")
        if self.broker_url and not self.broker_url.startswith(_BROKER_SCHEMES):
            raise ConfigError(f"COGO_BROKER_URL must start with one of {', '.join(_BROKER_SCHEMES)}, got "
                              f"{_scheme_only(self.broker_url)!r}")
        database_url = self.database_url or f"sqlite:///{(self.home / 'cogo.db').resolve()}"
        if not database_url.startswith(_DATABASE_SCHEMES):
            raise ConfigError(f"COGO_DATABASE_URL must start with one of {', '.join(_DATABASE_SCHEMES)}, got "
                              f"{_scheme_only(database_url)!r}")
        artifacts = self.artifacts_dir if str(self.artifacts_dir) not in ("", ".") else self.home / "artifacts"
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"COGO_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        self._check_ephemeral()
        self._check_dead_letter()
        self._check_otel()
        if self.sandbox not in SANDBOX_MODES:
            raise ConfigError(f"COGO_SANDBOX must be one of {', '.join(SANDBOX_MODES)}, got {self.sandbox!r}")
        for name in ("sandbox_memory_mb", "sandbox_max_procs", "sandbox_cpu_s", "sandbox_file_mb", "max_body_bytes",
                     "rate_burst", "max_run_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"COGO_{name.upper()} must be at least 1, got {getattr(self, name)}")
        self._check_circuits()
        for name in ("rate_per_s", "max_run_cost_usd"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"COGO_{name.upper()} must be a positive finite number, got {value}")
        return replace(self, database_url=database_url, artifacts_dir=artifacts, log_level=self.log_level.upper())

    @property
    def admission_policy_names(self) -> list[str]:
        """``admission_policies`` as a list."""
        return [p.strip() for p in self.admission_policies.split(",") if p.strip()]

    @property
    def policy_path(self) -> Path:
        """Where the operator's policy table is read from."""
        return self.policy_file if str(self.policy_file) not in ("", ".") else self.home / "policy.yaml"

    @property
    def ephemeral_names(self) -> frozenset[str]:
        """``ephemeral`` as a set of process names (``all`` included as written)."""
        return frozenset(n.strip() for n in self.ephemeral.split(",") if n.strip())

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


OTLP_PROTOCOL = "http/protobuf"
"""The one OTLP transport cogo's exporter speaks (``bus/tracing.py``)."""


def _check_otlp_protocol(env: Mapping[str, str]) -> None:
    """Refuse an OTLP protocol other than ``http/protobuf`` (``grpc``, ``http/json``) when tracing is on: the
    exporter would send OTLP/HTTP protobuf to an endpoint set up for something else, and every export would fail.
    The traces-specific variable wins over the general one, as the OpenTelemetry specification says."""
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = env.get(var, "").strip()
        if not raw:
            continue
        if raw.lower() != OTLP_PROTOCOL:
            raise ConfigError(f"{var} is {raw[:32]!r}, but cogo exports traces over OTLP/HTTP with protobuf only: "
                              f"set it to {OTLP_PROTOCOL} (or unset it) and point the endpoint at the collector's "
                              "OTLP/HTTP port (4318 by default), not its gRPC one", details={"variable": var})
        return


def _scheme_only(url: str) -> str:
    """What an error may show of a URL that may carry a password: its scheme, and no more."""
    scheme, sep, _rest = url.partition("://")
    return f"{scheme}://…" if sep else "(no scheme)"


def _parse(var: str, raw: str, kind: object) -> object:
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
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
