"""Seed derivation: one place, the same numbers in every process (unlike ``hash`` of a str)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit generator seed, a pure function of ``parts`` (e.g. run seed, step, stream)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1
