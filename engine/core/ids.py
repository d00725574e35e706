"""Time-ordered string ids, so rows sort in insertion order by id alone."""

from __future__ import annotations

import hashlib
import os
import threading

from engine.core import clock

__all__ = ["derived_id", "new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase: sorts like the number
_lock = threading.Lock()
_last_ms = 0
_STEP_BACK_MS = 10_000
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id() -> str:
    """Return a 26-character ULID-style id: 48 bits of milliseconds, then 80 bits of entropy.

    Within one process, ids made in the same millisecond increment the entropy instead of
    drawing it again, so ids from one writer are strictly increasing.
    """
    global _last_ms, _last_rand
    with _lock:
        now_ms = clock.time_ns() // 1_000_000
        # Strictly increasing within a process, except after the clock went back far (a
        # correction of engine.core.clock, a stepped clock): then ids follow the clock again
        # instead of staying ahead of every other process's.
        if _last_ms - _STEP_BACK_MS < now_ms <= _last_ms:
            now_ms = _last_ms
            _last_rand += 1
        else:
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
        _last_ms = now_ms
        return _encode(now_ms, 10) + _encode(_last_rand, 16)


def derived_id(at_ms: int, seed: str) -> str:
    """A ``new_id``-shaped id fixed by its inputs.

    The time part comes from ``at_ms``, the rest from a hash of ``seed``. Rows written again by a
    retried transaction get the same id, so a conflict-ignoring insert stores them once.
    """
    entropy = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=10).digest(), "big")
    return _encode(at_ms, 10) + _encode(entropy, 16)
