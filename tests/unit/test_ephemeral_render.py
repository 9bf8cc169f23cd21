"""Ephemeral workers without processes: ``COGO_EPHEMERAL`` checked, the table it gives, the Kubernetes manifests
rendered from the table (Deployments, and seed 002's Job for an ephemeral worker), the stderr tail scrubbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bus.errors import ConfigError
from bus.settings import Settings
from ecosystem import k8s, manifests
from ecosystem.launcher import SECRETS
from ecosystem.processes import PROCESSES, is_ephemeral, with_ephemeral
from workers.ephemeral import ASSIGNMENT_ENV, scrub

ROOT = Path(__file__).resolve().parents[2]
WORKERS = {p.name for p in PROCESSES if p.runs_assignments}


def settings(**env: str) -> Settings:
    return Settings.from_env({f"COGO_{k.upper()}": v for k, v in env.items()})


# -- COGO_EPHEMERAL -----------------------------------------------------------------------------------------------
def test_the_workers_are_the_processes_that_run_assignments():
    assert WORKERS == {"cogo-codegen-service", "cogo-build-test-worker", "cogo-rag-embed", "cogo-kg-builder"}


def test_no_process_is_ephemeral_unless_the_table_or_cogo_ephemeral_says_so():
    assert not any(p.ephemeral for p in with_ephemeral(settings()))
    assert not is_ephemeral("cogo-rag-embed", settings())


def test_cogo_ephemeral_marks_the_named_workers_only():
    table = with_ephemeral(settings(ephemeral="cogo-rag-embed, cogo-kg-builder"))
    assert {p.name for p in table if p.ephemeral} == {"cogo-rag-embed", "cogo-kg-builder"}
    assert [p.name for p in table] == [p.name for p in PROCESSES]
    assert is_ephemeral("cogo-rag-embed", settings(ephemeral="cogo-rag-embed"))
    assert not is_ephemeral("cogo-codegen-service", settings(ephemeral="cogo-rag-embed"))


def test_all_marks_every_worker_and_nothing_else():
    table = with_ephemeral(settings(ephemeral="all"))
    assert {p.name for p in table if p.ephemeral} == WORKERS
    assert is_ephemeral("a-worker-of-a-test-table", settings(ephemeral="all"))


def test_an_unknown_process_is_refused_naming_it_and_the_workers():
    with pytest.raises(ConfigError, match="'cogo-codegen'") as caught:
        with_ephemeral(settings(ephemeral="cogo-codegen,cogo-rag-embed"))
    assert caught.value.code == "config.invalid"
    assert "cogo-codegen-service" in str(caught.value)
    assert caught.value.details["unknown"] == ["cogo-codegen"]


def test_a_process_that_runs_no_assignments_cannot_be_ephemeral():
    for name in ("cogo-orchestrator-brain", "cogo-executor-dispatcher", "orchestrator-chat", "cogo-bus-reclaimer"):
        with pytest.raises(ConfigError, match="only workers") as caught:
            with_ephemeral(settings(ephemeral=name))
        assert caught.value.code == "config.invalid"


@pytest.mark.parametrize("raw", ["Cogo-Rag-Embed", "cogo rag", "-x", "cogo_rag_embed"])
def test_a_malformed_list_is_refused_when_the_settings_are_built(raw):
    with pytest.raises(ConfigError, match="COGO_EPHEMERAL") as caught:
        settings(ephemeral=raw)
    assert caught.value.code == "config.invalid"


@pytest.mark.parametrize("raw", ["0", "-1", "nan"])
def test_the_grace_must_be_a_positive_number(raw):
    with pytest.raises(ConfigError, match="COGO_EPHEMERAL_GRACE_S"):
        settings(ephemeral_grace_s=raw)


# -- the Kubernetes manifests -------------------------------------------------------------------------------------
def committed() -> dict[str, list[dict]]:
    return {path.name: list(yaml.safe_load_all(path.read_text())) for path in (ROOT / k8s.DIRECTORY).glob("*.yaml")}


def test_the_committed_k8s_files_parse_and_run_every_process_of_the_table():
    files = committed()
    deployments = {d["metadata"]["name"]: d for docs in files.values() for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {p.name for p in PROCESSES}
    for process in PROCESSES:
        spec = deployments[process.name]["spec"]
        assert spec["replicas"] == process.replicas
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
        (container,) = spec["template"]["spec"]["containers"]
        assert container["image"] == manifests.IMAGE and container["command"] == ["cogo", "process", process.name]
        assert container["livenessProbe"]["exec"]["command"] == ["cogo", "health", process.name]
    kinds = sorted(d["kind"] for d in files["cogo.yaml"])
    assert kinds == ["ConfigMap", "Job", "PersistentVolumeClaim"]
    assert not any(name.endswith(".job.yaml") for name in files)  # the committed table has no ephemeral worker


def test_each_secret_reaches_only_the_pods_of_the_processes_entitled_to_it_and_no_value_is_written():
    text = "".join((ROOT / k8s.DIRECTORY / name).read_text() for name in committed())
    assert "password" not in text.lower().replace("cogo_flower_password", "")
    deployments = [d for docs in committed().values() for d in docs if d["kind"] == "Deployment"]
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        names = {e["name"] for e in container["env"]}
        for var, holders in SECRETS.items():
            assert (var in names) == (deployment["metadata"]["name"] in holders), (var, deployment["metadata"])
        for entry in container["env"]:
            if entry["name"] in SECRETS or entry["name"] in ("COGO_BROKER_URL", "COGO_DATABASE_URL"):
                assert entry["valueFrom"]["secretKeyRef"]["name"] == k8s.SECRET


def test_an_ephemeral_worker_gets_its_consumer_deployment_and_a_job_in_seed_002s_shape():
    table = with_ephemeral(settings(ephemeral="cogo-build-test-worker,cogo-rag-embed"))
    texts = manifests.rendered(table)
    jobs = {name: yaml.safe_load(text) for name, text in texts.items() if name.endswith(".job.yaml")}
    assert set(jobs) == {"k8s/cogo-build-test-worker.job.yaml", "k8s/cogo-rag-embed.job.yaml"}
    for process in (p for p in table if p.ephemeral):
        job = jobs[f"k8s/{process.name}.job.yaml"]
        assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
        assert job["spec"]["backoffLimit"] == 0
        assert job["spec"]["ttlSecondsAfterFinished"] == k8s.JOB_TTL_AFTER_FINISHED_S
        assert job["spec"]["activeDeadlineSeconds"] == 60 + Settings().ephemeral_grace_s  # default TTL + grace
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["image"] == manifests.IMAGE and container["command"] == ["cogo", "process", process.name]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[ASSIGNMENT_ENV] == k8s.ASSIGNMENT_PLACEHOLDER and "COGO_EPHEMERAL" not in env
        assert container["resources"] == k8s.resources(process)
        assert "livenessProbe" not in container  # a run of one assignment is not a consumer to ping
        deployment = yaml.safe_load(texts[f"k8s/{process.name}.yaml"])
        (consumer,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "COGO_EPHEMERAL", "value": process.name} in consumer["env"]
        assert consumer["resources"] == container["resources"]
    build_test = jobs["k8s/cogo-build-test-worker.job.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert build_test["securityContext"]["seccompProfile"] == {"type": "Unconfined"}  # as compose's security_opt
    compose = yaml.safe_load(texts["docker-compose.yml"])["services"]
    assert compose["cogo-rag-embed"]["environment"]["COGO_EPHEMERAL"] == "cogo-rag-embed"
    assert "COGO_EPHEMERAL" not in compose["cogo-kg-builder"]["environment"]


def test_a_job_for_one_assignment_takes_its_id_and_its_ttl():
    process = next(p for p in PROCESSES if p.name == "cogo-kg-builder")
    job = k8s.job(process, "a1b2", ttl_ms=120_500, grace_s=30.0)
    assert job["spec"]["activeDeadlineSeconds"] == 151
    assert job["metadata"]["annotations"]["cogo.dev/assignment-id"] == "a1b2"
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": ASSIGNMENT_ENV, "value": "a1b2"} in env


def test_three_shards_give_a_brain_and_a_dispatcher_deployment_per_shard():
    docs = k8s.documents(PROCESSES, shards=3)
    brains = [d for d in docs["cogo-orchestrator-brain.yaml"] if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in brains] == [f"cogo-orchestrator-brain-{s}" for s in range(3)]
    for shard, deployment in enumerate(brains):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "COGO_SHARD", "value": str(shard)} in env
    config = next(d for d in docs["cogo.yaml"] if d["kind"] == "ConfigMap")
    assert config["data"]["COGO_SHARDS"] == "3"


def test_write_removes_the_job_of_a_worker_that_is_no_longer_ephemeral(tmp_path):
    ephemeral = with_ephemeral(settings(ephemeral="cogo-rag-embed"))
    manifests.write(tmp_path, processes=ephemeral)
    assert (tmp_path / "k8s" / "cogo-rag-embed.job.yaml").is_file()
    assert manifests.stale(tmp_path, processes=ephemeral) == []
    assert manifests.stale(tmp_path) == ["docker-compose.yml", "k8s/cogo-rag-embed.yaml", "k8s/cogo-rag-embed.job.yaml"]
    manifests.write(tmp_path)
    assert not (tmp_path / "k8s" / "cogo-rag-embed.job.yaml").exists()
    assert manifests.stale(tmp_path) == []


# -- the stderr tail the consumer logs -----------------------------------------------------------------------------
def test_the_stderr_tail_is_scrubbed_of_every_secret_of_the_environment():
    env = {"COGO_LLM_API_KEY": "sk-live-123456", "COGO_FLOWER_PASSWORD": "hunter22",
           "COGO_BROKER_URL": "redis://:brokerpass@redis:6379/0", "COGO_HOME": "/data", "PATH": "/usr/bin"}
    text = "key sk-live-123456 pw hunter22 url redis://:brokerpass@redis:6379/0 home /data"
    scrubbed = scrub(text, env)
    assert "sk-live" not in scrubbed and "hunter22" not in scrubbed and "brokerpass" not in scrubbed
    assert "<COGO_LLM_API_KEY>" in scrubbed and "<password of COGO_BROKER_URL>" in scrubbed
    assert scrubbed.endswith("home /data")
