"""An engine in a child process of its own, inputs and outputs in shared memory.

Why: paddlelite 2.13rc0's Python `run()` holds the GIL for the whole
inference (measured: a thread sleeping 1 ms woke 15.6 ms late during a
FastestDet run), so in one process capture, preprocessing, decoding and the
bus all stop while the model runs. Here the predictor lives in a child that
owns it; the parent's `run()` waits for its reply with the GIL released, and
the rest of the daemon keeps going. A crash inside the backend (a segfault in
a kernel) also ends only the child: `run()` raises `EngineError`, and the
owner can `restart()` it.

`EngineProcess` has the engine interface (engines/base.py) plus input sets:
`input_view(i, shape, input_set=k)` is a view of input i of input set k in
shared memory (a memfd the parent owns), so preprocessing writes the model
input there directly; `run(input_set=k, output_set=j)` has the child call
the engine's `run_into(set k's views, set j's views)`: an engine that binds
memory (onnxruntime, OpenVINO: `zero_copy`) reads the inputs and writes the
outputs there in place; Paddle Lite copies the inputs in (`from_numpy`)
and the child copies its outputs into output set j (a memfd the child
owns). Either way the parent gets views of set j. The child counts these
copies (`stats()`). Before the backend loads, the child's environment gets
what the engine asks for (`Engine.process_env`: Paddle Lite x86's
`OMP_NUM_THREADS` from `threads`), and its threads the cores it was given
(`cpus`: lited/cores.py).
`submit()` + `collect()` split a run so that one can be queued behind
another: the child then goes from one frame to the next without waiting
for the parent (measured: it idled ~0.8 ms a frame between runs otherwise,
the parent's infer thread waiting for the GIL to pick up the reply). With
three input sets and three output sets a stream has one frame running, one
queued, and prepares the next or decodes the last meanwhile.

The child adds the seconds each run computes to a float64 in a page of
shared memory the parent owns (`busy_s`, the page's meter): the parent reads it at any time
without a call, a restarted child goes on adding to it, and its rate is the
share of the time the engine computed (status `engine_busy_s`). Beside it
the child counts its runs and its replies. With those, a parent collecting a
run while another is queued behind it waits by the clock, not blocked on
its reply, when runs are short (QUIET_RUNS_S): a reply to a blocked reader
makes the child's core wake the parent's, and on a VM that wake-up costs the
child's next run (measured: the PP-OCR classifier, 1.2 ms a run, in `lited
run` at 0.84 of its bare loop blocking, 0.90 by the clock). The child, with
a run queued, never waits, and between two runs does as little as it can:
a run into a pair of sets whose last run read and wrote them in place goes
straight to the engine (`_Child.steady`), checking only that the outputs came
back in place (measured, the classifier: 67-79 us a run between the end of one
inference and the start of the next before, 30-42 after; medians).

Wire: every request and every reply is a one-byte code in a queue in the
same page (`_Queue`: a ring and a process-shared POSIX semaphore). A
steady-state run's request is its code (input set, output set) and its reply
UNCHANGED, so the child goes from one run to the next with no system call:
the semaphore is an atomic counter in user space until someone has to sleep
(measured, the classifier on OpenVINO against the engine process's own bare
loop: 0.93 with a socket for every request and reply, 0.95-0.97 this way).
Everything else is a msgpack message on a SOCK_SEQPACKET socketpair, sent
before its code (MESSAGE) is queued, memfds passed alongside (SCM_RIGHTS)
whenever one is (re)made. A waiting parent checks every LIVENESS_S[0] that its
child still lives (a crashed child posts nothing to end the wait); a waiting
child checks every LIVENESS_S[1] that its parent does (a SIGKILLed daemon
closes nothing), so it never outlives it. The child ignores SIGINT,
SIGTERM and SIGHUP (signals to the whole process group or unit: the reload's
is the parent's): its parent stops it after draining, with the page's CLOSING byte.
Parent and child must be the same lited: the child's command line carries what
identifies the wire's files the parent imported (`STARTED_WITH`), and a child
that imported others (an upgrade rewrote the package under a running daemon)
exits at once with OTHER_LITED, which the parent turns into the words to
restart it.
"""
from __future__ import annotations

import collections
import errno
import mmap
import operator
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Optional, Sequence

import msgpack
import numpy as np

from lited import shared_semaphore
from lited.cores import pin_threads
from lited.engines import ENGINES
from lited.engines.base import Engine, EngineError, TensorSpec
from lited.errors import first_line
from lited.native_crash import NativeLog, death
from lited.shared_semaphore import SEM_BYTES, SharedSemaphore

