"""``cogo keys``: create, list and revoke API keys, straight on the ledger (an operator's tool, like migrate)."""

from typing import Annotated

import typer
from rich.table import Table

from bus.settings import Settings
from coordinator.keys import SCOPES
from ecosystem.cli_support import handled, out

keys_app = typer.Typer(name="keys", no_args_is_help=True,
                       help="API keys on the ledger (COGO_DATABASE_URL): create, list, revoke.")


def _engine():
    from bus.db import make_engine
    return make_engine(Settings.from_env().database_url)


@keys_app.command("create")
@handled
def create(tenant: Annotated[str, typer.Option(help="The tenant the key acts for")],
           scope: Annotated[list[str], typer.Option("--scope", help=f"Repeatable: {', '.join(SCOPES)}")],
           name: Annotated[str, typer.Option(help="A label for the key")] = "") -> None:
    """Create a key and print it once; only its hash is stored."""
    from coordinator.keys import create_key

    with _engine().begin() as conn:
        created = create_key(conn, tenant=tenant, scopes=scope, name=name)
    out.print(f"key {created.id} for tenant {created.tenant} ({', '.join(created.scopes)}); "
              "shown once, store it now:")
    print(created.secret_key)


@keys_app.command("list")
@handled
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None) -> None:
    """List keys (never their secrets)."""
    from coordinator.keys import list_keys
    from coordinator.timefmt import iso

    with _engine().connect() as conn:
        found = list_keys(conn, tenant=tenant)
    table = Table("id", "tenant", "name", "scopes", "created", "revoked", header_style="bold")
    for k in found:
        table.add_row(k["id"], k["tenant"], k["name"], " ".join(k["scopes"]), iso(k["created_at"]),
                      iso(k["revoked_at"]) if k["revoked_at"] else "")
    out.print(table)


@keys_app.command("revoke")
@handled
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (kxxxxxxxxxxxx)")]) -> None:
    """Revoke a key; requests with it answer 401 from now on."""
    from coordinator.keys import revoke_key

    with _engine().begin() as conn:
        revoke_key(conn, key_id)
    out.print(f"key {key_id} revoked")
