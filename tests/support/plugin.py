"""The pytest plugin of the suite: the --image-arch option and the shared fixtures
(generated tiny models, real `slm serve` processes on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.server import Server
from support.tiny_model import write_tiny_model


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--image-arch", choices=["amd64", "arm64"], default=None,
                     help="run tests/image against a booted appliance image of this arch")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/image boots the appliance in qemu: only with --image-arch (just test-image)."""
    if collection_path == Path(__file__).parents[1] / "image" and not config.getoption(
            "--image-arch"):
        return True
    return None


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_embed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-embed.gguf", pooling=True)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: start a server with a model and TOML config; all are stopped at the end."""
    servers: list[Server] = []
    tmp = tmp_path_factory.mktemp("servers")

    def start(model: Path | None, config: str = "", *extra: str) -> Server:
        server = Server(tmp, model, config, *extra)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def tiny_server(start_server, tiny_model: Path) -> Server:
    """The shared server on the tiny model with default settings (ctx 4096)."""
    return start_server(tiny_model)


@pytest.fixture
def client(tiny_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.base, timeout=60) as c:
        yield c
