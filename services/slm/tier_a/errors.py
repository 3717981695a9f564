"""What tier A refuses, in tier A's words: no HTTP status here.

The engine, the chat template and the adapter registry raise these; the API edge
(``slm.api.errors.as_request_error``) turns them into OpenAI-shaped request errors.
"""

from __future__ import annotations

from slm.errors import SlmError


class TierAError(SlmError):
    """Tier A cannot take this input; ``param`` names the request field at fault."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InputRejected(TierAError):
    """The model cannot take this input as given (e.g. its chat template refuses the
    role order, or a message holds special-token text the template would rewrite)."""


class NotSupportedByModel(TierAError):
    """The model cannot do what is asked (a grammar llama.cpp cannot compile,
    embeddings from a model without pooling)."""

    def __init__(self, message: str, *, param: str | None = None,
                 feature: str = "unsupported") -> None:
        super().__init__(message, param=param)
        self.feature = feature


class AdapterNotFound(TierAError):
    """The model name asks for a LoRA adapter this server does not have."""


class AdapterMismatch(TierAError):
    """The adapter was made for another base model than the one loaded."""
