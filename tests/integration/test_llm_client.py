"""The OpenAI Chat Completions client against a real local HTTP server that speaks the protocol."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bus.envelope import Assignment
from bus.errors import TTLExpired, WorkFailed
from workers.codegen import generate
from workers.handler import WorkContext
from workers.llm import OpenAIChatClient, price_usd, render_files

MESSAGES = [{"role": "system", "content": "You write code."}, {"role": "user", "content": "add two numbers"}]


def completion(content: str, prompt: int = 12, completion_tokens: int = 30, model: str = "gpt-4o-mini") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                      "total_tokens": prompt + completion_tokens}}


@dataclass
class Reply:
    """What the fake endpoint answers next."""

    status: int = 200
    body: bytes = b"{}"
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class ChatServer(ThreadingHTTPServer):
    """A chat-completions endpoint on 127.0.0.1 that records requests and plays scripted replies."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = Reply()
        self.requests: list[dict] = []
        self.release = threading.Event()  # ends a delayed reply early at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, body: dict | bytes, status: int = 200, **kwargs) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.reply = Reply(status=status, body=raw, **kwargs)


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self):  # noqa: N802 (the name http.server dispatches to)
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers),
                                     "body": json.loads(self.rfile.read(length))})
        reply = self.server.reply
        if reply.delay_s:
            self.server.release.wait(reply.delay_s)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test); nothing to answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[ChatServer]:
    srv = ChatServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def test_the_request_follows_the_protocol_and_the_answer_is_parsed(server):
    server.answer(completion("def add(a, b):\n    return a + b\n"))
    client = OpenAIChatClient(server.url, "sk-test", timeout_s=10)
    answer = client.complete(MESSAGES, model="gpt-4o-mini", temperature=0.2, max_tokens=256)
    [request] = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 256}
    assert answer.content == "def add(a, b):\n    return a + b\n"
    assert (answer.prompt_tokens, answer.completion_tokens, answer.total_tokens) == (12, 30, 42)
    assert answer.cost_usd == pytest.approx(price_usd("gpt-4o-mini", 12, 30)) and answer.cost_usd > 0
    assert answer.model == "gpt-4o-mini"


def test_a_base_url_ending_in_v1_reaches_the_same_path(server):
    server.answer(completion("ok"))
    OpenAIChatClient(server.url + "/v1", "k").complete(MESSAGES, model="gpt-4o")
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_missing_usage_is_estimated_rather_than_left_unmetered(server):
    body = completion("three words here")
    del body["usage"]
    server.answer(body)
    answer = OpenAIChatClient(server.url, "k").complete(MESSAGES, model="gpt-4o-mini")
    assert answer.completion_tokens == 3 and answer.prompt_tokens == 6 and answer.cost_usd > 0


@pytest.mark.parametrize(("status", "code", "retryable"), [
    (429, "llm.unavailable", True), (500, "llm.unavailable", True), (503, "llm.unavailable", True),
    (400, "llm.rejected", False), (401, "llm.rejected", False), (404, "llm.rejected", False),
])
def test_http_errors_map_to_retryable_or_permanent_failures(server, status, code, retryable):
    server.answer({"error": {"message": "nope", "type": "x"}}, status=status, headers={"Retry-After": "7"})
    with pytest.raises(WorkFailed) as raised:
        OpenAIChatClient(server.url, "sk-test").complete(MESSAGES, model="gpt-4o-mini")
    assert (raised.value.code, raised.value.retryable) == (code, retryable)
    assert raised.value.details["status"] == status and "nope" in raised.value.details["body"]
    assert "sk-test" not in str(raised.value)
    if status == 429:
        assert raised.value.details["retry_after"] == "7"


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", json.dumps({"choices": []}).encode(),
    json.dumps({"choices": [{"message": {"content": None}}]}).encode(),
    json.dumps({**completion("x"), "usage": {"prompt_tokens": "many"}}).encode(),
])
def test_a_malformed_body_is_a_bad_response(server, body):
    server.answer(body)
    with pytest.raises(WorkFailed) as raised:
        OpenAIChatClient(server.url, "k").complete(MESSAGES, model="gpt-4o-mini")
    assert (raised.value.code, raised.value.retryable) == ("llm.bad_response", False)


