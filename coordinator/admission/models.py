"""The ``models`` admission policy: the model of a first admission must be on ``COGO_ALLOWED_MODELS``."""

from __future__ import annotations

from coordinator.admission import ADMIT, Ask, Setup, Verdict, deny


class ModelsPolicy:
    """Denies a model the operator did not allow (every model is allowed when the list is empty)."""

    name = "models"

    def __init__(self, setup: Setup):
        self.allowed = setup.settings.model_allow_list

    def check(self, ask: Ask) -> Verdict:
        """``policy.model_denied`` for a model off the list."""
        if self.allowed is None or not ask.first or ask.assignment.model in self.allowed:
            return ADMIT
        return deny("policy.model_denied", f"model {ask.assignment.model!r} is not allowed",
                    allowed=sorted(self.allowed))
