"""The ``slm`` command: ``serve`` the Doorman, inspect ``config``.

Exit codes: 0 ok, 1 runtime failure (model missing or corrupt, load failure, port in use),
2 invalid configuration or usage. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slm import __version__
from slm.errors import ConfigError, SlmError
from slm.settings import (
    add_flags,
    flag_overrides,
    load_api_keys,
    load_settings,
    settings_doc,
)

log = logging.getLogger("slm.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm", description="service-slm, the Doorman: an OpenAI-compatible LLM gateway."
    )
    parser.add_argument("--version", action="version", version=f"slm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP service")
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML config file (default: /etc/slm/slm.toml when present)")
    add_flags(serve)

    config = sub.add_parser("config", help="show the effective configuration or its docs")
    config.add_argument("action", choices=["show", "doc"])
    config.add_argument("--config", type=Path, default=None, help="TOML config file")
    add_flags(config)
    return parser


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flag_overrides(args))
    api_keys = load_api_keys(settings)

    from slm.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    # libgomp reads its wait policy when llama.cpp's libraries load, i.e. on first import.
    if settings.omp_wait_policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = settings.omp_wait_policy.upper()

    from slm.model_file import open_model_file

    model_file = open_model_file(settings.model, settings.model_sha256)

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, but SIGTERM/SIGINT end in a clean exit 0 after the graceful shutdown
        (uvicorn re-raises the signal, which kills the process before our clean-up)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            doorman.begin_shutdown()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {s: signal.signal(s, self.handle_exit)
                        for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    from slm.api.app import create_app
    from slm.engine import quiet_llama_logs
    from slm.service import Doorman

    quiet_llama_logs()
    doorman = Doorman(settings, model_file, api_keys)
    server = Server(
        uvicorn.Config(
            create_app(doorman), host=settings.host, port=settings.port, log_config=None,
            access_log=False, lifespan="off",
            # ours ends the requests at shutdown_grace_s; uvicorn's is only a backstop
            timeout_graceful_shutdown=settings.shutdown_grace_s + 5,
            server_header=False,
        )
    )

    def load() -> None:
        try:
            doorman.load()
        except SlmError as exc:
            log.error("model load failed: %s", exc.one_line())
            server.should_exit = True
        except Exception:  # noqa: BLE001
            log.exception("model load failed")
            doorman.load_error = SlmError("model load failed")
            server.should_exit = True

    log.info("starting", extra={"version": __version__, "host": settings.host,
                                "port": settings.port, "model": str(model_file.path)})
    threading.Thread(target=load, name="slm-load", daemon=True).start()
    try:
        server.run()
    finally:
        doorman.close()
    if doorman.load_error is not None:
        print(f"slm: error: {doorman.load_error.one_line()}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


def _config(args: argparse.Namespace) -> int:
    if args.action == "doc":
        print(settings_doc())
        return 0
    settings = load_settings(args.config, flag_overrides(args))
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slm`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _config(args)
    except ConfigError as exc:
        print(f"slm: config error: {exc.one_line()}", file=sys.stderr)
        return 2
    except SlmError as exc:
        print(f"slm: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