@pytest.mark.timeout(20)  # the client's own 600 s timeout would blow this deadline: the per-call one must win
def test_a_slow_endpoint_times_out_as_unavailable(server):
    server.answer(completion("late"), delay_s=30)
    with pytest.raises(WorkFailed) as raised:
        OpenAIChatClient(server.url, "k", timeout_s=600).complete(MESSAGES, model="gpt-4o-mini", timeout_s=0.3)
    assert (raised.value.code, raised.value.retryable) == ("llm.unavailable", True)


def test_an_unreachable_endpoint_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(WorkFailed) as raised:
            OpenAIChatClient(f"http://127.0.0.1:{port}", "k").complete(MESSAGES, model="gpt-4o-mini")
    assert (raised.value.code, raised.value.retryable) == ("llm.unavailable", True)


# ---------------------------------------------------------------- codegen through the real client


def context(tmp_path: Path, url: str, *, ttl_s: float = 60) -> WorkContext:
    return WorkContext(assignment_id="gen", run_id="run-1", token_id=None, node_id=None, tenant="acme", attempt=1,
                       assignment=Assignment(agent_id="codegen", model="gpt-4o-mini"),
                       deadline=time.time() + ttl_s, artifacts_root=tmp_path, llm_url=url, llm_api_key="sk-live")


def test_codegen_uses_the_endpoint_and_meters_its_cost(server, tmp_path):
    files = {"mul.py": "def mul(a, b):\n    return a * b\n", "test_mul.py": "from mul import mul\n"}
    server.answer(completion("Here are the files.\n\n" + render_files(files), prompt=100, completion_tokens=50))
    ctx = context(tmp_path, server.url)
    result = generate(ctx, {"spec": "a function mul(a, b) that returns a * b", "feedback": "1 failed"})
    request = server.requests[0]
    assert request["body"]["model"] == "gpt-4o-mini"
    assert "<spec>\na function mul(a, b) that returns a * b\n</spec>" in request["body"]["messages"][-1]["content"]
    assert "1 failed" in request["body"]["messages"][-1]["content"]
    assert request["headers"]["Authorization"] == "Bearer sk-live"
    assert result.output["files"] == ["mul.py", "test_mul.py"]
    edits = json.loads(Path(result.output["edits_path"]).read_text())["edits"]
    assert edits[0] == {"path": "mul.py", "action": "create", "content": files["mul.py"]}
    assert ctx.usage.tokens == 150 and ctx.usage.cost_usd == pytest.approx(price_usd("gpt-4o-mini", 100, 50))


@pytest.mark.parametrize(("content", "code", "retryable"), [
    ("I cannot help with that.", "codegen.no_files", True),
    (render_files({"../evil.py": "x = 1\n"}), "edits.unsafe", False),
])
def test_codegen_refuses_answers_without_safe_files(server, tmp_path, content, code, retryable):
    server.answer(completion(content))
    ctx = context(tmp_path, server.url)
    with pytest.raises(WorkFailed) as raised:
        generate(ctx, {"spec": "mul(a, b) returns a * b"})
    assert (raised.value.code, raised.value.retryable) == (code, retryable)
    assert ctx.usage.tokens == 42  # what the model was paid for is metered even when it is unusable
    assert not (tmp_path / "gen" / "edits.json").exists()


def test_a_model_call_cut_short_by_the_ttl_is_a_ttl_expiry(server, tmp_path):
    server.answer(completion("late"), delay_s=30)
    with pytest.raises(TTLExpired):
        generate(context(tmp_path, server.url, ttl_s=0.5), {"spec": "mul(a, b) returns a * b"})
