"""An assignment's artifact, read for a person: the file behind its ``result_url``, and only that file.

A worker writes an assignment's artifacts under that assignment's own directory, ``<artifacts>/<assignment id>/``
(``workers/handler.py``: ``WorkContext.artifacts_dir``; the build-test report is
``<artifacts>/<assignment id>/build-test/report.json``), and names one of them in the row's ``result_url`` (a
``file://`` URI). That URI is a worker's output, so it is hostile: it may point anywhere (``..``, a symlink to
``/etc/passwd``, another assignment's directory — another tenant's). ``read_artifact`` answers the file only when
the assignment is the run's, the file's real path (every symlink resolved, checked again on the opened descriptor)
lies inside the real path of the assignment's own directory, and it is a regular file; at most ``max_bytes`` are
read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, select

from bus.errors import Forbidden, NotFound
from bus.schema import agent_messages as m

MAX_BYTES = 1024 * 1024
"""The most of an artifact one answer carries (1 MiB); a longer one is cut and flagged ``truncated``."""
CONTENT_TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson", ".txt": "text/plain",
                 ".log": "text/plain", ".md": "text/markdown", ".py": "text/x-python", ".csv": "text/csv",
                 ".yaml": "application/yaml", ".yml": "application/yaml"}
"""What a file's suffix says it holds; any other file is ``text/plain`` when it decodes as UTF-8."""


@dataclass(frozen=True)
class Artifact:
    """An artifact as an answer carries it: never rendered, only shown as text."""

    name: str
    content_type: str
    content: str | None
    truncated: bool
    size_bytes: int
    binary: bool = False

    def as_json(self) -> dict[str, Any]:
        """``{name, content_type, content, truncated, size_bytes, binary}``."""
        return {"name": self.name, "content_type": self.content_type, "content": self.content,
                "truncated": self.truncated, "size_bytes": self.size_bytes, "binary": self.binary}


def read_artifact(conn: Connection, run_id: str, assignment_id: str, *, root: Path,
                  max_bytes: int = MAX_BYTES) -> Artifact:
    """The artifact of the run's assignment ``assignment_id``, confined to ``root / assignment_id`` (``root``: the
    fleet's artifacts directory).

    The caller has checked that it may see the run.

    Raises:
        NotFound: ``artifact.unknown`` (no such assignment in this run, or it named no file),
            ``artifact.missing`` (the file is gone, e.g. pruned).
        Forbidden: ``artifact.outside``: the file is not a regular file inside the assignment's own directory.
    """
    row = conn.execute(select(m.c.run_id, m.c.result_url).where(m.c.id == assignment_id)).first()
    if row is None or row.run_id != run_id:
        raise NotFound(f"run {run_id} has no assignment {assignment_id}", code="artifact.unknown")
    if not row.result_url:
        raise NotFound(f"assignment {assignment_id} wrote no artifact", code="artifact.unknown")
    path = local_path(row.result_url)
    if path is None:
        raise Forbidden(f"assignment {assignment_id}'s artifact is not a local file", code="artifact.outside")
    what = f"assignment {assignment_id}'s artifact"
    return _read_confined(path, _own_directory(root, assignment_id, what), max_bytes=max_bytes, what=what)


def _own_directory(root: Path, assignment_id: str, what: str) -> Path:
    """``root / assignment_id`` as a real path, when it is a directory of its own there (not a symlink to another
    assignment's).

    Raises:
        Forbidden: ``artifact.outside``: the id is no single name, or its directory leads elsewhere.
        NotFound: ``artifact.missing``: there is no such directory (pruned, or never written).
    """
    if assignment_id in ("", ".", "..") or "/" in assignment_id or "\\" in assignment_id or "\x00" in assignment_id:
        raise Forbidden(f"{what} has no directory of its own", code="artifact.outside")
    try:
        base = Path(os.path.realpath(root, strict=True))
        own = Path(os.path.realpath(root / assignment_id, strict=True))
    except OSError:
        raise NotFound(f"{what} is gone (its artifacts directory is not there)", code="artifact.missing") from None
    if own != base / assignment_id:
        raise Forbidden(f"{what}'s directory leads outside its own", code="artifact.outside")
    return own


def local_path(result_url: str) -> Path | None:
    """The absolute local path of a ``file://`` URI (or of an absolute path), else None."""
    parts = urlsplit(result_url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return None
        raw = unquote(parts.path)
    elif parts.scheme == "":
        raw = result_url
    else:
        return None
    if "\x00" in raw or not raw.startswith("/"):
        return None
    return Path(raw)


def _read_confined(path: Path, root: Path, *, max_bytes: int, what: str) -> Artifact:
    outside = Forbidden(f"{what} is not a file inside its assignment's artifacts directory", code="artifact.outside")
    try:
        base = Path(os.path.realpath(root, strict=True))
    except OSError:
        raise NotFound(f"{what} is gone (its artifacts directory is not there)", code="artifact.missing") from None
    real = Path(os.path.realpath(path))
    if real == base or not real.is_relative_to(base):
        raise outside
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise NotFound(f"{what} is gone (pruned, or never written)", code="artifact.missing") from None
    except OSError:
        raise outside from None  # a symlink swapped in after it was resolved, or not readable
    try:
        info = os.fstat(fd)
        opened = _opened_path(fd)
        if not stat.S_ISREG(info.st_mode) or (opened is not None and not opened.is_relative_to(base)):
            raise outside
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    content_type = CONTENT_TYPES.get(real.suffix.lower(), "text/plain")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(data) - 3:  # a character cut by the size limit
            text = data[:exc.start].decode("utf-8")
        else:
            return Artifact(real.name, "application/octet-stream", None, truncated, info.st_size, binary=True)
    return Artifact(real.name, content_type, text, truncated, info.st_size)


def _opened_path(fd: int) -> Path | None:
    """Where an open descriptor really points (Linux), to check the file opened is the one that was confined."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None
