"""The audit ledger: one append-only, hash-chained SQLite record per mediated call.

One writer thread owns the database connection. Appends are queued and committed in
groups (one durable transaction per group), so many concurrent requests share one fsync;
each caller gets a future that resolves once its record is durable. The chain: every
record stores ``hash = sha256(canonical JSON of the record including prev_hash)``, where
``prev_hash`` is the previous record's hash; triggers refuse UPDATE and DELETE.

If a commit fails (disk full, read-only, corrupt file) the ledger turns *unavailable* and
stays so: the Doorman then refuses inference (503) rather than serve unaudited calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slm.errors import SlmError

log = logging.getLogger("slm.ledger")
# The chain head must reach the log whatever the log level: its own logger, pinned to INFO.
head_log = logging.getLogger("slm.ledger.head")
head_log.setLevel(logging.INFO)

SCHEMA_VERSION = "1"
GENESIS_HASH = "0" * 64



@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditRecord:
    """What a caller supplies for one record: the ledger's columns but ``id``,
    ``prev_hash`` and ``hash`` (the chain's), by construction (FIELDS is made from it)."""

    request_id: str
    endpoint: str
    tier: str
    model: str | None
    model_sha256: str | None
    status: int
    error_code: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_us: int | None = None
    prompt_sha256: str | None = None
    prompt_text: str | None = None
    entities: tuple[str, ...] = ()
    api_key_id: str | None = None
    ts: str | None = None  # UTC ISO-8601; the ledger stamps it when None


ENTRY_FIELDS = ("ts", *(f.name for f in dataclasses.fields(AuditRecord) if f.name != "ts"))
# Column order of a record; `hash` is computed over all of them but itself.
FIELDS = ("id", *ENTRY_FIELDS, "prev_hash")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    request_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT,
    model_sha256 TEXT,
    status INTEGER NOT NULL,
    error_code TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_us INTEGER,
    prompt_sha256 TEXT,
    prompt_text TEXT,
    entities TEXT NOT NULL,
    api_key_id TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'the audit ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


class LedgerError(SlmError):
    """The ledger cannot be opened, read or written."""


def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the file, a transient state."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc).lower() for word in ("locked", "busy"))


def utc_now() -> str:
    """The record timestamp format: RFC 3339 UTC with milliseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers: its fields (not the hash) as sorted, compact JSON."""
    body = {name: record[name] for name in FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 of the canonical encoding (which includes ``prev_hash``: the chain link)."""
    return hashlib.sha256(canonical(record)).hexdigest()


def connect(path: Path, *, readonly: bool, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """A connection with the ledger's pragmas; read-only ones never create or write."""
    if readonly:  # as_uri() escapes %, # and ? in the path; mode=ro never creates a file
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                               timeout=busy_timeout_ms / 1000, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    return conn


class Ledger:
    """The service's writer: group-committed, durable, hash-chained appends."""

    def __init__(
        self,
        path: Path,
        *,
        head_log_interval_s: float = 60.0,
        app_checkpoints: bool = True,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._head_log_interval_s = head_log_interval_s
        self._pending: list[tuple[dict[str, Any], Future[int]]] = []
        self._cond = threading.Condition()
        self._closing = False
        self.error: LedgerError | None = None
        self._conn = self._open(app_checkpoints)
        self.count, self.head = self._read_head()
        self._logged = (-1, "")
        self._last_head_log = 0.0
        self._thread = threading.Thread(target=self._run, name="slm-ledger", daemon=True)
        self._thread.start()
        self._log_head(force=True)

    # -- opening ------------------------------------------------------------------------

    def _open(self, app_checkpoints: bool) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(self.path, readonly=False, busy_timeout_ms=self._busy_timeout_ms)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(f"ledger {self.path}: cannot use WAL mode (got {mode})")
            # FULL: a commit is on disk when acknowledged, power loss included.
            conn.execute("PRAGMA synchronous = FULL")
            if not app_checkpoints:  # Litestream owns checkpoints while it replicates
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            version = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} cannot be opened: {exc}") from None
        except OSError as exc:
            raise LedgerError(f"ledger {self.path} cannot be created: {exc.strerror}") from None
        if version != SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.path} has schema version {version}, "
                              f"this service writes {SCHEMA_VERSION}")
        return conn

    def _read_head(self) -> tuple[int, str]:
        """Count and head hash; the last record must still match its hash."""
        try:
            row = self._conn.execute(
                f"SELECT {', '.join(FIELDS)}, hash FROM records ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} cannot be read: {exc}") from None
        if row is None:
            return 0, GENESIS_HASH
        record = dict(zip((*FIELDS, "hash"), row, strict=True))
        if record_hash(record) != record["hash"]:
            raise LedgerError(
                f"ledger {self.path}: the last record ({record['id']}) does not match its hash",
                hint="run `slm ledger verify` to find the first broken record",
            )
        return record["id"], record["hash"]

    # -- appending ----------------------------------------------------------------------

    def append(self, entry: AuditRecord) -> Future[int]:
        """Queue one record; the future gives its id once durable (or the LedgerError)."""
        future: Future[int] = Future()
        if self.error is not None:
            future.set_exception(self.error)
            return future
        record: dict[str, Any] = {name: getattr(entry, name) for name in ENTRY_FIELDS}
        record["ts"] = entry.ts or utc_now()
        record["entities"] = json.dumps(sorted(entry.entities))
        with self._cond:
            if self._closing:
                future.set_exception(LedgerError("the ledger is closed"))
                return future
            self._pending.append((record, future))
            self._cond.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait(timeout=1.0)
                    self._log_head()
                batch, self._pending = self._pending, []
                closing = self._closing
            if batch:
                self._commit(batch)
            if closing and not batch:
                break
        self._log_head(force=True)
        self._conn.close()

    def _commit(self, batch: list[tuple[dict[str, Any], Future[int]]]) -> None:
        if self.error is not None:
            for _, future in batch:
                future.set_exception(self.error)
            return
        count, head = self.count, self.head
        try:
            rows = []
            for record, _ in batch:
                count += 1
                record["id"], record["prev_hash"] = count, head
                head = record_hash(record)
                rows.append((*(record[name] for name in FIELDS), head))
            marks = ", ".join("?" * (len(FIELDS) + 1))
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(f"INSERT INTO records VALUES ({marks})", rows)
            self._conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the writer thread must never die
            self._rollback()
            if _is_busy(exc):
                # Another process held the file longer than busy_timeout: these requests
                # fail (503), the ledger stays usable for the next ones.
                failure = LedgerError(f"the audit ledger is locked by another process: {exc}")
                log.warning("ledger busy; the batch was not written",
                            extra={"path": str(self.path), "records": len(batch)})
            else:
                failure = self.error = LedgerError(f"the audit ledger cannot be written: {exc}")
                log.error("ledger write failed; refusing inference until restart",
                          extra={"path": str(self.path), "error": str(exc)})
            for _, future in batch:
                future.set_exception(failure)
            return
        self.count, self.head = count, head
        for record, future in batch:
            future.set_result(record["id"])
        self._log_head()

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @property
    def writable(self) -> bool:
        """No permanent write error, and the writer thread is alive."""
        return self.error is None and self._thread.is_alive()

    def _log_head(self, *, force: bool = False) -> None:
        """Write the chain head to the service log (periodically, and when closing)."""
        now = time.monotonic()
        if (self.count, self.head) == self._logged:
            return
        if not force and now - self._last_head_log < self._head_log_interval_s:
            return
        self._last_head_log = now
        self._logged = (self.count, self.head)
        head_log.info("ledger head", extra={"ledger_count": self.count,
                                            "ledger_head": self.head, "path": str(self.path)})

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, log the head, close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)


def tokens_by_key_and_day(path: Path, since: str) -> dict[str, dict[str, int]]:
    """Key name → UTC day (``YYYY-MM-DD``) → tokens (prompt and completion) of the records
    stamped at or after ``since`` (an ISO-8601 UTC time): what the token budgets start
    from. Records without a key count under ""; an absent ledger has none."""
    if not path.exists():
        return {}
    try:
        conn = connect(path, readonly=True)
        try:
            rows = conn.execute(
                "SELECT COALESCE(api_key_id, ''), substr(ts, 1, 10), "
                "SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) "
                "FROM records WHERE ts >= ? GROUP BY 1, 2",
                (since,)).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read: {exc}") from None
    used: dict[str, dict[str, int]] = {}
    for name, day, tokens in rows:
        used.setdefault(name, {})[day] = int(tokens)
    return used
