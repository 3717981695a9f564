"""Where `slm serve` listens: HTTPS with the configured certificate (and client
certificates with tls_client_ca), plain HTTP only on loopback, and no listener beyond
loopback that is plain or open to anyone (one line, exit 2, before anything is bound)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slm.access.keys import KeyStore, Scope
from support.server import TINY_ID, Server, free_port, run_slm
from support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def serve_tls(tmp_path: Path, tiny_model: Path) -> Iterator:
    servers: list[Server] = []

    def start(config: str) -> tuple[Server, int]:
        loopback = free_port()
        server = Server(tmp_path, tiny_model, config + f"loopback_port = {loopback}\n",
                        ready_port=loopback)
        servers.append(server)
        server.wait_ready()
        return server, loopback

    yield start
    for server in servers:
        server.stop()


def _tls_config(pki: Pki, *extra: str) -> str:
    return "\n".join(["[server]", f'tls_cert = "{pki.server_cert}"',
                      f'tls_key = "{pki.server_key}"', *extra, ""])


def test_https_with_the_certificate_and_plain_http_only_on_the_loopback_port(
        serve_tls, pki: Pki) -> None:
    server, loopback = serve_tls(_tls_config(pki))
    https = f"https://127.0.0.1:{server.port}"
    with httpx.Client(verify=ssl.create_default_context(cafile=pki.ca)) as client:
        models = client.get(https + "/v1/models")
        assert models.status_code == 200 and models.json()["data"][0]["id"] == TINY_ID
        chat = client.post(https + "/v1/chat/completions", json={
            "model": TINY_ID, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2})
        assert chat.status_code == 200
    with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port: no answer
        httpx.get(f"http://127.0.0.1:{server.port}/v1/models", timeout=10)
    with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
        httpx.get(https + "/v1/models", timeout=10)
    assert httpx.get(f"http://127.0.0.1:{loopback}/v1/models").status_code == 200


def test_client_certificates_with_tls_client_ca(serve_tls, pki: Pki) -> None:
    server, _ = serve_tls(_tls_config(pki, f'tls_client_ca = "{pki.ca}"'))
    https = f"https://127.0.0.1:{server.port}/v1/models"
    trusted = ssl.create_default_context(cafile=pki.ca)
    with pytest.raises(httpx.TransportError):  # no client certificate: no handshake
        with httpx.Client(verify=trusted, timeout=10) as client:
            client.get(https)
    trusted.load_cert_chain(pki.client_cert, pki.client_key)
    with httpx.Client(verify=trusted, timeout=10) as client:
        assert client.get(https).status_code == 200


def test_beyond_loopback_plain_or_keyless_is_refused_with_one_line(
        tmp_path: Path, tiny_model: Path, pki: Pki) -> None:
    def serve(config: str, *flags: str):
        path = tmp_path / "slm.toml"
        path.write_text(config)
        return run_slm("serve", "--config", str(path), "--model", str(tiny_model),
                       "--port", str(free_port()), "--ledger-path", str(tmp_path / "l.db"),
                       *flags)

    plain = serve("", "--host", "0.0.0.0")
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1
    assert "beyond loopback, where the Doorman serves only HTTPS" in plain.stderr
    store = tmp_path / "keys.json"
    keyless = serve(_tls_config(pki, f'key_store = "{store}"'), "--host", "0.0.0.0")
    assert keyless.returncode == 2 and keyless.stderr.count("\n") == 1
    assert "no API key exists" in keyless.stderr and "allow_keyless_network" in keyless.stderr
    KeyStore(store).create("only", frozenset({Scope.INFERENCE}))
    KeyStore(store).revoke("only")
    revoked = serve(_tls_config(pki, f'key_store = "{store}"'), "--host", "0.0.0.0")
    assert revoked.returncode == 2 and "no API key exists" in revoked.stderr  # none active
    broken = tmp_path / "broken.crt"
    broken.write_text("not a certificate")
    bad = serve(f'[server]\ntls_cert = "{broken}"\ntls_key = "{pki.server_key}"\n')
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "cannot be loaded" in bad.stderr
    half = serve(f'[server]\ntls_cert = "{pki.server_cert}"\n')
    assert half.returncode == 2 and "go together" in half.stderr


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, tiny_model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_slm("serve", "--model", str(tiny_model), "--port", str(port),
                    "--ledger-path", str(tmp_path / "l.db"))
    assert r.returncode == 1  # the ledger's head was logged; then the one error line
    assert r.stderr.splitlines()[-1] == (
        f"slm: error: cannot listen on 127.0.0.1:{port}: Address already in use")
