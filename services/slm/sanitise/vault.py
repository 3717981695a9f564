"""One request's placeholder map: redact text on the way out, rehydrate answers coming back.

A :class:`Vault` belongs to exactly one request and dies with it: it is never stored on a
shared object, logged or written to the ledger. Placeholders look like ``[EMAIL_3f9c0a1b]``:
the same value gets the same placeholder within the request, and the 32 random bits make
them unguessable across requests. Rehydration replaces only placeholders this vault issued;
anything else that looks like one (a mangled placeholder, another request's) stays as is.
"""

from __future__ import annotations

import collections
import json
import re
import secrets

from slm.sanitise.detectors import Detector, Span

PLACEHOLDER = re.compile(r"\[[A-Z][A-Z0-9_]{0,31}_[0-9a-f]{8}\]")


class Vault:
    """Placeholders of one request, both ways."""

    def __init__(self, detector: Detector) -> None:
        self._detector = detector
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self.counts: collections.Counter[str] = collections.Counter()

    # -- redaction -----------------------------------------------------------------------

    def _placeholder(self, kind: str, value: str) -> str:
        known = self._by_value.get((kind, value))
        if known is not None:
            return known
        while True:
            candidate = f"[{kind}_{secrets.token_hex(4)}]"
            if candidate not in self._by_placeholder:
                break
        self._by_value[(kind, value)] = candidate
        self._by_placeholder[candidate] = value
        return candidate

    def redact(self, text: str, *, json_text: bool = False) -> str:
        """``text`` with every detected entity replaced by its placeholder. With
        ``json_text`` the text is a JSON document (tool-call arguments): values found inside
        its strings are kept unescaped, so they rehydrate correctly anywhere."""
        return self.replace(text, self._detector.find(text), json_text=json_text)

    def replace(self, text: str, spans: list[Span], *, json_text: bool = False) -> str:
        """``text`` with the given (sorted, non-overlapping) spans replaced."""
        if not spans:
            return text
        out, pos = [], 0
        for span in spans:
            out.append(text[pos:span.start])
            value = text[span.start:span.end]
            if json_text and "\\" in value:
                try:
                    value = json.loads(f'"{value}"')
                except ValueError:  # not inside one JSON string: keep it as written
                    pass
            out.append(self._placeholder(span.type, value))
            self.counts[span.type] += 1
            pos = span.end
        out.append(text[pos:])
        return "".join(out)

    @property
    def entity_types(self) -> list[str]:
        """The types of every entity replaced so far, sorted."""
        return sorted(self.counts)

    # -- rehydration ---------------------------------------------------------------------

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(self._by_placeholder)

    @property
    def longest(self) -> int:
        """Length of the longest placeholder issued (0 when none)."""
        return max((len(p) for p in self._by_placeholder), default=0)

    def rehydrate(self, text: str, *, json_escape: bool = False) -> str:
        """``text`` with this vault's placeholders replaced by the original values;
        ``json_escape`` escapes the values for the inside of a JSON string literal."""
        if not self._by_placeholder or "[" not in text:
            return text

        def original(match: re.Match[str]) -> str:
            value = self._by_placeholder.get(match.group(0))
            if value is None:
                return match.group(0)
            return json.dumps(value, ensure_ascii=False)[1:-1] if json_escape else value

        return PLACEHOLDER.sub(original, text)

    def stream(self, *, json_escape: bool = False) -> StreamRehydrator:
        """A rehydrator for one streamed text field."""
        return StreamRehydrator(self, json_escape=json_escape)


class StreamRehydrator:
    """Rehydrates text that arrives in pieces, holding back only a tail that could still
    become one of the vault's placeholders (so time to first token stays as it was)."""

    def __init__(self, vault: Vault, *, json_escape: bool = False) -> None:
        self._vault = vault
        self._json_escape = json_escape
        self._pending = ""

    def _hold_from(self, text: str) -> int:
        """Index from which ``text`` must wait for more (len(text) when nothing must)."""
        longest = self._vault.longest
        if not longest:
            return len(text)
        start = max(0, len(text) - longest + 1)
        pos = text.find("[", start)
        while pos != -1:
            tail = text[pos:]
            if any(len(tail) < len(p) and p.startswith(tail) for p in self._vault.placeholders):
                return pos
            pos = text.find("[", pos + 1)
        return len(text)

    def feed(self, piece: str) -> str:
        """The text that can go out now, given the next ``piece``."""
        text = self._pending + piece
        cut = self._hold_from(text)
        self._pending = text[cut:]
        return self._vault.rehydrate(text[:cut], json_escape=self._json_escape)

    def flush(self) -> str:
        """Whatever is still held back (the stream ended)."""
        text, self._pending = self._pending, ""
        return self._vault.rehydrate(text, json_escape=self._json_escape)
