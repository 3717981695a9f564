"""Stop sequences on streamed text: emit what is safe, hold back what might become a stop.

The matcher holds back only the longest tail of the pending text that is a prefix of some
stop string, so streaming stays as live as the stop strings allow.
"""

from __future__ import annotations


class StopMatcher:
    """Feed generated text in pieces; get back the text to emit and whether a stop was hit."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return the part that can be emitted now.

        After a stop string is found, ``stopped`` is True, the returned text ends right
        before it, and the rest is dropped.
        """
        if self.stopped:
            return ""
        if not self._stops:
            return text
        pending = self._pending + text
        first = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:first]
        keep = self._held_back(pending)
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of generation without a stop."""
        out, self._pending = self._pending, ""
        return out

    def _held_back(self, pending: str) -> int:
        """Length of the longest suffix of ``pending`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(pending)), longest, -1):
                if stop.startswith(pending[-n:]):
                    longest = n
                    break
        return longest
