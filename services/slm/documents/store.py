"""Ingested documents in memory: sanitised text cut into token-sized chunks that keep
where they came from, each document dropped at its time-to-live; and the context a chat
request gets from the documents it names (the chunks that best match its question, within
a token budget, numbered so the answer can cite them).

Only sanitised text is kept (the placeholders' originals are not), never the upload, and
never on disk: a restart forgets every document.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from slm.documents.extract import DocumentKind, Section, rejected
from slm.errors import NotFound

_WORD = re.compile(r"\w+", re.UNICODE)
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document that fits ``chunk_tokens``, with its words counted once
    (for ranking, without re-reading the text on every chat request)."""

    index: int
    where: str
    text: str
    tokens: int
    words: Counter[str] = field(default_factory=Counter, compare=False, repr=False)


def _chunk(index: int, where: str, text: str, tokens: int) -> Chunk:
    return Chunk(index, where, text, tokens, Counter(w.lower() for w in _WORD.findall(text)))


@dataclass
class Document:
    """An ingested document: its chunks and facts about it."""

    id: str
    filename: str
    kind: DocumentKind
    size_bytes: int
    sha256: str
    chunks: list[Chunk]
    entities: dict[str, int]
    owner: str | None = None  # the API key id that uploaded it (None without keys)
    created_at: int = field(default_factory=lambda: int(time.time()))
    expires_at: float = 0.0  # time.monotonic() deadline
    ttl_s: float = 0.0

    @property
    def characters(self) -> int:
        return sum(len(c.text) for c in self.chunks)

    def card(self) -> dict[str, Any]:
        """The JSON description returned by the API."""
        return {
            "id": self.id, "object": "document", "filename": self.filename, "kind": self.kind,
            "bytes": self.size_bytes, "sha256": self.sha256, "created_at": self.created_at,
            "expires_at": self.created_at + int(self.ttl_s), "chunks": len(self.chunks),
            "tokens": sum(c.tokens for c in self.chunks), "characters": self.characters,
            "sanitised": self.entities,
        }


def make_chunks(sections: Iterable[Section], tokenize: Callable[[str], list[int]],
                chunk_tokens: int) -> list[Chunk]:
    """Pack each section's paragraphs into chunks of at most ``chunk_tokens`` tokens; a
    chunk never spans two sections, so its ``where`` stays exact."""
    chunks: list[Chunk] = []
    for section in sections:
        pieces: list[tuple[str, int]] = []
        for paragraph in _PARAGRAPH.split(section.text):
            paragraph = paragraph.strip()
            if paragraph:
                pieces += _split(paragraph, tokenize, chunk_tokens)
        text, tokens = "", 0
        for piece, n in pieces:
            if text and tokens + n > chunk_tokens:
                chunks.append(_chunk(len(chunks), section.where, text, tokens))
                text, tokens = "", 0
            text = f"{text}\n\n{piece}" if text else piece
            tokens += n
        if text:
            chunks.append(_chunk(len(chunks), section.where, text, tokens))
    return chunks


def _split(paragraph: str, tokenize: Callable[[str], list[int]],
           chunk_tokens: int) -> list[tuple[str, int]]:
    """A paragraph as (text, tokens) pieces of at most ``chunk_tokens`` tokens each."""
    n = len(tokenize(paragraph))
    if n <= chunk_tokens:
        return [(paragraph, n)]
    words = paragraph.split()
    if len(words) < 2:  # one enormous "word": cut by characters
        half = len(paragraph) // 2
        return (_split(paragraph[:half], tokenize, chunk_tokens)
                + _split(paragraph[half:], tokenize, chunk_tokens))
    parts = math.ceil(n / chunk_tokens) + 1
    size = math.ceil(len(words) / parts)
    out: list[tuple[str, int]] = []
    for start in range(0, len(words), size):
        out += _split(" ".join(words[start:start + size]), tokenize, chunk_tokens)
    return out


