"""Run ``extract`` on an untrusted upload in a child process (``slm extract-text``) with an
address-space limit, a CPU-time limit, the highest OOM score and a wall-clock deadline, so
a decompression bomb or a pathological file costs at most the child. The child sets its
limits itself (with the one-file binary the process started is a launcher whose child does
the work); the deadline kills the child's whole process group. The parent reads one JSON
document back; a parser's own error text goes to the log, not to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
from dataclasses import asdict
from typing import Any

from slm.documents.extract import DocumentKind, Section, extract, rejected
from slm.errors import DocumentRejected
from slm.model.planner import MB  # documents.extract_memory_mb is in MB, as every figure
from slm.ops.self_exec import slm_command

log = logging.getLogger("slm.documents")


async def extract_isolated(kind: DocumentKind, data: bytes, *, max_chars: int,
                           max_unpacked_bytes: int, timeout_s: float,
                           memory_mb: int) -> list[Section]:
    """The document's sections, parsed in a limited child; DocumentRejected on failure."""
    proc = await asyncio.create_subprocess_exec(
        *slm_command(), "extract-text", "--kind", kind, "--max-chars", str(max_chars),
        "--max-unpacked-bytes", str(max_unpacked_bytes), "--memory-mb", str(memory_mb),
        "--cpu-s", str(int(timeout_s) + 1),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
    except TimeoutError:
        raise rejected(f"the document took more than {timeout_s:g} s to read "
                       "(documents.extract_timeout_s)", "document_too_complex") from None
    finally:
        if proc.returncode is None:  # timed out, or the request was cancelled
            _kill_group(proc.pid)  # the one-file binary's launcher has a child of its own
            await proc.wait()
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        log.warning("document parser exited %s: %s", proc.returncode, " | ".join(tail))
        if proc.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
            raise rejected("reading the document was stopped at its CPU or memory limit "
                           "(documents.extract_timeout_s, extract_memory_mb)",
                           "document_too_complex")
        raise rejected("the document could not be read (its parser failed)",
                       "document_corrupt")
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise rejected("the document's parser answered no JSON", "document_corrupt") from None
    if "error" in report:
        error = report["error"]
        raise rejected(error["message"], error["code"], error["status"])
    return [Section(s["where"], s["text"]) for s in report["sections"]]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def limit_self(memory_mb: int, cpu_s: int) -> None:
    """The child's own limits, set before it reads the document: address space, CPU time,
    and first in line for the OOM killer (it shares the service's memory cgroup)."""
    limit = memory_mb * MB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")


def extract_text_main(kind: DocumentKind, max_chars: int, max_unpacked_bytes: int, memory_mb: int,
                      cpu_s: int) -> int:
    """``slm extract-text``: the child's side. Document on stdin, one JSON on stdout."""
    limit_self(memory_mb, cpu_s)
    data = sys.stdin.buffer.read()
    try:
        sections = extract(DocumentKind(kind), data, max_chars=max_chars,
                           max_unpacked_bytes=max_unpacked_bytes)
        report: dict[str, Any] = {"sections": [asdict(s) for s in sections]}
    except DocumentRejected as exc:
        report = {"error": {"message": exc.message, "code": exc.code, "status": exc.status}}
    except MemoryError:
        report = {"error": {"message": "reading the document needed more memory than "
                            "documents.extract_memory_mb allows", "code": "document_too_large",
                            "status": 413}}
    sys.stdout.write(json.dumps(report, ensure_ascii=False))
    return 0
