"""The load the memory-budget gate puts on the service, as a device sees it at its worst:
full-context completions from concurrent clients (one through a LoRA adapter), the prompt
cache on, and a document being read at the same time.

Everything here is generated: a LoRA adapter shaped for the model (random low-rank pairs,
never fetched) and a DOCX of plain prose.
"""

from __future__ import annotations

import http.client
import io
import json
import uuid
from pathlib import Path
from typing import Any

from slm.model.gguf_meta import read_gguf

ADAPTER_NAME = "budget"


def write_lora(path: Path, model: Path, *, rank: int = 8, seed: int = 7) -> Path:
    """A LoRA adapter for ``model`` (llama-style tensor names): A/B pairs of ``rank`` on
    every layer's ``attn_q``, ``attn_v`` and ``ffn_up``."""
    import gguf
    import numpy as np

    info = read_gguf(model)
    n_embd = int(info.arch("embedding_length"))
    n_head = int(info.arch("attention.head_count"))
    n_head_kv = int(info.arch("attention.head_count_kv", n_head))
    n_ff = int(info.arch("feed_forward_length"))
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch=info.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    writer.add_name("budget-gate-lora")
    rows = {"attn_q": n_head * head_dim, "attn_v": n_head_kv * head_dim, "ffn_up": n_ff}
    for layer in range(int(info.arch("block_count"))):
        for name, out in rows.items():
            base = f"blk.{layer}.{name}.weight"
            writer.add_tensor(base + ".lora_a", (rng.standard_normal((rank, n_embd)) * 0.01)
                              .astype(np.float32))
            writer.add_tensor(base + ".lora_b", (rng.standard_normal((out, rank)) * 0.01)
                              .astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def adapter_config(adapter: Path, adapter_sha256: str, model_sha256: str) -> str:
    """The ``[[adapter]]`` table that registers ``adapter`` for the model."""
    return (f'[[adapter]]\nname = "{ADAPTER_NAME}"\nfile = "{adapter}"\n'
            f'sha256 = "{adapter_sha256}"\nbase_sha256 = "{model_sha256}"\n')


def document(paragraphs: int = 4000) -> bytes:
    """A DOCX of ``paragraphs`` paragraphs of prose (~100 characters each): enough for
    the reader to take seconds and parse a real zip of XML."""
    from docx import Document

    doc = Document()
    doc.add_heading("Harbour log", 1)
    for i in range(paragraphs):
        doc.add_paragraph(f"Entry {i}: the keeper trimmed the wick, wound the clockwork and "
                          "noted the wind from the south-west at dusk.")
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None,
            timeout: float = 3600) -> tuple[int, dict[str, Any]]:
    """One HTTP request on loopback; the JSON reply ({} when it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, {}


def get_text(port: int, path: str) -> str:
    """``GET path`` on loopback; the body as text (RuntimeError unless 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {resp.status}")
    return body


def post_json(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return request(port, "POST", path, json.dumps(body).encode(),
                   {"Content-Type": "application/json"})


def upload(port: int, name: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """``POST /v1/documents`` as multipart/form-data (field ``file``)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", "/v1/documents", body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}"})
