"""Predict the service's memory footprint from a GGUF file's metadata, before loading it.

peak ≈ runtime baseline + weights + KV cache + compute buffers + output buffer

- weights: the tensor data (file-backed pages with mmap, counted once touched, which a
  forward pass does to all of them);
- KV cache (llama.cpp's formulas, see docs/ARCHITECTURE.md): per layer
  (head_dim_k + head_dim_v) × n_head_kv(layer) × cells × bytes(type) — MHA, GQA and MQA are
  this one formula; sliding-window layers hold min(n_ctx, pad(n_swa + n_ubatch)) cells; MLA
  keeps one latent row (kv_lora_rank + rope dims) and no V; recurrent models keep a fixed
  state per sequence;
- compute: what one micro-batch touches: the f16 attention mask (n_ubatch × n_ctx), the
  layer activations, and one row of logits (we request one output per batch);
- tokenizer: llama.cpp's vocabulary structures, per token and BPE merge (measured);
- baseline: Python, the service and llama.cpp's code with no model, measured (policy/).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from slm.errors import ModelError
from slm.model.gguf_meta import GGUFInfo, read_gguf

# One unit of memory everywhere (policy/budget.toml, slm.service's MemoryMax, the planner,
# the gates and every printed figure): MB, 10^6 bytes.
MB = 1000 * 1000


class KvType(StrEnum):
    """Element type of the KV cache (quantised types need flash attention)."""

    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"

    @property
    def bytes_per_element(self) -> float:
        return {KvType.F16: 2.0, KvType.Q8_0: 34 / 32, KvType.Q4_0: 18 / 32}[self]

    @property
    def ggml_type(self) -> int:
        """llama.cpp's ``ggml_type`` id (``type_k`` / ``type_v`` of the context)."""
        return {KvType.F16: 1, KvType.Q8_0: 8, KvType.Q4_0: 2}[self]
RECURRENT = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}
MLA = {"deepseek2", "kimi-k2", "glm4moe-mla"}
# Sliding-window layer patterns llama.cpp hard-codes: n = every n-th layer is full attention.
# llama.cpp's in-memory vocabulary (token strings, lookup maps, BPE merge ranks), measured:
# SmolLM2 (49,152 tokens + 48,900 merges) adds ~15 MiB over a 352-token model.
TOKENIZER_BYTES_PER_ENTRY = 160
# Architectures not listed here are planned without SWA (full caches: never an undercount).
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "llama4": 4,
                "gpt-oss": 2}


@dataclass(frozen=True)
class Plan:
    """A predicted footprint, in bytes."""

    n_ctx: int
    kv_type: str
    attention: str
    baseline: int
    weights: int
    kv_cache: int
    compute: int
    output: int
    tokenizer: int = 0

    @property
    def total(self) -> int:
        return (self.baseline + self.weights + self.kv_cache + self.compute + self.output
                + self.tokenizer)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["total"] = self.total
        out.update({f"{k}_mb": round(v / MB, 1) for k, v in out.items()
                    if isinstance(v, int) and k not in ("n_ctx",)})
        return out


def _per_layer(value: int | list[int] | None, n_layer: int) -> list[int]:
    if isinstance(value, list):
        values = [int(v) for v in value][:n_layer]
        if len(values) < n_layer:  # short arrays: repeat the last value (never undercount)
            values += [max(values or [0])] * (n_layer - len(values))
        return values
    return [int(value or 0)] * n_layer


def _swa_layers(info: GGUFInfo, n_layer: int) -> list[bool]:
    window = info.arch("attention.sliding_window")
    if not window:
        return [False] * n_layer
    pattern = info.arch("attention.sliding_window_pattern")
    if isinstance(pattern, list):  # per-layer booleans in newer conversions
        return [bool(x) for x in pattern][:n_layer]
    n = int(pattern) if pattern else SWA_PATTERNS.get(info.architecture, 0)
    if n == 0:
        return [False] * n_layer  # unknown pattern: plan full caches (e.g. phi3 ignores SWA)
    if n == 1:
        return [True] * n_layer
    return [(i + 1) % n != 0 for i in range(n_layer)]


