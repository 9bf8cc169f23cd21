"""Deployment manifests derived from the process table: ``docker-compose.yml``, ``Procfile`` and ``k8s/``; and
beside them Prometheus's and Grafana's configuration (``ecosystem/observability.py``).

``cogo manifests`` (or ``python -m ecosystem.manifests``) writes them; ``--check`` fails when the
committed files differ from what the table says, and a test does the same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from bus.readiness import READY_ENV
from bus.settings import Settings
from ecosystem import observability
from ecosystem.launcher import SECRETS
from ecosystem.processes import PROCESSES, Process

HEADER = ("# Generated from ecosystem/processes.py by `cogo manifests`; do not edit by hand.\n"
          "# Run `cogo manifests` after changing the process table.\n"
          "# Credentials come from .env beside this file: `cp cogo.env.example .env` and fill it in.\n")
IMAGE = "cogo:latest"
ENV_EXAMPLE = "cogo.env.example"
"""The documented template of ``.env``, the file compose reads the credentials from."""


def required(var: str) -> str:
    """A compose reference to ``var`` that stops ``docker compose`` with a hint when it is unset or empty."""
    return f"${{{var}:?set it in .env, see {ENV_EXAMPLE}}}"


REDIS_PASSWORD = required("REDIS_PASSWORD")
POSTGRES_USER = "${POSTGRES_USER:-cogo}"
POSTGRES_PASSWORD = required("POSTGRES_PASSWORD")
CONTAINER_ENV = {
    "COGO_BROKER_URL": f"redis://:{REDIS_PASSWORD}@redis:6379/0",
    "COGO_DATABASE_URL": f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@postgres:5432/cogo",
    "COGO_HOME": "/data",
    "COGO_API_HOST": "0.0.0.0",
}
"""The environment of every cogo container: the compose services' broker and ledger, a shared home."""
SECRET_ENV = {
    "COGO_LLM_API_KEY": "${COGO_LLM_API_KEY:-}",
    "COGO_FLOWER_PASSWORD": required("COGO_FLOWER_PASSWORD"),
    "COGO_JWT_HS256_SECRET": "${COGO_JWT_HS256_SECRET:-}",
}
"""Each secret of ``ecosystem.launcher.SECRETS``, given only to the containers that process list names."""
PROCESS_ENV = {
    "cogo-codegen-service": {"COGO_LLM_URL": "${COGO_LLM_URL:-}"},
    "flower": {"COGO_FLOWER_USER": "${COGO_FLOWER_USER:-cogo}"},
}
"""Settings only one process reads."""
REDIS_COMMAND = ("umask 077 && printf 'requirepass %s\\n' \"$$REDISCLI_AUTH\" > /data/redis.conf"
                 " && exec docker-entrypoint.sh redis-server /data/redis.conf")
"""Redis takes its password from a 0600 config file, never its command line (which ``ps`` shows)."""


def _cogo_service(command: list[str], depends_on: dict, environment: dict | None = None) -> dict:
    return {
        "image": IMAGE,
        "build": {"context": "."},
        "command": command,
        "environment": {**CONTAINER_ENV, **(environment or {})},
        "volumes": ["cogo-data:/data"],
        "depends_on": depends_on,
    }


CONFINES_CODE = {"cogo-build-test-worker": ("seccomp=unconfined", "apparmor=unconfined")}
"""Processes that build their own sandbox (user, mount and PID namespaces) inside the container; Docker's
default seccomp and AppArmor profiles forbid creating namespaces, and the sandbox fails closed without them
(``sandbox.unavailable``). The container itself stays unprivileged (uid 1000, no added capability)."""


HEALTH_FILE = "/tmp/cogo.ready"
"""Where a loop process in a container touches its file on every good tick (``cogo health`` reads its age)."""
HEALTHCHECK = {"interval": "15s", "timeout": "15s", "retries": 3, "start_period": "60s"}
"""How often compose runs ``cogo health <process>`` and how many failures make a container unhealthy."""


def process_flags(process: Process) -> dict[str, str]:
    """What the table says of one process that its container must know: where a loop marks itself ready, and
    whether a worker is ephemeral (compose and Kubernetes alike)."""
    env = {}
    if process.kind == "loop":
        env[READY_ENV] = HEALTH_FILE
    if process.ephemeral:
        env["COGO_EPHEMERAL"] = process.name
    return env


def process_environment(process: Process) -> dict[str, str]:
    """The variables one process's container gets beyond ``CONTAINER_ENV``: its own settings and secrets."""
    env = {**PROCESS_ENV.get(process.name, {}), **process_flags(process)}
    env.update({var: SECRET_ENV[var] for var, holders in SECRETS.items() if process.name in holders})
    return env


