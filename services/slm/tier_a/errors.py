"""What tier A refuses or why a job ended early, in tier A's words: no HTTP status here.

The engine, the chat template, the adapter registry and the scheduler raise these; the API
edge (``slm.api.errors.as_request_error``) turns them into OpenAI-shaped request errors.
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


class QueueFull(TierAError):
    """The scheduler's queue is full, or it is stopping; ``retry_after_s`` estimates when
    a place frees up."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobCancelled(TierAError):
    """The job was cancelled: its client went away."""


class JobTimedOut(TierAError):
    """The job's deadline passed before it completed."""


class Stopping(TierAError):
    """The scheduler is stopping and ended the job (its grace period ran out)."""


class GenerationFailed(TierAError):
    """llama.cpp failed on the job; the details are in the log."""
