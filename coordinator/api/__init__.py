"""The HTTP API of ``orchestrator-chat``."""
