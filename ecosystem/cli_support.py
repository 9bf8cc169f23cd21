"""What every ``cogo`` command shares: its consoles, its error display, and how it finds the API and its key."""

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from bus.errors import CogoError, ConfigError
from bus.settings import Settings
from ecosystem.net import probe_host

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
ApiOption = Annotated[str | None, typer.Option("--api", envvar="COGO_API_URL", show_envvar=True,
                                               help="Base URL of the API [default: from COGO_API_HOST/PORT]")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", envvar="COGO_API_KEY", show_envvar=True,
                                                  help="The API key [default: <COGO_HOME>/admin.key if it exists]")]


class UsageError(CogoError):
    """The command line itself is wrong (a bad argument or option value); exit code 2."""

    code = "usage.invalid"


def handled(command: Callable) -> Callable:
    """Show a CogoError as ``error [<code>]: <message>`` (exit 1, or 2 for usage), never a traceback."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CogoError as exc:
            err.print(Text(f"error [{exc.code}]: {exc}", style="red"), soft_wrap=True)
            if exc.details.get("status") == 401 or exc.code == "auth.required":
                err.print(Text(f"hint: {_auth_hint()}", style="yellow"), soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None
        except DBAPIError as exc:  # the ledger is down, or was never migrated (``cogo migrate``)
            reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            err.print(Text(f"error [ledger.unavailable]: {reason}", style="red"), soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print(Text("interrupted", style="yellow"))
            raise typer.Exit(130) from None
    return wrapper


def default_api_url(settings: Settings) -> str:
    """Where the API of a local fleet listens, from the settings."""
    return f"http://{probe_host(settings.api_host)}:{settings.api_port}"


def api_url(api: str | None) -> str:
    return api or os.environ.get("COGO_API_URL") or default_api_url(Settings.from_env())


def _key_file() -> Path:
    from coordinator.keys import ADMIN_KEY_FILE

    return Settings.from_env().home.resolve() / ADMIN_KEY_FILE


def api_key_for(api_key: str | None, url: str) -> str | None:
    """``--api-key`` (or ``COGO_API_KEY``); else, for an API on this machine only, the embedded default's
    ``<home>/admin.key`` — the local admin key is never sent to another host; else none."""
    from coordinator.keys import read_key_file

    if api_key and api_key.strip():
        return api_key.strip()
    if not _on_this_machine(url):
        return None
    return read_key_file(Settings.from_env().home.resolve())


def _on_this_machine(url: str) -> bool:
    """Whether ``url`` names a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth_hint() -> str:
    from coordinator.client import AUTH_HINT

    try:
        where = str(_key_file())
    except ConfigError:
        where = "<COGO_HOME>/admin.key"
    return f"{AUTH_HINT}; on the embedded default the key is in {where}"


def client_for(api: str | None, api_key: str | None) -> Any:
    from coordinator.client import Client

    url = api_url(api)
    return Client(url, api_key=api_key_for(api_key, url))


def api_suffix(api: str | None) -> str:
    """`` --api <url>`` for the commands the CLI suggests, when the user chose a non-default API."""
    return "" if api is None else f" --api {api}"


def parse_payload(text: str) -> dict:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    if not isinstance(payload, dict):
        raise UsageError(f"--payload must be a JSON object, got {type(payload).__name__}: {text!r}")
    return payload
