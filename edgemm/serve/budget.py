"""The server's memory budget: bytes of decoding in flight across all requests, and returning them.

A decoded photo costs far more than its upload (a 105 KB PNG can decode to 96 MB), so the
number of requests is no bound on memory. Every request therefore acquires its decode's
worst-case memory from one server-wide :class:`MemoryBudget` before decoding starts, and keeps
what its decoded inputs still hold until its answer is sent; requests that do not fit wait, in
arrival order, until their deadline.

The budget is derived from the memory limit of the unit: ``--memory-max`` when given, else the
cgroup limit of this process (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, the tightest of
its cgroup and their ancestors), else :data:`DEFAULT_MEMORY_MAX`; of what the model leaves
(measured once it is loaded), :data:`DECODE_SHARE` goes to decoding. ``--decode-budget`` sets it
outright.

Freed memory must also leave the process: glibc keeps freed heap memory in its arenas, and by
default raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
which Pillow's 16 MiB image blocks are carved from arenas that are never given back.
:func:`bound_allocator` fixes the threshold and caps the arenas (the systemd unit sets the same
through ``MALLOC_*`` variables).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import math
import os
import re
import time
from pathlib import Path

from edgemm.errors import UsageError
from edgemm.serve.httperrors import api_error

log = logging.getLogger("edgemm.serve")

MIB = 2**20
# The shipped unit's MemoryMax: the limit assumed when neither --memory-max nor a cgroup gives one
# (never more than half the machine's memory).
DEFAULT_MEMORY_MAX = 2 * 2**30
# Of what the model leaves under the limit, the part that decoding may hold; the rest is for
# request bodies, inference activations, the Python heap and a bundle swap's second model.
DECODE_SHARE = 0.5
# Never less than this, even when the model leaves less (one 12 MP JPEG decodes in ~50 MB).
MIN_DECODE_BUDGET = 64 * MIB
# cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); anything above is none.
_NO_LIMIT = 2**60

# glibc mallopt parameters (malloc.h) and the values edgemm serve runs with.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks from 1 MiB up (image blocks, decoder buffers, request bodies) are mmap'd and given back
# to the system when freed; a fixed threshold also stops glibc from raising it after each free.
MMAP_THRESHOLD = MIB
# One arena per thread (the default, up to 8 per core) multiplies what fragmentation keeps.
ARENA_MAX = 2

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, what: str) -> int:
    """Bytes in a size written the way systemd writes ``MemoryMax``: ``2G``, ``1500M``, ``1.5G``, ``800000000``.

    Args:
        text: The size: a number, optionally with a binary unit K, M, G or T.
        what: The option it came from, for the message (``"--memory-max"``).

    Returns:
        The size in bytes.

    Raises:
        UsageError: ``text`` is not such a size, or is zero.
    """
    match = _SIZE.match(text.strip())
    size = int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0
    if size <= 0:
        raise UsageError(f"{what} {text!r} is not a size such as 1500M or 2G.",
                         hint="A number of bytes, optionally with K, M, G or T (powers of 1024).")
    return size


def cgroup_memory_limit(proc: Path = Path("/proc/self"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors, in bytes.

    Args:
        proc: The ``/proc`` directory of the process (its ``cgroup`` file names its cgroups).
        root: Where the cgroup file systems are mounted.

    Returns:
        The smallest ``memory.max`` (cgroup v2) or ``memory.limit_in_bytes`` (v1) on the way from
        the process's cgroup up to the root, or ``None`` when none sets a limit or none is readable.
    """
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:  # v2 (possibly beside v1, mounted at unified/)
            bases, name = (root, root / "unified"), "memory.max"
        elif "memory" in controllers.split(","):
            bases, name = (root / "memory",), "memory.limit_in_bytes"
        else:
            continue
        relative = Path(path.lstrip("/"))
        for base in bases:
            for directory in (base / relative, *(base / parent for parent in relative.parents)):
                try:
                    text = (directory / name).read_text().strip()
                except OSError:
                    continue
                if text.isdigit() and int(text) < _NO_LIMIT:
                    limits.append(int(text))
    return min(limits) if limits else None


