"""The real quantised default model (SmolLM2-135M-Instruct Q4_1) through the HTTP API.

The tiny F32 model cannot catch quantised-kernel crashes; this one can.
"""

import httpx
import pytest
from slm.model.file import DEFAULT_MODEL_SHA256

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def default_server(start_server):
    return start_server(None, "[model]\nctx = 2048\n")


def test_default_model_is_verified_and_listed(default_server):
    model = httpx.get(default_server.base + "/v1/models").json()["data"][0]
    assert model["id"] == "SmolLM2-135M-Instruct.Q4_1"
    assert model["sha256"] == DEFAULT_MODEL_SHA256


def test_default_model_answers_a_simple_question(default_server):
    r = httpx.post(default_server.base + "/v1/chat/completions", timeout=120, json={
        "model": "SmolLM2-135M-Instruct.Q4_1", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user",
                      "content": "What is the capital of France? Answer in one word."}]})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_default_model_streams(default_server):
    with httpx.stream("POST", default_server.base + "/v1/chat/completions", timeout=120, json={
        "model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 16, "stream": True, "seed": 1,
        "messages": [{"role": "user", "content": "Say hello."}]}) as r:
        lines = [x for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 3


def test_empty_prompt_is_400_on_a_model_without_bos(default_server):
    r = httpx.post(default_server.base + "/v1/completions", timeout=60, json={
        "model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "", "max_tokens": 4})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"
