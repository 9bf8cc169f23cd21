"""Kubernetes manifests derived from the process table, written to ``k8s/`` beside ``docker-compose.yml``.

One Deployment per process (per shard for a sharded one when there are several shards), a Service for each
HTTP process, and for an ephemeral worker (``Process.ephemeral``, ``COGO_EPHEMERAL``) a Job in the shape of
seed 002 as well: the form of one assignment run in a pod of its own (``restartPolicy: Never``, no retry of the
pod: a failed attempt is retried by the ledger, as for any worker). The worker's Deployment stays the consumer
of its queues; it runs each assignment in a local child process, and :func:`job` is what a launcher that creates
Jobs instead submits. ``k8s/cogo.yaml`` holds what every pod shares: the ConfigMap, the data volume's claim and
the one-shot migration. Credentials come from the Secret ``cogo-secrets`` the operator creates
(``docs/ephemeral.md``); no value of a secret is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import yaml

from bus.envelope import Assignment
from bus.settings import Settings
from ecosystem.launcher import SECRETS
from ecosystem.manifests import (
    CONFINES_CODE,
    CONTAINER_ENV,
    HEALTHCHECK,
    IMAGE,
    PROCESS_ENV,
    SECRET_ENV,
    _Dumper,
    process_flags,
)
from ecosystem.processes import PROCESSES, Process
from workers.ephemeral import ASSIGNMENT_ENV

DIRECTORY = "k8s"
HEADER = ("# Generated from ecosystem/processes.py by `cogo manifests`; do not edit by hand.\n"
          "# Credentials come from the Secret cogo-secrets: see docs/ephemeral.md.\n")
CONFIG_MAP = "cogo-config"
SECRET = "cogo-secrets"
DATA_CLAIM = "cogo-data"
DATA_PATH = "/data"
PART_OF = "cogo"
JOB_TTL_AFTER_FINISHED_S = 3600
"""How long a finished Job and its pod are kept before Kubernetes deletes them (seed 002's value)."""
ASSIGNMENT_PLACEHOLDER = "${COGO_ASSIGNMENT_ID}"
"""Where the Job template takes the assignment id (``envsubst``, or :func:`job`)."""
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
"""What a process's container asks for and may use, unless :data:`PROCESS_RESOURCES` says otherwise."""
PROCESS_RESOURCES = {
    "cogo-build-test-worker": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
}
"""Processes that need more: build-test runs generated code whose address space may reach
``COGO_SANDBOX_MEMORY_MB`` (1 GiB by default) on top of the worker."""
RUN_AS = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
"""The image's user ``cogo`` (uid 1000, ``Dockerfile``)."""


class _Writer(_Dumper):
    """The compose file's dumper, writing a repeated mapping out again rather than as a YAML alias."""

    def ignore_aliases(self, data) -> bool:
        return True


def labels(process: Process) -> dict[str, str]:
    """The labels of a process's objects and pods."""
    return {"app.kubernetes.io/name": process.name, "app.kubernetes.io/part-of": PART_OF}


def resources(process: Process) -> dict:
    """The container resources of ``process``."""
    return PROCESS_RESOURCES.get(process.name, RESOURCES)


def job_deadline_s(ttl_ms: int, grace_s: float) -> int:
    """A Job's ``activeDeadlineSeconds``: the assignment's TTL plus the grace its consumer would give a child."""
    return math.ceil(ttl_ms / 1000 + grace_s)


def _env(process: Process, extra: dict[str, str]) -> list[dict]:
    """The container's variables beyond the ConfigMap: credentials from the Secret (each secret of ``SECRETS``
    only for the processes named there), the process's own optional settings, then ``extra``."""
    env: list[dict] = []
    for var, value in CONTAINER_ENV.items():
        if "${" in value:  # a credential (the broker's and the ledger's URLs carry passwords)
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": var}}})
    for var, holders in SECRETS.items():
        if process.name in holders:
            optional = not SECRET_ENV[var].startswith(f"${{{var}:?")
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": var,
                                                                    "optional": optional}}})
    for var in PROCESS_ENV.get(process.name, {}):
        env.append({"name": var, "valueFrom": {"configMapKeyRef": {"name": CONFIG_MAP, "key": var,
                                                                   "optional": True}}})
    env += [{"name": var, "value": value} for var, value in extra.items()]
    return env


