"""Read-only tools over a ledger file: verify the chain, export the records.

Both open the database read-only through SQLite (WAL readers never block the service's
writer) and stream record by record, so they work on a live ledger of any size.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from slm.audit.ledger import FIELDS, GENESIS_HASH, LedgerError, connect, record_hash

EXPORT_FIELDS = (*FIELDS, "hash")


@dataclass(frozen=True)
class Verdict:
    """The outcome of walking the chain."""

    ok: bool
    count: int
    head: str
    broken_id: int | None = None
    reason: str = ""


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise LedgerError(f"ledger not found: {path}")
    if not path.is_file():
        raise LedgerError(f"ledger is not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(16)
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from None
    if magic != b"SQLite format 3\x00":
        raise LedgerError(f"not an SQLite database: {path}")
    try:
        conn = connect(path, readonly=True, busy_timeout_ms=2000)
        conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise LedgerError(f"not a service-slm ledger (no records table): {path}") from None
        raise LedgerError(f"ledger {path} cannot be read: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} is damaged: {exc}") from None
    return conn


def _rows(conn: sqlite3.Connection, path: Path, where: str = "",
          args: tuple[Any, ...] = ()) -> Iterator[dict[str, Any]]:
    try:
        cursor = conn.execute(
            f"SELECT {', '.join(EXPORT_FIELDS)} FROM records {where} ORDER BY id", args
        )
        for row in cursor:
            yield dict(zip(EXPORT_FIELDS, row, strict=True))
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"ledger {path} cannot be read: {exc}") from None


def verify(path: Path, expect: tuple[int, str] | None = None) -> Verdict:
    """Walk the whole chain; the first record that breaks it is reported.

    ``expect`` is a (count, head hash) pair from the service log: the chain must contain
    that record with that hash, which catches a rewrite of the whole chain and a
    truncation of its tail.
    """
    conn = _open_readonly(path)
    try:
        count, prev = 0, GENESIS_HASH
        for record in _rows(conn, path):
            count += 1
            if not isinstance(record["id"], int) or isinstance(record["id"], bool):
                return Verdict(False, count - 1, prev, count,
                               f"record {count} has a non-integer id {record['id']!r} (inserted)")
            if record["id"] != count:
                if record["id"] > count:
                    reason = f"record {count} is missing (deleted)"
                else:
                    reason = f"record {record['id']} appears out of order (inserted)"
                return Verdict(False, count - 1, prev, count, reason)
            if record["prev_hash"] != prev:
                return Verdict(False, count - 1, prev, count,
                               f"record {count} does not link to record {count - 1} "
                               "(inserted, deleted or reordered)")
            try:
                intact = record_hash(record) == record["hash"]
            except (TypeError, ValueError):
                intact = False
            if not intact:
                return Verdict(False, count - 1, prev, count,
                               f"record {count} does not match its hash (edited or swapped)")
            if expect and count == expect[0] and record["hash"] != expect[1]:
                return Verdict(False, count - 1, prev, count,
                               f"record {count} differs from the head the service logged "
                               "(the chain was rewritten)")
            prev = record["hash"]
    finally:
        conn.close()
    if expect and count < expect[0]:
        return Verdict(False, count, prev, count + 1,
                       f"the service logged {expect[0]} records, the ledger has {count} "
                       "(records were removed from its end)")
    return Verdict(True, count, prev)


def _csv_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas (OWASP CSV injection): prefix ``= + - @`` text."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def parse_since(text: str) -> str:
    """An ISO 8601 time as the ledger's timestamp format, for comparison."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise LedgerError(f"--since: not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def export(path: Path, fmt: str, since: str | None = None, out: TextIO = sys.stdout) -> int:
    """Write the records (optionally those at or after ``since``) as CSV or JSON lines."""
    conn = _open_readonly(path)
    where, args = ("WHERE ts >= ?", (parse_since(since),)) if since else ("", ())
    n = 0
    try:
        if fmt == "csv":
            writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
            writer.writeheader()
            for record in _rows(conn, path, where, args):
                writer.writerow({k: _csv_safe(v) for k, v in record.items()})
                n += 1
        elif fmt == "jsonl":
            for record in _rows(conn, path, where, args):
                try:
                    record["entities"] = json.loads(record["entities"])
                except (TypeError, ValueError):
                    pass  # a tampered value: exported as stored, `verify` reports it
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        else:
            raise LedgerError(f"unknown export format {fmt!r} (csv or jsonl)")
    finally:
        conn.close()
    return n
