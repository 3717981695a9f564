"""The prompt cache: KV snapshots of recent prompts restored instead of decoded again, in
memory and across restarts on disk, invalidated by the model's sha256; on real `slm serve`
processes (tiny model), plus the cache's own bookkeeping on plain bytes."""

import hashlib
import json
from pathlib import Path

import httpx
from slm.config.settings import load_settings
from slm.server.startup import prompt_cache_bytes
from slm.tier_a.prompt_cache import PromptCache
from support.server import TINY_ID
from support.tiny_model import write_tiny_model

SYSTEM_A = "the cat is red and the dog is blue " * 40
SYSTEM_B = "water fire earth air one two three " * 40


def ask(base: str, system: str, user: str = "hello") -> dict:
    reply = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": TINY_ID, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
    assert reply.status_code == 200, reply.text
    return reply.json()


def cached(reply: dict) -> int:
    return reply["usage"]["prompt_tokens_details"]["cached_tokens"]


def text(reply: dict) -> str:
    return reply["choices"][0]["message"]["content"]


def test_interleaved_prompts_restore_their_snapshots(start_server, tiny_model):
    """A, B, A, B: the live prefix holds only the last prompt, so without the cache the
    second A decodes its whole prompt again; with it, A's snapshot is restored and the
    answer is the same."""
    server = start_server(tiny_model)
    first_a, first_b = ask(server.base, SYSTEM_A), ask(server.base, SYSTEM_B)
    again_a, again_b = ask(server.base, SYSTEM_A), ask(server.base, SYSTEM_B)
    assert cached(first_a) == 0 and cached(first_b) < 20
    assert cached(again_a) == again_a["usage"]["prompt_tokens"] - 1
    assert cached(again_b) == again_b["usage"]["prompt_tokens"] - 1
    assert (text(again_a), text(again_b)) == (text(first_a), text(first_b))
    assert server.metric("slm_prompt_cache_restores") == 2
    assert server.metric("slm_prompt_cache_bytes") > 0
    # a follow-up question in conversation A starts from its snapshot, not from scratch
    ask(server.base, SYSTEM_B)
    follow = ask(server.base, SYSTEM_A, "hello again")
    assert cached(follow) > 1000


def test_without_the_cache_the_prompt_is_decoded_again(start_server, tiny_model):
    server = start_server(tiny_model, "[prompt_cache]\nmemory_mb = 0\n")
    ask(server.base, SYSTEM_A)
    ask(server.base, SYSTEM_B)
    assert cached(ask(server.base, SYSTEM_A)) < 20
    assert server.metric("slm_prompt_cache_restores") == 0


def test_snapshots_survive_a_restart_and_die_with_the_model(start_server, tiny_model,
                                                            tmp_path):
    directory = tmp_path / "prompt-cache"
    config = f'[prompt_cache]\ndir = "{directory}"\n'
    first = start_server(tiny_model, config)
    answer = ask(first.base, SYSTEM_A)
    assert first.stop() == 0
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    files = list((directory / sha).glob("*.kv"))
    assert len(files) == 1 and not list((directory / sha).glob("*.tmp"))

    second = start_server(tiny_model, config)
    restored = ask(second.base, SYSTEM_A)
    assert cached(restored) == restored["usage"]["prompt_tokens"] - 1
    assert text(restored) == text(answer)
    assert second.stop() == 0

    other = write_tiny_model(tmp_path / "other.gguf", seed=7)
    third = start_server(other, config)
    assert not (directory / sha).exists()  # another model: the old snapshots are gone
    assert cached(ask(third.base, SYSTEM_A)) == 0


def test_a_damaged_snapshot_file_is_dropped(start_server, tiny_model, tmp_path):
    directory = tmp_path / "prompt-cache"
    config = f'[prompt_cache]\ndir = "{directory}"\n'
    first = start_server(tiny_model, config)
    ask(first.base, SYSTEM_A)
    first.stop()
    (snapshot,) = directory.glob("*/*.kv")
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    second = start_server(tiny_model, config)
    reply = ask(second.base, SYSTEM_A)
    assert cached(reply) == 0
    assert "prompt cache" in second.log()


