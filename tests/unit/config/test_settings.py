"""The one settings schema: TOML file, flags, validation, docs."""

import argparse
from pathlib import Path

import pytest
from slm.config.settings import (
    Settings,
    add_flags,
    flag_overrides,
    load_api_keys,
    load_settings,
    settings_doc,
)
from slm.errors import ConfigError
from support.paths import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slm.toml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback_8080():
    s = load_settings(None)
    assert (s.host, s.port) == ("127.0.0.1", 8080)


def test_file_values_are_read_and_flags_override_them(tmp_path):
    cfg = write(tmp_path, '[server]\nport = 9000\nqueue_depth = 3\n[model]\nctx = 1024\n')
    s = load_settings(cfg, {"port": 9100})
    assert (s.port, s.queue_depth, s.ctx) == (9100, 3, 1024)


def test_toml_key_may_differ_from_the_flag(tmp_path):
    s = load_settings(write(tmp_path, '[ledger]\npath = "/tmp/x.db"\n'), {"port": 1})
    assert s.ledger_path == "/tmp/x.db"
    assert load_settings(None, {"ledger_path": "/y.db"}).ledger_path == "/y.db"
    with pytest.raises(ConfigError, match="ledger.ledger_path"):
        load_settings(write(tmp_path, '[ledger]\nledger_path = "/tmp/x.db"\n'))


def test_int_is_accepted_for_a_float_setting(tmp_path):
    s = load_settings(write(tmp_path, "[server]\nrequest_timeout_s = 5\n"))
    assert s.request_timeout_s == 5.0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[serve]\nport = 1\n", "[serve]"),
        ('[server]\nport = "80"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[engine]\nomp_wait_policy = \"spin\"\n", "engine.omp_wait_policy"),
        ("[server]\nport = true\n", "server.port"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert names in str(err.value)
    assert "\n" not in err.value.one_line()


def test_the_sanitisers_hint_survives_in_the_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, '[sanitise]\nphone_regions = ["XX"]\n'))
    assert "XX" in err.value.message
    assert "ISO 3166-1" in (err.value.hint or "")
    assert "ISO 3166-1" in err.value.one_line()


def test_api_keys_from_file_and_config(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("key-from-file-1\n\nkey-from-file-2\n")
    s = Settings(api_keys=["key-in-config"], api_key_file=str(keyfile))
    assert load_api_keys(s) == ["key-in-config", "key-from-file-1", "key-from-file-2"]


def test_short_api_keys_are_refused():
    with pytest.raises(ConfigError):
        load_api_keys(Settings(api_keys=["short"]))


def test_secrets_are_masked_when_shown():
    assert Settings(api_keys=["secret-key-1"]).redacted()["api_keys"] == ["***"]


def test_doc_lists_every_setting_under_its_derived_names():
    doc = settings_doc()
    rows = {line.split(" | ")[0].strip("|` ") for line in doc.splitlines()[2:]}
    expected = {"memory.budget_mb", "ledger.path", "model.sha256", "server.port",
                "documents.max_bytes", "signing.identity", "[[upstream]]", "[[adapter]]"}
    assert expected <= rows and len(rows) == len(Settings.__dataclass_fields__)
    assert "| `--memory-budget-mb` |" in doc and "`--signing-identity`, `--signer-identity`" in doc


def test_old_flags_and_old_toml_keys_still_work(tmp_path):
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--signer-identity", "me@example.com",
                              "--upstream-health-interval-s", "5"])
    assert flag_overrides(args)["signing_identity"] == "me@example.com"
    s = load_settings(write(tmp_path, '[model]\nmodel_sha256 = "' + "a" * 64 + '"\n'
                                      'model_id = "old"\n'),
                      flag_overrides(args))
    assert (s.model_sha256, s.model_id, s.router_health_interval_s) == ("a" * 64, "old", 5.0)
    new = load_settings(write(tmp_path, '[model]\nsha256 = "' + "b" * 64 + '"\nid = "new"\n'))
    assert (new.model_sha256, new.model_id) == ("b" * 64, "new")


def test_table_keys_are_documented_from_their_types():
    doc = settings_doc()
    assert "`connect_timeout_s` (3.0)" in doc and "`tier` (B or C; required)" in doc
    assert "`scale` (1.0)" in doc and "`base_sha256` (the model it applies to; required)" in doc


def test_readme_settings_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert settings_doc() in readme, "run `slm config doc` and paste it into the README"
