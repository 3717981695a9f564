"""The ``[[upstream]]`` tables of the config file: tier B (one GPU burst server) and tier C
(allowlisted external APIs). Every upstream speaks OpenAI's API under its ``url``.

The tier C entries *are* the allowlist: the Doorman never sends a request to a host that
is not named here, never takes a URL from a request, and never follows a redirect.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from slm.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class UpstreamConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One upstream, as written in an ``[[upstream]]`` table."""

    name: str
    tier: Literal["B", "C"]
    url: Annotated[str, msgspec.Meta(description="OpenAI base URL")]
    models: Annotated[list[str], msgspec.Meta(description="names clients send")]
    model: Annotated[str | None, msgspec.Meta(description="name sent upstream")] = None
    key_file: str | None = None
    health_path: str | None = None
    connect_timeout_s: float = 3.0
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 300.0
    max_retries: int = 2
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    fallback: Annotated[list[str], msgspec.Meta(description="upstream names or `A`")] = []

    @property
    def host(self) -> str:
        """``host[:port]`` of the base URL (what the allowlist compares)."""
        return urlsplit(self.url).netloc

    def read_key(self) -> str | None:
        """The API key from ``key_file`` (first non-empty line), or None without one."""
        if not self.key_file:
            return None
        try:
            lines = Path(self.key_file).read_text(encoding="utf-8").split()
        except OSError as exc:
            raise ConfigError(
                f"upstream {self.name!r}: cannot read key_file {self.key_file}: {exc.strerror}"
            ) from None
        if not lines:
            raise ConfigError(f"upstream {self.name!r}: key_file {self.key_file} is empty")
        return lines[0]


def parse_upstreams(tables: Any, tier_a_model: str | None = None) -> tuple[UpstreamConfig, ...]:
    """Validate the ``[[upstream]]`` tables (ConfigError naming the problem)."""
    if tables is None:
        return ()
    try:
        ups = msgspec.convert(tables, tuple[UpstreamConfig, ...])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"upstream: {exc}") from None
    names: set[str] = set()
    served: dict[str, str] = {}
    for up in ups:
        where = f"upstream {up.name!r}"
        if not _NAME.match(up.name):
            raise ConfigError(f"{where}: name must be lowercase letters, digits, '-' or '_'")
        if up.name in names or up.name == "a":
            raise ConfigError(f"{where}: the name is used twice")
        names.add(up.name)
        parts = urlsplit(up.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: url must be http(s)://host[:port]/path, got {up.url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(f"{where}: url must not carry credentials, a query or a fragment")
        if not up.models:
            raise ConfigError(f"{where}: models must name at least one model")
        for model in up.models:
            if model == tier_a_model:
                raise ConfigError(f"{where}: model {model!r} is tier A's own name")
            if model in served:
                raise ConfigError(
                    f"{where}: model {model!r} is already served by upstream {served[model]!r}")
            served[model] = up.name
        for field in ("connect_timeout_s", "first_byte_timeout_s", "total_timeout_s",
                      "breaker_cooldown_s"):
            value = getattr(up, field)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{where}: {field} must be a number > 0, got {value}")
        if up.max_retries < 0 or up.breaker_failures < 1:
            raise ConfigError(f"{where}: max_retries must be >= 0 and breaker_failures >= 1")
        if up.health_path is not None and not up.health_path.startswith("/"):
            raise ConfigError(f"{where}: health_path must start with '/'")
        up.read_key()  # fail at start, not at the first request
    if sum(up.tier == "B" for up in ups) > 1:
        raise ConfigError("upstream: at most one tier B upstream (the GPU burst server)")
    for up in ups:
        if len(set(up.fallback)) != len(up.fallback):
            raise ConfigError(f"upstream {up.name!r}: fallback names a target twice")
        for target in up.fallback:
            if target != "A" and target not in names:
                raise ConfigError(
                    f"upstream {up.name!r}: fallback {target!r} is neither 'A' nor an upstream")
            if target == up.name:
                raise ConfigError(f"upstream {up.name!r}: an upstream cannot fall back to itself")
    return ups
