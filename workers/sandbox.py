"""The build-test workspace: safe edit paths, confined input paths, applying edits to a directory.

These checks keep a hostile edit list from writing outside the workspace while the worker (trusted)
writes it. Running the code in it is ``workers/confine.py``'s job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from bus.errors import WorkFailed

MAX_EDITS = 200
"""Most files one build-test may write; more is a runaway model, not a project."""
MAX_EDIT_BYTES = 5 * 1024 * 1024
"""Most bytes all edits together may write."""
ACTIONS = ("create", "replace")

_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe(message: str, path: object) -> WorkFailed:
    """The non-retryable error for an edit that would write outside its sandbox."""
    return WorkFailed(message, retryable=False, code="edits.unsafe", details={"path": str(path)[:300]})


def check_relpath(rel: object) -> PurePosixPath:
    """``rel`` as a relative POSIX path that cannot climb out of whatever directory it is joined to.

    Raises:
        WorkFailed: ``edits.unsafe`` for absolute paths, ``..``, drive letters, backslashes, NUL or "".
    """
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise unsafe("edit path must be a non-empty string", rel)
    # A backslash is a separator on Windows and a way to smuggle "..\" past a POSIX check.
    if "\\" in rel or _DRIVE.match(rel) or rel.startswith("~"):
        raise unsafe(f"edit path {rel!r} is not a relative POSIX path", rel)
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise unsafe(f"edit path {rel!r} must be relative and stay inside the workspace", rel)
    return pure


def safe_path(root: Path, rel: object) -> Path:
    """Resolve ``rel`` inside ``root``, refusing anything ``check_relpath`` refuses or a symlink escape.

    Raises:
        WorkFailed: ``edits.unsafe``.
    """
    base = root.resolve()
    target = (base / check_relpath(rel)).resolve()
    if target == base or not target.is_relative_to(base):
        raise unsafe(f"edit path {rel!r} resolves outside the workspace", rel)
    return target


def confined(root: Path, raw: object, *, what: str) -> Path:
    """An input path (``edits_path``, ``index_path``) that must be an artifact under ``root``.

    Such paths come from an earlier worker's output; confining them keeps a crafted input from
    making a worker read any file on its host.

    Raises:
        WorkFailed: ``input.invalid`` (not a string), ``input.unsafe`` (outside ``root``),
            ``input.not_found`` (no such file); none of them retryable.
    """
    if not isinstance(raw, str) or not raw:
        raise WorkFailed(f"{what} must be a path string", retryable=False, code="input.invalid")
    local = unquote(urlsplit(raw).path) if raw.startswith("file://") else raw
    path = Path(local).resolve()
    if not path.is_relative_to(root.resolve()):
        raise WorkFailed(f"{what} {raw!r} is not under the artifacts directory {root}", retryable=False,
                         code="input.unsafe", details={"path": raw[:300]})
    if not path.is_file():
        raise WorkFailed(f"{what} {raw!r} does not exist", retryable=False, code="input.not_found",
                         details={"path": raw[:300]})
    return path


def check_edits(edits: object) -> list[dict[str, str]]:
    """Validate a list of edits (``{path, action, content}``) before anything is written.

    Raises:
        WorkFailed: ``edits.invalid`` for a malformed edit, ``edits.too_large`` past the limits.
    """
    if not isinstance(edits, list):
        raise WorkFailed("edits must be a list", retryable=False, code="edits.invalid")
    if len(edits) > MAX_EDITS:
        raise WorkFailed(f"{len(edits)} edits is more than the {MAX_EDITS} allowed",
                         retryable=False, code="edits.too_large")
    total = 0
    for index, edit in enumerate(edits):
        if not isinstance(edit, dict) or not isinstance(edit.get("content"), str):
            raise WorkFailed(f"edit #{index} needs a string 'content'", retryable=False, code="edits.invalid")
        if edit.get("action", "create") not in ACTIONS:
            raise WorkFailed(f"edit #{index} has action {edit.get('action')!r}; expected one of {ACTIONS}",
                             retryable=False, code="edits.invalid")
        try:
            total += len(edit["content"].encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            raise WorkFailed(f"edit #{index} is not valid UTF-8 text: {exc.reason}", retryable=False,
                             code="edits.invalid") from exc
    if total > MAX_EDIT_BYTES:
        raise WorkFailed(f"edits write {total} bytes, more than the {MAX_EDIT_BYTES} allowed",
                         retryable=False, code="edits.too_large")
    return edits


def apply_edits(root: Path, edits: list[dict[str, Any]]) -> list[str]:
    """Write every edit under ``root``; return the relative paths written, in order.

    Every path is checked before the first byte is written, so a refused edit leaves nothing behind.
    ``create`` and ``replace`` both write the whole file: a retry applies the same edits to a fresh
    workspace, so the distinction is only informational.
    """
    checked = check_edits(edits)
    targets = [(safe_path(root, edit.get("path")), edit) for edit in checked]
    written = []
    for target, edit in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(edit["content"], encoding="utf-8")
        written.append(target.relative_to(root.resolve()).as_posix())
    return written


def tail(path: Path, limit: int) -> str:
    """The last ``limit`` characters of a text file (empty if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit * 4))
            return f.read().decode("utf-8", errors="replace")[-limit:]
    except FileNotFoundError:
        return ""