def _process_service(process: Process, shards: int, environment: dict[str, str]) -> dict:
    service = _cogo_service(process.command, {
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }, {"COGO_SHARDS": str(shards), **process_environment(process), **environment})
    service["restart"] = "unless-stopped"
    service["healthcheck"] = {"test": ["CMD", "cogo", "health", process.name], **HEALTHCHECK}
    if process.name in CONFINES_CODE:
        service["security_opt"] = list(CONFINES_CODE[process.name])
    if process.port_setting:
        port = getattr(Settings(), process.port_setting)
        service["ports"] = [f"{port}:{port}"]
    if process.replicas > 1:
        service["deploy"] = {"replicas": process.replicas}
    return service


def compose(processes: Sequence[Process] = PROCESSES, shards: int = 1) -> dict:
    """The docker-compose document: Redis, PostgreSQL, a one-shot migrate, one service per process — per shard
    for a sharded one (``<name>-<shard>``, consuming only that shard's queues) when ``shards`` > 1."""
    services: dict[str, dict] = {
        "redis": {
            "image": "redis:7-alpine",
            "command": ["sh", "-c", REDIS_COMMAND],
            "environment": {"REDISCLI_AUTH": REDIS_PASSWORD},
            "healthcheck": {"test": ["CMD-SHELL", "redis-cli ping | grep -q PONG"], "interval": "2s", "retries": 30},
        },
        "postgres": {
            "image": "postgres:16-alpine",
            "environment": {"POSTGRES_USER": POSTGRES_USER, "POSTGRES_PASSWORD": POSTGRES_PASSWORD,
                            "POSTGRES_DB": "cogo"},
            "volumes": ["pg-data:/var/lib/postgresql/data"],
            "healthcheck": {"test": ["CMD", "pg_isready", "-U", POSTGRES_USER, "-d", "cogo"],
                            "interval": "2s", "retries": 30},
        },
        "migrate": _cogo_service(["cogo", "migrate"], {"postgres": {"condition": "service_healthy"}}),
    }
    for process in processes:
        if process.copies(shards) > 1 and process.sharded:
            for shard in range(shards):
                services[f"{process.name}-{shard}"] = _process_service(process, shards, {"COGO_SHARD": str(shard)})
        else:
            services[process.name] = _process_service(process, shards, {})
    services.update(observability.compose_services())  # optional: `docker compose --profile observability up`
    return {"name": "cogo", "services": services, "volumes": {"pg-data": {}, "cogo-data": {}, **observability.VOLUMES},
            "secrets": observability.SECRETS}


class _Dumper(yaml.SafeDumper):
    """Writes short lists of scalars inline (``command: [cogo, process, flower]``), the rest in blocks."""


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    flat = all(isinstance(item, str | int | float) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def compose_yaml(processes: Sequence[Process] = PROCESSES, shards: int = 1) -> str:
    """``docker-compose.yml`` as text."""
    return HEADER + yaml.dump(compose(processes, shards), Dumper=_Dumper, sort_keys=False, width=110)


def procfile(processes: Sequence[Process] = PROCESSES) -> str:
    """The ``Procfile``: one line per process (honcho, foreman, Heroku-like platforms)."""
    return "".join(f"{p.name}: {' '.join(p.command)}\n" for p in processes)


def rendered(processes: Sequence[Process] = PROCESSES, shards: int = 1) -> dict[str, str]:
    """Every manifest by its path under the root: the compose file, the Procfile, ``k8s/`` (``ecosystem/k8s.py``) and
    the Prometheus and Grafana files (``ecosystem/observability.py``)."""
    from ecosystem import k8s

    return {"docker-compose.yml": compose_yaml(processes, shards), "Procfile": procfile(processes),
            **k8s.rendered(processes, shards), **observability.rendered()}


def _left_over(root: Path, names: Sequence[str]) -> list[str]:
    """Files of ``k8s/`` under ``root`` that the table no longer gives (a worker that stopped being ephemeral)."""
    from ecosystem import k8s

    folder = root / k8s.DIRECTORY
    found = [f"{k8s.DIRECTORY}/{path.name}" for path in folder.glob("*.yaml")] if folder.is_dir() else []
    return sorted(set(found) - set(names))


def stale(root: Path, shards: int = 1, processes: Sequence[Process] = PROCESSES) -> list[str]:
    """The manifests under ``root`` that differ from (or are missing next to, or are left over beside) what the
    table gives."""
    texts = rendered(processes, shards)
    return [name for name, text in texts.items()
            if not (root / name).is_file() or (root / name).read_text() != text] + _left_over(root, list(texts))


def write(root: Path, shards: int = 1, processes: Sequence[Process] = PROCESSES) -> list[Path]:
    """Write every manifest under ``root`` (and remove the ``k8s/`` files the table no longer gives); returns the
    paths written."""
    texts = rendered(processes, shards)
    for name in _left_over(root, list(texts)):
        (root / name).unlink()
    paths = []
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        paths.append(root / name)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    for path in write(target):
        print(f"wrote {path}")
