"""One request's typed state, from the HTTP edge to its audit record.

The endpoint wrapper makes a :class:`RequestContext` for every request; the pipeline, the
tiers and the document routes fill it in (who answers, the sanitised prompt's hash, token
counts, the finish reason), and :mod:`slm.api.audit` turns it into the one ledger record.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slm.access.keys import ApiKey
from slm.tiers import Tier
from slm.upstream.router import LocalTarget, Target


@dataclasses.dataclass(kw_only=True)
class RequestContext:
    """What one request is and what happened to it so far."""

    request_id: str
    endpoint: str
    started: float  # time.monotonic() when the request arrived
    deadline: float  # time.monotonic() by which it must have ended (request_timeout_s)
    client_gone: Callable[[], Awaitable[None]]  # returns once the client has disconnected
    model: str | None  # who answers: the local model until a target says otherwise
    model_sha256: str | None
    api_key_id: str | None = None  # the ledger's name of the key (never the key)
    api_key: ApiKey | None = None  # the stored key, with its scopes and limits
    tier: Tier = Tier.A
    target_label: str | None = None
    prompt_sha256: str | None = None
    prompt_text: str | None = None
    entities: tuple[str, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    streaming: bool = False  # the answer is a stream: it logs and records itself
    with_documents: bool = False  # document excerpts in the prompt: never cached
    extra_log: dict[str, Any] = dataclasses.field(default_factory=dict)
    recorded: bool = False  # its audit record has been handed to the ledger
    # called once the request ended, with its token counts (per-key token accounting)
    on_end: list[Callable[[RequestContext], None]] = dataclasses.field(default_factory=list)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def note_prompt(self, prompt: Any) -> None:
        """Keep the (sanitised) prompt's sha256, and its text for ``ledger.store_prompt``."""
        text = prompt if isinstance(prompt, str) else json.dumps(
            prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        self.prompt_sha256 = hashlib.sha256(text.encode()).hexdigest()
        self.prompt_text = text

    def answering(self, target: Target, local_sha256: str) -> None:
        """Who serves the request now (a hand-over changes it)."""
        self.tier = target.tier
        self.model = target.model
        self.model_sha256 = local_sha256 if isinstance(target, LocalTarget) else None
        self.target_label = target.label

    def note_finish(self, completion_tokens: int | None, finish_reason: str | None) -> None:
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason

    def log_fields(self) -> dict[str, Any]:
        """The fields of the request's one log line (no prompt text, no entity values)."""
        fields = {"tier": self.target_label, "prompt_tokens": self.prompt_tokens,
                  "completion_tokens": self.completion_tokens,
                  "finish_reason": self.finish_reason}
        return {**{k: v for k, v in fields.items() if v is not None}, **self.extra_log}


def log_request(ctx: RequestContext, status: int) -> None:
    """The request's end: its one log line (a stream writes it when it ends), then what
    waits for the end (``on_end``)."""
    logging.getLogger("slm.api").info("request", extra={
        "request_id": ctx.request_id, "endpoint": ctx.endpoint, "status": status,
        "ms": round(ctx.elapsed_s() * 1000, 1), **ctx.log_fields()})
    for ended in ctx.on_end:
        ended(ctx)