def resident_bytes() -> int:
    """This process's resident memory (``VmRSS``) in bytes; 0 where ``/proc`` does not tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit(memory_max: int | None) -> tuple[int, str]:
    """The memory limit the server lives under, and where it came from.

    Args:
        memory_max: ``--memory-max`` in bytes, or ``None``.

    Returns:
        ``(bytes, source)``: ``memory_max``; else the cgroup's limit; else
        :data:`DEFAULT_MEMORY_MAX`, or half the machine's memory when that is less.
    """
    if memory_max is not None:
        return memory_max, "--memory-max"
    limit = cgroup_memory_limit()
    if limit is not None:
        return limit, "the cgroup's memory limit"
    physical = _physical_memory()
    if physical is not None and physical // 2 < DEFAULT_MEMORY_MAX:
        return physical // 2, "half of this machine's memory"
    return DEFAULT_MEMORY_MAX, "the default"


class Lease:
    """Bytes of a :class:`MemoryBudget` held for one request, by one or more holders.

    The request handler holds it from acquisition until its answer is sent; the batcher holds
    it too while the request waits for or is in a model call. The bytes go back when the last
    holder releases it.

    Attributes:
        nbytes: The bytes held now.
    """

    def __init__(self, budget: MemoryBudget, nbytes: int):
        self._budget = budget
        self.nbytes = nbytes
        self._holders = 1

    def add_holder(self) -> None:
        """One more holder; each holder calls :meth:`release` once.

        Raises:
            RuntimeError: The lease was already released by its last holder.
        """
        if self._holders == 0:
            raise RuntimeError("The lease was already released.")
        self._holders += 1

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` (what the decoded inputs still hold); the rest goes back now."""
        if self._holders and 0 <= nbytes < self.nbytes:
            self._budget._give(self.nbytes - nbytes)
            self.nbytes = nbytes

    def release(self) -> None:
        """One holder lets go; the last one gives the bytes back (later calls do nothing)."""
        if self._holders == 0:
            return
        self._holders -= 1
        if self._holders == 0:
            self._budget._give(self.nbytes)
            self.nbytes = 0


class MemoryBudget:
    """A weighted semaphore of bytes on the event loop.

    Waiting requests are granted in arrival order among those that fit: a cheap request (a
    camera JPEG, decoded at reduced scale) never waits behind an expensive one (a screen-sized
    PNG), and an expensive one waits for room, up to its deadline.

    Its capacity is ``decode_budget`` when given; otherwise it is sized when first used (the
    model is loaded by then: requests are refused until it is): :data:`DECODE_SHARE` of what the
    memory limit (see :func:`memory_limit`) leaves above this process's resident memory, at
    least :data:`MIN_DECODE_BUDGET`.

    Args:
        decode_budget: The capacity in bytes, or ``None`` to derive it.
        memory_max: The memory limit in bytes (``--memory-max``), or ``None`` to find it.

    Attributes:
        in_use: Bytes granted and not yet given back.
    """

    def __init__(self, *, decode_budget: int | None = None, memory_max: int | None = None):
        self._capacity = decode_budget
        self._memory_max = memory_max
        self.in_use = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def capacity(self) -> int:
        """The budget in bytes (sized on first use; see the class docstring)."""
        if self._capacity is None:
            limit, source = memory_limit(self._memory_max)
            resident = resident_bytes()
            self._capacity = max(MIN_DECODE_BUDGET, int((limit - resident) * DECODE_SHARE))
            log.info("memory: decode budget %d MiB (%.0f %% of the %d MiB limit from %s, less %d MiB resident "
                     "with the model loaded)", self._capacity // MIB, DECODE_SHARE * 100, limit // MIB, source,
                     resident // MIB)
        return self._capacity

    async def acquire(self, nbytes: int, deadline: float) -> Lease:
        """Wait until ``nbytes`` fit (see the class docstring); then hold them.

        Args:
            nbytes: The worst-case bytes the request's decoding needs.
            deadline: ``time.monotonic()`` after which the request gives up waiting.

        Returns:
            The lease on ``nbytes``; its holders :meth:`Lease.release` it.

        Raises:
            ApiError: ``overloaded`` (503 + Retry-After): ``nbytes`` is more than the whole budget.
            asyncio.TimeoutError: The deadline came first (nothing is held then).
        """
        if nbytes > self.capacity:
            raise api_error(
                "overloaded", f"Decoding this input needs about {math.ceil(nbytes / MIB)} MiB; the kiosk's decode "
                f"budget is {self.capacity // MIB} MiB.",
                hint="Send a smaller image (fewer pixels), or give the server more memory (--memory-max, "
                     "--decode-budget).", headers={"Retry-After": "1"})
        if self.in_use + nbytes <= self.capacity:
            self.in_use += nbytes
            return Lease(self, nbytes)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:  # the deadline, or the request was cancelled (its client went away)
            if granted.done() and not granted.cancelled():  # granted at the last moment: give it back
                self._give(nbytes)
            else:
                granted.cancel()
                self._waiters.remove(entry)
            raise
        return Lease(self, nbytes)

    def _give(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._waiters):
            nbytes, granted = entry
            if self.in_use + nbytes <= self.capacity:
                self._waiters.remove(entry)
                self.in_use += nbytes
                granted.set_result(None)


def bound_allocator() -> bool:
    """Make glibc give freed memory back: a fixed mmap threshold and at most :data:`ARENA_MAX` arenas.

    Called once when the server starts (before its threads exist). Elsewhere than glibc (musl,
    macOS) it does nothing.

    Returns:
        Whether both settings took effect.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    log.debug("memory: glibc mmap threshold %d bytes, at most %d arenas (%s)", MMAP_THRESHOLD, ARENA_MAX,
              "set" if done else "not set")
    return done
