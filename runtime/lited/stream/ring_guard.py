"""Watches the frame rings this process writes, so that one another process
truncates is given its size back before anything here touches it.

Why: reading or writing a mapped page past the end of a truncated file is a
SIGBUS, and Python cannot catch it: the whole daemon dies (measured: one
`truncate -s 0` of a ring as root killed it). The segment's mode (0440)
keeps the daemon's own user from truncating it by accident; root, or that
user after a chmod, still can. inotify wakes this thread the moment the
segment changes (IN_MODIFY: a truncate or a write(); the ring's own stores
go through the mapping and raise no event), it calls the ring's `repair()`
(ftruncate back to its size: the lost pages return as zeros, nothing faults
any more) and tells the ring's owner, whose capture loop then replaces the
ring and says so in an event.

What is left (docs/RELIABILITY.md): an access to the segment between the
truncation and the repair still faults. The repair comes as soon as this
thread gets the GIL (measured below a millisecond to a few), but a thread
that is copying a frame into or out of the segment at the very moment of
the truncation faults at once, before anything can react.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import struct
import threading
from typing import Callable, Dict, Optional, Tuple

from lited.stream.ring import FrameRing

log = logging.getLogger("lited.stream")

_IN_MODIFY, _IN_ATTRIB, _IN_DELETE_SELF, _IN_IGNORED = 0x2, 0x4, 0x400, 0x8000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class RingGuard:
    """One thread for every ring of the process (`RingGuard.shared()`)."""

    _shared: Optional["RingGuard"] = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> "RingGuard":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: Dict[int, Tuple[FrameRing, Callable[[FrameRing, str], None]]] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            log.warning("ring guard off: inotify_init1 failed (%s); a truncated ring kills the daemon",
                        os.strerror(ctypes.get_errno()))
            return
        threading.Thread(target=self._run, name="ring-guard", daemon=True).start()

    def watch(self, ring: FrameRing, on_damage: Callable[[FrameRing, str], None]) -> None:
        """Repair `ring` and call `on_damage(ring, why)` (from this guard's
        thread) whenever another process truncates, unlinks or replaces it,
        until its segment is gone (inotify then drops the watch by itself)."""
        if self._fd < 0:
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(ring.path),
                                          _IN_MODIFY | _IN_ATTRIB | _IN_DELETE_SELF)
        if wd < 0:
            log.warning("ring guard: cannot watch %s (%s)", ring.name, os.strerror(ctypes.get_errno()))
            return
        with self._lock:
            self._watches[wd] = (ring, on_damage)
        self._check(ring, on_damage)  # anything that happened before the watch was in place

    def _run(self) -> None:
        poller = select.poll()  # not select(): a descriptor past 1023 (the daemon's limit is raised) is refused
        poller.register(self._fd, select.POLLIN)
        while True:
            poller.poll()
            try:
                data = os.read(self._fd, 64 * _EVENT.size)
            except BlockingIOError:
                continue
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                with self._lock:
                    watched = self._watches.get(wd)
                    if mask & _IN_IGNORED:
                        self._watches.pop(wd, None)
                if watched is not None:
                    self._check(*watched)

    @staticmethod
    def _check(ring: FrameRing, on_damage: Callable[[FrameRing, str], None]) -> None:
        try:
            why = ring.damage()
            if why is not None:
                ring.repair()
                on_damage(ring, why)
        except Exception as exc:  # noqa: BLE001 - the guard must outlive any one ring
            log.warning("ring guard: %s: %s", ring.name, exc)
