"""The model cards: ``/v1/models`` (the local model, its adapters, the upstreams' model
names), ``/v1/models/{model}`` and ``/v1/adapters``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from slm.api.context import RequestContext
from slm.errors import NotFound
from slm.server.state import Doorman


def check_model(doorman: Doorman, name: str) -> None:
    """NotFound (404) unless ``name`` is the local model's."""
    if name != doorman.model_id:
        raise NotFound(
            f"model {name!r} does not exist; this server serves {doorman.model_id!r}",
            param="model", code="model_not_found",
        )


class ModelRoutes:
    """Handlers for the model endpoints of one Doorman."""

    def __init__(self, doorman: Doorman) -> None:
        self.d = doorman

    def _model_card(self) -> dict[str, Any]:
        d = self.d
        info = d.engine.info if d.engine else None
        return {
            "id": d.model_id,
            "object": "model",
            "created": int(d.model_file.path.stat().st_mtime),
            "owned_by": "service-slm",
            "context_length": info.n_ctx if info else d.n_ctx,
            "sha256": d.model_file.sha256,
            "meta": {
                "size": d.model_file.size,
                "n_ctx": info.n_ctx if info else d.n_ctx,
                "n_ctx_train": info.n_ctx_train if info else None,
                "n_params": info.n_params if info else None,
                "n_embd": info.n_embd if info else None,
                "n_vocab": info.n_vocab if info else None,
                "architecture": info.architecture if info else None,
                "embeddings": info.supports_embeddings if info else None,
                "ready": d.ready.is_set(),
            },
        }

    def _upstream_card(self, name: str) -> dict[str, Any]:
        up = self.d.router.by_model[name]
        return {"id": name, "object": "model", "created": int(self.d.started_at),
                "owned_by": f"tier-{up.tier.lower()}:{up.name}"}

    def _adapter_card(self, model: str) -> dict[str, Any]:
        return {**self._model_card(), "id": model, "parent": self.d.model_id,
                "adapter": model.split(":", 1)[1]}

    async def models(self, request: Request, ctx: RequestContext) -> Response:
        cards = ([self._model_card()]
                 + [self._adapter_card(m) for m in self.d.adapters.model_ids()]
                 + [self._upstream_card(n) for n in self.d.router.by_model])
        return JSONResponse({"object": "list", "data": cards})

    async def model(self, request: Request, ctx: RequestContext) -> Response:
        name = request.path_params["model"]
        if name in self.d.router.by_model:
            return JSONResponse(self._upstream_card(name))
        if self.d.adapters.owns(name):
            self.d.adapters.select(name)  # 404 unknown, 400 made for another model
            return JSONResponse(self._adapter_card(name))
        check_model(self.d, name)
        return JSONResponse(self._model_card())

    async def adapters(self, request: Request, ctx: RequestContext) -> Response:
        return JSONResponse({"object": "list", "model": self.d.model_id,
                             "model_sha256": self.d.model_file.sha256,
                             "data": [a.card() for a in self.d.adapters.adapters]})
