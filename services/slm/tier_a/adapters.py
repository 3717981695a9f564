"""The LoRA adapters of the running model: which configured adapters apply to it (their
``base_sha256`` is the model's sha256), their files checked before anything loads, and
how a request's ``model`` name (``<model>:<adapter>``) selects one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm.config.adapters import AdapterConfig
from slm.errors import ModelError, SignatureError
from slm.model.file import check_gguf_header, sha256_of
from slm.model.gguf_meta import read_gguf
from slm.tier_a.errors import AdapterMismatch, AdapterNotFound


@dataclass(frozen=True)
class Adapter:
    """One configured adapter and whether it applies to the loaded model."""

    config: AdapterConfig
    usable: bool

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def path(self) -> Path:
        return Path(self.config.file)

    def card(self) -> dict[str, Any]:
        """Its entry in ``GET /v1/adapters``."""
        c = self.config
        return {"name": c.name, "object": "adapter", "sha256": c.sha256,
                "base_sha256": c.base_sha256, "scale": c.scale, "usable": self.usable}


def open_adapters(configs: tuple[AdapterConfig, ...], model_sha256: str,
                  verified: dict[Path, str] | None = None) -> tuple[Adapter, ...]:
    """Check the files of the adapters made for this model (ModelError: missing, not a
    GGUF LoRA, wrong sha256); adapters for other models are listed, never opened. With
    ``verified`` (the signature check's path → sha256), an adapter it did not cover, or
    that changed since, is refused (SignatureError)."""
    out = []
    for config in configs:
        usable = config.base_sha256 == model_sha256
        if usable:
            _check_file(config)
            if verified is not None and verified.get(Path(config.file)) != config.sha256:
                raise SignatureError(f"adapter {config.name!r}: {config.file} is not covered "
                                     "by a verified signature")
        out.append(Adapter(config, usable))
    return tuple(out)


def _check_file(config: AdapterConfig) -> None:
    where = f"adapter {config.name!r}"
    path = Path(config.file)
    if not path.is_file():
        raise ModelError(f"{where}: file not found: {path}")
    try:
        check_gguf_header(path)
        info = read_gguf(path)
        digest = sha256_of(path)
    except OSError as exc:
        raise ModelError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except ModelError as exc:
        raise ModelError(f"{where}: {exc.message}") from None
    kind = (info.metadata.get("general.type"), info.metadata.get("adapter.type"))
    if kind != ("adapter", "lora"):
        raise ModelError(f"{where}: {path} is not a GGUF LoRA adapter (general.type "
                         f"{kind[0]!r}, adapter.type {kind[1]!r})")
    if digest != config.sha256:
        raise ModelError(f"{where}: {path} has sha256 {digest}, expected {config.sha256}",
                         hint="the file is corrupt or not the adapter the configuration names")


class AdapterRegistry:
    """Name lookups for the request path."""

    def __init__(self, adapters: tuple[Adapter, ...], model_id: str, model_sha256: str) -> None:
        self.adapters = adapters
        self.model_id = model_id
        self.model_sha256 = model_sha256
        self._by_name = {a.name: a for a in adapters}

    def model_ids(self) -> list[str]:
        """``<model>:<adapter>`` for every adapter that applies to the loaded model."""
        return [f"{self.model_id}:{a.name}" for a in self.adapters if a.usable]

    def owns(self, model: str) -> bool:
        """Whether ``model`` has the form ``<tier A model>:<something>``."""
        return model.startswith(self.model_id + ":")

    def select(self, model: str) -> str | None:
        """The adapter a request's ``model`` asks for (None for the plain model);
        AdapterNotFound for an unknown adapter, AdapterMismatch for one made for another
        base model."""
        if model == self.model_id:
            return None
        name = model[len(self.model_id) + 1:]
        adapter = self._by_name.get(name)
        if adapter is None:
            known = ", ".join(repr(a) for a in self.model_ids()) or "none"
            raise AdapterNotFound(f"model {model!r}: no adapter {name!r} (adapters for this "
                                  f"model: {known})", param="model")
        if not adapter.usable:
            raise AdapterMismatch(
                f"adapter {name!r} was made for the base model with sha256 "
                f"{adapter.config.base_sha256[:12]}…, not for {self.model_id!r} "
                f"(sha256 {self.model_sha256[:12]}…)", param="model")
        return name
