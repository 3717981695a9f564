"""One log stream: journald entries with fields when run by systemd, else lines on stderr
(text or JSON).

Prompt and completion text are never logged; request logs carry ids, sizes and timings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from enum import StrEnum
from typing import Any

# Attributes every LogRecord has; anything else passed through ``extra=`` is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD
        )
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")


# fields the handler sets itself (or journal.send's own parameters): a log key of the same
# name is kept as SLM_<NAME> instead of clashing
_RESERVED = frozenset({"MESSAGE", "PRIORITY", "LOGGER", "SYSLOG_IDENTIFIER", "CODE_FILE",
                       "CODE_LINE", "CODE_FUNC", "MESSAGE_ID", "EXCEPTION"})


def journal_field(name: str) -> str:
    """A log field's name as a journal field: REQUEST_ID, TIER, MODEL_SHA256... (only
    A-Z, 0-9 and _, not starting with _ or a digit, at most 64 characters)."""
    field = _FIELD_CHARS.sub("_", name.upper()).lstrip("_") or "FIELD"
    if field[0].isdigit() or field in _RESERVED:
        field = "SLM_" + field
    return field[:64]


class JournalHandler(logging.Handler):
    """One journald entry per record: MESSAGE, PRIORITY, LOGGER and one field per extra."""

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send
        self._fallback: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._fallback is not None:
            self._fallback.handle(record)
            return
        try:
            fields: dict[str, Any] = {
                journal_field(k): v for k, v in vars(record).items() if k not in _STANDARD}
            if record.exc_info:
                fields["EXCEPTION"] = logging.Formatter().formatException(record.exc_info)
            self._send(record.getMessage(), PRIORITY=_PRIORITY.get(record.levelname, 6),
                       LOGGER=record.name, SYSLOG_IDENTIFIER="slm",
                       CODE_FILE=record.pathname, CODE_LINE=record.lineno,
                       CODE_FUNC=record.funcName, **fields)
        except OSError:  # no journal to write to: text on stderr from now on
            self._fallback = logging.StreamHandler(sys.stderr)
            self._fallback.setFormatter(TextFormatter())
            self._fallback.handle(record)
        except Exception:  # noqa: BLE001 - logging must never take the service down
            self.handleError(record)


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd connected (``JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class LogFormat(StrEnum):
    """Where and how log records go."""

    AUTO = "auto"  # the journal when stderr is connected to it, else text
    JOURNAL = "journal"
    JSON = "json"
    TEXT = "text"


def setup_logging(level: str, fmt: str) -> None:
    """Route all logging (ours and uvicorn's) to one place in the chosen format."""
    chosen = LogFormat(fmt)
    if chosen is LogFormat.AUTO:
        chosen = LogFormat.JOURNAL if stderr_is_journal() else LogFormat.TEXT
    handler: logging.Handler
    if chosen is LogFormat.JOURNAL:
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if chosen is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
