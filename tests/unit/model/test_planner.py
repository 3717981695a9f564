"""The memory planner: KV formulas per attention kind on generated GGUF metadata, checked
against llama.cpp's own numbers on real models; the service's start-time budget check."""

from __future__ import annotations

import ctypes
import re
import tomllib
from pathlib import Path

import gguf
import numpy as np
import pytest
from slm.config.settings import Settings
from slm.model.file import default_model_path
from slm.model.gguf_meta import read_gguf
from slm.model.planner import MB, kv_cache_bytes, largest_context, plan
from support.paths import ROOT
from support.server import run_slm

MIB = 1024 * 1024  # llama.cpp logs its buffers in MiB

_CALLBACKS: list = []


def synthetic(path: Path, arch: str, keys: dict, n_vocab: int = 1000) -> Path:
    """A GGUF with just the metadata the planner reads (and one small tensor)."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in keys.items():
        full = f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, list):
            w.add_array(full, value)
        else:
            w.add_float32(full, value)
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


BASE = {"block_count": 4, "embedding_length": 512, "context_length": 8192,
        "feed_forward_length": 1024, "attention.head_count": 8}


@pytest.mark.parametrize(
    ("kv_heads", "kind"), [(8, "mha"), (2, "gqa"), (1, "mqa")])
def test_mha_gqa_mqa_share_one_formula(tmp_path, kv_heads, kind):
    path = synthetic(tmp_path / "m.gguf", "llama", {**BASE, "attention.head_count_kv": kv_heads})
    info_bytes, got_kind = kv_cache_bytes(read_gguf(path), 2048, "f16", 512)
    assert got_kind == kind
    assert info_bytes == 4 * (64 + 64) * kv_heads * 2048 * 2


def test_quantised_kv_types_scale_by_block_size(tmp_path):
    path = synthetic(tmp_path / "m.gguf", "llama", {**BASE, "attention.head_count_kv": 2})
    f16 = plan(path, n_ctx=4096).kv_cache
    assert plan(path, n_ctx=4096, kv_type="q8_0").kv_cache == int(f16 / 2 * 34 / 32)
    assert plan(path, n_ctx=4096, kv_type="q4_0").kv_cache == int(f16 / 2 * 18 / 32)


def test_sliding_window_layers_hold_a_window_not_the_context(tmp_path):
    keys = {**BASE, "block_count": 12, "attention.head_count_kv": 4,
            "attention.key_length": 256, "attention.value_length": 256,
            "attention.sliding_window": 512}
    path = synthetic(tmp_path / "g.gguf", "gemma3", keys)
    p = plan(path, n_ctx=32768, n_ubatch=512)
    per_cell = (256 + 256) * 4 * 2
    # gemma3: 5 of every 6 layers are SWA (pad(512 + 512) = 1024 cells), 2 are global
    assert p.attention == "swa"
    assert p.kv_cache == 10 * per_cell * 1024 + 2 * per_cell * 32768


def test_unknown_sliding_window_patterns_are_planned_as_full_caches(tmp_path):
    keys = {**BASE, "attention.head_count_kv": 8, "attention.sliding_window": 512}
    path = synthetic(tmp_path / "p.gguf", "phi3", keys)  # llama.cpp ignores SWA for phi3
    assert plan(path, n_ctx=8192).kv_cache == 4 * (64 + 64) * 8 * 8192 * 2


def test_context_is_padded_like_llama_cpp(tmp_path):
    path = synthetic(tmp_path / "m.gguf", "llama", {**BASE, "attention.head_count_kv": 8})
    assert plan(path, n_ctx=300).kv_cache == plan(path, n_ctx=512).kv_cache


def test_mla_keeps_one_latent_row_and_no_v(tmp_path):
    keys = {**BASE, "attention.kv_lora_rank": 512, "rope.dimension_count": 64,
            "attention.key_length_mla": 192, "attention.value_length_mla": 128}
    path = synthetic(tmp_path / "d.gguf", "deepseek2", keys)
    p = plan(path, n_ctx=4096)
    assert p.attention == "mla" and p.kv_cache == (512 + 64) * 4 * 4096 * 2


@pytest.mark.parametrize(
    ("arch", "keys", "state"),
    [
        ("mamba", {"ssm.inner_size": 1024, "ssm.conv_kernel": 4, "ssm.state_size": 16},
         ((4 - 1) * 1024 + 16 * 1024) * 4 * 4),
        ("rwkv6", {"wkv.head_size": 64}, (2 * 512 + 512 * 64) * 4 * 4),
    ],
)
def test_recurrent_state_does_not_grow_with_context(tmp_path, arch, keys, state):
    path = synthetic(tmp_path / "r.gguf", arch, {**BASE, **keys})
    small, large = plan(path, n_ctx=1024), plan(path, n_ctx=65536)
    assert small.attention == "recurrent"
    assert small.kv_cache == large.kv_cache == state


def test_largest_context_fits_and_the_next_step_does_not(tmp_path):
    path = synthetic(tmp_path / "m.gguf", "llama",
                     {**BASE, "attention.head_count_kv": 8, "context_length": 1 << 20})
    budget = 300.0
    n = largest_context(path, budget, baseline_mb=50)
    assert plan(path, n_ctx=n, baseline_mb=50).total <= budget * MB
    assert plan(path, n_ctx=n + 256, baseline_mb=50).total > budget * MB


def llama_cpp_kv_mib(model: Path, n_ctx: int, kv_type_id: int = 1) -> float:
    """What llama.cpp itself reports as its KV buffer for this model and context."""
    import llama_cpp as C

    lines: list[str] = []
    # llama.cpp keeps the pointer: the callback objects must outlive every later log call
    _CALLBACKS.append(C.llama_log_callback(lambda level, text, ud: lines.append(text.decode())))
    C.llama_log_set(_CALLBACKS[-1], ctypes.c_void_p(0))
    try:
        model_ptr = C.llama_model_load_from_file(str(model).encode(),
                                                 C.llama_model_default_params())
        params = C.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, 512, 512, 1
        params.type_k = params.type_v = kv_type_id
        if kv_type_id != 1:
            params.flash_attn_type = 1
        ctx = C.llama_init_from_model(model_ptr, params)
        C.llama_free(ctx)
        C.llama_model_free(model_ptr)
    finally:
        _CALLBACKS.append(C.llama_log_callback(lambda *a: None))
        C.llama_log_set(_CALLBACKS[-1], ctypes.c_void_p(0))
    sizes = re.findall(r"KV buffer size = +([\d.]+) MiB", "".join(lines))
    return sum(float(x) for x in sizes)


@pytest.mark.parametrize(("ctx", "kv_type", "type_id"),
                         [(2048, "f16", 1), (8192, "f16", 1), (4096, "q8_0", 8)])
def test_kv_prediction_matches_llama_cpp_on_the_default_model(ctx, kv_type, type_id):
    predicted = plan(default_model_path(), n_ctx=ctx, kv_type=kv_type).kv_cache / MIB
    assert predicted == pytest.approx(llama_cpp_kv_mib(default_model_path(), ctx, type_id),
                                      abs=0.01)


def test_kv_prediction_matches_llama_cpp_on_the_tiny_model(tiny_model):
    assert plan(tiny_model, n_ctx=4096).kv_cache / MIB == pytest.approx(
        llama_cpp_kv_mib(tiny_model, 4096), abs=0.01)


def test_policy_budget_and_settings_defaults_agree():
    policy = tomllib.loads((ROOT / "policy" / "budget.toml").read_text())
    assert Settings().memory_budget_mb == policy["budget_mb"]


def test_parallel_sequences_multiply_recurrent_state(tmp_path):
    keys = {"ssm.inner_size": 1024, "ssm.conv_kernel": 4, "ssm.state_size": 16}
    path = synthetic(tmp_path / "r.gguf", "mamba", {**BASE, **keys})
    assert plan(path, n_ctx=1024, n_seq=4).kv_cache == 4 * plan(path, n_ctx=1024).kv_cache
    r = run_slm("plan", "--model", str(path), "--ctx", "0")
    assert r.returncode == 2 and "at least 1" in r.stderr
