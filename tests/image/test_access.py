"""Who gets into the appliance's Doorman: from the host through the forwarded port, over
HTTPS with the device certificate first boot made, with a key of the right scope only;
keys made and revoked by root over SSH (`slm keys`) and by the admin key over HTTPS
(`/v1/keys`). `just test-image ARCH`."""

from __future__ import annotations

import json
import ssl
import time

import httpx
import pytest
from conftest import LEDGER, guest_http
from support.server import bearer

CONFIG = "/etc/slm/slm.toml"


def _create_key(doorman, name: str, scope: str) -> str:
    """A key made over HTTPS by the admin key (fast: no `slm` start under TCG)."""
    made = doorman.post("/v1/keys", json={"name": name, "scopes": [scope]})
    assert made.status_code == 201, made.text
    return made.json()["key"]


@pytest.fixture(scope="module")
def https(vm) -> httpx.Client:
    """A client that trusts the device certificate and sends no key."""
    with httpx.Client(base_url=vm.url, verify=vm.tls(), timeout=120) as client:
        yield client


def test_first_boot_made_an_admin_key_only_root_reads(host):
    key_file = host.file("/var/lib/slm-appliance/admin-api-key")
    assert key_file.user == "root" and key_file.mode == 0o600
    assert key_file.content_string.strip().startswith("slm-")
    (admin,) = [k for k in json.loads(host.check_output(f"slm keys --config {CONFIG} list "
                                                        "--json")) if k["name"] == "admin"]
    assert admin["scopes"] == ["admin", "documents", "inference"] and admin["revoked"] is None
    store = host.file("/var/lib/slm/keys.json")  # only hashes; the service's own file
    assert store.user == "slm" and store.mode == 0o600
    assert key_file.content_string.strip() not in store.content_string


def test_the_device_certificate_is_made_once_and_its_key_is_root_only(host):
    key = host.file("/var/lib/slm-appliance/tls/device.key")
    assert key.user == "root" and key.mode == 0o600
    subject = host.check_output("openssl x509 -in /var/lib/slm-appliance/tls/device.crt "
                                "-noout -subject -ext subjectAltName")
    assert "CN = slm-appliance" in subject and "IP Address:127.0.0.1" in subject


def test_https_with_the_device_certificate_and_nothing_else(vm, https):
    assert https.get("/health").status_code == 200  # /health and /ready need no key
    assert https.get("/ready").status_code == 200
    with pytest.raises(httpx.ConnectError):  # a client that does not trust it
        httpx.get(vm.url + "/health", timeout=60, verify=ssl.create_default_context())
    plain = vm.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):  # plain HTTP beyond loopback: no answer
        httpx.get(plain + "/health", timeout=60)


def test_no_key_is_401_and_a_bad_one_too(https):
    for path in ("/v1/models", "/metrics", "/v1/documents", "/v1/usage"):
        refused = https.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["type"] == "authentication_error"
    assert https.get("/v1/models", headers=bearer("slm-not-a-key")).status_code == 401


def test_a_key_of_the_wrong_scope_is_403(doorman, https):
    docs = _create_key(doorman, "image-check-docs", "documents")
    assert https.get("/v1/documents", headers=bearer(docs)).status_code == 200
    for path in ("/v1/models", "/metrics", "/v1/adapters"):
        denied = https.get(path, headers=bearer(docs))
        assert denied.status_code == 403, path
        assert denied.json()["error"]["type"] == "permission_error"


def test_a_revoked_key_is_401_without_a_restart(host, https):
    """Made and revoked by root over SSH, as an operator would."""
    key = host.check_output(f"slm keys --config {CONFIG} create image-check-revoked")
    assert key.startswith("slm-")
    pid = host.check_output("systemctl show -p MainPID --value slm.service")
    assert https.get("/v1/models", headers=bearer(key)).status_code == 200
    host.check_output(f"slm keys --config {CONFIG} revoke image-check-revoked")
    assert https.get("/v1/models", headers=bearer(key)).status_code == 401
    assert host.check_output("systemctl show -p MainPID --value slm.service") == pid


def test_the_ledger_names_the_key_never_the_key_itself(vm, host, https, doorman):
    key = _create_key(doorman, "image-check-ledger", "inference")
    sent = https.post("/v1/chat/completions", headers=bearer(key), timeout=600, json={
        "model": "no-such-model", "messages": [{"role": "user", "content": "Who am I?"}]})
    assert sent.status_code == 404  # recorded without running the model (TCG is slow)
    request_id = sent.headers["x-request-id"]
    for _ in range(20):  # a refusal's record is written without holding up the answer
        exported = host.check_output(f"slm ledger export --db {LEDGER} --format jsonl")
        found = [json.loads(line) for line in exported.splitlines()
                 if json.loads(line)["request_id"] == request_id]
        if found:
            break
        time.sleep(0.5)
    (record,) = found
    assert record["api_key_id"] == "image-check-ledger"
    assert key not in exported and vm.admin_key() not in exported


def test_usage_tells_the_key_what_it_used(https, doorman):
    key = _create_key(doorman, "image-check-usage", "inference")
    https.get("/v1/models", headers=bearer(key))
    usage = https.get("/v1/usage", headers=bearer(key)).json()
    assert usage["key"] == "image-check-usage" and usage["minute"]["requests"] == 2


def test_the_loopback_listener_needs_a_key_too(host):
    assert host.check_output(guest_http("GET", "/v1/models", key=None)).startswith(
        "HTTP/1.1 401")
    assert host.check_output(guest_http("GET", "/v1/models")).startswith("HTTP/1.1 200")


def test_an_admin_key_revokes_keys_over_https(https, doorman):
    key = _create_key(doorman, "image-check-api", "inference")
    assert https.get("/v1/models", headers=bearer(key)).status_code == 200
    assert doorman.delete("/v1/keys/image-check-api").status_code == 200
    assert https.get("/v1/models", headers=bearer(key)).status_code == 401
