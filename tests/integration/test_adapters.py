"""LoRA adapters on a real `slm serve`: a generated GGUF LoRA for the tiny model, selected
per request as `tiny:<adapter>`, listed, refused when made for another base model, and
checked (file, sha256, tensors) before the service starts."""

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from support.server import TINY_ID, run_slm
from support.tiny_model import write_tiny_lora

OTHER_BASE = "2" * 64


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def adapter_table(name: str, path: Path, base: str, **extra) -> str:
    text = (f'[[adapter]]\nname = "{name}"\nfile = "{path}"\nsha256 = "{sha256(path)}"\n'
            f'base_sha256 = "{base}"\n')
    return text + "".join(f"{k} = {v}\n" for k, v in extra.items())


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    return write_tiny_lora(tmp_path_factory.mktemp("lora") / "pirate.gguf")


@pytest.fixture(scope="module")
def adapter_server(start_server, tiny_model, lora):
    config = (adapter_table("pirate", lora, sha256(tiny_model))
              + adapter_table("elsewhere", lora, OTHER_BASE))
    return start_server(tiny_model, config)


def answer(base: str, model: str, **extra) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 12, "temperature": 0, **extra})


def test_listed_in_adapters_and_models(adapter_server, tiny_model, lora):
    listed = httpx.get(adapter_server.base + "/v1/adapters").json()
    assert listed["model_sha256"] == sha256(tiny_model)
    cards = {a["name"]: a for a in listed["data"]}
    assert cards["pirate"]["usable"] and not cards["elsewhere"]["usable"]
    assert cards["pirate"]["sha256"] == sha256(lora)
    ids = [m["id"] for m in httpx.get(adapter_server.base + "/v1/models").json()["data"]]
    assert ids[:2] == [TINY_ID, f"{TINY_ID}:pirate"]
    assert f"{TINY_ID}:elsewhere" not in ids
    card = httpx.get(f"{adapter_server.base}/v1/models/{TINY_ID}:pirate").json()
    assert (card["parent"], card["adapter"]) == (TINY_ID, "pirate")


def test_the_adapter_changes_the_answer_only_when_asked(adapter_server):
    """Greedy answers: the adapter's differs from the base model's; switching back and
    forth gives each the same answer again (the KV cache never mixes the two)."""
    base = adapter_server.base
    plain1 = answer(base, TINY_ID).json()
    adapted1 = answer(base, f"{TINY_ID}:pirate").json()
    plain2 = answer(base, TINY_ID).json()
    adapted2 = answer(base, f"{TINY_ID}:pirate", stream=False).json()
    text = [r["choices"][0]["message"]["content"] for r in (plain1, adapted1, plain2, adapted2)]
    assert text[0] == text[2]
    assert text[1] == text[3]
    assert text[0] != text[1]
    assert adapted1["model"] == f"{TINY_ID}:pirate" and plain1["model"] == TINY_ID
    streamed = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": f"{TINY_ID}:pirate", "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 12, "temperature": 0, "stream": True})
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text[1]


def test_refused_for_another_base_or_unknown(adapter_server):
    other = answer(adapter_server.base, f"{TINY_ID}:elsewhere")
    assert other.status_code == 400
    assert other.json()["error"]["code"] == "adapter_base_mismatch"
    assert OTHER_BASE[:12] in other.json()["error"]["message"]
    unknown = answer(adapter_server.base, f"{TINY_ID}:nope")
    assert unknown.status_code == 404
    assert "tiny:pirate" in unknown.json()["error"]["message"]
    card = httpx.get(f"{adapter_server.base}/v1/models/{TINY_ID}:elsewhere")
    assert card.status_code == 400


@pytest.mark.parametrize("case", ["missing", "sha256", "not a lora", "wrong shapes"])
def test_a_bad_adapter_stops_the_start(case, tiny_model, lora, tmp_path):
    path = lora
    table = adapter_table("bad", lora, sha256(tiny_model))
    if case == "missing":
        table = table.replace(str(lora), str(tmp_path / "gone.gguf"))
        expected = "file not found"
    elif case == "sha256":
        table = table.replace(sha256(lora), "0" * 64)
        expected = "expected " + "0" * 64
    elif case == "not a lora":
        table = adapter_table("bad", tiny_model, sha256(tiny_model))
        expected = "not a GGUF LoRA adapter"
    else:
        path = write_tiny_lora(tmp_path / "narrow.gguf", n_embd=32)
        table = adapter_table("bad", path, sha256(tiny_model))
        expected = "could not apply"
    config = tmp_path / "slm.toml"
    config.write_text(table)
    done = run_slm("serve", "--config", str(config), "--model", str(tiny_model),
                   "--port", "0", "--ledger-path", str(tmp_path / "ledger.db"))
    assert done.returncode == 1, done.stderr
    assert "adapter 'bad'" in done.stderr and expected in done.stderr, done.stderr


def test_adapter_tables_are_validated(tmp_path):
    config = tmp_path / "slm.toml"
    config.write_text('[[adapter]]\nname = "Bad Name"\nfile = "x"\nsha256 = "x"\n'
                      'base_sha256 = "y"\n')
    done = run_slm("config", "show", "--config", str(config))
    assert done.returncode == 2
    assert "adapter 'Bad Name'" in done.stderr
