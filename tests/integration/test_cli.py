"""`slm serve` refuses bad configuration and bad model files with one line and an exit code."""

import hashlib
import json
import re
import subprocess

import pytest
from support.server import SLM, free_port, run_slm


def serve(*args, timeout=60):
    return run_slm("serve", "--port", str(free_port()), *args, timeout=timeout)


def test_invalid_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "slm.toml"
    cfg.write_text("[server]\nqueue_depth = 0\n")
    r = serve("--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "server.queue_depth" in r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = serve("--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_missing_model_exits_1(tmp_path):
    r = serve("--model", str(tmp_path / "missing.gguf"))
    assert r.returncode == 1
    assert "model file not found" in r.stderr


def test_not_a_gguf_exits_1(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 100)
    r = serve("--model", str(bad))
    assert r.returncode == 1 and "not a GGUF" in r.stderr


def test_sha256_mismatch_exits_1(tiny_model):
    r = serve("--model", str(tiny_model), "--model-sha256", "0" * 64)
    assert r.returncode == 1 and "sha256" in r.stderr


def test_truncated_model_fails_to_load_and_exits_1(tiny_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    r = serve("--model", str(cut), timeout=60)
    assert r.returncode == 1
    assert "load" in r.stderr.lower()


def test_matching_sha256_is_accepted_by_config_show(tiny_model):
    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    r = run_slm("config", "show", "--model-sha256", digest, "--port", "9999")
    assert r.returncode == 0 and '"port": 9999' in r.stdout


@pytest.mark.parametrize("flag", ["--port=abc", "--queue-depth=x"])
def test_bad_flag_values_exit_2(flag):
    assert run_slm("serve", flag).returncode == 2


def test_config_doc_lists_settings():
    r = run_slm("config", "doc")
    assert r.returncode == 0 and "`server.port`" in r.stdout


def test_sigterm_stops_the_server_cleanly(start_server, tiny_model):
    server = start_server(tiny_model)
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def test_sanitise_prints_redacted_text_and_json_offsets(tmp_path):
    text = "Mail bob@example.com from 203.0.113.9, token ghp_" + "a1B2" * 9 + ".\n"
    done = subprocess.run([*SLM, "sanitise"], input=text, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "bob@example.com" not in done.stdout and "203.0.113.9" not in done.stdout
    assert re.fullmatch(r"Mail \[EMAIL_[0-9a-f]{8}\] from \[IP_ADDRESS_[0-9a-f]{8}\], "
                        r"token \[API_KEY_[0-9a-f]{8}\]\.\n", done.stdout)
    done = subprocess.run([*SLM, "sanitise", "--json"], input=text, capture_output=True,
                          text=True, timeout=60)
    got = json.loads(done.stdout)
    assert [(e["type"], text[e["start"]:e["end"]]) for e in got["entities"]] == [
        ("EMAIL", "bob@example.com"), ("IP_ADDRESS", "203.0.113.9"),
        ("API_KEY", "ghp_" + "a1B2" * 9)]
    config = tmp_path / "slm.toml"
    config.write_text('[sanitise]\nentities = ["EMAIL"]\ncustom = { TICKET = "T-[0-9]{4}" }\n')
    done = subprocess.run([*SLM, "sanitise", "--config", str(config), "--json"],
                          input="T-1234 from 203.0.113.9 bob@example.com", capture_output=True,
                          text=True, timeout=60)
    assert [e["type"] for e in json.loads(done.stdout)["entities"]] == ["TICKET", "EMAIL"]
    bad = subprocess.run([*SLM, "sanitise"], input=b"\xff\xfe", capture_output=True,
                         timeout=60)
    assert bad.returncode == 2 and b"UTF-8" in bad.stderr


def test_version_and_help():
    version = run_slm("--version")
    assert version.returncode == 0 and version.stdout.startswith("slm 0.")
    helped = run_slm("--help")
    assert helped.returncode == 0
    for command in ("serve", "ledger", "plan", "sanitise", "config"):
        assert command in helped.stdout
    assert run_slm("no-such-command").returncode == 2
