"""How lited shares the CPU between the streams' engines and its own work.

An engine process runs one frame at a time on its threads; lited's own
threads (capture and decoding, preprocessing, decoding outputs, the bus)
prepare the next frames meanwhile. When the streams' engine threads leave
cores over, each engine process gets cores of its own and lited's threads
the rest: a frame's pipeline work then never takes an engine's core from it
mid-run, and nothing migrates between cores. Measured on two cores
(`lited run` on a looping 640x480 file, one engine thread, 3 runs each,
alternating), against letting the scheduler place everything:
FastestDet on onnxruntime 127-134 fps against 112-116; UltraFace on OpenVINO
and the PP-OCR classifier as fast or faster. When the engines need every
core, nothing is pinned: lited's threads then share the engines' cores, as
they would without a plan.

Engine processes are placed by the cores they are told of (`EngineProcess`
pins the child's threads when it opens the model); lited's own threads by
`apply`, which pins every thread of this process (threads made later
inherit their maker's cores, and so do a cascade's later stages' engine
processes; request workers' engine processes are given every core).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Iterable, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorePlan:
    """Per stream, the cores of its engine process; lited's own cores; the
    threads OpenCV gets; whether anything is pinned; the cores another
    lited's engines were pinned to when it was made."""
    engines: dict          # stream name -> tuple of cpus
    own: tuple
    opencv_threads: int
    pinned: bool
    taken: tuple = ()

    def describe(self) -> str:
        """One line for the log."""
        others = f" (another lited's engines on cores {_span(self.taken)})" if self.taken else ""
        if not self.pinned:
            return f"engines and lited's own threads share cores {_span(self.own)}{others}"
        return ", ".join(f"engine of {name} on cores {_span(cpus)}" for name, cpus in self.engines.items()) \
            + f"; lited's own threads on cores {_span(self.own)}{others}"


def share_threads(requested: dict, cores: int) -> dict:
    """Threads per stream that fit `cores` together: as asked when they fit,
    else each scaled down in proportion, never below 1 (a stream of one
    thread more than the cores is better than a stream that never runs)."""
    total = sum(requested.values())
    if total <= cores:
        return dict(requested)
    return {name: max(1, threads * cores // total) for name, threads in requested.items()}


def plan_cores(engine_threads: dict, cpus: Iterable[int], pin: bool = True, taken: Iterable[int] = ()) -> CorePlan:
    """Give each stream's engine (`{stream: threads}`) cores of its own from
    the highest-numbered down (core 0 usually takes the interrupts), and
    lited's own threads the cores left, when at least one is left; else
    (or with `pin` false) everything on every core of `cpus`. Cores in
    `taken` (another lited's engines: `cores_of_other_engines`) are left
    out, and where the rest cannot hold our engines and a core over, nothing
    is pinned: two `lited@` instances had both pinned their engine to the
    last core, each at half speed, the other cores idle."""
    cpus = sorted(cpus)
    taken = tuple(c for c in sorted(set(taken)) if c in cpus)
    free = [c for c in cpus if c not in taken]
    need = sum(engine_threads.values())
    if not pin or need >= len(free):
        every = tuple(cpus)
        return CorePlan({name: every for name in engine_threads}, every, max(1, len(cpus) - need), False, taken)
    engines, top = {}, len(free)
    for name, threads in engine_threads.items():
        engines[name] = tuple(free[top - threads:top])
        top -= threads
    own = tuple(free[:top])
    return CorePlan(engines, own, len(own), True, taken)


CLAIMS_DIR = "/dev/shm"    # shared by every lited on the board, sandboxed or not (the frame rings are there)
CLAIM_PREFIX = "lited-cores-"


class CoreClaim:
    """The cores this process's engines are pinned to, where other lited processes read them
    (`cores_of_other_engines`): a file in /dev/shm, locked for this process's life. Two
    `lited@` instances each pinned their engine to the last core, both at half speed beside
    idle cores; their units' `ProtectProc=invisible` hides each one's processes from the other,
    so /proc could not tell them. A daemon that dies lets go of the lock: its file is skipped
    (and removed by the next reader)."""

    def __init__(self) -> None:
        self._fd: Optional[int] = None
        self.path = ""

    def publish(self, plan: CorePlan) -> None:
        """Say the cores `plan` pins engines to (none, if it pins nothing). Best effort: without
        it (a full /dev/shm) only another lited's plan is the worse for it."""
        cores = _span(sorted({c for cpus in plan.engines.values() for c in cpus})) if plan.pinned else ""
        if not cores:  # nothing pinned (no stream, or the engines need every core): nothing to say
            self.close()
            return
        try:
            if self._fd is None:
                path = f"{CLAIMS_DIR}/{CLAIM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else locks it
                self._fd, self.path = fd, path
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, cores.encode(), 0)
        except OSError as exc:
            log.warning("cores: cannot tell other lited processes where the engines run (%s): %s",
                        CLAIMS_DIR, exc, extra={"event": "threads"})

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def cores_of_other_engines() -> set:
    """The cores other lited processes of this user pin their engines to (their `CoreClaim`s,
    read at each plan: a lited that started or stopped since is seen at the next start or
    reload). Another user's claims are not read: they could only push ours about."""
    taken: set = set()
    mine = f"{CLAIM_PREFIX}{os.getpid()}-"
    try:
        names = [n for n in os.listdir(CLAIMS_DIR) if n.startswith(CLAIM_PREFIX) and not n.startswith(mine)]
    except OSError:
        return taken
    for name in names:
        path = f"{CLAIMS_DIR}/{name}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # gone meanwhile
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # its lited runs
                taken |= _cores_from_list(os.pread(fd, 4096, 0).decode("ascii", "replace"))
            else:  # its lited is gone (a new file is locked within microseconds of being made)
                if time.time() - st.st_mtime > 5:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return taken


def _cores_from_list(text: str) -> set:
    """A claim's `1,3` (as `_span` writes it) as {1, 3}; empty if unreadable."""
    try:
        return {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        return set()


def pin_threads(cpus: Iterable[int], pid: object = "self") -> None:
    """Every thread of process `pid` (default this one) on `cpus` (threads
    started later inherit the cores of the thread that starts them)."""
    cpus = set(cpus)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # the process is gone
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread ended meanwhile
            pass


def apply(plan: CorePlan) -> None:
    """This process's side of `plan`: its threads on `plan.own`, OpenCV on
    as many threads (its default, every core, only contended with the engines:
    FastestDet on onnxruntime, 9.0 -> 7.4 ms of lited's CPU a frame)."""
    import cv2

    pin_threads(plan.own)
    cv2.setNumThreads(plan.opencv_threads)


def _span(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in cpus)
