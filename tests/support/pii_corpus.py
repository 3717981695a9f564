"""The labelled PII corpus (tests/data/pii_corpus.jsonl) and its exact-span scoring, shared by
the detector tests and `just bench`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from slm.sanitise.detectors import Detector

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"


def score_corpus(detector: Detector) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """True positives, false positives and false negatives per type (exact spans only)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for line in CORPUS.read_text().splitlines():
        record = json.loads(line)
        gold = {(e["type"], e["start"], e["end"]) for e in record["entities"]}
        got = {(s.type, s.start, s.end) for s in detector.find(record["text"])}
        tp.update(t for t, _, _ in gold & got)
        fp.update(t for t, _, _ in got - gold)
        fn.update(t for t, _, _ in gold - got)
    return tp, fp, fn
