"""OpenAI response shapes: completion objects, streamed chunks, usage and SSE frames."""

from __future__ import annotations

import json
import time
from typing import Any

from slm import __version__
from slm.api.errors import error_body
from slm.errors import RequestError
from slm.tier_a.engine import GenerationResult

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_event(exc: RequestError, message: str | None = None) -> bytes:
    """An error after the stream started: one SSE event in OpenAI's error shape."""
    return sse(error_body(message or exc.message, exc.type, param=exc.param, code=exc.code))


def error_text(obj: Any) -> str:
    """The message of an upstream's ``{"error": ...}`` object, short."""
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error if error is not None else obj)[:300]


def usage(result: GenerationResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens},
    }


def timings(result: GenerationResult) -> dict[str, Any]:
    """llama-server-style timings, so clients can see the speed of each request."""
    return {
        "prompt_n": result.prompt_tokens - result.cached_prompt_tokens,
        "prompt_ms": round(result.prompt_seconds * 1000, 3),
        "prompt_per_second": round(result.prompt_tokens_per_second, 2),
        "predicted_n": result.completion_tokens,
        "predicted_ms": round(result.generation_seconds * 1000, 3),
        "predicted_per_second": round(result.generation_tokens_per_second, 2),
    }


class Reply:
    """Builds the response objects of one completion (ids and timestamps fixed once)."""

    def __init__(self, model_id: str, *, chat: bool, request_id: str) -> None:
        self.chat = chat
        self.model = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.fingerprint = f"slm-{__version__}"
        # Streamed text frames differ only in their text: encode the frame around it once.
        marker = "\u0000slm\u0000"
        frame = sse(self.chunk({"content": marker} if chat else marker))
        self._frame_head, self._frame_tail = frame.split(json.dumps(marker).encode())

    def text_frame(self, text: str) -> bytes:
        """One SSE frame carrying streamed text (the hot path: one JSON string encode)."""
        return self._frame_head + json.dumps(text).encode() + self._frame_tail

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}

    def chunk(self, delta: dict[str, Any] | str, finish: str | None = None) -> dict[str, Any]:
        """One streamed chunk (chat: a delta; completions: text)."""
        if self.chat:
            out = self._base("chat.completion.chunk")
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish,
                               "logprobs": None}]
        else:
            out = self._base("text_completion")
            out["choices"] = [{"index": 0, "text": delta, "finish_reason": finish,
                               "logprobs": None}]
        return out

    def usage_chunk(self, result: GenerationResult) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage`` is set."""
        out = self._base("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = usage(result)
        out["timings"] = timings(result)
        return out

    def whole(self, text: str, result: GenerationResult) -> dict[str, Any]:
        """The non-streamed response."""
        out = self._base(self.object)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": result.finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": result.finish_reason,
                      "logprobs": None}
        out["choices"] = [choice]
        out["usage"] = usage(result)
        out["timings"] = timings(result)
        return out


def embeddings_list(vectors: list[list[float]], model: str, n_tokens: int) -> dict[str, Any]:
    """The ``/v1/embeddings`` response."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vec}
                 for i, vec in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
