"""The error types of service-slm: one base, one subclass per failure domain.

API-facing request errors carry everything needed to render OpenAI's error shape; the
mapping to HTTP happens in one place, ``slm.api.errors``.
"""

from __future__ import annotations


class SlmError(Exception):
    """Base of every error service-slm raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message (and hint) as one line, for a CLI's stderr."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(SlmError):
    """The configuration file or a flag is invalid (the CLI exits 2)."""


class ModelError(SlmError):
    """The model file is missing, corrupt, or cannot be loaded."""


class SignatureError(SlmError):
    """An artefact's Sigstore signature is missing, malformed, or does not verify."""


class ClientError(SlmError):
    """``slm chat`` / ``slm ingest`` could not get an answer from the Doorman."""


class EngineError(SlmError):
    """The inference engine failed while serving a request."""


class RequestError(SlmError):
    """A request cannot be served; rendered to the client in OpenAI's error shape."""

    status: int = 400
    type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidRequest(RequestError):
    """Malformed or semantically invalid request (400)."""


class ContextLengthExceeded(RequestError):
    """The prompt (plus the requested completion) does not fit the context (400)."""

    code = "context_length_exceeded"


class Unsupported(RequestError):
    """A request asks for something this model or server does not do (400)."""

    code = "unsupported"


class AuthenticationFailed(RequestError):
    """Missing or wrong API key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    """The key is valid but its scopes do not cover this endpoint (403)."""

    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class KeyRateLimited(RequestError):
    """The key is over its requests or tokens per minute (429, with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class KeyBudgetExhausted(KeyRateLimited):
    """The key used up its tokens of the day or month (429, Retry-After: until it ends)."""

    type = "insufficient_quota"
    code = "insufficient_quota"


class KeyStoreUnavailable(RequestError):
    """The key store cannot be read: nobody is let in until it can (503)."""

    status = 503
    type = "unavailable_error"
    code = "key_store_unavailable"


class Conflict(RequestError):
    """The request conflicts with what exists (409): a key name taken, a key revoked."""

    status = 409
    code = "conflict"


class NotFound(RequestError):
    """Unknown model or route (404)."""

    status = 404
    code = "not_found"


class BodyTooLarge(RequestError):
    """Request body over the configured limit (413)."""

    status = 413
    code = "request_too_large"


class DocumentRejected(RequestError):
    """An uploaded document cannot be read: unknown type, encrypted, corrupt (400), too
    large once unpacked (413), or the document store is full (429)."""

    code = "invalid_document"


class QueueFull(RequestError):
    """The admission queue is full (429, with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(RequestError):
    """The model is still loading (503)."""

    status = 503
    type = "unavailable_error"
    code = "model_loading"


class LedgerUnavailable(RequestError):
    """The audit ledger cannot be written: no unaudited inference is served (503)."""

    status = 503
    type = "unavailable_error"
    code = "ledger_unavailable"


class MemoryBudgetExceeded(RequestError):
    """The process is at its memory budget: no new work until it is not (503)."""

    status = 503
    type = "unavailable_error"
    code = "memory_budget_exceeded"


class ShuttingDown(RequestError):
    """The server is stopping and its grace period for in-flight requests ran out (503)."""

    status = 503
    type = "unavailable_error"
    code = "shutting_down"


class DeadlineExceeded(RequestError):
    """The request's deadline passed before it completed (504)."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class Cancelled(RequestError):
    """The client went away; nobody receives this, it only ends the work."""

    status = 499
    type = "cancelled"
    code = "client_closed_request"


class InternalError(RequestError):
    """Something failed on our side (500); details go to the log, never to the client."""

    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(RequestError):
    """A tier B / C upstream failed (502); ``retryable`` errors are retried, then the
    request falls back to the next tier."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True
    # False when the failure is ours (connection pool full, no time left): the upstream's
    # circuit breaker does not count it
    upstream_fault = True

    def __init__(
        self, message: str, *, retry_after_s: float | None = None,
        retryable: bool | None = None, status: int | None = None,
        upstream_fault: bool | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s
        if retryable is not None:
            self.retryable = retryable
        if upstream_fault is not None:
            self.upstream_fault = upstream_fault


class UpstreamTimeout(UpstreamError):
    """An upstream did not connect, answer or finish in time (504)."""

    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class UpstreamUnavailable(UpstreamError):
    """An upstream's circuit breaker is open or its health check fails (503)."""

    status = 503
    type = "unavailable_error"
    code = "upstream_unavailable"


class UpstreamRateLimited(UpstreamError):
    """An upstream kept answering 429 (429, with its Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class UpstreamRejected(UpstreamError):
    """An upstream refused the request itself (its 4xx status and message, not retried)."""

    code = "upstream_rejected"
    retryable = False


class UpstreamNotAllowed(UpstreamError):
    """A request or a redirect points at a host outside the tier C allowlist (403)."""

    status = 403
    type = "permission_error"
    code = "upstream_not_allowed"
    retryable = False
