"""A POSIX semaphore in shared memory, shared between processes (`sem_init`, pshared).

Why: the engine process's steady path, a run request and its reply, went
through a socket: two system calls a frame on the child's side (measured on a
VM, 11 us together, 8 % of a 0.5-ms model's frame). A post with nobody waiting
and a wait on a semaphore already posted are atomic operations in user space
(glibc's futex-based `sem_t`, with the barriers ARM needs); only a wait that
has to sleep, and the post that wakes it, enter the kernel. A wait that may
sleep releases the GIL (CDLL); post and trywait keep it (PyDLL).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import time

SEM_BYTES = 32  # sizeof(sem_t) on 64-bit glibc (16 on 32-bit): the bytes one takes

_libc = ctypes.CDLL(None, use_errno=True)  # libc, or libpthread before glibc 2.34: both in the global namespace
# post and trywait never block: called through PyDLL they keep the GIL, and skip CDLL's
# release and retake of it and its errno swap (1 us a run between a 0.5-ms model's runs, the
# caches cold after the run)
_libc_held = ctypes.PyDLL(None)
_CLOCK_MONOTONIC = 1
# glibc 2.30+ waits against the monotonic clock; before it (Ubuntu 18.04 on a Jetson Nano), the wall clock
_clockwait = getattr(_libc, "sem_clockwait", None)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class SharedSemaphore:
    """A counting semaphore at `offset` in `buffer` (a MAP_SHARED mapping,
    which it keeps open). One process `reset()`s it before the others map the
    same memory and use it as is."""

    def __init__(self, buffer: mmap.mmap, offset: int) -> None:
        self._held = ctypes.c_char.from_buffer(buffer, offset)  # the mapping cannot go while this exports it
        self._addr = ctypes.c_void_p(ctypes.addressof(self._held))
        self._deadline = _Timespec()
        # Partials: a call goes from C to C, no Python frame (between runs of a 0.5-ms model
        # every step counts, the caches cold after the run).
        self.post = functools.partial(_libc_held.sem_post, self._addr)
        """Add one: wakes a waiter if one sleeps."""
        self.take = functools.partial(_libc_held.sem_trywait, self._addr)
        """Take one if there is one, not waiting: 0 if it did."""

    def reset(self) -> None:
        """Make it afresh at 0 (also over one a dead process left in any state)."""
        if _libc.sem_init(self._addr, 1, 0) != 0:
            raise OSError(ctypes.get_errno(), "sem_init")

    def acquire(self, timeout: float) -> bool:
        """Take one, waiting at most `timeout` seconds (GIL released); False if none came
        (or a signal interrupted the wait: callers wait in a loop)."""
        if self.take() == 0:
            return True
        if timeout <= 0:
            return False
        # CLOCK_MONOTONIC is Python's monotonic clock on Linux; sem_timedwait's deadline is wall time
        at = (time.monotonic() if _clockwait is not None else time.time()) + timeout
        self._deadline.tv_sec, self._deadline.tv_nsec = int(at), int(at % 1 * 1e9)
        deadline = ctypes.byref(self._deadline)
        done = (_clockwait(self._addr, _CLOCK_MONOTONIC, deadline) if _clockwait is not None
                else _libc.sem_timedwait(self._addr, deadline))
        if done == 0:
            return True
        if ctypes.get_errno() not in (errno.ETIMEDOUT, errno.EINTR):
            raise OSError(ctypes.get_errno(), "sem_timedwait")
        return False
