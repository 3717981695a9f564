"""The audit record of a request: made from its context, handed to the ledger once.

Inference endpoints answer only once their record is durable (:meth:`Auditor.commit`);
a request that ends without an answer (an error, a client gone) is recorded without
waiting (:meth:`Auditor.commit_nowait`). Either way the first call wins: a request leaves
exactly one record.
"""

from __future__ import annotations

import asyncio
import time

from slm.api.context import RequestContext
from slm.audit.ledger import AuditRecord, Ledger, LedgerError
from slm.errors import LedgerUnavailable
from slm.ops.metrics import Metrics

# Endpoints whose every request leaves a record in the audit ledger.
AUDITED = frozenset({"chat", "completions", "embeddings", "documents", "documents_delete"})


def audit_record(
    ctx: RequestContext, status: int, error_code: str | None, *, store_prompt: bool
) -> AuditRecord:
    """The ledger record of ``ctx`` ending with ``status``."""
    return AuditRecord(
        request_id=ctx.request_id, endpoint=ctx.endpoint, tier=str(ctx.tier),
        model=ctx.model, model_sha256=ctx.model_sha256, status=status,
        error_code=error_code, finish_reason=ctx.finish_reason,
        prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
        latency_us=int(ctx.elapsed_s() * 1_000_000), prompt_sha256=ctx.prompt_sha256,
        prompt_text=ctx.prompt_text if store_prompt else None, entities=ctx.entities,
        api_key_id=ctx.api_key_id,
    )


class Auditor:
    """Writes each audited request's one record."""

    def __init__(self, ledger: Ledger, metrics: Metrics, *, store_prompt: bool) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.store_prompt = store_prompt

    @staticmethod
    def audited(ctx: RequestContext) -> bool:
        return ctx.endpoint in AUDITED

    def _claim(self, ctx: RequestContext) -> bool:
        """Whether this call writes the record (the first one for an audited request)."""
        if ctx.recorded or not self.audited(ctx):
            return False
        ctx.recorded = True
        return True

    async def commit(
        self, ctx: RequestContext, status: int, error_code: str | None = None
    ) -> None:
        """Write the record and wait until it is durable (LedgerUnavailable if not)."""
        if not self._claim(ctx):
            return
        began = time.monotonic()
        record = audit_record(ctx, status, error_code, store_prompt=self.store_prompt)
        try:
            await asyncio.wrap_future(self.ledger.append(record))
        except LedgerError as exc:
            raise LedgerUnavailable(
                f"the audit ledger cannot be written: {exc.message}") from None
        finally:
            self.metrics.ledger_wait.observe(time.monotonic() - began)

    def commit_nowait(self, ctx: RequestContext, status: int, error_code: str | None) -> None:
        """Record a request that ends without an answer (error, client gone)."""
        if self._claim(ctx):
            self.ledger.append(
                audit_record(ctx, status, error_code, store_prompt=self.store_prompt))

    def client_gone(self, ctx: RequestContext) -> None:
        """Record a request whose client left before its answer was acknowledged."""
        self.commit_nowait(ctx, 499, "client_closed_request")
