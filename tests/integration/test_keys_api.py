"""/v1/keys: an admin key makes, lists and revokes keys over the API; the new key is
shown once, never its hash; refusals in OpenAI's shape with the right status."""

from __future__ import annotations

from pathlib import Path

import httpx
from slm.access.keys import KeyStore, Scope
from support.server import TINY_ID, bearer

CHAT = {"model": TINY_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def test_an_admin_key_makes_lists_and_revokes_keys(start_server, tiny_model,
                                                   tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    admin = store.create("ops", frozenset({Scope.ADMIN}))
    app = store.create("app", frozenset({Scope.INFERENCE}))
    server = start_server(tiny_model, f'[server]\nkey_store = "{store.path}"\n')
    keys = server.base + "/v1/keys"

    made = httpx.post(keys, headers=bearer(admin), json={
        "name": "billing-bot", "scopes": ["inference"], "rpm": 30, "tokens_per_day": 5000})
    assert made.status_code == 201, made.text
    card = made.json()
    new_key = card.pop("key")
    assert new_key.startswith("slm-") and card["name"] == "billing-bot"
    assert (card["rpm"], card["tokens_per_day"], card["revoked"]) == (30, 5000, None)
    assert httpx.post(server.base + "/v1/chat/completions", json=CHAT,
                      headers=bearer(new_key)).status_code == 200

    listed = httpx.get(keys, headers=bearer(admin))
    assert listed.status_code == 200
    assert {k["name"] for k in listed.json()["data"]} == {"ops", "app", "billing-bot"}
    assert new_key not in listed.text and "sha256" not in listed.text

    taken = httpx.post(keys, headers=bearer(admin), json={"name": "app"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "key_exists"
    for bad in ({"name": "Bad Name"}, {"name": "x", "scopes": ["root"]},
                {"name": "x", "scopes": []}, {"name": "x", "rpm": 0},
                {"name": "x", "scope": ["admin"]}):  # a typo is refused, not ignored
        refused = httpx.post(keys, headers=bearer(admin), json=bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(keys, headers=bearer(app), json={"name": "y"}).status_code == 403
    assert httpx.get(keys, headers=bearer(app)).status_code == 403

    revoked = httpx.delete(keys + "/billing-bot", headers=bearer(admin))
    assert revoked.status_code == 200 and revoked.json()["revoked"]
    assert httpx.post(server.base + "/v1/chat/completions", json=CHAT,
                      headers=bearer(new_key)).status_code == 401
    again = httpx.delete(keys + "/billing-bot", headers=bearer(admin))
    assert again.status_code == 409 and again.json()["error"]["code"] == "key_revoked"
    unknown = httpx.delete(keys + "/nobody", headers=bearer(admin))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "key_not_found"
    itself = httpx.delete(keys + "/ops", headers=bearer(admin))
    assert itself.status_code == 400 and "cannot revoke itself" in itself.text
    assert [k.name for k in KeyStore(store.path).keys() if k.revoked] == ["billing-bot"]
