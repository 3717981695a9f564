"""Liveness is not readiness: /ready is 503 until the model is loaded and warm."""

from slm.api.app import create_app
from slm.audit.ledger import Ledger
from slm.config.settings import Settings
from slm.model.file import open_model_file
from slm.server.state import Doorman
from starlette.testclient import TestClient
from support.server import TINY_ID


def test_ready_is_503_until_loaded_then_200(tiny_model, tmp_path):
    ledger = Ledger(tmp_path / "ledger.db")
    doorman = Doorman(Settings(model_id=TINY_ID, threads=1), open_model_file(tiny_model, None),
                      [], ledger)
    client = TestClient(create_app(doorman))
    assert client.get("/health").status_code == 200
    r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_loading"
    chat = client.post("/v1/chat/completions",
                       json={"model": TINY_ID, "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 503
    doorman.load()
    try:
        assert client.get("/ready").status_code == 200
    finally:
        doorman.close()
        ledger.close()
