"""cogo-codegen-service: a spec (with existing files and build-test feedback) → ``edits.json``.

Input: ``{"spec": str, "files": {path: content}?, "feedback": str?}``.
Output: ``{"edits_path", "files", "summary", "model"}``; ``edits.json`` holds the full contents.
"""

from __future__ import annotations

import json
from typing import Any

from bus.errors import WorkFailed
from workers.handler import WorkContext, WorkResult
from workers.llm import ChatModel, Completion, count_tokens, model_for, parse_files
from workers.sandbox import check_relpath

ROUTE = ("codegen", "generate")
MAX_OUTPUT_TOKENS = 4096
"""Most completion tokens asked for; fewer when the budget has less left."""
MAX_SPEC_CHARS = 20_000
MAX_CONTEXT_CHARS = 40_000
"""Existing files and feedback beyond this are cut from the prompt (the model sees that they were)."""

SYSTEM_PROMPT = (
    "You are cogo's code generator. Write a small, self-contained Python module that implements the "
    "spec, and pytest tests for it in test_<module>.py that import the module by name. Answer with "
    "files only, each as a line 'FILE: <relative path>' followed by a ```python fenced block holding "
    "the whole file. Use relative paths without '..'. Standard library only."
)


def generate(ctx: WorkContext, input: dict[str, Any]) -> WorkResult:
    """Ask the model for a module and its tests and write them as ``artifacts/<taskId>/edits.json``."""
    spec, files, feedback = _read_input(input)
    ctx.check_deadline()
    messages = build_messages(spec, files, feedback)
    completion = _ask(ctx, model_for(ctx), messages)
    ctx.meter(tokens=completion.total_tokens, cost_usd=completion.cost_usd)
    generated = parse_files(completion.content)
    if not generated:
        # A sampled model may follow the format next time; the local model never gets here.
        raise WorkFailed("the model answered without any 'FILE:' block", retryable=True,
                         code="codegen.no_files", details={"answer": completion.content[:300]})
    for path in generated:
        check_relpath(path)
    edits = [{"path": path, "action": "replace" if path in files else "create", "content": content}
             for path, content in generated.items()]
    ctx.check_deadline()
    target = ctx.artifacts_dir / "edits.json"
    target.write_text(json.dumps({"edits": edits, "model": completion.model, "spec": spec,
                                  "usage": {"tokens": completion.total_tokens, "cost_usd": completion.cost_usd}},
                                 indent=2), encoding="utf-8")
    paths = list(generated)
    summary = f"{completion.model} wrote {len(paths)} file(s): {', '.join(paths)}"
    return WorkResult(output={"edits_path": str(target.resolve()), "files": paths, "summary": summary,
                              "model": completion.model},
                      result_url=target.resolve().as_uri())


def build_messages(spec: str, files: dict[str, str], feedback: str) -> list[dict[str, str]]:
    """The chat messages for one generation: the spec, the files to change, the last failure."""
    parts = [f"<spec>\n{spec}\n</spec>"]
    budget = MAX_CONTEXT_CHARS
    for path, content in files.items():
        shown = content[:max(0, budget)]
        budget -= len(shown)
        cut = "" if len(shown) == len(content) else f"\n# … {len(content) - len(shown)} characters cut"
        parts.append(f"Existing file (replace it by answering with the same path):\nFILE: {path}\n"
                     f"```python\n{shown}{cut}\n```")
    if feedback:
        parts.append("The previous attempt failed its build or tests; fix it. Build-test said:\n"
                     f"```\n{feedback[-max(0, budget):]}\n```")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def _ask(ctx: WorkContext, model: ChatModel, messages: list[dict[str, str]]) -> Completion:
    # Ask for no more than the budget can still pay for, so a long answer cannot overrun it unseen.
    prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
    left = ctx.assignment.budget.max_tokens - ctx.usage.tokens - prompt_tokens
    try:
        return model.complete(messages, model=ctx.assignment.model, temperature=0.0,
                              max_tokens=max(1, min(MAX_OUTPUT_TOKENS, left)), timeout_s=ctx.remaining_s())
    except WorkFailed:
        ctx.check_deadline()  # a timeout the TTL caused is a TTL expiry, not an unavailable model
        raise


def _read_input(input: dict[str, Any]) -> tuple[str, dict[str, str], str]:
    spec = input.get("spec")
    if not isinstance(spec, str) or not spec.strip():
        raise WorkFailed("codegen needs a non-empty 'spec' string", retryable=False, code="input.invalid")
    if len(spec) > MAX_SPEC_CHARS:
        raise WorkFailed(f"spec is {len(spec)} characters; at most {MAX_SPEC_CHARS}", retryable=False,
                         code="input.invalid")
    files = input.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise WorkFailed("'files' must map paths to file contents", retryable=False, code="input.invalid")
    for path in files:
        check_relpath(path)
    feedback = input.get("feedback") or ""
    if not isinstance(feedback, str):
        # A workflow may map build-test's whole output here; the model reads JSON as well as prose.
        feedback = json.dumps(feedback, sort_keys=True, default=str)
    return spec, files, feedback


HANDLERS = {ROUTE: generate}
