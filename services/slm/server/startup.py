"""``slm serve``: check the model, open the ledger, start replication, run the HTTP server.

Order matters: everything that can be refused (the listener's TLS certificate; model file
and, under ``[signing]``, its signature and the binary's signed file list; the ledger) is
checked before the ports are bound (:mod:`slm.server.listeners`), so a bad start leaves no
half-started server. The model then loads in the
background (``/ready`` says 503 until a warm-up token decoded); a load failure stops the
server with exit 1. SIGTERM: in-flight requests get ``shutdown_grace_s``, then the ledger
commits what is queued, Litestream ships it, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from slm import __version__
from slm.config.settings import OmpWaitPolicy, Settings
from slm.errors import ConfigError, SignatureError, SlmError
from slm.server.listeners import Listener, ListenError, open_listeners, tls_context

if TYPE_CHECKING:
    from slm.model.signature import Verified

log = logging.getLogger("slm.serve")


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT start the Doorman's grace period and end in exit 0
    (uvicorn re-raises the signal after shutdown, which kills the process before our
    clean-up runs)."""

    on_exit_signal: Any = None
    companions: list[uvicorn.Server] = []  # more listeners of the same app: stop with us

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.on_exit_signal:
            self.on_exit_signal()
        for companion in self.companions:
            companion.should_exit = True
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

    async def serve_with_companions(self, listeners: list[Listener]) -> None:
        """Serve ``listeners[0]`` (with the lifespan) and the others beside it."""
        others = [asyncio.create_task(companion.serve([listener.sock]))
                  for companion, listener in zip(self.companions, listeners[1:], strict=True)]
        try:
            await self.serve([listeners[0].sock])
        finally:
            for companion in self.companions:
                companion.should_exit = True
            await asyncio.gather(*others, return_exceptions=True)


class _Companion(uvicorn.Server):
    """A second listener: the main server owns the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_config(
    app: Any, listener: Listener, settings: Settings, *, lifespan: bool
) -> uvicorn.Config:
    """uvicorn's config for one listener (its TLS context, if any, is ours)."""
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on" if lifespan else "off",
        server_header=False,
        # ours ends the requests at shutdown_grace_s; uvicorn's is only a backstop
        # uvicorn annotates int but hands the value to asyncio.timeout (any float)
        timeout_graceful_shutdown=settings.shutdown_grace_s + 5,  # type: ignore[arg-type]
    )
    config.load()
    config.ssl = listener.tls
    return config


def _set_omp_wait_policy(policy: OmpWaitPolicy) -> None:
    """libgomp reads its wait policy when llama.cpp's libraries load (first import)."""
    if policy is OmpWaitPolicy.DEFAULT:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = policy.upper()


def plan_context(settings: Settings, model: Path) -> int:
    """The context to serve: the configured one if its planned footprint fits the memory
    budget (ConfigError naming the largest that fits if not), or that largest for "auto"."""
    from slm.model.gguf_meta import read_gguf
    from slm.model.planner import MB, largest_context, megabytes, plan

    budget = settings.memory_budget_mb
    info = read_gguf(model)  # parsed once for every plan below
    common: dict[str, Any] = {"kv_type": settings.kv_type, "n_ubatch": settings.batch,
                              "baseline_mb": settings.memory_baseline_mb, "info": info}
    if settings.ctx == "auto":
        fits = largest_context(model, budget, **common)
        if fits == 0:
            raise ConfigError(f"the model does not fit memory.budget_mb = {budget:g} even at "
                              "256 tokens of context")
        predicted = plan(model, n_ctx=fits, **common)
        log.info("context chosen by the planner", extra={
            "n_ctx": fits, "predicted_mb": round(predicted.total / MB, 1),
            "budget_mb": budget})
        return fits
    assert isinstance(settings.ctx, int)
    predicted = plan(model, n_ctx=settings.ctx, **common)
    if predicted.total > budget * MB:
        fits = largest_context(model, budget, **common)
        raise ConfigError(
            f"model.ctx = {settings.ctx} needs about {megabytes(predicted.total)} (weights "
            f"{megabytes(predicted.weights)}, KV cache {megabytes(predicted.kv_cache)}, "
            f"compute {megabytes(predicted.compute)}, runtime {megabytes(predicted.baseline)}"
            "), over "
            f"memory.budget_mb = {budget:g}; the largest context that fits is {fits}",
            hint='or set model.ctx = "auto"')
    return settings.ctx


