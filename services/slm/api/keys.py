"""``/v1/keys``: API keys managed over the API by an admin key, as ``slm keys`` manages them
on the device. The store is the same file (:mod:`slm.access.keys`); a new key is shown in
the response that makes it, and never again."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from slm.access.keys import ApiKey, KeyRefused, KeyStoreError, Scope
from slm.api import schemas
from slm.api.context import RequestContext
from slm.api.streaming import read_body
from slm.errors import Conflict, InvalidRequest, KeyStoreUnavailable, NotFound, RequestError
from slm.server.state import Doorman


def key_card(key: ApiKey) -> dict[str, Any]:
    """What the API tells of a key: everything but its hash."""
    return {"object": "api_key", **key.public_json()}


def _as_request_error(exc: KeyStoreError) -> RequestError:
    if not isinstance(exc, KeyRefused):
        return KeyStoreUnavailable(f"the key store cannot be written: {exc.message}")
    message = exc.one_line()
    if exc.reason == "exists":
        return Conflict(message, param="name", code="key_exists")
    if exc.reason == "revoked":
        return Conflict(message, param="name", code="key_revoked")
    if exc.reason == "unknown":
        return NotFound(message, param="name", code="key_not_found")
    return InvalidRequest(message)


class KeyRoutes:
    """Handlers for ``/v1/keys`` of one Doorman (admin scope)."""

    def __init__(self, doorman: Doorman) -> None:
        self.d = doorman

    async def list(self, request: Request, ctx: RequestContext) -> Response:
        try:
            keys = self.d.key_store.keys()
        except KeyStoreError as exc:
            raise _as_request_error(exc) from None
        return JSONResponse({"object": "list", "data": [key_card(k) for k in keys]})

    async def create(self, request: Request, ctx: RequestContext) -> Response:
        body = await read_body(request, self.d.settings.max_body_bytes)
        req = schemas.validate(schemas.decode_object(body), schemas.KeyCreateRequest)
        store = self.d.key_store
        try:
            secret = await asyncio.to_thread(
                store.create, req.name, frozenset(Scope(s) for s in req.scopes), rpm=req.rpm,
                tpm=req.tpm, tokens_per_day=req.tokens_per_day,
                tokens_per_month=req.tokens_per_month)
            (made,) = [k for k in store.keys() if k.name == req.name]
        except KeyStoreError as exc:
            raise _as_request_error(exc) from None
        ctx.extra_log["key"] = req.name
        return JSONResponse({**key_card(made), "key": secret}, status_code=201)

    async def revoke(self, request: Request, ctx: RequestContext) -> Response:
        name = request.path_params["name"]
        if name == ctx.api_key_id:
            raise InvalidRequest("a key cannot revoke itself; use another admin key",
                                 param="name")
        try:
            revoked = await asyncio.to_thread(self.d.key_store.revoke, name)
        except KeyStoreError as exc:
            raise _as_request_error(exc) from None
        ctx.extra_log["key"] = name
        return JSONResponse(key_card(revoked))
