"""Bounded queue (429), client-disconnect cancellation and deadlines (504)."""

import json
import threading
import time

import httpx
from support.server import EOG_BIAS, TINY_ID

USER = [{"role": "user", "content": "hello"}]
LONG = {"model": TINY_ID, "messages": USER, "max_tokens": 4000, "logit_bias": EOG_BIAS}


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_full_queue_answers_429_with_retry_after(start_server, tiny_model):
    server = start_server(tiny_model, "[server]\nqueue_depth = 1\n[model]\nctx = 8192\n")
    url = server.base + "/v1/chat/completions"
    body = {**LONG, "max_tokens": 8000}
    with httpx.Client(timeout=60) as c, c.stream("POST", url, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)  # the first job is running
        waiting = threading.Thread(
            target=lambda: httpx.post(url, json={**body, "max_tokens": 5}, timeout=120))
        waiting.start()
        assert wait_for(lambda: server.metric("slm_queue_depth") == 1)
        refused = httpx.post(url, json=body)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
    waiting.join(60)
    assert server.metric('slm_requests_total{endpoint="chat",status="429"}') == 1


def test_client_disconnect_stops_the_decode_and_frees_the_slot(start_server, tiny_model):
    server = start_server(tiny_model, "[model]\nctx = 8192\n")
    url = server.base + "/v1/chat/completions"
    with httpx.Client(timeout=60) as c, c.stream(
        "POST", url, json={**LONG, "max_tokens": 8000, "stream": True}
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    assert wait_for(lambda: server.metric("slm_requests_cancelled_total") == 1)
    assert wait_for(lambda: server.metric("slm_requests_processing") == 0)
    # The decode stopped early: far fewer tokens than asked were generated.
    assert server.metric("slm_completion_tokens_total") < 8000
    ok = httpx.post(url, json={"model": TINY_ID, "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200


def test_disconnect_while_waiting_in_queue_cancels_the_job(start_server, tiny_model):
    server = start_server(tiny_model, "[model]\nctx = 8192\n")
    url = server.base + "/v1/chat/completions"
    with httpx.Client(timeout=60) as c, c.stream(
        "POST", url, json={**LONG, "max_tokens": 8000, "stream": True}
    ) as running:
        lines = running.iter_lines()  # keep it: a dropped iterator closes the response
        next(lines)
        try:
            httpx.post(url, json={**LONG, "max_tokens": 50}, timeout=0.5)
        except httpx.ReadTimeout:
            pass  # the client gives up while its request waits
    assert wait_for(lambda: server.metric("slm_requests_cancelled_total") == 2)
    assert server.metric("slm_completion_tokens_total") < 8000


def test_deadline_gives_504(start_server, tiny_model):
    server = start_server(tiny_model, "[server]\nrequest_timeout_s = 1.0\n[model]\nctx = 8192\n")
    url = server.base + "/v1/chat/completions"
    r = httpx.post(url, json={**LONG, "max_tokens": 8000}, timeout=30)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    ok = httpx.post(url, json={"model": TINY_ID, "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200


def test_deadline_mid_stream_ends_with_an_error_event(start_server, tiny_model):
    server = start_server(tiny_model, "[server]\nrequest_timeout_s = 1.0\n[model]\nctx = 8192\n")
    events = []
    with httpx.stream("POST", server.base + "/v1/chat/completions",
                      json={**LONG, "max_tokens": 8000, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["code"] == "deadline_exceeded"


def test_clients_that_left_the_queue_do_not_hold_its_places(start_server, tiny_model):
    server = start_server(tiny_model, "[server]\nqueue_depth = 1\n[model]\nctx = 8192\n")
    url = server.base + "/v1/chat/completions"
    with httpx.Client(timeout=60) as c, c.stream(
        "POST", url, json={**LONG, "max_tokens": 8000, "stream": True}
    ) as running:
        lines = running.iter_lines()
        next(lines)
        try:
            httpx.post(url, json={**LONG, "max_tokens": 5}, timeout=0.5)
        except httpx.ReadTimeout:
            pass  # this client left while waiting
        assert wait_for(lambda: server.metric("slm_queue_depth") == 0)
        admitted = {}
        waiter = threading.Thread(target=lambda: admitted.update(
            r=httpx.post(url, json={**LONG, "max_tokens": 5}, timeout=60)))
        waiter.start()
        assert wait_for(lambda: server.metric("slm_queue_depth") == 1)
    waiter.join(60)
    assert admitted["r"].status_code == 200


def test_sigterm_lets_streams_run_for_the_grace_period_then_ends_them(
    start_server, tiny_model
):
    server = start_server(tiny_model, "[server]\nshutdown_grace_s = 1\n[model]\nctx = 16384\n")
    events: list[str] = []

    def read() -> None:
        with httpx.stream("POST", server.base + "/v1/chat/completions", timeout=60,
                          json={**LONG, "max_tokens": 16000, "stream": True}) as r:
            events.extend(line[6:] for line in r.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=read)
    reader.start()
    assert wait_for(lambda: len(events) > 0 or server.metric("slm_requests_processing") == 1)
    began = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - began
    reader.join(30)
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    assert 1 <= took < 10
    assert "Traceback" not in server.log()


def test_stream_coalescing_groups_tokens_but_sends_the_first_at_once(start_server, tiny_model):
    def chunks(server) -> list[str]:
        body = {"model": TINY_ID, "messages": USER, "max_tokens": 60, "temperature": 0,
                "logit_bias": EOG_BIAS, "stream": True}
        with httpx.stream("POST", server.base + "/v1/chat/completions", json=body,
                          timeout=60) as r:
            data = [json.loads(x[6:]) for x in r.iter_lines()
                    if x.startswith("data: {")]
        return [d["choices"][0]["delta"]["content"] for d in data
                if d["choices"] and d["choices"][0]["delta"].get("content")]

    each = chunks(start_server(tiny_model, "[server]\nstream_coalesce_ms = 0\n"))
    grouped = chunks(start_server(tiny_model, "[server]\nstream_coalesce_ms = 5000\n"))
    assert "".join(grouped) == "".join(each)
    assert len(each) > 20
    assert len(grouped) == 2  # the first token alone, then the rest in one window
    assert grouped[0] == each[0]
