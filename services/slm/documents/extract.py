"""Text out of an uploaded document: PDF (pypdf), DOCX (python-docx), XLSX (openpyxl),
Markdown and plain text. Each document becomes ``Section``s that remember where they came
from (page, heading, sheet and rows), so the chunks made from them can be cited.

This runs in a child process with memory and CPU limits (``slm.documents.isolated``):
the parsers read untrusted files, and a zip bomb or a pathological PDF must not take the
Doorman's memory or time.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath

from slm.errors import DocumentRejected


class DocumentKind(StrEnum):
    """The document formats read."""

    PDF = "pdf"
    DOCX = "docx"
    XLSX = "xlsx"
    MARKDOWN = "markdown"
    TEXT = "text"


_EXTENSIONS = {".pdf": DocumentKind.PDF, ".docx": DocumentKind.DOCX,
               ".xlsx": DocumentKind.XLSX, ".md": DocumentKind.MARKDOWN,
               ".markdown": DocumentKind.MARKDOWN, ".txt": DocumentKind.TEXT}
_CONTENT_TYPES = {
    "application/pdf": DocumentKind.PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document":
        DocumentKind.DOCX,
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": DocumentKind.XLSX,
    "text/markdown": DocumentKind.MARKDOWN, "text/x-markdown": DocumentKind.MARKDOWN,
    "text/plain": DocumentKind.TEXT,
}
_MAGIC = {DocumentKind.PDF: b"%PDF-", DocumentKind.DOCX: b"PK\x03\x04",
          DocumentKind.XLSX: b"PK\x03\x04"}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # encrypted OOXML, or legacy .doc / .xls
_ROWS_PER_SECTION = 50


@dataclass(frozen=True)
class Section:
    """A stretch of a document's text and where it is (``page 3``, ``sheet Q1 rows 1-50``)."""

    where: str
    text: str


def rejected(message: str, code: str, status: int = 400) -> DocumentRejected:
    return DocumentRejected(message, param="file", code=code, status=status)


def detect_kind(name: str, content_type: str | None, data: bytes) -> DocumentKind:
    """The document's kind from its extension or content type, checked against its bytes."""
    kind = _EXTENSIONS.get(PurePath(name).suffix.lower())
    if kind is None and content_type:
        kind = _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    if data.startswith(_OLE_MAGIC):
        raise rejected(f"{name}: an encrypted (password-protected) or legacy binary Office "
                       "file; save it unencrypted as .docx or .xlsx", "document_encrypted")
    if kind is None:
        raise rejected(f"{name}: unsupported type; send PDF, DOCX, XLSX, Markdown or text",
                       "unsupported_document_type")
    expected = _MAGIC.get(kind)
    if expected and not data.lstrip(b"\r\n\t \x00")[:8].startswith(expected):
        raise rejected(f"{name}: not a {kind.upper()} file (its first bytes do not match)",
                       "document_corrupt")
    return kind


class _Budget:
    """Counts the characters taken so far; a document beyond ``max_chars`` is refused."""

    def __init__(self, max_chars: int) -> None:
        self.left = max_chars
        self.max_chars = max_chars

    def take(self, text: str) -> str:
        self.left -= len(text)
        if self.left < 0:
            raise rejected(f"the document holds more than {self.max_chars} characters of "
                           "text (documents.max_chars)", "document_too_large", 413)
        return text


def extract(kind: DocumentKind, data: bytes, *, max_chars: int,
            max_unpacked_bytes: int) -> list[Section]:
    """The document's sections with non-empty text, in reading order."""
    budget = _Budget(max_chars)
    if kind in (DocumentKind.DOCX, DocumentKind.XLSX):
        _check_zip(data, max_unpacked_bytes)
    readers = {DocumentKind.PDF: _pdf, DocumentKind.DOCX: _docx, DocumentKind.XLSX: _xlsx,
               DocumentKind.MARKDOWN: _markdown, DocumentKind.TEXT: _markdown}
    parts = readers[DocumentKind(kind)](data)
    sections = [Section(" ".join(where.split())[:80], budget.take(text.strip()))
                for where, text in parts if text.strip()]
    if not sections:
        raise rejected("the document has no extractable text (a scanned PDF needs OCR, "
                       "which is not done here)", "document_empty")
    return sections


def _check_zip(data: bytes, max_unpacked_bytes: int) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError) as exc:
        raise rejected(f"corrupt Office file: {exc}", "document_corrupt") from None
    if unpacked > max_unpacked_bytes:
        raise rejected(f"the document unpacks to {unpacked} bytes, over the "
                       f"{max_unpacked_bytes}-byte limit", "document_too_large", 413)


def _pdf(data: bytes) -> Iterator[tuple[str, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):  # an owner password alone is fine
            raise rejected("the PDF is encrypted with a password", "document_encrypted")
        for number, page in enumerate(reader.pages, start=1):
            yield f"page {number}", page.extract_text() or ""
    except DocumentRejected:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise rejected(f"corrupt PDF: {exc}", "document_corrupt") from None
    except NotImplementedError as exc:  # an encryption scheme pypdf cannot open
        raise rejected(f"the PDF cannot be opened: {exc}", "document_encrypted") from None


def _docx(data: bytes) -> Iterator[tuple[str, str]]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise rejected(f"corrupt DOCX: {exc}", "document_corrupt") from None
    heading: str | None = None
    lines: list[str] = []
    for paragraph in document.paragraphs:
        style = paragraph.style.name if paragraph.style is not None else ""
        if style.startswith("Heading") or style == "Title":
            yield _section(heading), "\n".join(lines)
            heading, lines = paragraph.text.strip() or heading, []
        lines.append(paragraph.text)
    yield _section(heading), "\n".join(lines)
    for number, table in enumerate(document.tables, start=1):
        rows = (" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows)
        yield f"table {number}", "\n".join(rows)


def _xlsx(data: bytes) -> Iterator[tuple[str, str]]:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise rejected(f"corrupt XLSX: {exc}", "document_corrupt") from None
    try:
        for sheet in workbook.worksheets:
            first, lines = 0, []
            for number, row in enumerate(sheet.iter_rows(values_only=True), start=1):
                cells = ["" if v is None else str(v) for v in row]
                if any(cells):
                    first = first or number
                    lines.append(" | ".join(cells).rstrip(" |"))
                if len(lines) == _ROWS_PER_SECTION:
                    yield f"sheet {sheet.title!r} rows {first}-{number}", "\n".join(lines)
                    first, lines = 0, []
            if lines:
                yield f"sheet {sheet.title!r} rows {first}-{number}", "\n".join(lines)
    finally:
        workbook.close()


def _section(heading: str | None) -> str:
    return "start" if heading is None else f"section {heading!r}"


_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")


def _markdown(data: bytes) -> Iterator[tuple[str, str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise rejected(f"not UTF-8 text (byte {exc.start})", "document_corrupt") from None
    if "\x00" in text:
        raise rejected("not a text file (it contains NUL bytes)", "document_corrupt")
    heading: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        found = _HEADING.match(line)
        if found:
            yield _section(heading), "\n".join(lines)
            heading, lines = found.group(1), []
        lines.append(line)
    yield _section(heading), "\n".join(lines)
