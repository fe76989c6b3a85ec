"""Rate-limit buckets shared by every front-end process, so that a caller's limit holds for the whole server
rather than per process: a small open-addressing table in one memfd that the model process creates and each front
end maps, each update under a POSIX record lock (released by the kernel if a front end dies holding it)."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os

import numpy as np

SLOTS = 1 << 16
"""Callers tracked at once (1.5 MiB); past that, a caller's bucket is kept per process (the old behaviour)."""
_DTYPE = np.dtype([("key", "<u8"), ("tokens", "<f8"), ("updated", "<f8")])
_PROBES = 64


def new_bucket_table() -> int:
    """The memfd of an empty table, for the model process to hand every front end."""
    fd = os.memfd_create("pyserving-rate-limits", os.MFD_CLOEXEC)
    os.ftruncate(fd, SLOTS * _DTYPE.itemsize)
    return fd


class SharedBuckets:
    """Token buckets by rate key in a shared table; `take` is Authenticator's hook for a request's token."""

    def __init__(self, fd: int) -> None:
        self._fd = fd  # kept open: the record lock is taken on it
        self._map = mmap.mmap(fd, SLOTS * _DTYPE.itemsize)
        self._table = np.frombuffer(self._map, _DTYPE)
        self._local: dict[str, tuple[float, float]] = {}

    @staticmethod
    def _hash(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little") or 1  # 0 marks a free slot

    def take(self, key: str, burst: float, per_second: float, now: float) -> float:
        """Take one token of `key`'s bucket: 0.0 if there was one, else the seconds until there will be."""
        h = self._hash(key)
        start = h % SLOTS
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            for i in range(_PROBES):
                slot = self._table[(start + i) % SLOTS]
                if slot["key"] == 0:
                    slot["key"], slot["tokens"], slot["updated"] = h, burst, now
                if slot["key"] == h:
                    tokens = min(burst, float(slot["tokens"]) + max(0.0, now - float(slot["updated"])) * per_second)
                    wait = self._spend(tokens, per_second)
                    slot["tokens"], slot["updated"] = tokens - (1.0 if not wait else 0.0), now
                    return wait
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        tokens, updated = self._local.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - updated) * per_second)
        wait = self._spend(tokens, per_second)
        self._local[key] = (tokens - (1.0 if not wait else 0.0), now)
        return wait

    @staticmethod
    def _spend(tokens: float, per_second: float) -> float:
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / per_second
