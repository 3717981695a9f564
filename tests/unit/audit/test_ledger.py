"""The audit ledger file: append-only, hash chain, verify names the first bad record."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from slm.audit.ledger import FIELDS, AuditRecord, Ledger, record_hash
from slm.audit.verify_export import verify
from support.server import run_slm


def entry(i: int) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{i}", endpoint="chat", tier="A", model="tiny",
        model_sha256="ab" * 32, status=200, prompt_tokens=i, completion_tokens=2 * i,
        latency_us=1000 + i, prompt_sha256="cd" * 32,
        entities=("EMAIL", "IBAN") if i % 2 else (), api_key_id="key-0123456789ab")


def make_ledger(path: Path, n: int = 10) -> tuple[int, str]:
    ledger = Ledger(path)
    first = ledger.count + 1
    futures = [ledger.append(entry(i)) for i in range(1, n + 1)]
    assert [f.result(10) for f in futures] == list(range(first, first + n))
    head = (ledger.count, ledger.head)
    ledger.close()
    return head


def raw(path: Path) -> sqlite3.Connection:
    """A tamperer's connection: the append-only triggers dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("DROP TRIGGER records_no_delete")
    return conn


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def test_intact_ledger_verifies_with_count_and_head(ledger_path):
    count, head = make_ledger(ledger_path)
    verdict = verify(ledger_path)
    assert verdict.ok and (verdict.count, verdict.head) == (count, head) == (10, head)
    r = run_slm("ledger", "verify", "--db", str(ledger_path))
    assert r.returncode == 0
    assert r.stdout.strip() == f"ok: 10 records, head {head}"


def test_reopening_continues_the_chain(ledger_path):
    make_ledger(ledger_path, 3)
    make_ledger(ledger_path, 4)
    assert verify(ledger_path).count == 7 and verify(ledger_path).ok


def test_concurrent_appends_get_unique_sequential_ids(ledger_path):
    ledger = Ledger(ledger_path)
    ids: list[int] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        for i in range(25):
            got = ledger.append(entry(k * 100 + i)).result(30)
            with lock:
                ids.append(got)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    assert sorted(ids) == list(range(1, 201))
    assert verify(ledger_path).ok