def _pad(value: int, to: int = 256) -> int:
    return -(-value // to) * to


def kv_cache_bytes(info: GGUFInfo, n_ctx: int, kv_type: str, n_ubatch: int,
                   n_seq: int = 1) -> tuple[int, str]:
    """The KV cache (or recurrent state) size, and the attention kind it was computed for."""
    n_layer = int(info.arch("block_count", 0) or 0)
    n_embd = int(info.arch("embedding_length", 0) or 0)
    if n_layer <= 0 or n_embd <= 0:
        raise ModelError(f"{info.path}: GGUF metadata lacks {info.architecture}.block_count "
                         "or .embedding_length; cannot plan its memory")
    per_elem = KvType(kv_type).bytes_per_element
    arch = info.architecture
    if arch in RECURRENT:
        if arch.startswith("mamba"):
            d_inner = int(info.arch("ssm.inner_size", 2 * n_embd))
            d_conv = int(info.arch("ssm.conv_kernel", 4))
            d_state = int(info.arch("ssm.state_size", 16))
            per_layer = (d_conv - 1) * d_inner + d_state * d_inner
        else:  # RWKV: token shift (2 × n_embd) and the wkv state (n_embd × head_size)
            head = int(info.arch("wkv.head_size", 64))
            per_layer = 2 * n_embd + n_embd * head
        return int(per_layer * n_layer * n_seq * 4), "recurrent"
    if arch in MLA and info.arch("attention.key_length_mla") is not None:
        rank = int(info.arch("attention.kv_lora_rank", 512))
        rope = int(info.arch("rope.dimension_count", 64))
        return int((rank + rope) * n_layer * n_ctx * per_elem), "mla"
    n_head = _per_layer(info.arch("attention.head_count"), n_layer)
    n_head_kv = _per_layer(info.arch("attention.head_count_kv", info.arch("attention.head_count")),
                           n_layer)
    head_default = n_embd // max(1, max(n_head))
    dim_k = int(info.arch("attention.key_length", head_default))
    dim_v = int(info.arch("attention.value_length", head_default))
    swa = _swa_layers(info, n_layer)
    window = int(info.arch("attention.sliding_window", 0) or 0)
    total = 0.0
    for layer in range(n_layer):
        cells = n_ctx
        if swa[layer]:
            cells = min(n_ctx, _pad(window * n_seq + n_ubatch))
        total += (dim_k + dim_v) * n_head_kv[layer] * cells * per_elem
    if any(swa):
        kind = "swa"
    elif max(n_head_kv) == 1:
        kind = "mqa"
    elif max(n_head_kv) < max(n_head):
        kind = "gqa"
    else:
        kind = "mha"
    return int(total), kind


def plan(path: Path, *, n_ctx: int, kv_type: str = "f16", n_ubatch: int = 512,
         baseline_mb: float = 0.0, info: GGUFInfo | None = None, n_seq: int = 1) -> Plan:
    """Predict the footprint of serving ``path`` at ``n_ctx`` (shared by ``n_seq``
    parallel sequences, as llama.cpp's unified KV cache does)."""
    if n_ctx < 1:
        raise ValueError("the context must be at least 1 token")
    n_ctx = _pad(n_ctx)  # llama.cpp rounds the context up to a multiple of 256
    info = info or read_gguf(path)
    n_embd = int(info.arch("embedding_length", 0))
    n_ff = info.arch("feed_forward_length", 4 * n_embd)
    n_ff = max(n_ff) if isinstance(n_ff, list) else int(n_ff)
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    n_vocab = tokens[1] if isinstance(tokens, tuple) else len(tokens or [])
    n_head = _per_layer(info.arch("attention.head_count", 1), 1)[0]
    merges = info.metadata.get("tokenizer.ggml.merges")
    n_merges = merges[1] if isinstance(merges, tuple) else len(merges or [])
    kv, kind = kv_cache_bytes(info, n_ctx, kv_type, n_ubatch, n_seq)
    ub = min(n_ubatch, n_ctx)
    mask = 2 * ub * _pad(n_ctx)
    activations = 4 * ub * (6 * n_embd + 3 * n_ff + 2 * n_head * 64)
    logits = 4 * n_vocab
    return Plan(
        n_ctx=n_ctx, kv_type=kv_type, attention=kind,
        baseline=int(baseline_mb * MB), weights=info.weights_bytes, kv_cache=kv,
        compute=mask + activations + logits, output=4 * n_vocab,
        tokenizer=TOKENIZER_BYTES_PER_ENTRY * (n_vocab + n_merges),
    )


def largest_context(path: Path, budget_mb: float, *, kv_type: str = "f16",
                    n_ubatch: int = 512, baseline_mb: float = 0.0,
                    step: int = 256, cap_to_trained: bool = True, n_seq: int = 1,
                    info: GGUFInfo | None = None) -> int:
    """The largest context (a multiple of ``step``; at most the trained one unless
    ``cap_to_trained`` is False) whose planned footprint fits ``budget_mb``."""
    info = info or read_gguf(path)
    trained = int(info.arch("context_length", 0)) or 1 << 20
    if not cap_to_trained:
        trained = 1 << 22
    best, low, high = 0, 1, trained // step
    while low <= high:
        mid = (low + high) // 2
        p = plan(path, n_ctx=mid * step, kv_type=kv_type, n_ubatch=n_ubatch,
                 baseline_mb=baseline_mb, info=info, n_seq=n_seq)
        if p.total <= budget_mb * MB:
            best, low = mid * step, mid + 1
        else:
            high = mid - 1
    return best


def megabytes(value: int) -> str:
    """A byte count as printed everywhere: MB (10^6 bytes), one decimal."""
    return f"{value / MB:,.1f} MB"

