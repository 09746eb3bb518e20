"""A native crash (Paddle Lite's abort on a kernel it lacks) told in words.

Where native output is silenced (quiet.py points fd 2 at /dev/null), a
process that dies inside C++ leaves only a signal: `lited infer` exited 134
with nothing said. Two places catch those words instead: the engine process,
whose stderr goes to a NativeLog its parent reads when it dies, and the
command line's in-process commands (infer, inspect), which `run_watched`
runs in a forked child for the same reason.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Callable, Optional

from lited.errors import glog_fatal


class NativeLog:
    """Where a child (an engine process, run_watched's) writes its stderr when this process
    sends its own native output nowhere (a quiet command line, the daemon: quiet.py):
    a memory file read only when the child dies, for the line that says why.
    Paddle Lite aborts (SIGABRT) on a kernel it lacks after one fatal glog
    line (`[F 12/ 1 ... elementwise_compute.cc:355 Run] unsupported active
    type:abs`); a crash is then reported with those words, not a bare signal
    name. No thread reads it (a reader per engine process cost the daemon
    megabytes of malloc arenas): the file is emptied when it passes LIMIT, and
    what the child writes after that lands past a hole, which takes no memory.
    With --debug (stderr somewhere) the child writes there as before."""

    LIMIT = 1 << 20
    TAIL = 1 << 16
    OTHER_FATAL = ("Fatal Python error", "terminate called", "Check failed")

    def __init__(self) -> None:
        self.fd: Optional[int] = None
        try:
            if os.path.samestat(os.fstat(2), os.stat(os.devnull)):
                self.fd = os.memfd_create("lited-native-stderr", os.MFD_CLOEXEC)
        except (OSError, AttributeError):  # no fd 2, no memfd: the child inherits stderr
            self.fd = None

    def trim(self) -> None:
        if self.fd is not None and os.fstat(self.fd).st_size > self.LIMIT:
            os.ftruncate(self.fd, 0)

    def reset(self) -> None:
        """Empty, for a new child (an old child's last words are not the new one's)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def last_words(self) -> Optional[str]:
        """The child's fatal line, if it wrote one (the backend's own words win over a
        `Fatal Python error: Aborted` from faulthandler that follows them)."""
        if self.fd is None:
            return None
        size = os.fstat(self.fd).st_size
        tail = os.pread(self.fd, min(size, self.TAIL), max(0, size - self.TAIL)).replace(b"\0", b"")
        lines = [line.strip() for line in tail.decode("utf-8", "replace").splitlines() if line.strip()]
        fatal = glog_fatal(lines)
        if fatal is None:
            fatal = next((line for line in lines if line.startswith(self.OTHER_FATAL)), None)
        return fatal[:300] if fatal is not None else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def death(code: int, words: Optional[str]) -> str:
    """`died (SIGABRT): <words>` for a return code of subprocess (negative: a signal)."""
    why = f": {words}" if words else ""
    if code < 0:
        try:
            return f"died ({signal.Signals(-code).name}){why}"
        except ValueError:
            return f"died (signal {-code}){why}"
    return f"exited with status {code}{why}"


FORWARDED = (signal.SIGTERM, signal.SIGHUP)  # sent to one pid (timeout(1), a closed terminal): passed on


def run_watched(work: Callable[[], int]) -> int:
    """`work()` in a forked child whose stderr is a NativeLog; its exit code,
    or, if it died of a signal nobody sent it, one line saying which and the
    native library's last words, and 128 + the signal. Without a NativeLog
    (stderr is not silenced: --debug) `work` runs here as it is."""
    log = NativeLog()
    if log.fd is None:
        return work()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    sent: list = []
    child = [0]

    def forward(signum: int, frame: object) -> None:
        sent.append(signum)
        if child[0]:
            os.kill(child[0], signum)

    # before the fork: a SIGTERM right after it (the child may print before the parent runs on)
    # killed the parent by its default action, exit -15, not passed on
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child; its outcome is the parent's to report)
        code = 1
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            _end_with_parent(parent)
            os.dup2(log.fd, 2)
            code = work()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
    early = len(sent)
    child[0] = pid
    try:
        for signum in sent[:early]:  # came between the handlers and the fork
            os.kill(pid, signum)
        status = _wait_trimming(pid, log)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and -code not in sent:
        print(f"lited: {death(code, log.last_words())}", file=sys.stderr, flush=True)
    log.close()
    return code if code >= 0 else 128 - code


def _wait_trimming(pid: int, log: NativeLog) -> int:
    """The child's wait status; meanwhile a thread keeps its log under
    NativeLog.LIMIT (a long `lited infer` over a folder writes on)."""
    done = threading.Event()

    def trim() -> None:
        while not done.wait(1.0):
            log.trim()

    trimmer = threading.Thread(target=trim, name="lited-native-log", daemon=True)
    trimmer.start()
    try:
        return os.waitpid(pid, 0)[1]  # a forwarded signal's handler runs, then the wait goes on (PEP 475)
    finally:
        done.set()
        trimmer.join()


def _end_with_parent(parent: int) -> None:
    """SIGTERM when the parent dies (SIGKILL, the OOM killer): no orphan running on."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
