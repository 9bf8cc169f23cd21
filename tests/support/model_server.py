"""A local model server speaking OpenAI Chat Completions (the protocol ``workers.llm.OpenAIChatClient`` speaks).

It runs in the test process on 127.0.0.1 and answers every ``POST /v1/chat/completions`` with what
``answer(messages)`` returns, so a real ``cogo-codegen-service`` started with ``COGO_LLM_URL`` set to
``server.url`` talks to it over real HTTP. Every request (path, headers, body) and every answer is recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.llm import count_tokens

Answer = Callable[[Sequence[dict[str, str]]], str]
"""The assistant's text for a conversation (the request's ``messages``)."""


class ModelServer(ThreadingHTTPServer):
    """A chat-completions endpoint that answers with ``answer(messages)`` and records every request."""

    daemon_threads = True

    def __init__(self, answer: Answer, *, model: str = "gpt-4o-mini"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The base URL to hand over as ``COGO_LLM_URL``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def chats(self) -> list[dict[str, Any]]:
        """The bodies of the chat-completion requests received so far, in order."""
        with self._lock:
            return [r["body"] for r in self.requests]

    def answered(self) -> list[dict[str, Any]]:
        """The completions sent so far, in the order of ``chats()``."""
        with self._lock:
            return list(self.responses)

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """Record ``request`` and answer it: ``answer(messages)``, with usage counted in words as cogo counts."""
        messages = request["body"].get("messages") or []
        content = self.answer(messages)
        prompt = sum(count_tokens(m.get("content", "")) for m in messages)
        completion = count_tokens(content)
        with self._lock:
            self.requests.append(request)
            body = {"id": f"chatcmpl-{len(self.responses)}", "object": "chat.completion", "model": self.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}}
            self.responses.append(body)
        return body


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def do_POST(self):  # noqa: N802 (the name http.server dispatches to)
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions":
            self._reply(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        self._reply(200, self.server.complete({"path": self.path, "headers": dict(self.headers), "body": body}))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@contextmanager
def serving(answer: Answer, **kwargs: Any) -> Iterator[ModelServer]:
    """A running ``ModelServer`` for the block; shut down and closed after it."""
    server = ModelServer(answer, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="model-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
