"""One error contract across the service, the gates and the image build: every error raised
on purpose is an SlmError (a message and a hint, printed as one line), and a hint survives
being re-raised as another domain's error."""

from __future__ import annotations

import inspect
import sys

import pytest
import slm.errors
import slm.tier_a.errors
import slm_policy.errors
from slm.api.errors import as_request_error
from slm.errors import RequestError, SlmError
from slm.tier_a.errors import (
    AdapterMismatch,
    AdapterNotFound,
    GenerationFailed,
    InputRejected,
    JobCancelled,
    JobTimedOut,
    NotSupportedByModel,
    QueueFull,
    Stopping,
    TierAError,
)
from support.paths import ROOT

sys.path.insert(0, str(ROOT / "image"))
import image_errors  # noqa: E402
import payload_signing  # noqa: E402
from slm_policy.release import ReleaseError  # noqa: E402


def _errors(module) -> list[type]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Exception) and obj.__module__ == module.__name__]


def test_every_error_of_the_gates_and_the_image_build_is_an_slm_error():
    classes = (_errors(slm_policy.errors) + _errors(image_errors) + _errors(slm.errors)
               + _errors(slm.tier_a.errors))
    assert len(classes) > 10
    assert [c.__name__ for c in classes if not issubclass(c, SlmError)] == []


def test_a_release_errors_hint_survives_as_the_image_builds_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise ReleaseError("no signer named 'nobody'", hint="see policy/signing.toml")

    monkeypatch.setattr(payload_signing, "load_signer", refuse)
    monkeypatch.setenv("SLM_SIGNER", "nobody")
    monkeypatch.setenv("SLM_TRUSTED_ROOT", str(tmp_path / "trusted_root.json"))
    try:
        payload_signing.ImageSigning.from_env()
    except image_errors.SigningSetupError as exc:
        assert exc.one_line() == "no signer named 'nobody' (see policy/signing.toml)"
    else:
        raise AssertionError("from_env accepted an unknown signer")


TIER_A_REFUSALS = [  # what tier A refuses, and what the client sees of it
    (InputRejected("the chat template rejected the messages", param="messages"),
     400, "invalid_request_error", None),
    (NotSupportedByModel("no pooling", param="model", feature="embeddings_not_supported"),
     400, "invalid_request_error", "embeddings_not_supported"),
    (NotSupportedByModel("grammar", param="response_format"),
     400, "invalid_request_error", "unsupported"),
    (AdapterNotFound("no adapter 'x'", param="model"), 404, "invalid_request_error",
     "model_not_found"),
    (AdapterMismatch("made for another model", param="model"), 400,
     "invalid_request_error", "adapter_base_mismatch"),
    (QueueFull("busy", retry_after_s=3), 429, "rate_limit_error", "queue_full"),
    (JobCancelled("client gone"), 499, "cancelled", "client_closed_request"),
    (JobTimedOut("too late"), 504, "timeout_error", "deadline_exceeded"),
    (Stopping("shutting down"), 503, "unavailable_error", "shutting_down"),
    (GenerationFailed("llama.cpp failed"), 500, "server_error", "internal_error"),
]


def test_the_engine_raises_no_http_shaped_error():
    tier_a = _errors(slm.tier_a.errors)
    assert [c.__name__ for c in tier_a if issubclass(c, RequestError)] == []
    assert {type(e) for e, *_ in TIER_A_REFUSALS} == {c for c in tier_a if c is not TierAError}


@pytest.mark.parametrize(("refusal", "status", "type_", "code"), TIER_A_REFUSALS,
                         ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_the_api_edge_renders_each_tier_a_refusal(refusal, status, type_, code):
    rendered = as_request_error(refusal)
    assert (rendered.status, rendered.type, rendered.code) == (status, type_, code)
    assert (rendered.message, rendered.param) == (refusal.message, refusal.param)
    if isinstance(refusal, QueueFull):
        assert rendered.retry_after_s == 3
