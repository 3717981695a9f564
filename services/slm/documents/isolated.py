"""Run ``extract`` on an untrusted upload in a child process (``slm extract-text``) with an
address-space limit, a CPU-time limit and a wall-clock deadline, so a decompression bomb or
a pathological file costs at most the child. The parent reads one JSON document back.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from dataclasses import asdict
from typing import Any

from slm.documents.extract import Section, extract, rejected
from slm.errors import DocumentRejected
from slm.self_exec import slm_command

MB = 1024 * 1024


async def extract_isolated(kind: str, data: bytes, *, max_chars: int, max_unpacked_bytes: int,
                           timeout_s: float, memory_mb: int) -> list[Section]:
    """The document's sections, parsed in a limited child; DocumentRejected on failure."""
    proc = await asyncio.create_subprocess_exec(
        *slm_command(), "extract-text", "--kind", kind, "--max-chars", str(max_chars),
        "--max-unpacked-bytes", str(max_unpacked_bytes),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    # The limits go on from outside (no preexec_fn in a threaded server); the child reads
    # the document only after its imports, by when they hold.
    limit = memory_mb * MB
    resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
    cpu = int(timeout_s) + 1
    resource.prlimit(proc.pid, resource.RLIMIT_CPU, (cpu, cpu + 1))
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise rejected(f"the document took more than {timeout_s:g} s to read "
                       "(documents.extract_timeout_s)", "document_too_complex") from None
    finally:
        if proc.returncode is None:  # the request was cancelled
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        if proc.returncode < 0:
            raise rejected(f"the document's parser was stopped by signal {-proc.returncode} "
                           "(CPU limit)", "document_too_complex")
        raise rejected(f"the document's parser failed: {last[0]}", "document_corrupt")
    try:
        report: dict[str, Any] = json.loads(out)
    except ValueError:
        raise rejected("the document's parser answered no JSON", "document_corrupt") from None
    if "error" in report:
        error = report["error"]
        raise rejected(error["message"], error["code"], error["status"])
    return [Section(s["where"], s["text"]) for s in report["sections"]]


def extract_text_main(kind: str, max_chars: int, max_unpacked_bytes: int) -> int:
    """``slm extract-text``: the child's side. Document on stdin, one JSON on stdout."""
    data = sys.stdin.buffer.read()
    try:
        sections = extract(kind, data, max_chars=max_chars,
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
