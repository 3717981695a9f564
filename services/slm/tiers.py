"""The three tiers a request can be answered by."""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    """Where an answer comes from: ``A`` this box (llama.cpp on the CPU), ``B`` the GPU
    burst server, ``C`` an allowlisted external API. B and C get only sanitised text."""

    A = "A"
    B = "B"
    C = "C"
