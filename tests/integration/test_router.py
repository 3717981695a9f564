"""Sanitise → route → rehydrate through real HTTP upstreams on loopback.

Tier C is the scriptable test upstream (tests/upstream_server.py); tier B is a second real
Doorman. Every request here goes through a real `slm serve` process.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.server import EOG_BIAS, TINY_ID, free_port
from support.upstream_server import Upstream

EMAIL, CARD = "alice@example.com", "4111 1111 1111 1111"
SECRET_TEXT = f"Mail {EMAIL} about card {CARD} today."


def upstream_table(name: str, up: Upstream | str, *, tier: str = "C", models: str = "ext",
                   **extra: object) -> str:
    url = up.base if isinstance(up, Upstream) else up
    lines = [f'[[upstream]]\nname = "{name}"\ntier = "{tier}"\nurl = "{url}"\n'
             f'models = ["{models}"]\n']
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}\n")
    return "".join(lines)


@pytest.fixture
def upstream():
    up = Upstream().start()
    yield up
    up.stop()


def chat(server, content: str = SECRET_TEXT, model: str = "ext", **extra):
    return httpx.post(server.base + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": content}], **extra})


def stream_chat(server, content: str = SECRET_TEXT, model: str = "ext", **extra):
    """(content deltas, tool-call argument deltas, events, response headers)."""
    deltas, args, events = [], [], []
    with httpx.stream("POST", server.base + "/v1/chat/completions", timeout=60, json={
            "model": model, "stream": True,
            "messages": [{"role": "user", "content": content}], **extra}) as r:
        headers = r.headers
        for line in r.iter_lines():
            if not line:
                continue
            if not line.startswith("data: ") or line == "data: [DONE]":
                events.append(line)
                continue
            obj = json.loads(line[6:])
            events.append(obj)
            for choice in obj.get("choices", []):
                delta = choice.get("delta", {})
                if delta.get("content"):
                    deltas.append(delta["content"])
                for call in delta.get("tool_calls") or []:
                    args.append(call["function"]["arguments"])
    return deltas, args, events, headers


def records(ledger: Path, n: int, timeout: float = 10) -> list[dict]:
    end = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(ledger)
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
        conn.close()
        if len(rows) >= n or time.monotonic() > end:
            return rows
        time.sleep(0.05)


# -- sanitise and rehydrate -------------------------------------------------------------


def test_tier_c_receives_placeholders_and_the_answer_gets_the_originals(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream, model="up-model"))
    r = chat(server)
    assert r.status_code == 200, r.text
    assert r.headers["x-slm-tier"] == "C" and r.headers["x-slm-upstream"] == "ext-api"
    assert r.json()["choices"][0]["message"]["content"] == SECRET_TEXT
    sent = upstream.completions[-1]
    assert sent.body["model"] == "up-model"
    wire = json.dumps(sent.body)
    assert EMAIL not in wire and CARD not in wire and "example.com" not in wire
    placeholders = sent.body["messages"][0]["content"]
    assert "[EMAIL_" in placeholders and "[CREDIT_CARD_" in placeholders
    row = records(server.ledger, 1)[-1]
    assert (row["tier"], row["model"], row["model_sha256"]) == ("C", "up-model", None)
    assert json.loads(row["entities"]) == ["CREDIT_CARD", "EMAIL"]


def test_streaming_rehydrates_placeholders_split_across_chunks(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.chunk_chars = 3  # every placeholder is cut into several chunks
    deltas, _, events, headers = stream_chat(server)
    assert headers["x-slm-tier"] == "C"
    assert "".join(deltas) == SECRET_TEXT
    assert events[-1] == "data: [DONE]"
    # one chunk out per chunk in: the stream is not collapsed into one write
    sent = upstream.completions[-1].body["messages"][0]["content"]
    assert len([e for e in events if isinstance(e, dict)]) == -(-len(sent) // 3) + 1
    # text outside placeholders is never held back more than a placeholder's length
    assert deltas[0] == "Mai" and max(len(d) for d in deltas) <= len(CARD) + 3


def test_tool_call_arguments_are_rehydrated(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.tool_call = True
    text = 'say "hi" to bob@example.org'
    r = chat(server, text, tools=[{"type": "function", "function": {"name": "send"}}])
    call = r.json()["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"to": text}
    _, args, _, _ = stream_chat(server, text)
    assert json.loads('"' + "".join(args) + '"') == text
    assert "bob@example.org" not in json.dumps([r.body for r in upstream.completions])


def test_concurrent_requests_never_share_placeholders(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.chunk_chars = 2
    results: dict[int, str] = {}

    def one(i: int) -> None:
        deltas, *_ = stream_chat(server, f"user{i}@example.com key sk-proj-{i}{'x' * 30}")
        results[i] = "".join(deltas)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"user{i}@example.com key sk-proj-{i}{'x' * 30}" for i in range(6)}
    # another request's placeholder is plain text to this one: it stays as is
    foreign = upstream.completions[0].body["messages"][0]["content"].split()[0]
    assert foreign.startswith("[EMAIL_")
    r = chat(server, f"what is {foreign}?")
    assert r.json()["choices"][0]["message"]["content"] == f"what is {foreign}?"


# -- routing, retries, fallback, breaker --------------------------------------------------


def test_models_lists_every_tier_and_urls_are_refused(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    ids = [m["id"] for m in httpx.get(server.base + "/v1/models").json()["data"]]
    assert ids == [TINY_ID, "ext"]
    r = chat(server, model="https://evil.example/v1/gpt")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "upstream_not_allowed"
    assert chat(server, model="nope").status_code == 404
    assert len(upstream.completions) == 0


def test_redirects_are_never_followed(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.script.extend(["redirect:http://127.0.0.2:9/v1/chat/completions"])
    r = chat(server)
    assert r.status_code == 403 and r.json()["error"]["code"] == "upstream_not_allowed"
    assert len(upstream.completions) == 1


def test_retry_honours_retry_after_and_a_dropped_connection_is_retried(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.script.extend(["rate_limit:1", "drop"])
    began = time.monotonic()
    r = chat(server)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == SECRET_TEXT
    assert time.monotonic() - began >= 1.0  # waited for Retry-After
    assert len(upstream.completions) == 3
    assert server.metric("slm_upstream_retries_total") == 2


def test_retry_after_beyond_the_limit_fails_with_429(start_server, tiny_model, upstream):
    server = start_server(tiny_model, "[router]\nmax_retry_after_s = 2\n"
                          + upstream_table("ext-api", upstream))
    upstream.script.extend(["rate_limit:120"])
    r = chat(server)
    assert r.status_code == 429 and r.headers["retry-after"] == "120"
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    assert len(upstream.completions) == 1


def test_upstream_4xx_is_passed_on_without_retry(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.script.extend(["reject"])
    r = chat(server)
    assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"
    assert "bad request upstream" in r.json()["error"]["message"]
    assert len(upstream.completions) == 1


def test_an_error_inside_a_200_is_an_upstream_error(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream, max_retries=0))
    upstream.script.extend(["error_200", "error_200"])
    r = chat(server)
    assert r.status_code == 502 and "model overloaded" in r.json()["error"]["message"]
    r = httpx.post(server.base + "/v1/chat/completions", timeout=60, json={
        "model": "ext", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and "model overloaded" in r.json()["error"]["message"]
    assert [row["status"] for row in records(server.ledger, 2)] == [502, 502]


def test_failing_upstream_falls_back_to_tier_a(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table(
        "ext-api", upstream, max_retries=1, fallback=["A"]))
    upstream.script.extend(["fail", "fail:503"])
    r = chat(server, "hello", max_tokens=3, logit_bias=EOG_BIAS)
    assert r.status_code == 200
    assert r.headers["x-slm-tier"] == "A" and "x-slm-upstream" not in r.headers
    assert r.json()["usage"]["completion_tokens"] == 3
    assert len(upstream.completions) == 2
    assert records(server.ledger, 1)[-1]["tier"] == "A"


def test_breaker_opens_then_half_open_probe_closes_it(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table(
        "ext-api", upstream, max_retries=0, breaker_failures=2, breaker_cooldown_s=1.0))
    state = 'slm_upstream_breaker_state{upstream="ext-api"}'
    upstream.script.extend(["fail", "fail"])
    assert [chat(server).status_code for _ in range(2)] == [502, 502]
    assert server.metric(state) == 1
    r = chat(server)  # refused at once: the upstream is not called
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
    assert len(upstream.completions) == 2
    time.sleep(1.1)
    assert server.metric(state) == 2  # half-open: the next call is the probe
    assert chat(server).status_code == 200
    assert server.metric(state) == 0 and len(upstream.completions) == 3


def test_first_byte_timeout_is_a_504_and_the_upstream_call_is_closed(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table(
        "ext-api", upstream, max_retries=0, first_byte_timeout_s=0.5))
    upstream.script.extend(["stall"])
    r = chat(server, stream=True)  # without streaming, the first byte is the whole answer
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    wait_for(lambda: upstream.completions[0].disconnected_at is not None)


def test_total_timeout_ends_a_stalled_stream_with_an_error_event(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table(
        "ext-api", upstream, total_timeout_s=1.5))
    upstream.script.extend(["stream_stall:2"])
    deltas, _, events, _ = stream_chat(server, "abcdefghij")
    assert deltas == ["abc", "def"]
    assert events[-1]["error"]["code"] == "upstream_timeout"
    wait_for(lambda: upstream.completions[0].disconnected_at is not None)
    assert records(server.ledger, 1)[-1]["status"] == 504


def test_request_deadline_bounds_upstream_calls(start_server, tiny_model, upstream):
    server = start_server(tiny_model, "[server]\nrequest_timeout_s = 1.0\n"
                          + upstream_table("ext-api", upstream))
    upstream.script.extend(["stall"])
    began = time.monotonic()
    r = chat(server)
    assert r.status_code == 504 and time.monotonic() - began < 10


def test_client_disconnect_cancels_the_upstream_request(start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.script.extend(["stall"])
    with pytest.raises(httpx.ReadTimeout):
        chat_timeout = httpx.Timeout(60, read=1.0)
        httpx.post(server.base + "/v1/chat/completions", timeout=chat_timeout, json={
            "model": "ext", "messages": [{"role": "user", "content": "hi"}]})
    left = time.monotonic()
    wait_for(lambda: upstream.completions[0].disconnected_at is not None)
    assert upstream.completions[0].disconnected_at - left < 5
    # and mid-stream: the client reads two chunks, then goes away
    upstream.script.extend(["stream_stall:2"])
    with httpx.stream("POST", server.base + "/v1/chat/completions", timeout=60, json={
            "model": "ext", "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
    assert sum(line.startswith("data: ") for line in got) == 2
    left = time.monotonic()
    wait_for(lambda: upstream.completions[1].disconnected_at is not None)
    assert upstream.completions[1].disconnected_at - left < 5
    rows = records(server.ledger, 2)
    assert [row["status"] for row in rows] == [499, 499]


def test_stream_broken_off_by_the_upstream_ends_with_an_error_event(
        start_server, tiny_model, upstream):
    server = start_server(tiny_model, upstream_table("ext-api", upstream))
    upstream.script.extend(["stream_drop:2"])
    deltas, _, events, _ = stream_chat(server, "abcdefghij")
    assert deltas == ["abc", "def"]
    assert "error" in events[-1] and events[-1]["error"]["type"] == "upstream_error"
    assert records(server.ledger, 1)[-1]["status"] == 502


def test_unhealthy_upstream_is_skipped_until_it_recovers(start_server, tiny_model, upstream):
    server = start_server(tiny_model, "[router]\nhealth_interval_s = 0.2\n" + upstream_table(
        "ext-api", upstream, health_path="/health"))
    healthy = 'slm_upstream_healthy{upstream="ext-api"}'
    assert chat(server).status_code == 200
    upstream.healthy = False
    wait_for(lambda: server.metric(healthy) == 0)
    r = chat(server)
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
    upstream.healthy = True
    wait_for(lambda: server.metric(healthy) == 1)
    assert chat(server).status_code == 200


# -- tier B: a second Doorman -----------------------------------------------------------


def test_prompt_over_tier_a_context_overflows_to_tier_b(start_server, tiny_model):
    tier_b = start_server(tiny_model, "[ledger]\nstore_prompt = true\n")
    server = start_server(tiny_model, "[model]\nctx = 64\n" + upstream_table(
        "gpu", tier_b.base + "/v1", tier="B", models="burst", model=TINY_ID))
    long_prompt = "carol@example.net " + "word " * 100
    r = chat(server, long_prompt, model=TINY_ID, max_tokens=2, logit_bias=EOG_BIAS)
    assert r.status_code == 200, r.text
    assert r.headers["x-slm-tier"] == "B" and r.headers["x-slm-upstream"] == "gpu"
    seen_by_b = records(tier_b.ledger, 1)[-1]["prompt_text"]
    assert "carol@example.net" not in seen_by_b and "[EMAIL_" in seen_by_b
    assert records(server.ledger, 1)[-1]["tier"] == "B"
    # a short prompt stays on tier A; a client may also name tier B's model directly
    assert chat(server, "hi", model=TINY_ID, max_tokens=1).headers["x-slm-tier"] == "A"
    deltas, _, _, headers = stream_chat(server, "hi", model="burst", max_tokens=2,
                                        logit_bias=EOG_BIAS)
    assert headers["x-slm-tier"] == "B" and len(deltas) >= 1


def test_busy_tier_a_hands_over_to_tier_b(start_server, tiny_model):
    tier_b = start_server(tiny_model)
    server = start_server(tiny_model, "[server]\nqueue_depth = 1\n" + upstream_table(
        "gpu", tier_b.base + "/v1", tier="B", models="burst", model=TINY_ID))
    url = server.base + "/v1/chat/completions"
    long = {"model": TINY_ID, "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 3000, "logit_bias": EOG_BIAS}
    with httpx.Client(timeout=60) as c, c.stream("POST", url, json={**long, "stream": True}):
        waiting = threading.Thread(target=lambda: httpx.post(url, json=long, timeout=120))
        waiting.start()  # the queue's one place
        wait_for(lambda: server.metric("slm_queue_depth") == 1)
        r = chat(server, "hi", model=TINY_ID, max_tokens=2, logit_bias=EOG_BIAS)
        assert r.status_code == 200 and r.headers["x-slm-tier"] == "B"
    waiting.join(120)
    assert server.metric('slm_answered_by_tier_total{tier="B"}') == 1


def test_overflow_without_tier_b_is_a_context_error(start_server, tiny_model):
    server = start_server(tiny_model, "[model]\nctx = 64\n")
    r = chat(server, "word " * 100, model=TINY_ID)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("table, message", [
    (upstream_table("x", "ftp://h/v1"), "url must be http(s)"),
    (upstream_table("x", "http://u:p@h/v1"), "credentials"),
    (upstream_table("x", "http://h/v1", tier="D"), "tier"),
    (upstream_table("x", "http://h/v1") + upstream_table("y", "http://h/v1"),
     "already served"),
    (upstream_table("x", "http://h/v1", fallback=["z"]), "fallback 'z'"),
    (upstream_table("x", "http://h/v1", key_file="/nonexistent/key"), "cannot read"),
    (upstream_table("x", "http://h/v1", colour="red"), "colour"),
    ('[sanitise]\ncustom = { BAD = "(" }\n', "BAD"),
    ('[sanitise]\nentities = ["EMAIL", "SHOE_SIZE"]\n', "SHOE_SIZE"),
])
def test_bad_upstream_or_sanitiser_config_exits_2(tmp_path, tiny_model, table, message):
    from support.server import run_slm

    config = tmp_path / "slm.toml"
    config.write_text(table)
    done = run_slm("serve", "--config", str(config), "--model", str(tiny_model),
                   "--port", str(free_port()), "--ledger-path", str(tmp_path / "l.db"))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def wait_for(condition, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
