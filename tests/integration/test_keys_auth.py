"""Named keys from the key store at work in a running server: scopes (403), revocation
without a restart (401), the ledger naming the key, and a damaged store refusing the start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from slm.access.keys import KeyStore, Scope, parse_scopes
from support.server import TINY_ID, bearer, free_port, run_slm

CHAT = {"model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def test_scopes_revocation_and_the_ledgers_key_name(start_server, tiny_model,
                                                     tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    app = store.create("support-app", frozenset({Scope.INFERENCE}))
    docs = store.create("doc-loader", frozenset({Scope.DOCUMENTS}))
    ops = store.create("ops", parse_scopes("admin"))
    server = start_server(tiny_model, f'[server]\nkey_store = "{store.path}"\n')
    chat, base = server.base + "/v1/chat/completions", server.base

    assert httpx.post(chat, json=CHAT).status_code == 401
    assert httpx.post(chat, json=CHAT, headers=bearer(app)).status_code == 200
    denied = httpx.post(chat, json=CHAT, headers=bearer(docs))
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert "'inference' scope" in denied.json()["error"]["message"]
    assert httpx.get(base + "/metrics", headers=bearer(app)).status_code == 403
    assert httpx.get(base + "/metrics", headers=bearer(ops)).status_code == 200
    assert httpx.get(base + "/v1/documents", headers=bearer(docs)).status_code == 200
    assert httpx.get(base + "/v1/documents", headers=bearer(app)).status_code == 403
    assert httpx.get(base + "/health").status_code == 200

    revoked = run_slm("keys", "--key-store", str(store.path), "revoke", "support-app")
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.post(chat, json=CHAT, headers=bearer(app)).status_code == 401  # no restart

    with sqlite3.connect(server.ledger) as db:
        names = [row[0] for row in db.execute("SELECT api_key_id FROM records ORDER BY id")]
    assert "support-app" in names and app not in str(names)


def test_a_damaged_key_store_stops_the_start(tiny_model, tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text("{broken")
    config = tmp_path / "slm.toml"
    config.write_text(f'[server]\nkey_store = "{tmp_path / "keys.json"}"\n')
    r = run_slm("serve", "--config", str(config), "--model", str(tiny_model),
                "--port", str(free_port()), "--ledger-path", str(tmp_path / "l.db"))
    assert r.returncode == 2 and "not JSON" in r.stderr and r.stderr.count("\n") == 1


def test_a_keys_rates_answer_429_with_retry_after(start_server, tiny_model,
                                                  tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    few = store.create("few-requests", frozenset({Scope.INFERENCE}), rpm=2)
    thrifty = store.create("few-tokens", frozenset({Scope.INFERENCE}), tpm=5)
    server = start_server(tiny_model, f'[server]\nkey_store = "{store.path}"\n')
    chat = server.base + "/v1/chat/completions"
    assert [httpx.post(chat, json=CHAT, headers=bearer(few)).status_code
            for _ in range(3)] == [200, 200, 429]
    over = httpx.post(chat, json=CHAT, headers=bearer(few))
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert httpx.post(chat, json=CHAT, headers=bearer(thrifty)).status_code == 200  # > 5
    assert httpx.post(chat, json=CHAT, headers=bearer(thrifty)).status_code == 429


def test_token_budgets_outlive_a_restart_and_usage_tells_the_key(start_server, tiny_model,
                                                                 tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    daily = store.create("daily", frozenset({Scope.INFERENCE}), tokens_per_day=5, rpm=100)
    other = store.create("docs-only", frozenset({Scope.DOCUMENTS}))
    config = f'[server]\nkey_store = "{store.path}"\n'
    ledger = tmp_path / "ledger.db"
    server = start_server(tiny_model, config, "--ledger-path", str(ledger))
    chat, usage = server.base + "/v1/chat/completions", server.base + "/v1/usage"
    first = httpx.post(chat, json=CHAT, headers=bearer(daily))
    assert first.status_code == 200
    spent = first.json()["usage"]["total_tokens"]
    assert spent > 5
    refused = httpx.post(chat, json=CHAT, headers=bearer(daily))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert 1 <= int(refused.headers["Retry-After"]) <= 86_400
    mine = httpx.get(usage, headers=bearer(daily)).json()
    assert mine["key"] == "daily" and mine["scopes"] == ["inference"]
    assert mine["day"]["tokens"] == spent and mine["day"]["budget"] == 5
    assert mine["day"]["remaining"] == 0 and mine["month"]["budget"] is None
    assert mine["minute"]["rpm"] == 100 and mine["minute"]["requests"] == 3
    assert httpx.get(usage, headers=bearer(other)).json()["day"]["tokens"] == 0  # any scope
    assert httpx.get(usage).status_code == 401
    server.stop()

    again = start_server(tiny_model, config, "--ledger-path", str(ledger))  # the same ledger
    still = httpx.post(again.base + "/v1/chat/completions", json=CHAT, headers=bearer(daily))
    assert still.status_code == 429  # the day's tokens came back from the ledger
    assert httpx.get(again.base + "/v1/usage",
                     headers=bearer(daily)).json()["day"]["tokens"] == spent
