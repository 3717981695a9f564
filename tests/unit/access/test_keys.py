"""The key store: keys shown once and kept as hashes, scopes and limits, revocation seen by
a running reader without a restart, atomic and locked writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from slm.access.keys import ApiKey, KeyStore, KeyStoreError, Scope, hash_key, parse_scopes

INFERENCE = frozenset({Scope.INFERENCE})


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    secret = store.create("billing-bot", INFERENCE, rpm=60, tpm=10_000)
    assert secret.startswith("slm-") and len(secret) == 4 + 43
    text = store.path.read_text()
    assert secret not in text and secret[4:] not in text and hash_key(secret) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    (key,) = store.keys()
    assert (key.name, key.scopes, key.rpm, key.tpm, key.active) == (
        "billing-bot", INFERENCE, 60, 10_000, True)
    assert store.authenticate(secret) == key
    assert store.authenticate(secret + "x") is None and store.authenticate("") is None


def test_revocation_is_seen_by_a_running_reader_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    serving = KeyStore(path)  # the service's instance
    secret = KeyStore(path).create("ops", frozenset(Scope))
    assert serving.authenticate(secret) is not None
    revoked = KeyStore(path).revoke("ops")  # `slm keys revoke` in another process
    assert revoked.revoked is not None
    assert serving.authenticate(secret) is None
    (listed,) = serving.keys()
    assert not listed.active and not listed.allows(Scope.ADMIN)


def test_scopes_decide_what_a_key_allows(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.create("reader", parse_scopes("inference,documents"))
    (key,) = store.keys()
    assert key.allows(Scope.INFERENCE) and key.allows(Scope.DOCUMENTS)
    assert not key.allows(Scope.ADMIN)


@pytest.mark.parametrize(("name", "scopes", "match"), [
    ("Bad Name", INFERENCE, "bad key name"),
    ("ok", frozenset(), "at least one scope"),
])
def test_bad_keys_are_refused(tmp_path: Path, name: str, scopes: frozenset[Scope],
                              match: str) -> None:
    with pytest.raises(KeyStoreError, match=match):
        KeyStore(tmp_path / "keys.json").create(name, scopes)
    assert not (tmp_path / "keys.json").exists()


def test_unknown_scope_names_the_known_ones() -> None:
    with pytest.raises(KeyStoreError) as err:
        parse_scopes("inference,root")
    assert err.value.one_line() == "unknown scope 'root' (one of inference, documents, admin)"


def test_a_name_is_never_given_to_a_second_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.create("app", INFERENCE)
    store.revoke("app")
    with pytest.raises(KeyStoreError, match="exists already"):
        store.create("app", INFERENCE)
    with pytest.raises(KeyStoreError, match="revoked already"):
        store.revoke("app")
    with pytest.raises(KeyStoreError, match="no key named 'nobody'"):
        store.revoke("nobody")


@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "not JSON"),
    ('{"version": 9, "keys": []}', "version 1"),
    ('{"version": 1, "keys": [{"name": "a"}]}', "malformed entry"),
    ('{"version": 1, "keys": [{"name": "a", "sha256": "x", "scopes": []}]}', "sha256"),
    ('{"version": 1, "keys": [{"name": "a", "sha256": "' + "0" * 64
     + '", "scopes": ["root"]}]}', "malformed entry"),
])
def test_a_damaged_store_is_refused_with_one_line(tmp_path: Path, content: str,
                                                  match: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError, match=match):
        KeyStore(path).keys()
    with pytest.raises(KeyStoreError):  # and nothing is written over it
        KeyStore(path).create("new", INFERENCE)
    assert path.read_text() == content


def _create_many(path: str, prefix: str) -> None:
    store = KeyStore(Path(path))
    for i in range(10):
        store.create(f"{prefix}-{i}", INFERENCE)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create_many, args=(str(path), p)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    names = {k.name for k in KeyStore(path).keys()}
    assert len(names) == 30
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_an_entry_round_trips_through_json() -> None:
    key = ApiKey(name="x", sha256="a" * 64, scopes=frozenset(Scope), rpm=5, created="t")
    assert ApiKey.from_json(json.loads(json.dumps(key.to_json())), "here") == key


def test_budgets_are_stored_checked_and_absent_in_older_entries(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.create("budgeted", INFERENCE, tokens_per_day=1000, tokens_per_month=20_000)
    (key,) = store.keys()
    assert (key.tokens_per_day, key.tokens_per_month) == (1000, 20_000)
    older = {"name": "old", "sha256": "b" * 64, "scopes": ["inference"], "rpm": 3}
    assert ApiKey.from_json(older, "here").tokens_per_day is None
    with pytest.raises(KeyStoreError, match="bad tokens_per_month"):
        ApiKey.from_json({**older, "tokens_per_month": 0}, "here")
    with pytest.raises(KeyStoreError, match="bad tokens_per_day"):
        ApiKey.from_json({**older, "tokens_per_day": True}, "here")
    with pytest.raises(KeyStoreError, match="--tokens-per-day must be at least 1"):
        store.create("zero", INFERENCE, tokens_per_day=0)