def test_the_database_refuses_update_and_delete(ledger_path):
    make_ledger(ledger_path, 2)
    conn = sqlite3.connect(ledger_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET status = 500 WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM records WHERE id = 2")


def cli_broken_at(path: Path, *extra: str) -> str:
    r = run_slm("ledger", "verify", "--db", str(path), *extra)
    assert r.returncode == 1, r.stdout + r.stderr
    return r.stdout


def test_edited_record_is_named(ledger_path):
    make_ledger(ledger_path)
    raw(ledger_path).execute("UPDATE records SET status = 404 WHERE id = 4")
    assert verify(ledger_path).broken_id == 4
    assert cli_broken_at(ledger_path).startswith("broken at record 4: ")


def test_deleted_record_is_named(ledger_path):
    make_ledger(ledger_path)
    raw(ledger_path).execute("DELETE FROM records WHERE id = 6")
    verdict = verify(ledger_path)
    assert verdict.broken_id == 6 and "missing" in verdict.reason


def test_swapped_records_are_named(ledger_path):
    make_ledger(ledger_path)
    conn = raw(ledger_path)
    rows = {r[0]: r for r in conn.execute(f"SELECT {', '.join(FIELDS)}, hash FROM records "
                                          "WHERE id IN (3, 7)")}
    cols = [*FIELDS[1:], "hash"]
    for target, source in ((3, 7), (7, 3)):
        sets = ", ".join(f"{c} = ?" for c in cols)
        conn.execute(f"UPDATE records SET {sets} WHERE id = ?", (*rows[source][1:], target))
    assert verify(ledger_path).broken_id == 3


def test_forged_appended_record_is_named(ledger_path):
    make_ledger(ledger_path)
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    last = conn.execute("SELECT hash FROM records WHERE id = 10").fetchone()[0]
    values = {**dataclasses.asdict(entry(99)), "id": 11, "ts": "2026-01-01T00:00:00.000Z",
              "prev_hash": last, "entities": "[]", "error_code": None, "finish_reason": "stop",
              "prompt_text": None}
    cols = ", ".join(FIELDS)
    conn.execute(f"INSERT INTO records ({cols}, hash) VALUES ({', '.join('?' * 19)})",
                 (*(values[c] for c in FIELDS), "f" * 64))
    assert verify(ledger_path).broken_id == 11


def test_rewritten_chain_and_removed_tail_are_caught_by_the_logged_head(ledger_path):
    count, head = make_ledger(ledger_path)
    conn = raw(ledger_path)
    # A careful forger recomputes every hash after editing record 2: the chain verifies...
    records = [dict(zip((*FIELDS, "hash"), r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(FIELDS)}, hash FROM records ORDER BY id")]
    prev = "0" * 64
    for record in records:
        if record["id"] == 2:
            record["status"] = 500
        record["prev_hash"] = prev
        record["hash"] = prev = record_hash(record)
        conn.execute("UPDATE records SET status = ?, prev_hash = ?, hash = ? WHERE id = ?",
                     (record["status"], record["prev_hash"], record["hash"], record["id"]))
    assert verify(ledger_path).ok
    # ...but not against the head the service wrote to its log.
    out = cli_broken_at(ledger_path, "--expect", f"{count}:{head}")
    assert "rewritten" in out
    conn.execute("DELETE FROM records WHERE id > 8")
    assert "has 8" in verify(ledger_path, (count, head)).reason


@pytest.mark.parametrize("case", ["missing", "not-sqlite", "truncated", "empty-sqlite"])
def test_unreadable_ledgers_give_one_line_and_exit_2(ledger_path, tmp_path, case):
    if case == "not-sqlite":
        ledger_path.write_bytes(b"definitely not a database" * 100)
    elif case == "truncated":
        make_ledger(ledger_path, 300)
        data = ledger_path.read_bytes()
        ledger_path.write_bytes(data[: len(data) // 3])
    elif case == "empty-sqlite":
        sqlite3.connect(ledger_path).execute("CREATE TABLE other (x)")
    r = run_slm("ledger", "verify", "--db", str(ledger_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("slm: error: ")
    assert "Traceback" not in r.stderr


def test_locked_ledger_gives_one_line_and_exit_2(ledger_path):
    make_ledger(ledger_path, 3)
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        r = run_slm("ledger", "verify", "--db", str(ledger_path))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert r.returncode == 2
    assert "locked" in r.stderr and r.stderr.count("\n") == 1


def test_export_csv_and_jsonl(ledger_path):
    make_ledger(ledger_path, 5)
    r = run_slm("ledger", "export", "--db", str(ledger_path), "--format", "csv")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 6
    assert lines[0].split(",")[:4] == ["id", "ts", "request_id", "endpoint"]
    r = run_slm("ledger", "export", "--db", str(ledger_path), "--format", "jsonl")
    records = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in records] == [1, 2, 3, 4, 5]
    assert records[0]["entities"] == ["EMAIL", "IBAN"]
    assert all(record_hash(x | {"entities": json.dumps(x["entities"])}) == x["hash"]
               for x in records)


def test_export_since_filters_by_time(ledger_path):
    make_ledger(ledger_path, 3)
    later = run_slm("ledger", "export", "--db", str(ledger_path), "--format", "jsonl",
                    "--since", "2999-01-01T00:00:00Z")
    assert later.returncode == 0 and later.stdout == ""
    everything = run_slm("ledger", "export", "--db", str(ledger_path), "--format", "jsonl",
                         "--since", "2000-01-01")
    assert len(everything.stdout.splitlines()) == 3
    bad = run_slm("ledger", "export", "--db", str(ledger_path), "--since", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_export_reads_a_live_ledger_without_blocking_the_writer(ledger_path):
    ledger = Ledger(ledger_path)
    for i in range(50):
        ledger.append(entry(i)).result(10)
    reader = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    cursor = reader.execute("SELECT * FROM records")  # an open read transaction
    cursor.fetchone()
    assert ledger.append(entry(51)).result(5) == 51  # the writer is not blocked
    reader.close()
    ledger.close()


def test_a_lock_held_elsewhere_fails_that_batch_only(ledger_path):
    ledger = Ledger(ledger_path, busy_timeout_ms=200)
    ledger.append(entry(1)).result(5)
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Exception, match="locked"):
            ledger.append(entry(2)).result(10)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ledger.writable
    assert ledger.append(entry(3)).result(5) == 2  # no gap: the failed batch took no id
    ledger.close()
    assert verify(ledger_path).ok


def test_an_unexpected_error_marks_the_ledger_unwritable_instead_of_killing_it(ledger_path):
    ledger = Ledger(ledger_path)
    with pytest.raises(Exception, match="cannot be written"):
        too_big = dataclasses.replace(entry(1), prompt_tokens=2**70)  # no SQLite integer
        ledger.append(too_big).result(5)
    assert not ledger.writable
    with pytest.raises(Exception, match="cannot be written"):
        ledger.append(entry(2)).result(5)  # refused at once, never hangs
    ledger.close()


def test_paths_with_uri_characters_open_the_right_file(tmp_path):
    odd = tmp_path / "%41" / "x#y?z"
    odd.mkdir(parents=True)
    (tmp_path / "A").mkdir()
    make_ledger(odd / "ledger.db", 2)
    make_ledger(tmp_path / "A" / "ledger.db", 5)
    assert verify(odd / "ledger.db").count == 2


def test_csv_export_neutralises_formulas():
    from slm.audit.verify_export import _csv_safe

    assert _csv_safe("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _csv_safe("@cmd") == "'@cmd" and _csv_safe("chat") == "chat" and _csv_safe(5) == 5


def test_verify_reports_odd_rows_without_a_traceback(ledger_path):
    conn = sqlite3.connect(ledger_path)  # a look-alike table with untyped columns
    conn.execute(f"CREATE TABLE records ({', '.join(FIELDS)}, hash)")
    conn.execute("INSERT INTO records (id, hash) VALUES ('one', NULL)")
    conn.commit()
    conn.close()
    r = run_slm("ledger", "verify", "--db", str(ledger_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "broken at record" in r.stdout


def test_tokens_by_key_and_day_sums_each_keys_records_since_a_time(ledger_path):
    from slm.audit.ledger import tokens_by_key_and_day

    assert tokens_by_key_and_day(ledger_path, "2000-01-01") == {}  # no ledger yet
    ledger = Ledger(ledger_path)
    stamped = [("2026-11-30T23:59:59.999Z", "app", 1000), ("2026-12-01T00:00:00.000Z", "app", 3),
               ("2026-12-01T10:00:00.000Z", "app", 4), ("2026-12-02T08:00:00.000Z", "app", 5),
               ("2026-12-02T09:00:00.000Z", None, 6), ("2026-12-02T09:30:00.000Z", "ops", 0)]
    futures = [ledger.append(dataclasses.replace(
        entry(i), ts=ts, api_key_id=name, prompt_tokens=tokens, completion_tokens=None))
        for i, (ts, name, tokens) in enumerate(stamped)]
    for f in futures:
        f.result(10)
    ledger.close()
    assert tokens_by_key_and_day(ledger_path, "2026-12-01") == {
        "app": {"2026-12-01": 7, "2026-12-02": 5}, "": {"2026-12-02": 6},
        "ops": {"2026-12-02": 0}}
