"""One OpenAI-compatible upstream (tier B or C): its HTTP client, breaker and health.

A call is a single HTTP attempt; retries and fallback live in one place, the router. Each
attempt has its own connect and first-byte timeouts (httpx's connect and read timeouts; the
read timeout also bounds every later pause of a stream) inside the call's total deadline.
Redirects are never followed, and nothing but the configured base URL is ever contacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from slm.config.upstreams import UpstreamConfig
from slm.errors import (
    UpstreamError,
    UpstreamNotAllowed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from slm.tiers import Tier
from slm.upstream.breaker import CircuitBreaker

log = logging.getLogger("slm.upstream")

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 16 * 1024 * 1024
MAX_CONNECTIONS = 32
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The wait an upstream asks for: ``retry-after-ms`` (OpenAI), else ``Retry-After``
    (seconds, possibly fractional, or an HTTP date), in seconds from now."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = (headers.get(name) or "").strip()
        if not value:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            return max(0.0, when.timestamp() - time.time())
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _upstream_message(body: bytes) -> str:
    """The ``error.message`` of an upstream's error body, or its first 200 characters."""
    try:
        doc = json.loads(body)
        message = doc["error"]["message"] if isinstance(doc.get("error"), dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        message = None
    return str(message) if message else body[:200].decode(errors="replace")


class Upstream:
    """An upstream's client state: config, key, breaker, health."""

    def __init__(self, config: UpstreamConfig, allowed_hosts: frozenset[str]) -> None:
        self.config = config
        self.name = config.name
        self.tier = Tier(config.tier)
        self._key = config.read_key()
        self._allowed_hosts = allowed_hosts
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self.healthy = True  # until a health probe says otherwise
        self._client: httpx.AsyncClient | None = None
        self._probe_client: httpx.AsyncClient | None = None

    @staticmethod
    def _new_client(connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxies or .netrc credentials from the environment
            transport=httpx.AsyncHTTPTransport(retries=0),
            limits=httpx.Limits(max_connections=connections,
                                max_keepalive_connections=min(8, connections)),
        )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created in the serving event loop
            self._client = self._new_client(MAX_CONNECTIONS)
        return self._client

    async def aclose(self) -> None:
        for client in (self._client, self._probe_client):
            if client is not None:
                await client.aclose()

    def _url(self, path: str) -> str:
        return self.config.url.rstrip("/") + path

    def _timeouts(self, remaining: float, *, stream: bool) -> httpx.Timeout:
        """Per-attempt timeouts. Without streaming, servers send headers only once the
        whole answer is generated, so the first byte may take the whole remaining time."""
        cfg = self.config
        first_byte = min(cfg.first_byte_timeout_s, remaining) if stream else remaining
        return httpx.Timeout(
            connect=min(cfg.connect_timeout_s, remaining),
            read=first_byte,
            write=min(cfg.first_byte_timeout_s, remaining),
            pool=min(cfg.connect_timeout_s, remaining),
        )

    def check_available(self) -> None:
        """UpstreamUnavailable while the breaker is open or the health check fails."""
        if not self.healthy:
            raise UpstreamUnavailable(f"upstream {self.name!r} fails its health check")
        if not self.breaker.allow():
            raise UpstreamUnavailable(
                f"upstream {self.name!r} is failing; its circuit breaker is open",
                retry_after_s=self.breaker.retry_in() or None)

    async def open(
        self, path: str, body: dict[str, Any], *, deadline: float, request_id: str,
        stream: bool,
    ) -> httpx.Response:
        """POST ``body`` and return the response once its headers arrived (status 2xx,
        body not read yet: the caller reads or streams it, then closes it)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(f"upstream {self.name!r}: no time left for the call",
                                  retryable=False, upstream_fault=False)
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = self.client.build_request(
            "POST", self._url(path), content=json.dumps(body).encode(), headers=headers,
            timeout=self._timeouts(remaining, stream=stream),
        )
        try:
            async with asyncio.timeout(remaining):
                response = await self.client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} did not answer in time") from None
        except httpx.PoolTimeout:
            raise UpstreamUnavailable(
                f"upstream {self.name!r}: all {MAX_CONNECTIONS} connections are busy",
                upstream_fault=False) from None
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "first byte"
            raise UpstreamTimeout(f"upstream {self.name!r}: {kind} timeout") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream {self.name!r} failed: {type(exc).__name__}: {exc}") from None
        if response.is_success:
            return response
        await self._refuse(response, deadline)
        raise AssertionError("unreachable")

    async def _refuse(self, response: httpx.Response, deadline: float) -> None:
        """Raise the error for a non-2xx response (and close it)."""
        body = b""
        try:
            if not response.is_redirect:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async for part in response.aiter_bytes():
                        body += part
                        if len(body) > MAX_ERROR_BODY:
                            break
        except (httpx.HTTPError, TimeoutError):
            pass
        finally:
            await response.aclose()
        status = response.status_code
        if response.is_redirect:
            target = urlsplit(response.headers.get("location", "")).netloc
            if target and target not in self._allowed_hosts:
                raise UpstreamNotAllowed(
                    f"upstream {self.name!r} redirected to {target!r}, which is not an "
                    "allowlisted host; redirects are never followed")
            raise UpstreamError(f"upstream {self.name!r} answered a redirect ({status}); "
                                "redirects are not followed", retryable=False)
        message = f"upstream {self.name!r} answered {status}: {_upstream_message(body)}"
        if status == 429:
            raise UpstreamRateLimited(
                message, retry_after_s=retry_after_seconds(response.headers))
        if status in RETRYABLE_STATUS:
            raise UpstreamError(
                message, retry_after_s=retry_after_seconds(response.headers))
        if status in (401, 403):
            raise UpstreamError(message + " (check its key_file)", retryable=False)
        raise UpstreamRejected(message, status=status if 400 <= status < 500 else 502)

    async def read_json(self, response: httpx.Response, *, deadline: float) -> Any:
        """Read a whole JSON response body (bounded in size and time), then close it."""
        try:
            body = b""
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) > MAX_RESPONSE_BODY:
                        raise UpstreamError(f"upstream {self.name!r}: response too large",
                                            retryable=False)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name!r} did not finish in time") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"upstream {self.name!r} stalled") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.name!r} failed mid-response: "
                                f"{type(exc).__name__}") from None
        finally:
            await close_quietly(response)
        try:
            return json.loads(body)
        except ValueError:
            raise UpstreamError(f"upstream {self.name!r} answered invalid JSON") from None

    async def events(
        self, response: httpx.Response, *, deadline: float
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON objects of an SSE stream, until ``[DONE]`` or the end of the stream;
        the stream must end before ``deadline``. Closes the response however it ends.

        A stream that stops before ``[DONE]`` and before any finish_reason was cut off
        (with a close-delimited body that looks like a normal end)."""
        lines = response.aiter_lines()
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        line = await anext(lines)
                except StopAsyncIteration:
                    if finished:
                        return
                    raise UpstreamError(
                        f"upstream {self.name!r} broke off the stream") from None
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"upstream {self.name!r} did not finish in time") from None
                except httpx.TimeoutException:
                    raise UpstreamTimeout(f"upstream {self.name!r} stalled mid-stream") from None
                except httpx.HTTPError as exc:
                    raise UpstreamError(f"upstream {self.name!r} broke off the stream: "
                                        f"{type(exc).__name__}") from None
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise UpstreamError(
                        f"upstream {self.name!r} sent a stream event that is not JSON") from None
                if isinstance(obj, dict):
                    finished = finished or any(
                        isinstance(c, dict) and c.get("finish_reason") is not None
                        for c in obj.get("choices") or ())
                    yield obj
        finally:
            await close_quietly(response)

    async def probe(self) -> None:
        """One health check: GET ``health_path`` on the upstream's origin."""
        parts = urlsplit(self.config.url)
        url = f"{parts.scheme}://{parts.netloc}{self.config.health_path}"
        if self._probe_client is None:  # its own connection: a busy pool is not ill health
            self._probe_client = self._new_client(1)
        try:
            response = await self._probe_client.get(
                url, timeout=self.config.connect_timeout_s * 2)
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy != self.healthy:
            log.warning("upstream health changed",
                        extra={"upstream": self.name, "healthy": healthy})
        self.healthy = healthy


async def close_quietly(response: httpx.Response) -> None:
    """Close a response even from a cancelled task (a client that disconnected)."""
    with anyio.CancelScope(shield=True):
        try:
            await response.aclose()
        except Exception:  # noqa: BLE001 - nothing more to do with a broken connection
            pass