class DocumentStore:
    """The documents held for chat requests, each until its time-to-live; at most
    ``max_chars`` characters in all (a new document beyond that gets 429)."""

    def __init__(self, ttl_s: float, max_chars: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_chars = max_chars
        self._clock = clock
        self._docs: dict[str, Document] = {}

    def new_id(self) -> str:
        return "doc_" + secrets.token_hex(12)

    def purge(self) -> int:
        """Forget every expired document; how many were dropped."""
        now = self._clock()
        expired = [d for d, doc in self._docs.items() if doc.expires_at <= now]
        for doc_id in expired:
            del self._docs[doc_id]
        return len(expired)

    @property
    def characters(self) -> int:
        return sum(doc.characters for doc in self._docs.values())

    def add(self, doc: Document) -> Document:
        self.purge()
        if self.characters + doc.characters > self.max_chars:
            raise rejected(
                f"the document store is full ({self.characters} of {self.max_chars} "
                "characters held; documents.max_stored_chars); delete documents or wait "
                "for their time-to-live", "document_store_full", 429)
        doc.ttl_s = self.ttl_s
        doc.expires_at = self._clock() + self.ttl_s
        self._docs[doc.id] = doc
        return doc

    def get(self, doc_id: str, owner: str | None = None) -> Document:
        """The document, if it exists and ``owner`` uploaded it (404 otherwise: another
        key's document does not exist for this one)."""
        self.purge()
        doc = self._docs.get(doc_id)
        if doc is None or doc.owner != owner:
            raise NotFound(f"no document {doc_id!r} (unknown, deleted or past its "
                           "time-to-live)", param="documents", code="document_not_found")
        return doc

    def delete(self, doc_id: str, owner: str | None = None) -> None:
        self.get(doc_id, owner)
        del self._docs[doc_id]

    def all(self, owner: str | None = None) -> list[Document]:
        self.purge()
        return [doc for doc in self._docs.values() if doc.owner == owner]

    def __len__(self) -> int:
        return len(self._docs)


@dataclass(frozen=True)
class Citation:
    """Which excerpt ``[ref]`` of a chat request's context is."""

    ref: int
    document: str
    filename: str
    chunk: int
    where: str

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "document": self.document, "filename": self.filename,
                "chunk": self.chunk, "where": self.where}


CONTEXT_PREAMBLE = (
    "Answer using the document excerpts below. Cite each excerpt you use by its number in "
    "square brackets, like [1]. If the excerpts do not contain the answer, say so.")


MAX_EXCERPTS = 24  # a question gets at most this many excerpts (and citations)


def select_context(docs: list[Document], question: str, budget_tokens: int,
                   count_tokens: Callable[[str], int]) -> tuple[str, list[Citation]]:
    """The context text for ``question`` from ``docs`` and what its numbers cite.

    Chunks are ranked by the question's words they contain (weighted by how rare each
    word is among the chunks), taken while they and their label lines fit
    ``budget_tokens`` (labels counted with ``count_tokens``), at most ``MAX_EXCERPTS``,
    then put back in document order. With no overlap at all, the beginnings are taken.
    """
    candidates = [(d, c) for d in docs for c in d.chunks]
    asked = {w.lower() for w in _WORD.findall(question)}
    seen_in = Counter(w for _, c in candidates for w in asked if w in c.words)
    total = len(candidates)

    def score(i: int) -> float:
        words = candidates[i][1].words
        return sum(math.log(1 + total / seen_in[w]) * (1 + math.log(words[w]))
                   for w in asked if words.get(w))

    def label(doc: Document, chunk: Chunk, ref: int) -> str:
        return f"[{ref}] {doc.filename}, {chunk.where}:"

    used = count_tokens(CONTEXT_PREAMBLE)
    chosen: list[int] = []
    for i in sorted(range(total), key=lambda i: (-score(i), i)):
        doc, chunk = candidates[i]
        tokens = chunk.tokens + count_tokens(label(doc, chunk, len(chosen) + 1)) + 2
        if used + tokens <= budget_tokens:
            chosen.append(i)
            used += tokens
            if len(chosen) == MAX_EXCERPTS:
                break
    chosen.sort()
    parts, cites = [CONTEXT_PREAMBLE], []
    for ref, i in enumerate(chosen, start=1):
        doc, chunk = candidates[i]
        parts.append(f"{label(doc, chunk, ref)}\n{chunk.text}")
        cites.append(Citation(ref, doc.id, doc.filename, chunk.index, chunk.where))
    return "\n\n".join(parts), cites
