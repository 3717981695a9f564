"""The device's release order and its record of the newest release served."""

from __future__ import annotations

from pathlib import Path

import pytest
from slm.errors import SignatureError
from slm.model.release_floor import record_served, refuse_downgrade, version_key


def test_versions_order_as_numbers_and_trailing_zeros_do_not_count():
    assert version_key("0.1.0.7") < version_key("0.1.0.10") < version_key("0.2")
    assert version_key("0.1") == version_key("0.1.0") == version_key("0.1.0.0")
    for bad in ("0.2.0rc1", "0.1.0+local", "", "1..2", "v1"):
        with pytest.raises(SignatureError, match="not dotted numbers"):
            version_key(bad)


def test_the_record_only_rises(tmp_path: Path):
    floor = tmp_path / "installed-release"
    assert record_served("0.1.0.7", floor) and floor.read_text() == "0.1.0.7\n"
    assert not record_served("0.1.0.6", floor) and floor.read_text() == "0.1.0.7\n"
    assert record_served("0.1.0.10", floor) and floor.read_text() == "0.1.0.10\n"
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(SignatureError, match="not dotted numbers"):
        record_served("next", floor)  # never recorded: it could not be compared later


def test_a_downgrade_and_a_broken_record_are_refused(tmp_path: Path):
    floor = tmp_path / "installed-release"
    refuse_downgrade("0.1.0.1", floor)  # nothing recorded yet: any release
    floor.write_text("0.1.0.7\n")
    refuse_downgrade("0.1.0.7", floor)
    with pytest.raises(SignatureError, match="older than 0.1.0.7"):
        refuse_downgrade("0.1.0.6", floor)
    with pytest.raises(SignatureError, match="names no release"):
        refuse_downgrade(None, floor)
    floor.write_bytes(b"\xff\xfe")
    with pytest.raises(SignatureError, match="not a version"):
        refuse_downgrade("0.1.0.7", floor)
    floor.write_text("garbage\n")
    with pytest.raises(SignatureError, match="record 'garbage' is not a version"):
        refuse_downgrade("0.1.0.7", floor)
