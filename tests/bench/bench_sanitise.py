"""Sanitiser detectors: precision/recall on the labelled corpus, and throughput in MB/s.

Run: ``.venv/bin/python tests/bench/bench_sanitise.py``. Nothing is asserted.

Anchor measured in the same run, on the same text: one ``re.finditer`` pass of a plain email
regex (``[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}``), i.e. the cheapest thing a regex
redactor could do. The ratio says how many times slower the full detector set is than that.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from slm.sanitise.detectors import ENTITY_TYPES, Detector

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support.pii_corpus
from support.pii_corpus import CORPUS, score_corpus  # noqa: E402

ANCHOR = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
TARGET_BYTES = 2_000_000
RUNS = 5

SENTENCES = [
    "The quarterly review covered 14 projects, 3 of which slipped into the next quarter.",
    "Revenue rose 12.5% to 4.2 million while operating costs fell by 310,000 in March.",
    "We shipped version 3.1.4 on 2024-03-15 and plan 47 releases over the next 18 months.",
    "The committee met at 14:30 in room 101 and approved the budget for 2025.",
    "Please read chapter 7, pages 211-227, before the workshop on Thursday.",
    "Latency at the 99th percentile stayed under 250 ms for 28 consecutive days.",
    "Our team of 12 engineers closed 1,432 tickets and reviewed 389 pull requests.",
    "The warehouse holds 18,000 units; restocking takes about 6 weeks from order.",
    "Customers in 34 countries used the service, most of them on mobile devices.",
    "The migration moved 2.3 TB of data and finished 40 minutes ahead of schedule.",
    "Training ran for 3 epochs with a learning rate of 0.0003 and batch size 64.",
    "Board minutes from 15/01/2024 note that the audit found no material issues.",
]
ENTITIES = [
    "Contact alice@example.com for details.",
    "Call +1 650-253-0000 or 020 7946 0018 after 9am.",
    "The card 4111 1111 1111 1111 was declined.",
    "Wire the deposit to DE89 3704 0044 0532 0130 00 by Friday.",
    "The request came from 203.0.113.7 via 2001:db8::1.",
    "Set password=hunter22 in the staging config only.",
    "The key AKIAIOSFODNN7EXAMPLE was rotated yesterday.",
    "SSN 078-05-1123 appears on the scanned form.",
]


def make_text(entity_every: int, seed: int = 7) -> str:
    """Prose of ~TARGET_BYTES with one entity sentence per ``entity_every`` sentences."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < TARGET_BYTES:
        pick = rng.choice(ENTITIES) if len(parts) % entity_every == 0 else rng.choice(SENTENCES)
        parts.append(pick)
        size += len(pick) + 1
    return " ".join(parts)


def best_seconds(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def corpus_scores(detector: Detector) -> None:
    tp, fp, fn = score_corpus(detector)
    lines = CORPUS.read_text().splitlines()
    print(f"corpus: {CORPUS.name}, {len(lines)} lines, exact-span matching")
    print(f"  {'type':16s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'precision':>9s} {'recall':>7s}")
    for t in ENTITY_TYPES:
        p = tp[t] / ((tp[t] + fp[t]) or 1)
        r = tp[t] / ((tp[t] + fn[t]) or 1)
        print(f"  {t:16s} {tp[t]:4d} {fp[t]:4d} {fn[t]:4d} {p:9.3f} {r:7.3f}")
    t_tp, t_fp, t_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    print(f"  {'overall':16s} {t_tp:4d} {t_fp:4d} {t_fn:4d} "
          f"{t_tp / (t_tp + t_fp):9.3f} {t_tp / (t_tp + t_fn):7.3f}")


def throughput(detector: Detector, label: str, text: str) -> None:
    mb = len(text.encode()) / 1e6
    spans = len(detector.find(text))
    full = best_seconds(lambda: detector.find(text))
    no_phone = Detector([t for t in ENTITY_TYPES if t != "PHONE"])
    without_phone = best_seconds(lambda: no_phone.find(text))
    anchor = best_seconds(lambda: sum(1 for _ in ANCHOR.finditer(text)))
    print(f"{label}: {mb:.2f} MB, {spans} spans")
    print(f"  all detectors   {mb / full:8.2f} MB/s")
    print(f"  all but PHONE   {mb / without_phone:8.2f} MB/s")
    print(f"  anchor (email)  {mb / anchor:8.2f} MB/s   ratio: detectors take "
          f"{full / anchor:.1f}x the anchor's time")


def per_type(text: str) -> None:
    mb = len(text.encode()) / 1e6
    print("  per type (each alone):")
    rates = []
    for t in ENTITY_TYPES:
        seconds = best_seconds(lambda t=t: Detector([t]).find(text))
        rates.append((t, mb / seconds))
    for t, rate in rates:
        print(f"    {t:16s} {rate:9.1f} MB/s")
    print(f"    (median {statistics.median(r for _, r in rates):.1f} MB/s)")


def main() -> None:
    detector = Detector()
    corpus_scores(detector)
    print()
    sparse = make_text(entity_every=12)  # ~1 entity sentence per ~1 KB of prose
    throughput(detector, "prose, a few entities (1 per ~1 KB)", sparse)
    per_type(sparse)
    print()
    dense = make_text(entity_every=2)  # every other sentence carries an entity
    throughput(detector, "entity-dense prose (1 per ~150 B)", dense)


if __name__ == "__main__":
    main()
