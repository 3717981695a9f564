"""One error contract across the service, the gates and the image build: every error raised
on purpose is an SlmError (a message and a hint, printed as one line), and a hint survives
being re-raised as another domain's error."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import slm.errors
import slm_policy.errors
from slm.errors import SlmError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "image"))
import image_errors  # noqa: E402
import payload_signing  # noqa: E402
from slm_policy.release import ReleaseError  # noqa: E402


def _errors(module) -> list[type]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Exception) and obj.__module__ == module.__name__]


def test_every_error_of_the_gates_and_the_image_build_is_an_slm_error():
    classes = _errors(slm_policy.errors) + _errors(image_errors) + _errors(slm.errors)
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