SETS = 3                  # input sets and output sets: one running, one queued, one being filled or read
MAX_MESSAGE = 1 << 20
MAX_FDS = 16
ALIGN = 64
# The steady path's one-byte codes (_Queue). A request: input set * SETS + output set, a run
# whose input layout the child already has, or MESSAGE. A reply: UNCHANGED (ran; the outputs
# have the shapes of the last reply for that set), or MESSAGE.
MESSAGE = 255             # the request or reply is a message waiting on the socket
UNCHANGED = 0
OPEN_TIMEOUT = 300.0        # building a TensorRT engine can take minutes
# the meter's float64s: seconds the children computed runs, their runs, their replies, and when
# (time.perf_counter(), one clock for every process) the run the child is in began
BUSY, RUNS, REPLIES, STARTED = range(4)
CLOSING = 4 * 8             # the page's byte the parent sets when it closes the child
RING = 16                   # codes a queue holds: runs submitted and not collected (a stream has SETS at most)
# A queue is one cache line, its semaphore then its ring, so no other queue's use moves it
# between the cores (before, the reply queue's semaphore shared a line with the request ring;
# timed in the child, queueing a reply took 3.6-4.4 us a run either way).
QUEUE_BYTES = ALIGN
assert SEM_BYTES + RING <= QUEUE_BYTES
REQUESTS, ANSWERS = 64, 64 + QUEUE_BYTES  # where the page's two queues start
PAGE_BYTES = ANSWERS + QUEUE_BYTES
LIVENESS_S = (0.1, 1.0)     # how often a waiting parent checks its child is alive, a waiting child its parent
# Runs this long (s) are collected by the clock when another is queued behind: a longer
# one pays for a wake-up too rarely to matter, a shorter one ends within a sleep's timer
# slack (~50 us), so sleeping would slow the parent more than the wake-up costs the child.
QUIET_RUNS_S = (0.0004, 0.005)
# The modules whose agreement the wire between the processes needs (the page, the codes, the messages).
WIRE_FILES = (__file__, shared_semaphore.__file__)


def _file_identity(path: Optional[str]) -> Optional[tuple]:
    """What tells the file at `path` from another put there since (device, inode, size, mtime);
    None when there is none (or no path: a module imported from a zip)."""
    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _wire_identity() -> str:
    """The wire's modules as imported, for a command line (`_file_identity` of each): an engine
    process must run the lited of its parent, and a child started after an upgrade rewrote the
    package under a running daemon (a reload, an engine restart) would import the new files."""
    return "-".join(".".join(map(str, ident)) if ident else "?" for ident in map(_file_identity, WIRE_FILES))


STARTED_WITH = _wire_identity()  # at the daemon's import: the files it runs
OTHER_LITED = 3  # the exit status of a child whose files are not its parent's: the parent says why
OTHER_LITED_WORDS = (f"lited's {' and '.join(os.path.basename(str(f)) for f in WIRE_FILES)} changed since the daemon started (lited upgraded under "
                     "it?): an engine process runs only with the lited of its daemon; restart the daemon "
                     "(systemctl restart lited)")


