"""A shared-memory arena: one memfd mapped by two processes, carved up by the one that writes into it.

One arena per direction per front end: the writer allocates a region, copies a tensor in (the one copy), and names
the region in a frame; the reader maps it as a numpy array without copying and hands the region back (a "free"
in a later frame) once nothing in it references the array any more. Only the writer's event loop touches the
allocator, so it needs no lock. Pages are only backed once touched, but a touched page stays resident (shared
memory, counted against a container's limit) until the front end restarts: an arena costs its high-water mark.
"""

from __future__ import annotations

import bisect
import mmap
import os

ALIGN = 64
"""Regions start on cache-line boundaries (and at any numpy dtype's alignment)."""


def new_memfd(size: int, name: str = "pyserving-arena") -> int:
    """An anonymous shared-memory file of `size` bytes (a child process inherits it through pass_fds)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


class Arena:
    """A mapping of a memfd, and (for the writing side) a first-fit allocator over it."""

    def __init__(self, fd: int) -> None:
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, self.size)
        os.close(fd)  # the mapping keeps the memory alive
        self._free: list[tuple[int, int]] = [(0, self.size)]  # (offset, size), sorted, coalesced
        self._used: dict[int, int] = {}
        self.used_bytes = 0

    def alloc(self, nbytes: int) -> int | None:
        """The offset of a new region of `nbytes`, or None when no free range is big enough (send inline then)."""
        need = (nbytes + ALIGN - 1) // ALIGN * ALIGN or ALIGN
        for i, (off, size) in enumerate(self._free):
            if size >= need:
                if size == need:
                    del self._free[i]
                else:
                    self._free[i] = (off + need, size - need)
                self._used[off] = need
                self.used_bytes += need
                return off
        return None

    def free(self, off: int) -> None:
        """Give a region back; a stale or repeated offset (a peer that restarted) is ignored."""
        size = self._used.pop(off, None)
        if size is None:
            return
        self.used_bytes -= size
        i = bisect.bisect(self._free, (off, size))
        if i < len(self._free) and off + size == self._free[i][0]:  # merge with the next range
            size += self._free[i][1]
            del self._free[i]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == off:  # and with the previous one
            prev_off, prev_size = self._free[i - 1]
            self._free[i - 1] = (prev_off, prev_size + size)
        else:
            self._free.insert(i, (off, size))
