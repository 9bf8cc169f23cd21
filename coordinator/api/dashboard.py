"""The dashboard at ``/ui/``: static files from the package (no build step, no CDN), and ``GET /api/me``.

The files hold no data, so they need no key; the page asks for one and sends it with every data call. Every
file is served with a strict Content-Security-Policy (scripts and styles only from this origin, no inline
script or style, no framing), ``nosniff`` and no referrer, so a value from the ledger that slipped into markup
could still not run. The page renders ledger values as text only (``docs/dashboard.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, RedirectResponse

from bus.errors import NotFound
from coordinator.api.auth import principal
from coordinator.keys import Principal

router = APIRouter()

UI_DIR = Path(__file__).with_name("ui")
UI_PREFIX = "/ui"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
"""The only kinds of file served, by suffix."""
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-cache"}
"""Sent with every file of the dashboard; ``no-cache``: revalidated (ETag), so an upgrade is seen at once."""


def _shipped(root: Path) -> dict[str, Path]:
    """Every file of the dashboard as shipped, by its path under ``/ui/``: of a served kind, no hidden name."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and path.suffix in CONTENT_TYPES and not any(p.startswith(".") for p in relative.parts):
            found[relative.as_posix()] = path
    return found


FILES = _shipped(UI_DIR)
"""The only files served, fixed when the module is imported: a name is looked up, never joined to a path, so no
name (``..``, a NUL byte, thousands of characters) reaches the file system."""


def _file(relative: str) -> Path:
    """The dashboard file at ``relative``.

    Raises:
        NotFound: code ``not_found`` for any name that is not one of ``FILES``.
    """
    path = FILES.get(relative)
    if path is None:
        raise NotFound(f"no dashboard file {relative[:200]!r}", code="not_found")
    return path


def _serve(path: Path) -> FileResponse:
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    """The API's root leads a person to the dashboard."""
    return RedirectResponse(UI_PREFIX + "/", status_code=307)


@router.get(UI_PREFIX, include_in_schema=False)
def ui_no_slash() -> RedirectResponse:
    """``/ui`` → ``/ui/`` (the page loads its files relative to it)."""
    return RedirectResponse(UI_PREFIX + "/", status_code=307)


@router.get(UI_PREFIX + "/", include_in_schema=False)
def ui_index() -> FileResponse:
    """The dashboard's page (no data: it asks for a key, then calls the API)."""
    return _serve(_file("index.html"))


@router.get(UI_PREFIX + "/{relative:path}", include_in_schema=False)
def ui_file(relative: str) -> FileResponse:
    """One of the dashboard's scripts, styles or images."""
    return _serve(_file(relative))


@router.get("/api/me")
def me(who: Principal = Depends(principal)) -> dict[str, Any]:
    """Who the key is: its tenant, name and scopes, and whether it is an admin (sees every tenant).

    The dashboard reads it to show only the pages the key can use.
    """
    return {"tenant": who.tenant, "name": who.name, "scopes": sorted(who.scopes), "is_admin": who.is_admin}
