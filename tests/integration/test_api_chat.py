"""Chat and text completions over real HTTP on the tiny model."""

import json

import pytest
from support.server import EOG_BIAS, TINY_ID

USER = [{"role": "user", "content": "hello world"}]


def chat(client, **kw):
    body = {"model": TINY_ID, "messages": USER, **kw}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream_chunks(client, path, body):
    chunks, done = [], False
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line[len("data: "):]
            assert not done, "nothing may follow [DONE]"
            if data == "[DONE]":
                done = True
                continue
            chunks.append(json.loads(data))
    assert done
    return chunks


def streamed_text(chunks):
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )


def test_chat_response_shape_and_usage(client):
    out = chat(client, max_tokens=8, temperature=0, logit_bias=EOG_BIAS)
    assert out["object"] == "chat.completion"
    assert out["model"] == TINY_ID
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client):
    a = chat(client, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]
    b = chat(client, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]
    assert a == b
    s1 = chat(client, max_tokens=16, temperature=1.0, seed=7)["choices"][0]["message"]
    s2 = chat(client, max_tokens=16, temperature=1.0, seed=7)["choices"][0]["message"]
    s3 = chat(client, max_tokens=16, temperature=1.0, seed=8)["choices"][0]["message"]
    assert s1 == s2
    assert s1 != s3 or s1 != a


def test_messages_are_rendered_through_the_chat_template(client):
    one = chat(client, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    two = chat(client, max_tokens=1, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "hi"},
    ])
    # ChatML: each turn adds <|im_start|>role\n ... <|im_end|>\n around its content.
    assert two["usage"]["prompt_tokens"] > one["usage"]["prompt_tokens"] + 6


def test_stream_matches_non_stream_and_ends_with_done(client):
    body = {"model": TINY_ID, "messages": USER, "max_tokens": 24, "temperature": 0,
            "logit_bias": EOG_BIAS}
    whole = chat(client, **{k: v for k, v in body.items() if k not in ("model", "messages")})
    chunks = stream_chunks(client, "/v1/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(chunks) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "usage" not in chunks[-1]


def test_stream_include_usage_adds_a_final_usage_chunk(client):
    body = {"model": TINY_ID, "messages": USER, "max_tokens": 5, "logit_bias": EOG_BIAS,
            "stream_options": {"include_usage": True}}
    chunks = stream_chunks(client, "/v1/chat/completions", body)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


def _greedy(client, n=48):
    return chat(client, max_tokens=n, temperature=0, logit_bias=EOG_BIAS)["choices"][0][
        "message"]["content"]


def _pick_stop(text):
    """A stop string that occurs in the text, not at its start."""
    for start in range(len(text) // 3, len(text) - 2):
        candidate = text[start:start + 2]
        if text.find(candidate) == start and candidate.strip():
            return candidate
    pytest.skip("greedy output too uniform to choose a stop string")


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_cuts_the_answer_before_the_stop_string(client, as_list):
    text = _greedy(client)
    stop = _pick_stop(text)
    out = chat(client, max_tokens=48, temperature=0, logit_bias=EOG_BIAS,
               stop=[stop, "\x00never"] if as_list else stop)
    assert out["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_stop_applies_to_streamed_text(client):
    text = _greedy(client)
    stop = _pick_stop(text)
    body = {"model": TINY_ID, "messages": USER, "max_tokens": 48, "temperature": 0,
            "logit_bias": EOG_BIAS, "stop": [stop]}
    chunks = stream_chunks(client, "/v1/chat/completions", body)
    assert streamed_text(chunks) == text[: text.find(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_json_schema_response_format_is_enforced(client):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    for seed in range(3):
        out = chat(client, max_tokens=64, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
        value = json.loads(out["choices"][0]["message"]["content"])
        assert set(value) == {"ok", "n"}
        assert isinstance(value["ok"], bool) and isinstance(value["n"], int)
        assert out["choices"][0]["finish_reason"] == "stop"


def test_json_object_response_format_gives_an_object(client):
    out = chat(client, max_tokens=200, temperature=0,
               response_format={"type": "json_object"})
    if out["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)
    else:  # cut by max_tokens: still a JSON object's beginning
        assert out["choices"][0]["message"]["content"].lstrip().startswith("{")


def test_text_completion(client):
    r = client.post("/v1/completions", json={
        "model": TINY_ID, "prompt": "the capital of", "max_tokens": 6, "temperature": 0,
        "logit_bias": EOG_BIAS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 6
    chunks = stream_chunks(client, "/v1/completions", {
        "model": TINY_ID, "prompt": "the capital of", "max_tokens": 6, "temperature": 0,
        "logit_bias": EOG_BIAS})
    assert "".join(c["choices"][0]["text"] for c in chunks) == out["choices"][0]["text"]


def test_models_lists_the_loaded_model_with_context_and_sha256(client, tiny_model):
    import hashlib

    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [TINY_ID]
    assert data[0]["context_length"] == 4096
    assert data[0]["sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert client.get(f"/v1/models/{TINY_ID}").json()["id"] == TINY_ID


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    chat(client, max_tokens=3, logit_bias=EOG_BIAS)
    text = client.get("/metrics").text
    for name in ("slm_requests_total", "slm_queue_depth", "slm_prompt_tokens_total",
                 "slm_completion_tokens_total", "slm_prompt_tokens_per_second",
                 "slm_generation_tokens_per_second", "slm_time_to_first_token_seconds_bucket"):
        assert name in text
    assert 'slm_requests_total{endpoint="chat",status="200"}' in text


def test_prompt_prefix_is_reused_between_requests(client):
    chat(client, max_tokens=2, messages=[{"role": "user", "content": "red green blue"}])
    out = chat(client, max_tokens=2, messages=[{"role": "user", "content": "red green blue"}])
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_frequency_and_presence_penalties_change_greedy_output(client):
    plain = chat(client, max_tokens=48, temperature=0, logit_bias=EOG_BIAS)
    penalised = chat(client, max_tokens=48, temperature=0, logit_bias=EOG_BIAS,
                     frequency_penalty=2.0, presence_penalty=2.0)
    assert plain["choices"][0]["message"]["content"] != (
        penalised["choices"][0]["message"]["content"])
