"""Where the repository's parts are, for tests that read them (README, units, policy)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
