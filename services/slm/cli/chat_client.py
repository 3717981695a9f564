"""A small OpenAI-style client of a running Doorman, for ``slm chat`` and ``slm ingest``:
streamed chat completions (SSE), the model list, document upload. Every failure is a
``ClientError`` with one line that names the Doorman's own error message when it sent one.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from slm.errors import ClientError


@dataclass
class Answer:
    """One streamed answer as it ends: its text so far, usage, and why it stopped."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    citations: list[dict[str, Any]] = field(default_factory=list)  # from X-Slm-Citations


class DoormanClient:
    """HTTP client of one Doorman base URL (``http://127.0.0.1:8080``)."""

    def __init__(self, base_url: str, api_key: str | None = None, *,
                 timeout_s: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        # No proxies or netrc from the environment: the Doorman is local.
        self._http = httpx.Client(base_url=self.base_url, headers=headers, trust_env=False,
                                  timeout=httpx.Timeout(timeout_s, connect=10.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DoormanClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the Doorman at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise ClientError(_error_line(response.status_code, response.content))
        try:
            obj: dict[str, Any] = response.json()
        except ValueError:
            raise ClientError(f"{path}: the Doorman's answer is not JSON") from None
        return obj

    def first_model(self) -> str:
        """The id of the first model the Doorman lists (its local tier A model)."""
        models = self._request("GET", "/v1/models").get("data") or []
        if not models:
            raise ClientError("the Doorman lists no models; pass --model")
        return str(models[0]["id"])

    def upload(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """POST a document to ``/v1/documents``; its JSON description."""
        return self._request("POST", "/v1/documents", files={"file": (name, data, content_type)})

    def stream_chat(self, body: dict[str, Any]) -> Generator[str | Answer, None, None]:
        """Stream one chat completion: text deltas as they arrive, then the ``Answer``.

        Closing the generator early (Ctrl-C) closes the connection, which cancels the
        request in the Doorman.
        """
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        answer = Answer()
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise ClientError(_error_line(response.status_code, response.read()))
                if response.headers.get("x-slm-citations"):
                    answer.citations = json.loads(response.headers["x-slm-citations"])
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        yield answer
                        return
                    event = _json(data)
                    if "error" in event:
                        raise ClientError(_error_text(event))
                    if event.get("usage"):
                        answer.usage = event["usage"]
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            answer.text += delta
                            yield delta
                        if choice.get("finish_reason"):
                            answer.finish_reason = choice["finish_reason"]
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the Doorman at {self.base_url}: {exc}") from None
        raise ClientError("the Doorman ended the stream without [DONE]")


def _json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise ClientError(f"malformed event from the Doorman: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise ClientError(f"malformed event from the Doorman: {data[:80]!r}")
    return value


def _error_text(document: dict[str, Any]) -> str:
    error = document.get("error")
    if isinstance(error, dict):
        code = f" ({error['code']})" if error.get("code") else ""
        return f"{error.get('message', 'unknown error')}{code}"
    return str(error)


def _error_line(status: int, content: bytes) -> str:
    try:
        document = json.loads(content)
    except ValueError:
        document = None
    if isinstance(document, dict) and "error" in document:
        return f"HTTP {status}: {_error_text(document)}"
    return f"HTTP {status}: {content[:200].decode('utf-8', 'replace').strip()}"