def prompt_cache_bytes(settings: Settings, model: Path, n_ctx: int) -> int:
    """The prompt cache's memory: ``prompt_cache.memory_mb``, but never more than the
    memory budget leaves beside the model's planned footprint at ``n_ctx``."""
    from slm.model.planner import MB, plan

    wanted = int(settings.prompt_cache_memory_mb * MB)
    if wanted <= 0:
        return 0
    planned = plan(model, n_ctx=n_ctx, kv_type=settings.kv_type, n_ubatch=settings.batch,
                   baseline_mb=settings.memory_baseline_mb)
    room = int(settings.memory_budget_mb * MB) - planned.total
    if room < wanted:
        log.info("prompt cache limited to %d MB by memory.budget_mb", max(room, 0) // MB)
    return max(0, min(wanted, room))


def model_path(settings: Settings) -> Path:
    """The model file the settings name (the embedded default when none)."""
    from slm.model.file import resolve_model_path

    return resolve_model_path(settings.model)


def check_signatures(settings: Settings, model: Path) -> list[Verified]:
    """The start-up admission under ``[signing]``: the signed file list (the binary), the
    model, then the adapters made for it; SignatureError (exit 3) on the first refused."""
    from slm.model.signature import Signer, check_at_start

    assert settings.trusted_root and settings.signing_identity and settings.signing_issuer
    return check_at_start(
        Path(settings.trusted_root),
        Signer(identity=settings.signing_identity, issuer=settings.signing_issuer), model,
        Path(settings.file_list) if settings.file_list else None,
        adapters_for=lambda sha256: [Path(a.file) for a in settings.adapters
                                     if a.base_sha256 == sha256])


def check_signatures_in_child(settings: Settings, model: Path) -> list[Verified]:
    """``check_signatures`` in a forked child, before any thread starts: the service itself
    never imports sigstore and its dependencies (~45 MB that would stay resident)."""
    import json

    from slm.model.signature import Verified, first_line

    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        raise SignatureError(f"cannot start the signature check: {exc.strerror}") from None
    report: dict[str, Any] | None  # the child's report (None: it died)
    if pid == 0:  # the child: verify, report one JSON document, and never return
        code = 1
        try:
            os.close(read_end)
            try:
                done = check_signatures(settings, model)
                report = {"verified": [
                    {**v.__dict__, "path": str(v.path)} for v in done]}
            except SignatureError as exc:
                report = {"refused": exc.message, "hint": exc.hint}
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                report = {"refused": f"the signature check failed: {type(exc).__name__}: "
                                     f"{first_line(exc)}"}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as results:
        raw = results.read()
    _, status = os.waitpid(pid, 0)
    exit_code = os.waitstatus_to_exitcode(status)
    try:
        report = json.loads(raw) if exit_code == 0 else None
    except ValueError:
        report = None
    if report is None:
        raise SignatureError(f"the signature check died (exit {exit_code})")
    if "refused" in report:
        raise SignatureError(report["refused"], hint=report.get("hint"))
    return [Verified(**{**v, "path": Path(v["path"])}) for v in report["verified"]]


def release_admission(settings: Settings, verified: dict[Path, str]) -> str | None:
    """The release the verified file list names, refused (SignatureError, exit 3) when it
    is older than ``signing.installed_release`` records."""
    if not (settings.installed_release and settings.file_list):
        return None
    from slm.model.release_floor import refuse_downgrade, release_in_file_list

    listing = Path(settings.file_list)
    if listing not in verified:  # fail closed: the check must have covered the file list
        raise SignatureError(f"{listing}: the signature check did not cover the file list")
    release = release_in_file_list(listing, verified[listing])
    refuse_downgrade(release, Path(settings.installed_release))
    return release


def record_release(settings: Settings, release: str | None) -> None:
    """Once ready: this release is the newest the device has served (if it is)."""
    if not (release and settings.installed_release):
        return
    from slm.model.release_floor import record_served

    try:
        if record_served(release, Path(settings.installed_release)):
            log.info("installed release recorded: %s", release)
    except OSError as exc:
        log.warning("cannot record the installed release in %s: %s",
                    settings.installed_release, exc.strerror)
    except SlmError as exc:  # serving goes on; the next start judges the record again
        log.warning("cannot record the installed release: %s", exc.one_line())


def serve(settings: Settings, api_keys: list[str]) -> int:
    """Run the Doorman until SIGTERM/SIGINT; the process exit code."""
    from slm.ops.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    _set_omp_wait_policy(settings.omp_wait_policy)
    tls = tls_context(settings)  # a certificate that does not load stops the start, first

    from slm.audit.ledger import Ledger
    from slm.audit.replication import Replica, Replicator
    from slm.model.file import open_model_file

    verified_model = None
    verified: dict[Path, str] | None = None
    if settings.trusted_root:  # before the sha256 pin: a swapped model is refused (exit 3)
        model = model_path(settings)
        verified = {}
        for done in check_signatures_in_child(settings, model):
            verified[done.path] = done.sha256
            log.info("signature verified: %s (log index %d) in %.2f s", done.path,
                     done.log_index, done.seconds)
            if done.path == model:
                verified_model = done
        if verified_model is None:  # fail closed: the check must have covered this model
            raise SignatureError(f"{model}: the signature check did not cover the model")
    release = release_admission(settings, verified or {})
    model_file = open_model_file(settings.model, settings.model_sha256)
    if verified_model and model_file.sha256 != verified_model.sha256:
        raise SignatureError(f"{model_file.path} changed after its signature was verified "
                             f"(sha256 {model_file.sha256}, verified {verified_model.sha256})")
    from slm.tier_a.adapters import open_adapters

    adapters = open_adapters(settings.adapters, model_file.sha256, verified)
    n_ctx = plan_context(settings, model_file.path)
    replica = (
        Replica(settings.replica, endpoint=settings.replica_endpoint,
                region=settings.replica_region,
                sync_interval_s=settings.replica_sync_interval_s)
        if settings.replica else None
    )
    if replica:
        replica.litestream_entry()  # refuse a bad replica URL before anything starts
    ledger = Ledger(
        Path(settings.ledger_path),
        head_log_interval_s=settings.ledger_head_log_interval_s,
        app_checkpoints=replica is None,  # Litestream's guidance: it checkpoints, not us
    )
    # with replicate_in_service off, the companion unit runs `slm ledger replicate`
    replicator = (Replicator(replica, ledger.path)
                  if replica and settings.replicate_in_service else None)

    try:
        listeners = open_listeners(settings, tls)
    except ListenError:
        ledger.close()
        raise
    from slm.api.app import create_app
    from slm.ops.systemd import notify_ready
    from slm.server.state import Doorman
    from slm.tier_a.engine import quiet_llama_logs

    quiet_llama_logs()
    doorman = Doorman(settings, model_file, api_keys, ledger, n_ctx=n_ctx, adapters=adapters,
                      prompt_cache_bytes=prompt_cache_bytes(settings, model_file.path, n_ctx))
    app = create_app(doorman)
    server = _Server(_http_config(app, listeners[0], settings, lifespan=True))
    server.companions = [_Companion(_http_config(app, listener, settings, lifespan=False))
                         for listener in listeners[1:]]
    servers = [server, *server.companions]
    server.on_exit_signal = doorman.begin_shutdown
    where = ", ".join(listener.url for listener in listeners)

    def load() -> None:
        try:
            doorman.load()
            # READY=1 only once the model is warm *and* the port is bound
            while not all(s.started for s in servers) and not server.should_exit:
                time.sleep(0.02)
            if server.started:
                assert doorman.engine is not None
                notify_ready(f"serving {doorman.model_id} on {where} "
                             f"(context {doorman.engine.n_ctx})")
                record_release(settings, release)
        except SlmError as exc:
            log.error("model load failed: %s", exc.one_line())
            server.should_exit = True
        except Exception:  # noqa: BLE001
            log.exception("model load failed")
            doorman.load_error = SlmError("model load failed")
            server.should_exit = True

    log.info("starting", extra={"version": __version__, "listeners": where,
                                "model": str(model_file.path), "ledger": str(ledger.path)})
    try:
        if replicator:
            replicator.start()
        threading.Thread(target=load, name="slm-load", daemon=True).start()
        asyncio.run(server.serve_with_companions(listeners))
    finally:
        for listener in listeners:
            listener.sock.close()
        doorman.close()
        ledger.close()
        if replicator:
            replicator.stop()
    if doorman.load_error is not None:
        print(f"slm: error: {doorman.load_error.one_line()}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
