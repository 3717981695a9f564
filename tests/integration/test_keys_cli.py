"""`slm keys`: create prints the key once, list never shows it, revoke; refusals are one
line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from support.server import run_slm


def test_create_list_revoke(tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    made = run_slm("keys", "--key-store", str(store), "create", "support-bot",
                   "--scope", "inference,documents", "--rpm", "30", "--tokens-per-month", "9000")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("slm-") and made.stdout.count("\n") == 1
    listed = run_slm("keys", "--key-store", str(store), "list")
    assert listed.returncode == 0 and secret not in listed.stdout
    assert ("support-bot\tdocuments,inference\trpm 30, tokens per month 9000\tcreated "
            in listed.stdout)
    assert listed.stdout.rstrip().endswith("active")
    revoked = run_slm("keys", "--key-store", str(store), "revoke", "support-bot")
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked support-bot at ")
    (entry,) = json.loads(run_slm("keys", "--key-store", str(store), "list", "--json").stdout)
    assert entry["revoked"] and "sha256" not in entry and entry["rpm"] == 30
    assert entry["tokens_per_month"] == 9000 and entry["tokens_per_day"] is None


def test_the_store_path_comes_from_the_config(tmp_path: Path) -> None:
    store = tmp_path / "state" / "keys.json"
    config = tmp_path / "slm.toml"
    config.write_text(f'[server]\nkey_store = "{store}"\n')
    assert run_slm("keys", "--config", str(config), "create", "a").returncode == 0
    assert store.is_file()


def test_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "keys.json"
    for args, says in [(("create", "Bad Name"), "bad key name"),
                       (("create", "a", "--scope", "root"), "unknown scope 'root'"),
                       (("revoke", "nobody"), "no key named 'nobody'")]:
        r = run_slm("keys", "--key-store", str(store), *args)
        assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    store.write_text("{broken")
    r = run_slm("keys", "--key-store", str(store), "list")
    assert r.returncode == 2 and "not JSON" in r.stderr
