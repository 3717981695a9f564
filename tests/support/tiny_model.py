"""Write a tiny, deterministic llama-architecture GGUF for tests (random weights, ~0.5 MB).

llama.cpp loads it and generates from it like any model: same seed, same bytes, same
tokens. It has a SentencePiece-style vocabulary (3 specials, ChatML control tokens, 256 byte
tokens, some word pieces) and a ChatML chat template. With ``pooling=True`` it also declares
mean pooling, so llama.cpp computes sentence embeddings from it.

Run as a script to write one: ``python tests/tiny_model.py OUT.gguf [--pooling]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORDS = (
    "the a an is are was of to in and or not yes no hello world paris france capital "
    "what which who how answer question model token json true false name value list one "
    "two three four five red green blue cat dog sun moon day night water fire earth air"
).split()

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_LAYER = 2
N_FF = 128
N_CTX_TRAIN = 4096


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [
        gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL, gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz{}\":,.?!")
    pieces += ["\n", "▁{", "▁}", "▁\"", "▁:"]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    scores = [0.0] * 261 + [-float(i) for i in range(len(tokens) - 261)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path, *, seed: int = 1234, pooling: bool = False, license: str = "mit",
    chat_template: str = CHATML,
) -> Path:
    """Write the tiny model to ``path`` (deterministic for a given seed) and return it."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-test-llama")
    writer.add_license(license)
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if pooling:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_eot_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", n_vocab, N_EMBD, scale=1.0)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    tensor("output.weight", n_vocab, N_EMBD, scale=1.0)
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", N_HEAD * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_k.weight", N_HEAD_KV * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_v.weight", N_HEAD_KV * head_dim, N_EMBD)
        tensor(f"blk.{i}.attn_output.weight", N_EMBD, N_HEAD * head_dim)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(path: Path, *, seed: int = 99, rank: int = 4, alpha: float = 8.0,
                    scale: float = 0.5, n_embd: int = N_EMBD) -> Path:
    """Write a LoRA adapter for the tiny model: low-rank A/B pairs on every layer's
    ``attn_q``, ``attn_v`` and ``ffn_up`` (strong enough to change greedy answers). Another
    ``n_embd`` makes one whose tensors do not fit the model."""
    rng = np.random.default_rng(seed)
    head_dim = N_EMBD // N_HEAD
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name("tiny-test-lora")
    shapes = {"attn_q": N_HEAD * head_dim, "attn_v": N_HEAD_KV * head_dim, "ffn_up": N_FF}
    for i in range(N_LAYER):
        for name, rows in shapes.items():
            base = f"blk.{i}.{name}.weight"
            # numpy (rows, cols) = ggml ne reversed: A is ne [n_embd, rank], B [rank, out]
            writer.add_tensor(base + ".lora_a",
                              (rng.standard_normal((rank, n_embd)) * scale).astype(np.float32))
            writer.add_tensor(base + ".lora_b",
                              (rng.standard_normal((rows, rank)) * scale).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    write_tiny_model(out, pooling="--pooling" in sys.argv[2:])
    print(out)
