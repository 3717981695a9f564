"""The planner where users meet it: `slm plan`, and `slm serve` refusing, sizing
(``ctx = "auto"``) and guarding its memory budget."""

from __future__ import annotations

import httpx
from slm.config.settings import Settings
from slm.model.planner import largest_context
from support.server import TINY_ID, free_port, run_slm


def test_plan_cli_prints_the_breakdown_and_the_largest_context():
    r = run_slm("plan", "--ctx", "2048", "--budget", "550")
    assert r.returncode == 0, r.stderr
    assert "KV cache" in r.stdout and "47.2 MB" in r.stdout
    assert "largest context within 550 MB: 8192" in r.stdout


def test_service_refuses_a_context_over_budget_naming_the_largest_that_fits(tiny_model):
    r = run_slm("serve", "--model", str(tiny_model), "--port", str(free_port()),
                "--memory-budget-mb", "70", "--ctx", "65536")
    assert r.returncode == 2
    n = largest_context(tiny_model, 70, baseline_mb=Settings().memory_baseline_mb)
    assert f"the largest context that fits is {n}" in r.stderr and n > 0
    assert r.stderr.count("\n") == 1


def test_ctx_auto_serves_the_largest_context_that_fits(start_server, tiny_model):
    server = start_server(tiny_model, '[model]\nctx = "auto"\n[memory]\nbudget_mb = 70\n')
    expected = largest_context(tiny_model, 70, baseline_mb=Settings().memory_baseline_mb)
    model = httpx.get(server.base + "/v1/models").json()["data"][0]
    assert model["context_length"] == expected


def test_over_budget_at_run_time_refuses_new_work_with_503(start_server, tiny_model):
    # The plan (no baseline) fits 10 MB; the real process is bigger: every request is refused.
    server = start_server(tiny_model, "[model]\nctx = 256\n[memory]\nbudget_mb = 10\n"
                                      "baseline_mb = 0\n")
    r = httpx.post(server.base + "/v1/chat/completions", json={
        "model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "memory_budget_exceeded"
    text = httpx.get(server.base + "/metrics").text
    assert "slm_memory_rss_bytes" in text and "slm_memory_budget_bytes 1e+07" in text