def blob(n: int, fill: int = 1) -> bytearray:
    return bytearray([fill]) * n


def test_memory_bound_lru_and_prefix_replacement(tmp_path):
    cache = PromptCache("a" * 64, memory_bytes=1000, min_tokens=2, directory=tmp_path,
                        disk_bytes=1500)
    cache.add([1, 2, 3], None, blob(400))
    cache.add([1, 2, 3, 4, 5], None, blob(400))  # extends [1, 2, 3]: replaces it
    assert [s.tokens for s in cache._memory.values()] == [(1, 2, 3, 4, 5)]
    cache.add([7, 8, 9], "lora", blob(400))
    cache.add([4, 4, 4], None, blob(400))  # over 1000 bytes: the oldest goes to disk
    assert cache.memory_used == 800
    on_disk = list((tmp_path / ("a" * 64)).glob("*.kv"))
    assert len(on_disk) == 1
    snap, n = cache.best([1, 2, 3, 4, 5, 6], None)
    assert n == 5 and snap.state is None and cache.state_of(snap) == blob(400)
    assert cache.best([7, 8, 9, 10], None) == (None, 0)  # computed with another adapter
    assert cache.best([7, 8, 9, 10], "lora")[1] == 3
    assert cache.best([1, 2], None)[1] == 1  # the last token is always decoded
    cache.add([5, 5, 5], None, blob(400))
    cache.add([6, 6, 6], None, blob(400))  # disk holds at most 1500 bytes: the oldest goes
    assert sum(s.size for s in cache._disk.values()) <= 1500
    assert cache.persist() >= 1
    reopened = PromptCache("a" * 64, memory_bytes=1000, min_tokens=2, directory=tmp_path,
                           disk_bytes=1500)
    assert {s.tokens for s in reopened._disk.values()} == {s.tokens for s in
                                                          cache._disk.values()}
    header = json.loads(next((tmp_path / ("a" * 64)).glob("*.kv")).read_bytes()
                        .split(b"\n")[1])
    assert header["model_sha256"] == "a" * 64


def test_the_cache_takes_only_what_the_budget_leaves(tiny_model: Path, tmp_path):
    config = tmp_path / "slm.toml"
    config.write_text("[prompt_cache]\nmemory_mb = 64\n")
    roomy = load_settings(config)
    assert prompt_cache_bytes(roomy, tiny_model, 4096) == 64_000_000
    config.write_text("[prompt_cache]\nmemory_mb = 64\n[memory]\nbudget_mb = 120\n")
    tight = load_settings(config)
    left = prompt_cache_bytes(tight, tiny_model, 4096)
    assert 0 < left < 64_000_000
    config.write_text("[memory]\nbudget_mb = 60\n")
    assert prompt_cache_bytes(load_settings(config), tiny_model, 4096) == 0


def test_a_changed_adapter_under_the_same_name_does_not_reuse_snapshots(
        start_server, tiny_model, tmp_path):
    from support.tiny_model import write_tiny_lora

    directory = tmp_path / "prompt-cache"

    def config(lora: Path) -> str:
        digest = hashlib.sha256(lora.read_bytes()).hexdigest()
        base = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
        return (f'[prompt_cache]\ndir = "{directory}"\n[[adapter]]\nname = "pirate"\n'
                f'file = "{lora}"\nsha256 = "{digest}"\nbase_sha256 = "{base}"\n')

    def ask_adapted(base: str) -> dict:
        return httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": f"{TINY_ID}:pirate", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM_A},
                         {"role": "user", "content": "hello"}]}).json()

    first = start_server(tiny_model, config(write_tiny_lora(tmp_path / "a.gguf", seed=1)))
    ask_adapted(first.base)
    first.stop()
    same = start_server(tiny_model, config(tmp_path / "a.gguf"))
    assert cached(ask_adapted(same.base)) > 1000
    same.stop()
    changed = start_server(tiny_model, config(write_tiny_lora(tmp_path / "b.gguf", seed=2)))
    assert cached(ask_adapted(changed.base)) == 0
