"""`just bench` (ledger part): durable appends/s, added latency per request, replication lag.

Anchor measured in the same run: plain sqlite3 inserts, one durable commit each (WAL,
synchronous=FULL), no chain, no writer thread. Nothing is asserted.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

from slm.audit.ledger import AuditRecord, Ledger
from slm.audit.replication import Replica, Replicator

N_SEQUENTIAL = 300
N_THREADS, N_PER_THREAD = 16, 100


def entry(i: int) -> AuditRecord:
    return AuditRecord(
        request_id=f"bench-{i}", endpoint="chat", tier="A", model="m",
        model_sha256="ab" * 32, status=200, prompt_tokens=30, completion_tokens=100,
        latency_us=123456, prompt_sha256="cd" * 32,
        entities=("EMAIL",), api_key_id="key-0123456789ab")


def raw_sqlite(path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER)")
    began = time.perf_counter()
    for i in range(N_SEQUENTIAL):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (a, b, c) VALUES (?, ?, ?)", ("x" * 64, "y" * 64, i))
        conn.execute("COMMIT")
    took = time.perf_counter() - began
    conn.close()
    return N_SEQUENTIAL / took


def sequential(path: Path) -> tuple[float, float]:
    ledger = Ledger(path)
    latencies = []
    began = time.perf_counter()
    for i in range(N_SEQUENTIAL):
        t0 = time.perf_counter()
        ledger.append(entry(i)).result(30)
        latencies.append(time.perf_counter() - t0)
    took = time.perf_counter() - began
    ledger.close()
    return N_SEQUENTIAL / took, statistics.median(latencies)


def concurrent(path: Path) -> tuple[float, float]:
    ledger = Ledger(path)
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine = []
        for i in range(N_PER_THREAD):
            t0 = time.perf_counter()
            ledger.append(entry(k * 1000 + i)).result(30)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - began
    ledger.close()
    return N_THREADS * N_PER_THREAD / took, statistics.median(latencies)


def replication_lag(work: Path, samples: int = 5) -> list[float]:
    """Commit one record, then time until a new file lands in a file replica."""
    db, replica_dir = work / "lag.db", work / "replica"
    ledger = Ledger(db, app_checkpoints=False)
    replicator = Replicator(Replica(f"file://{replica_dir}", sync_interval_s=1.0), db)
    replicator.start()
    lags = []
    try:
        ledger.append(entry(0)).result(10)
        time.sleep(2.5)  # first snapshot
        for i in range(samples):
            before = sum(1 for p in replica_dir.rglob("*") if p.is_file())
            committed = time.perf_counter()
            ledger.append(entry(i + 1)).result(10)
            while sum(1 for p in replica_dir.rglob("*") if p.is_file()) == before:
                if time.perf_counter() - committed > 30:
                    break
                time.sleep(0.01)
            lags.append(time.perf_counter() - committed)
            time.sleep(0.3)
    finally:
        replicator.stop()
        ledger.close()
    return lags


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="slm-bench-ledger-", dir=Path.home()) as tmp:
        work = Path(tmp)
        anchor = raw_sqlite(work / "raw.db")
        seq_rate, seq_latency = sequential(work / "seq.db")
        con_rate, con_latency = concurrent(work / "con.db")
        lags = replication_lag(work)
    print(f"\nAudit ledger (WAL, synchronous=FULL, on {Path.home()}'s file system)")
    print(f"{'path':52} {'appends/s':>10} {'ratio':>7} {'median latency':>15}")
    print(f"{'plain sqlite3, one durable commit per row (anchor)':52} {anchor:10.0f} "
          f"{1.0:7.3f} {'':>15}")
    print(f"{'ledger, one request at a time':52} {seq_rate:10.0f} {seq_rate / anchor:7.3f} "
          f"{seq_latency * 1000:12.2f} ms")
    print(f"{f'ledger, {N_THREADS} concurrent requests (group commit)':52} {con_rate:10.0f} "
          f"{con_rate / anchor:7.3f} {con_latency * 1000:12.2f} ms")
    print(f"added latency per request = one durable append: {seq_latency * 1000:.2f} ms")
    print(f"replication lag to a file replica (sync-interval 1 s): median "
          f"{statistics.median(lags):.2f} s, max {max(lags):.2f} s over {len(lags)} commits")


if __name__ == "__main__":
    main()
