"""``cogo keys``: create, list and revoke API keys, straight on the ledger (an operator's tool, like migrate)."""

import typer

keys_app = typer.Typer(name="keys", no_args_is_help=True, help="API keys: create, list, revoke.")
