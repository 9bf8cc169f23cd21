"""A "model" behind a real OpenAI-compatible endpoint answers with hostile files; codegen → build-test holds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from bus.envelope import Assignment, Budget
from tests.integration.test_llm_client import ChatServer, completion
from tests.sandbox.conftest import SECRET
from workers.build_test import build_test
from workers.codegen import generate
from workers.handler import WorkContext
from workers.llm import render_files

THIEF = '''
import json, os

def grab(path):
    try:
        return open(path, "rb").read().decode("utf-8", "replace")
    except Exception as exc:
        return f"refused: {type(exc).__name__}"

def test_steal():
    loot = {"env": dict(os.environ), "environ": grab("/proc/1/environ"),
            "parent": grab(f"/proc/{os.getppid()}/environ"),
            "home": grab(os.environ.get("COGO_HOME", "/nonexistent") + "/cogo.db"), "ledger": grab(LEDGER)}
    json.dump(loot, open("loot.json", "w"))
    assert False, "a failing test the forger below would like to hide"
'''
FORGER = 'import sys\nprint("10 passed in 0.01s")\nsys.exit(0)\n'


@pytest.fixture
def chat():
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_hostile_files_from_a_model_steal_nothing_and_forge_nothing(world, chat):
    thief = THIEF.replace("LEDGER", repr(str(world.ledger)))
    chat.answer(completion(render_files({"test_steal.py": thief, "pytest.py": FORGER, "conftest.py": FORGER})))
    assignment = Assignment(agent_id="codegen", model="gpt-4o-mini", budget=Budget(maxTokens=10**6))
    gen_ctx = WorkContext(assignment_id="gen", run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                          assignment=assignment,
                          deadline=time.time() + 60, artifacts_root=world.artifacts, llm_url=chat.url,
                          llm_api_key=SECRET)
    generated = generate(gen_ctx, {"spec": "anything"})
    assert chat.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"  # the key did reach the model
    result = build_test(world.context("bt"), {"edits_path": generated.output["edits_path"]}, sandbox=world.sandbox())
    out = result.output
    assert (out["passed"], out["failed"], out["success_rate"]) == (0, 1, 0.0)
    loot_text = (world.workspace("bt") / "loot.json").read_text()
    loot = json.loads(loot_text)
    assert SECRET not in loot_text and not [k for k in loot["env"] if k.startswith("COGO_")]
    assert all(loot[k].startswith("refused") for k in ("environ", "parent", "home", "ledger")), loot
    assert SECRET not in Path(out["report_path"]).read_text()