class Arena:
    """A memfd mapped read-write: arrays placed back to back, 64-byte aligned."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.mm = mmap.mmap(fd, size)

    @classmethod
    def create(cls, name: str, size: int) -> "Arena":
        size = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls(fd, size)

    @classmethod
    def fit(cls, arena: Optional["Arena"], name: str, layout: list) -> tuple:
        """(`arena` if `layout` fits in it, else a new one with the old fd
        closed; whether it is new)."""
        size = _bytes_for(layout)
        if arena is not None and arena.size >= size:
            return arena, False
        if arena is not None:
            arena.close()
        return cls.create(name, size), True

    def views(self, layout: list) -> list:
        """Arrays for [(shape, dtype), ...] in order."""
        out, offset = [], 0
        for shape, dtype in layout:
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            out.append(np.frombuffer(self.mm, dt, count, offset).reshape(shape))
            offset += _aligned(count * dt.itemsize)
        return out

    def close(self) -> None:
        """Close the fd; the mapping stays until the last view of it goes. Once: the fd is
        taken before it is closed, so a second call (a stream's stop closing the engine while
        one of its threads, past the join's timeout, still uses it) finds nothing to close."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _bytes_for(layout: list) -> int:
    return sum(_aligned(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize) for s, d in layout)


class _Receiver:
    """Receives into one preallocated buffer: a steady-state frame allocates
    nothing here (`socket.recv_fds` would allocate its whole bufsize per call)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(MAX_MESSAGE)
        self.view = memoryview(self.buf)
        self.ancillary = socket.CMSG_LEN(MAX_FDS * 4)

    def recv(self) -> tuple:
        """(message bytes or a view of them, [fds]); empty on EOF."""
        size, ancdata, _, _ = self.sock.recvmsg_into([self.buf], self.ancillary)
        fds: list = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]))
        return self.view[:size], fds


def _identity(kind: str, path: str) -> tuple:
    """What tells one model file from another at the same path (with the
    weights beside it: Paddle Inference's .pdiparams, an OpenVINO IR's .bin)."""
    weights = ENGINES.get(kind).weights_suffix(path) if kind in ENGINES else None
    return tuple(map(_file_identity, (path, *([os.path.splitext(path)[0] + weights] if weights else []))))


def _meter_words(arena: Arena) -> memoryview:
    """The meter's float64s in place (updating an item costs a third to a half of numpy's:
    the child updates them between runs of a 1-ms model)."""
    return memoryview(arena.mm)[:CLOSING].cast("d")


class _Queue:
    """One direction of the steady path, in the page's shared memory: a ring of one-byte
    codes and a semaphore counting them. One process puts, the other gets; each keeps its
    own count of what it did."""

    def __init__(self, arena: Arena, at: int) -> None:
        self.semaphore = SharedSemaphore(arena.mm, at)
        self.post, self.take = self.semaphore.post, self.semaphore.take
        self.ring = memoryview(arena.mm)[at + SEM_BYTES:at + SEM_BYTES + RING]
        self.done = 0

    def reset(self) -> None:
        """Empty, for a new child (the putting side, before it starts one)."""
        self.semaphore.reset()
        self.ring[:] = bytes(RING)
        self.done = 0

    def put(self, code: int) -> None:
        self.ring[self.done % RING] = code
        self.done += 1
        self.post()  # after the write: the post is the barrier that publishes it

    def get(self, timeout: float) -> int:
        """The next code, waiting up to `timeout` s (GIL released); -1 if none came."""
        if not self.semaphore.acquire(timeout):  # its first step is a take() that does not wait
            return -1
        code = self.ring[self.done % RING]
        self.done += 1
        return code


def _cannot_start(path: str, exc: OSError) -> EngineError:
    limit = ""
    if exc.errno == errno.EMFILE:  # which limit: the README promises resources named
        limit = f" (the open-files limit, {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}: ulimit -n, LimitNOFILE=)"
    return EngineError(f"{path}: cannot start an engine process: {exc.strerror or exc}{limit}")


def _send(sock: socket.socket, message, fds: list) -> None:
    data = message if isinstance(message, bytes) else msgpack.packb(message, use_bin_type=True)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)



class EngineProcess(Engine):
    """The engine interface, served by a child process that owns the backend.

    Control calls (`run`, `restart`, `close`, shapes) come from one thread;
    `input_view`/`set_input` on an input set may come from another, as long as
    the set is handed over between them (the pipeline's prep and infer
    threads do that through a condition)."""

    input_sets = SETS

    def __init__(self, kind: str, model_path: str, options: Optional[dict] = None,
                 checksums: Optional[dict] = None, run_timeout: Optional[float] = None,
                 cpus: Optional[Sequence[int]] = None) -> None:
        """`checksums`: {file: sha256} the child checks on the bytes it loads;
        `run_timeout`: seconds to wait for any reply after the model is open
        (None: for ever); past it the child counts as stuck (SIGSTOP, a hung
        driver call) and is killed, and the call raises EngineError;
        `cpus`: the cores the child's threads run on (lited/cores.py; None:
        those of the thread that starts it)."""
        self.kind = kind
        self.run_timeout = run_timeout
        self.cpus = sorted(cpus) if cpus else None
        self._spec = {"op": "open", "kind": kind, "path": str(model_path), "options": dict(options or {}),
                      "checksums": dict(checksums or {}), "cpus": self.cpus}
        self._image_input = 0
        self._identity = _identity(kind, str(model_path))
        self._sock: Optional[socket.socket] = None
        self._proc: Optional[subprocess.Popen] = None
        self._native = NativeLog()  # the child's stderr, when it would go nowhere: read when it dies
        self._submits = 0
        self.clock_collects = 0  # runs collected by the clock, not blocked on their reply (QUIET_RUNS_S)
        self._run_s: Optional[float] = None  # recent seconds a run (EMA over the meter's deltas)
        self._metered = (0.0, 0.0)           # the meter's (runs, busy) when it was last read for it
        self._meter = Arena.create("lited-engine", PAGE_BYTES)  # the children add to it, the parent reads
        self._counts = _meter_words(self._meter)
        self._requests, self._answers = _Queue(self._meter, REQUESTS), _Queue(self._meter, ANSWERS)
        self._closing = memoryview(self._meter.mm)[CLOSING:CLOSING + 1]
        self._start()
        count = len(self.inputs)
        # per input set and input: its arena, the view preprocessing writes, and whether the child has it
        self._in_arena: list = [[None] * count for _ in range(SETS)]
        self._in_view: list = [[None] * count for _ in range(SETS)]
        self._unsent: list = [set() for _ in range(SETS)]

    # -- process
    def _start(self) -> None:
        try:
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            raise _cannot_start(self._spec["path"], exc) from None
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH")))))
        if self.kind in ENGINES:  # an unknown kind is refused by the child's open, with its message
            env.update(ENGINES.get(self.kind).process_env(self._spec["options"]))
        self._native.reset()
        self._requests.reset()  # the last child is gone: nothing of its left in the page
        self._answers.reset()
        self._closing[0] = 0
        try:
            # the model path is for `ps` and `systemctl status` only
            self._proc = subprocess.Popen([sys.executable, "-m", "lited.engine_process", str(child.fileno()),
                                           str(self._meter.fd), STARTED_WITH, self._spec["path"]],
                                          pass_fds=(child.fileno(), self._meter.fd), stdin=subprocess.DEVNULL,
                                          stderr=self._native.fd, env=env)
        except OSError as exc:  # no descriptors or memory for a process: the caller's next restart tries again
            parent.close()
            raise _cannot_start(self._spec["path"], exc) from None
        finally:
            child.close()
        self._sock = parent
        parent.settimeout(LIVENESS_S[1])  # a message is on the socket before its code is in the queue
        self._receiver = _Receiver(parent)
        self._pending: collections.deque = collections.deque()  # output sets of submitted runs, oldest first
        self._out_arena: list = [None] * SETS
        self._out_views: list = [None] * SETS
        self._reply_timeout = OPEN_TIMEOUT
        self._replies = int(self._counts[REPLIES])  # replies received: the child's count runs ahead of it
        try:
            info = self._call(self._spec)
            if self._image_input:
                self._call({"op": "image_input", "index": self._image_input})
        except BaseException:
            self._stop_child()  # the input arenas stay: restart() may try again
            raise
        self._reply_timeout = self.run_timeout
        self.inputs = [TensorSpec(name, tuple(shape), dtype) for name, shape, dtype in info["inputs"]]
        self.output_names = list(info["outputs"])
        self.version = info["version"]
        self.device = info["device"]

    @property
    def busy_s(self) -> float:
        """Seconds the engine processes of this engine computed runs, in all (no call: read from shared memory)."""
        return float(self._counts[BUSY])

    @property
    def pid(self) -> Optional[int]:
        """The child's pid while it is alive (None once it ended: status showed a dead one while
        its owner backed off before a restart)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def move_to(self, cpus: Sequence[int]) -> None:
        """Run the child's threads on `cpus` from now on (and after a restart)."""
        self.cpus = self._spec["cpus"] = sorted(cpus)
        if self._proc is not None:
            pin_threads(self.cpus, self._proc.pid)

    def restart(self) -> None:
        """A fresh child for the same model (after a crash): the input arenas
        are the parent's and stay; the child is sent them again. Refused if
        the model file changed on disk meanwhile (an upgrade flipped the
        bundle): the bundle's manifest here describes the old one."""
        self._stop_child()
        if _identity(self._spec["kind"], self._spec["path"]) != self._identity:
            if not os.path.exists(self._spec["path"]):  # moved or removed: retried, as a change is
                raise EngineError(f"{self._spec['path']}: gone since it was loaded (moved or removed?); "
                                  "restarting once it is back (or reload the bundle)")
            raise EngineError(f"{self._spec['path']}: changed on disk since it was loaded; "
                              "not restarting with another model (reload the bundle)")
        try:
            self._start()
        except EngineError as exc:  # the fresh child's own words ("out of memory ..."): which model's
            if self._spec["path"] in str(exc):
                raise
            raise EngineError(f"{self._spec['path']}: {exc}") from None
        for k in range(SETS):
            self._unsent[k] = {i for i, arena in enumerate(self._in_arena[k]) if arena is not None}

    def close(self) -> None:
        """Stop the child and free the shared memory (views still held stay valid)."""
        self._stop_child()
        self._native.close()
        self._meter.close()
        for row in getattr(self, "_in_arena", ()):
            for arena in row:
                if arena is not None:
                    arena.close()

    def __del__(self) -> None:
        try:
            self._stop_child()
            self._native.close()
            self._meter.close()  # an engine that never opened (a bad model) is never closed by its owner
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _stop_child(self) -> None:
        sock, proc = self._sock, self._proc
        self._sock = self._proc = None
        if sock is not None:
            self._closing[0] = 1
            self._requests.post()  # the child wakes, sees the page's byte and exits
            try:
                sock.shutdown(socket.SHUT_RDWR)  # or, reading a message, sees EOF
            except OSError:
                pass
            sock.close()
        if proc is not None:
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:  # stuck inside the backend
                proc.kill()
                proc.wait()
        for arena in getattr(self, "_out_arena", ()):
            if arena is not None:
                arena.close()

    def _kill_child(self) -> None:
        """A child that does not answer (SIGSTOPped, wedged in a driver): SIGKILL
        works on either; the next call finds it dead and restart() replaces it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                pass

    def _call(self, message, fds: Optional[list] = None):
        """Send one request and wait (GIL released) for its reply."""
        if self._pending:
            raise EngineError(f"{self._spec['path']}: {len(self._pending)} runs still to collect")
        self._send_request(message, fds)
        return self._recv_reply()

    def _send_request(self, message, fds: Optional[list] = None) -> None:
        """`message`: a run's code (the child has its layout), else a message for the socket."""
        sock = self._sock
        if sock is None:
            raise EngineError(f"{self._spec['path']}: engine process is closed")
        if isinstance(message, int):
            self._requests.put(message)  # a dead child is found by the collect that follows
            return
        try:
            _send(sock, message, fds or [])
        except OSError:
            raise EngineError(f"{self._spec['path']}: engine process {self._exit_status()}") from None
        self._requests.put(MESSAGE)

    def _await_reply(self) -> int:
        """The next reply's code (GIL released); EngineError if the child ended or was closed,
        or gave none in the timeout (then it is killed: SIGSTOPped, or stuck in a driver)."""
        code = self._answers.get(0)
        if code >= 0:
            return code
        proc, timeout = self._proc, self._reply_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if proc is None or proc is not self._proc or proc.poll() is not None:
                code = self._answers.get(0)  # its last reply, put just before it ended
                if code >= 0:
                    return code
                raise EngineError(f"{self._spec['path']}: engine process {self._exit_status()}")
            left = LIVENESS_S[0] if deadline is None else deadline - time.monotonic()
            if left <= 0:
                self._kill_child()
                raise EngineError(f"{self._spec['path']}: engine process did not answer in {timeout:g} s "
                                  "(stopped or stuck); killed it")
            code = self._answers.get(min(left, LIVENESS_S[0]))
            if code >= 0:
                return code

    def _recv_reply(self):
        code = self._await_reply()
        self._replies += 1
        if code == UNCHANGED:
            return None
        try:
            data, got_fds = self._receiver.recv()  # there already: the child sent it before its code
        except OSError:
            data, got_fds = b"", []
        if not data:
            raise EngineError(f"{self._spec['path']}: engine process {self._exit_status()}")
        reply = msgpack.unpackb(data, raw=False)
        if "error" in reply:
            for fd in got_fds:
                os.close(fd)
            raise EngineError(reply["error"])
        if got_fds:
            reply["fds"] = got_fds
        return reply

    def ended(self) -> Optional[str]:
        """How the child ended if it has (an OOM kill while idle, say), else None; never waits,
        and reaps a dead child."""
        if self._proc is None or self._proc.poll() is None:
            return None
        return f"{self._spec['path']}: engine process {self._exit_status()}"

    def _exit_status(self) -> str:
        proc = self._proc
        if proc is None:
            return "is closed"
        try:
            code = proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code == OTHER_LITED:
            return f"exited: {OTHER_LITED_WORDS}"
        return death(code, self._native.last_words())

    # -- the engine interface
    @property
    def image_input(self) -> int:
        return self._image_input

    @image_input.setter
    def image_input(self, index: int) -> None:
        self._image_input = index
        self._call({"op": "image_input", "index": index})

    def input_view(self, index: int, shape: tuple, input_set: int = 0) -> np.ndarray:
        """A writable view of input `index` of `input_set` in shared memory, of `shape`."""
        view = self._in_view[input_set][index]
        if view is None or view.shape != shape:
            layout = [(tuple(int(s) for s in shape), self.inputs[index].dtype)]
            arena, _ = Arena.fit(self._in_arena[input_set][index], f"lited-in{input_set}.{index}", layout)
            self._in_arena[input_set][index] = arena
            view = self._in_view[input_set][index] = arena.views(layout)[0]
            self._unsent[input_set].add(index)
        return view

    def set_input(self, index: int, array: np.ndarray, input_set: int = 0) -> None:
        """Copy `array` into input `index` of `input_set`."""
        np.copyto(self.input_view(index, array.shape, input_set), array)

    def run(self, input_set: int = 0, output_set: int = 0) -> list:
        """Run on the inputs of `input_set`; the outputs are views of output set
        `output_set`, valid until the next run into that set."""
        self.submit(input_set, output_set)
        return self.collect()

    def submit(self, input_set: int = 0, output_set: int = 0) -> None:
        """Queue a run without waiting: the child starts it the moment it is
        free, so with one run queued behind another it never idles between
        frames. `collect()` returns results in submission order; at most RING
        runs wait to be collected."""
        if len(self._pending) >= RING:  # the request queue would wrap over codes the child has not read
            raise EngineError(f"{self._spec['path']}: {RING} runs queued and not collected")
        unsent = self._unsent[input_set]
        if unsent:
            changes = sorted(unsent)
            fds = [self._in_arena[input_set][i].fd for i in changes]
            message = {"op": "run", "input_set": input_set, "output_set": output_set,
                       "inputs": [[i, list(self._in_view[input_set][i].shape), self.inputs[i].dtype] for i in changes]}
            self._send_request(message, fds)
            unsent.clear()
        else:
            self._send_request(input_set * SETS + output_set)
        self._pending.append(output_set)
        self._submits += 1
        if not self._submits & 4095:  # a backend that logs every run fills its stderr file: empty it now and then
            self._native.trim()

    def collect(self) -> list:
        """Wait (GIL released) for the oldest submitted run; its outputs."""
        if not self._pending:
            raise EngineError(f"{self._spec['path']}: nothing submitted to collect")
        if len(self._pending) > 1 and self._await_by_clock():  # the child went on to the run queued behind
            self.clock_collects += 1
        output_set = self._pending.popleft()
        try:
            reply = self._recv_reply()
        except EngineError:
            if self._sock is None or self._proc is None or self._proc.poll() is not None:
                self._pending.clear()  # nothing else is coming
            raise
        if reply is not None:
            self._adopt_outputs(output_set, reply)
        return self._out_views[output_set]

    def _recent_run_s(self) -> Optional[float]:
        """Seconds a run takes of late, from the meter: a moving average, so the warm-up's
        first runs (a hundred times longer, with some backends) do not count for long."""
        counts = self._counts
        runs, busy = float(counts[RUNS]), float(counts[BUSY])
        seen_runs, seen_busy = self._metered
        if runs > seen_runs:
            per_run = (busy - seen_busy) / (runs - seen_runs)
            self._run_s = per_run if self._run_s is None else self._run_s + 0.125 * (per_run - self._run_s)
            self._metered = (runs, busy)
        return self._run_s

    def _await_by_clock(self) -> bool:
        """For runs as long as QUIET_RUNS_S: sleep until the run the child is in should end
        (it began at the meter's STARTED), then in steps of a quarter run, until the child has
        replied (its count of replies passes ours); True once it has. Gives up after a few
        runs' time (a stopped child, say: the blocking receive that follows sees to it).
        Measured, the PP-OCR classifier in `lited run`: the infer thread woke 2.1 times a
        frame with quarter-run steps alone."""
        counts = self._counts
        run_s = self._recent_run_s()
        if run_s is None or not QUIET_RUNS_S[0] <= run_s < QUIET_RUNS_S[1]:
            return False
        step = run_s / 4
        now = time.perf_counter()
        give_up = now + 32 * step + 0.01
        sleep_s = counts[STARTED] + run_s - now  # none if the child is not in that run yet (or is late)
        while counts[REPLIES] <= self._replies:
            if now >= give_up:
                return False
            time.sleep(sleep_s if 0 < sleep_s < run_s else step)
            sleep_s, now = 0.0, time.perf_counter()
        return True

    def _adopt_outputs(self, output_set: int, reply: dict) -> None:
        fds = reply.get("fds")
        if fds:
            if self._out_arena[output_set] is not None:
                self._out_arena[output_set].close()
            self._out_arena[output_set] = Arena(fds[0], reply["size"])
        layout = [(tuple(shape), dtype) for shape, dtype in reply["outputs"]]
        self._out_views[output_set] = self._out_arena[output_set].views(layout)

    def stats(self) -> dict:
        """The child's counters: `runs` (the runs it computed), the copies it made of inputs
        (`in_copies`) and outputs (`out_copies`) beside the backend's own work,
        and the times the engine bound new memory to its backend (`binds`:
        a stream's steady state adds none, in either engine that binds)."""
        return self._call({"op": "stats"})

    def input_shapes(self) -> list:
        """Input shapes as the backend has them (after the last run)."""
        return [tuple(s) for s in self._call({"op": "shapes"})["inputs"]]

    def output_shapes(self) -> list:
        """Output shapes as of the last run."""
        return [tuple(s) for s in self._call({"op": "shapes"})["outputs"]]


