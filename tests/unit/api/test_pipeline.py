"""The request pipeline without HTTP: the hand-over rule over fake targets, sanitising
into the request context, and the one audit record per request (a real ledger file)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from slm.api.audit import Auditor, audit_record
from slm.api.context import RequestContext
from slm.api.pipeline import HandOverRule, sanitise, serve
from slm.audit.ledger import FIELDS, AuditRecord, Ledger
from slm.errors import ContextLengthExceeded, InvalidRequest, QueueFull, UpstreamError
from slm.ops.metrics import Metrics
from slm.sanitise.detectors import Detector
from slm.tiers import Tier
from slm.upstream.router import LocalTarget


@dataclasses.dataclass(frozen=True)
class FakeUpstreamTarget:
    """Stands in for a RemoteTarget: what the pipeline reads of a target."""

    label: str
    model: str
    tier: Tier = Tier.B


async def _never() -> None:
    await asyncio.Event().wait()


def context(endpoint: str = "chat") -> RequestContext:
    return RequestContext(request_id="r1", endpoint=endpoint, started=0.0, deadline=1e9,
                          client_gone=_never, model="tiny", model_sha256="ab" * 32)


LOCAL = LocalTarget("tiny")
GPU = FakeUpstreamTarget("gpu", "big")
CLOUD = FakeUpstreamTarget("cloud", "huge", Tier.C)


def run(targets, failures: dict[str, Exception], rule: HandOverRule):
    """Serve over ``targets``; each one named in ``failures`` raises its error."""
    ctx, tried = context(), []

    async def attempt(target):
        tried.append(target.label)
        if target.label in failures:
            raise failures[target.label]
        return f"answer from {target.label}"

    try:
        target, answer = asyncio.run(serve(ctx, targets, attempt, rule,
                                           local_sha256="ab" * 32))
    except Exception as exc:  # noqa: BLE001 - returned for the test to judge
        return ctx, tried, exc
    return ctx, tried, (target, answer)


BOTH = HandOverRule(overflow_to_b=True, fallback_to_b=True)
NEITHER = HandOverRule(overflow_to_b=False, fallback_to_b=False)


def test_the_first_target_that_answers_serves_and_is_recorded():
    ctx, tried, (target, answer) = run([LOCAL, GPU], {}, BOTH)
    assert (tried, target, answer) == (["A"], LOCAL, "answer from A")
    assert (ctx.tier, ctx.model, ctx.model_sha256) == (Tier.A, "tiny", "ab" * 32)


def test_overflow_hands_over_to_tier_b_only_when_allowed():
    too_long = ContextLengthExceeded("too long")
    ctx, tried, (target, _) = run([LOCAL, GPU], {"A": too_long}, BOTH)
    assert tried == ["A", "gpu"] and target == GPU
    assert (ctx.tier, ctx.model, ctx.model_sha256, ctx.target_label) == (
        Tier.B, "big", None, "gpu")
    ctx, tried, exc = run([LOCAL, GPU], {"A": too_long}, NEITHER)
    assert tried == ["A"] and exc is too_long
    assert ctx.tier == Tier.A


def test_busy_tier_a_hands_over_per_fallback_setting():
    busy = QueueFull("queue full", retry_after_s=1)
    assert run([LOCAL, GPU], {"A": busy}, BOTH)[1] == ["A", "gpu"]
    only_overflow = HandOverRule(overflow_to_b=True, fallback_to_b=False)
    assert run([LOCAL, GPU], {"A": busy}, only_overflow)[2] is busy


def test_the_requests_own_fault_never_hands_over():
    bad = InvalidRequest("bad temperature", param="temperature")
    _, tried, exc = run([LOCAL, GPU], {"A": bad}, BOTH)
    assert tried == ["A"] and exc is bad


def test_upstreams_fall_back_on_retryable_errors_and_the_first_error_names_the_rest():
    down = UpstreamError("gpu is down")
    _, tried, (target, _) = run([GPU, CLOUD], {"gpu": down}, NEITHER)
    assert tried == ["gpu", "cloud"] and target == CLOUD
    ctx, tried, exc = run([GPU, CLOUD], {"gpu": UpstreamError("gpu is down"),
                                         "cloud": UpstreamError("cloud is down")}, NEITHER)
    assert tried == ["gpu", "cloud"]
    assert exc.message == "gpu is down; cloud failed too: cloud is down"
    assert ctx.target_label == "gpu"  # the record names the first choice
    refused = UpstreamError("gpu refused the body", retryable=False)
    assert run([GPU, CLOUD], {"gpu": refused}, NEITHER)[1] == ["gpu"]


def test_sanitise_keeps_the_hash_and_entity_types_not_the_values():
    ctx = context()
    raw = {"model": "big", "messages": [
        {"role": "user", "content": "mail alice@example.com about the invoice"}]}
    out = asyncio.run(sanitise(ctx, raw, "messages", Detector(("EMAIL",)), Metrics(),
                               body_bytes=100))
    sent = out.body["messages"][0]["content"]
    assert "alice@example.com" not in sent and "about the invoice" in sent
    assert raw["messages"][0]["content"].startswith("mail alice@")  # the original is kept
    assert ctx.entities == ("EMAIL",)
    assert ctx.prompt_text is not None and "alice@example.com" not in ctx.prompt_text
    assert len(ctx.prompt_sha256 or "") == 64
    assert out.vault.rehydrate(sent) == raw["messages"][0]["content"]


def test_the_audit_record_is_the_ledgers_columns_by_construction():
    names = {f.name for f in dataclasses.fields(AuditRecord)}
    assert names == set(FIELDS) - {"id", "prev_hash"}
    record = audit_record(context(), 200, None, store_prompt=False)
    assert record.tier == "A" and record.status == 200 and record.prompt_text is None


def test_a_request_leaves_exactly_one_record(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.db")
    auditor = Auditor(ledger, Metrics(), store_prompt=True)
    ctx = context()
    ctx.note_prompt("hello")
    ctx.note_finish(3, "stop")

    async def answer_then_fail_late() -> None:
        await auditor.commit(ctx, 200)
        auditor.commit_nowait(ctx, 499, "client_closed_request")  # too late: ignored
        await auditor.commit(ctx, 500)

    asyncio.run(answer_then_fail_late())
    unaudited = context("models")
    asyncio.run(auditor.commit(unaudited, 200))
    ledger.close()
    conn = sqlite3.connect(tmp_path / "ledger.db")
    rows = conn.execute("SELECT request_id, endpoint, status, completion_tokens, "
                        "finish_reason, prompt_text FROM records").fetchall()
    assert rows == [("r1", "chat", 200, 3, "stop", "hello")]


def test_a_ledger_that_cannot_be_written_refuses_the_answer(tmp_path: Path):
    from slm.errors import LedgerUnavailable

    ledger = Ledger(tmp_path / "ledger.db")
    ledger.close()  # a closed ledger refuses appends, as a broken one does
    auditor = Auditor(ledger, Metrics(), store_prompt=False)
    with pytest.raises(LedgerUnavailable, match="cannot be written"):
        asyncio.run(auditor.commit(context(), 200))