def _container(process: Process, extra: dict[str, str], *, probe: bool) -> dict:
    container: dict = {
        "name": "cogo",
        "image": IMAGE,
        "command": process.command,
        "envFrom": [{"configMapRef": {"name": CONFIG_MAP}}],
        "env": _env(process, extra),
        "resources": resources(process),
        "volumeMounts": [{"name": "data", "mountPath": DATA_PATH}],
    }
    if process.port_setting:
        container["ports"] = [{"containerPort": getattr(Settings(), process.port_setting)}]
    if probe:
        container["livenessProbe"] = {
            "exec": {"command": ["cogo", "health", process.name]},
            "initialDelaySeconds": int(HEALTHCHECK["start_period"].rstrip("s")),
            "periodSeconds": int(HEALTHCHECK["interval"].rstrip("s")),
            "timeoutSeconds": int(HEALTHCHECK["timeout"].rstrip("s")),
            "failureThreshold": HEALTHCHECK["retries"],
        }
    if process.name in CONFINES_CODE:  # it builds its own sandbox: namespaces need these profiles off
        container["securityContext"] = {"seccompProfile": {"type": "Unconfined"},
                                        "appArmorProfile": {"type": "Unconfined"}}
    return container


def _pod(process: Process, container: dict, **spec) -> dict:
    return {"metadata": {"labels": labels(process)},
            "spec": {**spec, "securityContext": RUN_AS, "containers": [container],
                     "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}}]}}


def deployment(process: Process, *, name: str | None = None, shard: int | None = None) -> dict:
    """The Deployment running ``process`` (one shard's copy when ``shard`` is given)."""
    extra = process_flags(process) | ({"COGO_SHARD": str(shard)} if shard is not None else {})
    meta_labels = labels(process) | ({"cogo.dev/shard": str(shard)} if shard is not None else {})
    pod = _pod(process, _container(process, extra, probe=True))
    pod["metadata"]["labels"] = meta_labels
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name or process.name, "labels": meta_labels},
            "spec": {"replicas": 1 if shard is not None else process.replicas,
                     "selector": {"matchLabels": meta_labels}, "template": pod}}


def service(process: Process) -> dict:
    """The Service in front of an HTTP process's pods."""
    port = getattr(Settings(), process.port_setting or "")
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": process.name, "labels": labels(process)},
            "spec": {"selector": labels(process), "ports": [{"port": port, "targetPort": port}]}}


def job(process: Process, assignment_id: str = ASSIGNMENT_PLACEHOLDER, *,
        ttl_ms: int = Assignment.model_fields["ttl_ms"].default,
        grace_s: float = Settings().ephemeral_grace_s) -> dict:
    """The Job that runs one assignment of the ephemeral worker ``process`` and exits (seed 002's shape): the
    worker's image and command with ``COGO_ASSIGNMENT_ID`` set, never restarted, deleted an hour after it ended,
    stopped by Kubernetes past the assignment's TTL plus the grace."""
    container = _container(process, {ASSIGNMENT_ENV: assignment_id}, probe=False)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"generateName": f"{process.name}-", "labels": labels(process),
                         "annotations": {"cogo.dev/assignment-id": assignment_id}},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL_AFTER_FINISHED_S,
                     "activeDeadlineSeconds": job_deadline_s(ttl_ms, grace_s),
                     "template": _pod(process, container, restartPolicy="Never")}}


def shared(shards: int = 1) -> list[dict]:
    """What every pod shares: the ConfigMap, the data volume's claim, the one-shot migration Job."""
    config = {var: value for var, value in CONTAINER_ENV.items() if "${" not in value} | {"COGO_SHARDS": str(shards)}
    migrate = Process("cogo-migrate", "loop", "", "the ledger's migrations")
    container = _container(migrate, {}, probe=False) | {"command": ["cogo", "migrate"]}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, "labels": {
            "app.kubernetes.io/part-of": PART_OF}}, "data": config},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": DATA_CLAIM, "labels": {
            "app.kubernetes.io/part-of": PART_OF}},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "cogo-migrate", "labels": labels(migrate)},
         "spec": {"backoffLimit": 4, "ttlSecondsAfterFinished": JOB_TTL_AFTER_FINISHED_S,
                  "template": _pod(migrate, container, restartPolicy="OnFailure")}},
    ]


def documents(processes: Sequence[Process] = PROCESSES, shards: int = 1) -> dict[str, list[dict]]:
    """Every Kubernetes object by the file (under ``k8s/``) it is written to."""
    files = {"cogo.yaml": shared(shards)}
    for process in processes:
        if process.sharded and process.copies(shards) > 1:
            objects = [deployment(process, name=f"{process.name}-{s}", shard=s) for s in range(shards)]
        else:
            objects = [deployment(process)]
        if process.port_setting:
            objects.append(service(process))
        files[f"{process.name}.yaml"] = objects
        if process.ephemeral:
            files[f"{process.name}.job.yaml"] = [job(process)]
    return files


def rendered(processes: Sequence[Process] = PROCESSES, shards: int = 1) -> dict[str, str]:
    """Each file's text by its path relative to the root (``k8s/<file>``)."""
    return {f"{DIRECTORY}/{name}": HEADER + yaml.dump_all(objects, Dumper=_Writer, sort_keys=False, width=110)
            for name, objects in documents(processes, shards).items()}
