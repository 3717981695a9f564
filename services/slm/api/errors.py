"""Render every failure in OpenAI's error shape, from one place; tier A's refusals
become request errors here, at the edge."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import ParamSpec, TypeVar

from starlette.responses import JSONResponse

from slm import errors as http
from slm.errors import KeyRateLimited, QueueFull, RequestError, UpstreamRateLimited
from slm.tier_a import errors as tier_a

P = ParamSpec("P")
R = TypeVar("R")

_HTTP_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "unavailable_error",
    504: "timeout_error",
}


def as_request_error(exc: RequestError | tier_a.TierAError) -> RequestError:
    """The request error (status, type, code) a client sees for ``exc``."""
    if isinstance(exc, RequestError):
        return exc
    message, param = exc.message, exc.param
    match exc:
        case tier_a.NotSupportedByModel():
            return http.Unsupported(message, param=param, code=exc.feature)
        case tier_a.AdapterNotFound():
            return http.NotFound(message, param=param, code="model_not_found")
        case tier_a.AdapterMismatch():
            return http.InvalidRequest(message, param=param, code="adapter_base_mismatch")
        case tier_a.QueueFull():
            return http.QueueFull(message, retry_after_s=exc.retry_after_s)
        case tier_a.JobCancelled():
            return http.Cancelled(message)
        case tier_a.JobTimedOut():
            return http.DeadlineExceeded(message)
        case tier_a.Stopping():
            return http.ShuttingDown(message)
        case tier_a.GenerationFailed():
            return http.InternalError(message)
    return http.InvalidRequest(message, param=param)  # InputRejected


def tier_a_edge(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """``call`` with tier A's refusals raised as request errors."""

    @functools.wraps(call)
    async def edge(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except tier_a.TierAError as exc:
            raise as_request_error(exc) from None

    return edge


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, dict[str, object]]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: RequestError, request_id: str | None = None) -> JSONResponse:
    """The JSON response (status, body, headers) for a request error."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    if isinstance(exc, QueueFull | KeyRateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, UpstreamRateLimited) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    return JSONResponse(body, status_code=exc.status, headers=headers)


def http_error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An OpenAI-shaped response for routing errors (unknown path, wrong method)."""
    type_ = _HTTP_STATUS_TYPES.get(status, "invalid_request_error")
    return JSONResponse(error_body(message, type_, code=status), status_code=status,
                        headers=headers)