# -- the child
class _Child:
    """The serving side: one engine, the parent's input arenas, its own output sets."""

    def __init__(self, sock: socket.socket, page: Arena) -> None:
        self.sock = sock
        self.receiver = _Receiver(sock)
        self.requests, self.answers = _Queue(page, REQUESTS), _Queue(page, ANSWERS)
        self.closing = memoryview(page.mm)[CLOSING:CLOSING + 1]
        self.meter = _meter_words(page)
        self.parent = os.getppid()
        self.engine = None
        self.inputs: list = [dict() for _ in range(SETS)]   # input set -> {index: (arena, view)}
        self.out_arena: list = [None] * SETS
        self.out_layout: list = [None] * SETS
        self.out_views: list = [None] * SETS
        self.out_for: list = [None] * SETS     # input shapes of the last run into each output set
        self.counts = {"in_copies": 0, "out_copies": 0}
        # per input set * SETS + output set: a run that can go again as it is (inputs bound in
        # place, the last run into that set wrote them all in place), as _steady makes it
        self.steady: list = [None] * (SETS * SETS)

    def serve(self) -> None:
        """Until the parent closes the child or dies (seen within LIVENESS_S[1]: a SIGKILLed
        daemon leaves no one to say so)."""
        requests, answers, closing, meter = self.requests, self.answers, self.closing, self.meter
        steady, clock = self.steady, time.perf_counter
        take, asked, post, told = requests.take, requests.ring, answers.post, answers.ring
        while True:
            # The queues' get and put inlined for the steady case (one a run): between two runs of
            # a 0.5-ms model each Python frame costs ~1 us, the caches cold after the run.
            if take() == 0:
                code = asked[requests.done % RING]
                requests.done += 1
            else:
                code = requests.get(LIVENESS_S[1])
            if closing[0]:
                return
            if code < 0:
                if os.getppid() != self.parent:
                    return
                continue
            if code == MESSAGE:
                try:
                    data, fds = self.receiver.recv()
                except OSError:
                    return
                if not data:
                    return  # the parent closed the socket
            short = steady[code] if code != MESSAGE else None
            reply, reply_fds, started = None, (), None
            try:
                if short is not None:  # the short way: few steps between two runs, each slow with the caches cold
                    started = meter[STARTED] = clock()
                    if short[3] == self.engine.binds:  # its prepared call runs on those arrays still
                        try:
                            short[2]()
                        except EngineError:  # run_into's way says it better, or runs where that call cannot
                            reply, reply_fds = self.run_steady(code, short)
                    else:
                        reply, reply_fds = self.run_steady(code, short)
                elif code != MESSAGE:
                    reply, reply_fds = self.run(*divmod(code, SETS))
                else:
                    reply, reply_fds = self.handle(msgpack.unpackb(data, raw=False), fds)
            except Exception as exc:  # noqa: BLE001 - every failure goes back as one line
                reply = {"error": first_line(exc)}
            if reply is None:  # ran; the outputs have the shapes of the last reply for that set
                told[answers.done % RING] = UNCHANGED
                answers.done += 1
                post()
            else:
                try:
                    _send(self.sock, reply, reply_fds)
                except OSError:
                    return
                answers.put(MESSAGE)
            meter[REPLIES] += 1  # after the put: the parent, seeing it, finds the reply there
            if started is not None:  # a run the short way, metered once its reply is out (the long way meters its own)
                meter[BUSY] += clock() - started
                meter[RUNS] += 1

    def handle(self, message: dict, fds: list) -> tuple:
        op = message.get("op")
        if op == "open":
            from lited.engines import open_engine
            if message.get("cpus"):  # before the backend makes its threads: they inherit the cores
                pin_threads(message["cpus"])
            self.engine = engine = open_engine(message["kind"], message["path"], message["options"],
                                               message.get("checksums"))
            return {"inputs": [[s.name, list(s.shape), s.dtype] for s in engine.inputs],
                    "outputs": list(engine.output_names), "version": engine.version,
                    "device": engine.device}, []
        if op == "image_input":
            self.engine.image_input = int(message["index"])
            return {}, []
        if op == "stats":
            return {"runs": int(self.meter[RUNS]), **self.counts,
                    "binds": self.engine.binds if self.engine is not None else 0}, []
        if op == "shapes":
            return {"inputs": [list(s) for s in self.engine.input_shapes()],
                    "outputs": [list(s) for s in self.engine.output_shapes()]}, []
        if op == "run":
            input_set = message["input_set"]
            for (index, shape, dtype), fd in zip(message["inputs"], fds):
                layout = [(tuple(shape), dtype)]
                arena = Arena(fd, _bytes_for(layout))
                old = self.inputs[input_set].get(index)
                if old is not None:
                    old[0].close()
                self.inputs[input_set][index] = (arena, arena.views(layout)[0])
                self.steady[input_set * SETS:(input_set + 1) * SETS] = [None] * SETS
            return self.run(input_set, message["output_set"])
        raise EngineError(f"op: unknown '{op}'")

    def run(self, input_set: int, output_set: int) -> tuple:
        """Run on input set `input_set` into output set `output_set` the long way (serve
        takes the short one where it can), its compute time added to the meter; (the reply,
        None if the outputs kept their shapes, and the fds to send with it)."""
        started = self.meter[STARTED] = time.perf_counter()
        try:
            return self._run(input_set, output_set)
        finally:
            meter = self.meter
            meter[BUSY] += time.perf_counter() - started
            meter[RUNS] += 1

    def _run(self, input_set: int, output_set: int) -> tuple:
        """The set's views go to `run_into` when the last run into that set had
        these input shapes (so they have the output shapes); else the engine's
        own arrays come back and are copied there once."""
        engine, views = self.engine, self.inputs[input_set]
        if len(views) == len(engine.inputs):
            inputs = [views[i][1] for i in range(len(views))]
            shapes = tuple(v.shape for v in inputs)
            known = self.out_views[output_set] if self.out_for[output_set] == shapes else None
            outputs = engine.run_into(inputs, known)
            self.counts["in_copies"] += 0 if engine.zero_copy else len(inputs)
        else:  # not every input sent: what the backend does then is its own (an error, or Paddle Lite's abort)
            for index, (_, view) in views.items():
                engine.set_input(index, view)
            outputs, shapes = engine.run(), None
        reply, fds = self._adopt(output_set, outputs, shapes)
        if engine.zero_copy and shapes is not None and reply is None \
                and all(o is v for o, v in zip(outputs, self.out_views[output_set])):
            self.steady[input_set * SETS + output_set] = self._steady(inputs, self.out_views[output_set])
        return reply, fds

    def _steady(self, inputs: list, outputs: list) -> tuple:
        """A steady run's entry, after a run that read `inputs` and wrote `outputs` in place:
        (inputs, outputs, the engine's prepared call for them, the engine's binds it holds for;
        -1 where it has none, so serve takes run_steady)."""
        call = self.engine.prepare(inputs, outputs)
        return inputs, outputs, call, self.engine.binds if call is not None else -1

    def run_steady(self, code: int, short: tuple) -> tuple:
        """A steady run without a prepared call (the engine has none, or has bound other
        memory since): run_into, and prepare again; the long way's reply if the outputs
        did not stay in place after all."""
        inputs, outputs = short[0], short[1]
        result = self.engine.run_into(inputs, outputs)
        if all(map(operator.is_, result, outputs)):
            self.steady[code] = self._steady(inputs, outputs)
            return None, ()
        self.steady[code] = None
        return self._adopt(code % SETS, result, tuple(v.shape for v in inputs))

    def _adopt(self, output_set: int, outputs: list, shapes: Optional[tuple]) -> tuple:
        """Outputs into output set `output_set` (a new arena if they outgrew it); the reply."""
        engine = self.engine
        layout = [(o.shape, o.dtype.str) for o in outputs]
        reply, fds = None, []
        if layout != self.out_layout[output_set]:  # tell the parent the new shapes (and arena, if new)
            arena, new = Arena.fit(self.out_arena[output_set], f"lited-out{output_set}", layout)
            self.out_arena[output_set], self.out_layout[output_set] = arena, layout
            self.out_views[output_set] = arena.views(layout)
            self.steady[output_set::SETS] = [None] * SETS  # their outputs were the old views
            reply = {"outputs": [[list(s), d] for s, d in layout], "size": arena.size}
            fds = [arena.fd] if new else []
        for view, output in zip(self.out_views[output_set], outputs):
            if output is not view:  # not written in place: a new shape, or the engine's own array
                np.copyto(view, output)
                self.counts["out_copies"] += 1
            elif not engine.zero_copy:
                self.counts["out_copies"] += 1  # Engine.run_into's fallback copied it there
        self.out_for[output_set] = shapes
        return reply, fds


def child_pids(pid: object = "self") -> list:
    """Pids of a process's children (for the daemon, its engine processes);
    none once the process is gone."""
    pids: list = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                pids.extend(int(p) for p in fh.read().split())
        except OSError:  # the thread ended meanwhile
            pass
    return pids


def _set_thread_name(name: bytes) -> None:
    """`comm` in /proc and top: lited-engine rather than python."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv: list) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole process group:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the parent drains, then closes the child
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # `systemctl kill -s HUP` signals the whole unit: a reload
    _set_thread_name(b"lited-engine")
    if argv[2] != STARTED_WITH:  # before anything of the wire is used: its exit status is all it says
        os._exit(OTHER_LITED)
    sock = socket.socket(fileno=int(argv[0]))
    page = Arena(int(argv[1]), PAGE_BYTES)  # the parent's page: meter and queues
    page.close()  # the mapping stays
    _Child(sock, page).serve()
    # Straight out, no interpreter teardown: a backend's static destructors can
    # hang (an OpenVINO child was seen waiting on a futex forever after its
    # parent died), and the child holds nothing that needs cleaning up.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
