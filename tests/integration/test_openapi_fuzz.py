"""The published API: /openapi.json describes every route, and schemathesis, run against a
live `slm serve` with a key of every scope, finds no 5xx beyond the declared 503/504, no
response that does not match the document and no crash (tests/integration/schemathesis.toml
says which checks run and why one does not)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
from slm.access.keys import KeyStore, Scope
from slm.api.openapi import OPERATIONS

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_each_path_allows_exactly_the_documented_methods(start_server, tiny_model) -> None:
    server = start_server(tiny_model)
    document = httpx.get(server.base + "/openapi.json").json()
    assert {(op.path, op.method) for op in OPERATIONS} == {
        (path, method) for path, item in document["paths"].items() for method in item}
    for path, item in document["paths"].items():
        url = server.base + path.replace("{model}", "m").replace("{doc_id}", "d")
        refused = httpx.request("PATCH", url)
        assert refused.status_code == 405, path
        allowed = {m.strip().lower() for m in refused.headers["allow"].split(",")}
        assert allowed - {"head"} == set(item), path
    assert httpx.get(server.base + "/v1/nothing").status_code == 404


def test_schemathesis_finds_nothing(start_server, tiny_embed_model, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("fuzz", frozenset(Scope))
    server = start_server(tiny_embed_model, f'[server]\nkey_store = "{store.path}"\n',
                          "--ctx", "512")
    document = httpx.get(server.base + "/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert document.status_code == 200 and document.json()["openapi"] == "3.1.0"
    st = Path(sys.executable).with_name("st")
    run = subprocess.run(
        [str(st), "--config-file", str(CONFIG), "--no-color", "run",
         server.base + "/openapi.json", "-H", f"Authorization: Bearer {key}"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = run.stdout[run.stdout.rfind("SUMMARY"):]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert cases and int(cases.group(1)) > 500 and cases.group(1) == cases.group(2), summary
    print(f"schemathesis: {cases.group(0)}")  # the figure for the closing notes (-s)
    assert "Traceback" not in server.log()
