"""Frame ring: N preallocated camera-frame slots in POSIX shared memory.

Why: the capture thread writes each frame once, in place; the inference
thread and local apps (other processes) then read it where it lies, instead
of each receiving a copy over a socket. One writer (the daemon), any number of readers, no locks shared
between processes: every slot is a seqlock.

Segment: `/dev/shm/lited-<boot8>-<pid>-<stream>`, the same object C code
opens with `shm_open("/lited-...")`. The boot id and writer pid in the name
let `sweep_stale()` tell a leftover from a crashed daemon from a live ring.
A segment is created complete under a temporary name (`<name>~new`) and
renamed into place, so the name is never missing or half-made: at once for
a new ring; for one `rebuilt` for a new frame size when `link()` is called
(the stream does it as it publishes the first result from it). A reader
tells the segments apart by their generation.
File mode 0o440: members of the daemon's group (the apps allowed to see the
camera) read, nobody else opens it, and not even the daemon's own user can
open it for writing or truncate it by its path (a truncated segment makes
every access to the mapping beyond its end a SIGBUS, which kills the
process); the writer keeps the descriptor it created it with.
`create(group=...)` sets that group; otherwise it is the daemon's primary
group. Root (or the user after a chmod) can still truncate it: the writer
then notices (`damage()`, watched by stream/ring_guard.py), gives it its
size back (`repair()`), and the capture loop replaces the ring.

Layout (native int64 words; every board lited targets is little-endian):

    [0, 128)           global header, 16 words:
                       magic b"LITEDRNG" (written last: a ring without it is
                       still being created), layout version, slots, height,
                       width, channels, dtype (numpy dtype.str, 8 ASCII
                       bytes), frame bytes, slot stride, data offset,
                       writer pid, writer start time (/proc/<pid>/stat
                       field 22: tells a reused pid from the writer),
                       state (1 live, 2 closed), latest published slot
                       (-1: none yet), the next frame number (frame numbers
                       are the stream's: they go on rising across rebuilt
                       segments), generation (the writer's CLOCK_MONOTONIC
                       ns when it made the segment: never the same twice
                       for a name within a boot)
    [128, 128+64*N)    one 64-byte header per slot: seq, frame number
                       (-1: empty or aborted), capture ts (CLOCK_MONOTONIC
                       ns, comparable across processes), wall clock ns at
                       commit, width, height. A rebuilt segment starts its
                       seqs above every seq of the one it replaces.
    data_offset + i*stride   slot i's pixels, H x W x C, 64-byte aligned

Seqlock, and why it is sound from CPython on x86 and ARM:
- Writer: seq += 1 (odd: being written), fence, write pixels and slot
  header, fence, seq += 1 (even: stable), fence, publish `latest`.
- Reader: load seq (must be even and the one it was given), fence, copy or
  use the view, fence, load seq again; a different value means the writer
  touched the slot meanwhile, so the copy is dropped, never returned.
- Header words are numpy int64 views over the mapping at 8-byte-aligned
  offsets; numpy reads and writes an aligned int64 element with one 8-byte
  load or store, so a word is never seen half-written.
- `_fence()` is a lock release followed by a lock acquire on a private
  CPython lock (glibc: a release CAS, then an acquire CAS). On x86 these
  are locked instructions, full barriers. On ARMv8 a store-release followed
  by a load-acquire is ordered (RCsc), so everything before the fence is
  ordered before everything after it: the load-load and store-store order
  the seqlock needs. Both are opaque calls, so no compiler reorders across
  them either.
- The writer never rewrites the slot holding the latest published frame, so
  a reader that takes `latest()` and copies promptly almost always wins;
  when it loses, `read()` returns None and it asks again.

Leases (the writer's process only; apps never take one and cannot stop the
writer): `hold(slot, seq)` pins a frame until `release(slot)`. The writer
never rewrites a held slot, the latest frame's or the one it is writing; of
the free slots it takes the one least recently captured *or let go of* (a
frame whose last lease goes counts as new as the newest frame). So in a ring
of `max held + 2 + margin` slots every held frame stays, and a frame let go
of (a result's, once the next result is out) stays readable for at least
`margin` more frames: time for a subscriber that is a little late. Should
the holds ever take every slot (a sizing bug), the writer breaks the oldest
lease rather than stop (`leases_broken` counts it); its holder sees the seq
change, as any reader would.

Readers map the segment PROT_READ from an O_RDONLY descriptor: their arrays
are read-only and even native code in a reader cannot write the daemon's
frames.
"""
from __future__ import annotations

import atexit
import functools
import grp
import itertools
import mmap
import os
import re
import threading
import time
from contextlib import contextmanager, suppress
from typing import BinaryIO, Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np

from lited.files import FileRefused, open_regular
from lited.validate import name_problem

__all__ = [
    "FrameRing", "FrameMeta", "RingError", "RingGone", "FrameOverwritten",
    "sweep_stale", "list_rings", "ring_name", "boot_id",
]

SHM_DIR = "/dev/shm"
PREFIX = "lited-"
MAGIC = b"LITEDRNG"
LAYOUT_VERSION = 1
MODE = 0o440
ALIGN = 64

# Global header words.
(_MAGIC, _VERSION, _SLOTS, _HEIGHT, _WIDTH, _CHANNELS, _DTYPE, _FRAME_BYTES,
 _STRIDE, _DATA_OFFSET, _PID, _START, _STATE, _LATEST, _FRAMES, _GENERATION) = range(16)
_HDR_WORDS = 16
_HDR_BYTES = _HDR_WORDS * 8
# Slot header words; one 64-byte cache line per slot.
_SEQ, _FRAME, _TS, _WALL, _W, _H = range(6)
_SLOT_WORDS = 8
_LIVE, _CLOSED = 1, 2

TMP_SUFFIX = "~new"  # a segment being made (+ a number: each its own); never a stream name ("~" is not allowed there)
_NAME_RE = re.compile(r"lited-([0-9a-f]{8})-([0-9]+)-(.+?)(~new[0-9]*)?\Z")
_LATEST_RETRIES = 64
_OWNED: set = set()  # names this process created and has not unlinked
_TMP_NUMBERS = itertools.count()  # temporary names: one per segment made
_OWNED_LOCK = threading.Lock()
_GENERATION_LOCK = threading.Lock()
_last_generation = 0

_FENCE_LOCK = threading.Lock()


class RingError(Exception):
    """A ring cannot be used: wrong layout, bad arguments, not a lited ring."""


class RingGone(RingError):
    """The ring was unlinked, its writer died, or it never finished starting."""


class FrameOverwritten(RingError):
    """The writer reused the slot while a zero-copy view of it was in use."""


class FrameMeta(NamedTuple):
    frame: int     # frame number, 0-based, -1 for an empty or aborted slot
    ts_ns: int     # capture time, CLOCK_MONOTONIC ns
    wall_ns: int   # wall clock at commit, ns since the epoch
    width: int
    height: int


def _fence() -> None:
    """Full memory barrier between the seqlock's loads/stores (see module doc).

    Acquire, release, acquire, release: the release-then-acquire in the middle
    is the barrier; the outer pair keeps the lock free for other threads."""
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


@functools.lru_cache(maxsize=None)
def boot_id() -> str:
    """First 8 hex digits of this boot's id: a pid means nothing across boots."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip().replace("-", "")[:8]


def ring_name(stream: str, pid: Optional[int] = None) -> str:
    """The segment name a writer with `pid` uses for `stream`."""
    problem = name_problem(stream)
    if problem:
        raise ValueError(f"stream name {problem}")
    return f"{PREFIX}{boot_id()}-{os.getpid() if pid is None else pid}-{stream}"


def _new_generation() -> int:
    """CLOCK_MONOTONIC ns, strictly rising within this process: no two
    segments a boot sees under one name share a generation."""
    global _last_generation
    with _GENERATION_LOCK:
        _last_generation = max(time.monotonic_ns(), _last_generation + 1)
        return _last_generation


def _path(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a shared memory name")
    return os.path.join(SHM_DIR, name)


def _proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, start time in ticks) of `pid`, None if /proc will not say. Read through a
    descriptor of /proc, not the path /proc/PID: qemu-user (ARM boards' images built or tested on
    x86) answers that path for its own pid with a stat of its making, a tick off the kernel's that
    every other process reads, and readers took the live writer for gone (and a sweep its ring)."""
    try:
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(f"{pid}/stat", os.O_RDONLY, dir_fd=proc)
        finally:
            os.close(proc)
        with os.fdopen(fd, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _writer_alive(pid: int, start: int) -> bool:
    """Is the process that created a ring still running (and not a zombie, and
    not another process that got its pid)?"""
    if not _pid_exists(pid):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True  # /proc hidden (hidepid) or raced an exit: trust kill()
    state, started = stat
    return state not in ("Z", "X") and started == start


class _Layout(NamedTuple):
    """Where everything lives in a segment; computed by the writer, read back
    from the header by readers."""
    slots: int
    shape: Tuple[int, int, int]
    dtype: np.dtype
    frame_bytes: int
    stride: int
    data_offset: int

    @property
    def size(self) -> int:
        return self.data_offset + self.slots * self.stride

    @classmethod
    def compute(cls, slots: int, shape: Tuple[int, int, int], dtype) -> "_Layout":
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf" or len(dtype.str) > 8:
            raise ValueError(f"dtype {dtype}: a plain bool, integer or float type")
        if slots < 2:
            raise ValueError("slots must be >= 2: the latest frame's slot is never rewritten")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape {shape}: expected (height, width, channels), all >= 1")
        shape = tuple(int(n) for n in shape)
        frame_bytes = shape[0] * shape[1] * shape[2] * dtype.itemsize
        return cls(slots, shape, dtype, frame_bytes, _align(frame_bytes),
                   _align(_HDR_BYTES + slots * _SLOT_WORDS * 8))

    @classmethod
    def from_header(cls, hdr: np.ndarray) -> "_Layout":
        if hdr[_VERSION] != LAYOUT_VERSION:
            raise RingError(f"layout version {hdr[_VERSION]}, this lited reads {LAYOUT_VERSION}")
        try:
            dtype = np.dtype(hdr[_DTYPE:_DTYPE + 1].tobytes().rstrip(b"\0").decode())
            want = cls.compute(int(hdr[_SLOTS]),
                               (int(hdr[_HEIGHT]), int(hdr[_WIDTH]), int(hdr[_CHANNELS])), dtype)
        except (TypeError, ValueError, UnicodeDecodeError) as e:
            raise RingError(f"inconsistent ring header: {e}") from None
        got = want._replace(stride=int(hdr[_STRIDE]), data_offset=int(hdr[_DATA_OFFSET]))
        if (hdr[_FRAME_BYTES] != want.frame_bytes or got.stride < want.frame_bytes
                or got.data_offset < want.data_offset or (got.stride | got.data_offset) % ALIGN):
            raise RingError("inconsistent ring header")
        return got

    def write(self, hdr: np.ndarray) -> None:
        hdr[_VERSION] = LAYOUT_VERSION
        hdr[_SLOTS] = self.slots
        hdr[_HEIGHT], hdr[_WIDTH], hdr[_CHANNELS] = self.shape
        hdr[_DTYPE:_DTYPE + 1] = np.frombuffer(self.dtype.str.encode().ljust(8, b"\0"), np.int64)
        hdr[_FRAME_BYTES] = self.frame_bytes
        hdr[_STRIDE] = self.stride
        hdr[_DATA_OFFSET] = self.data_offset


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _read_header(fd: int) -> Optional[np.ndarray]:
    """A copy of the global header, None unless the magic says the writer
    finished initialising it."""
    data = os.pread(fd, _HDR_BYTES, 0)
    if len(data) < _HDR_BYTES or data[:8] != MAGIC:
        return None
    return np.frombuffer(data, np.int64)


def _open_segment(path: str) -> BinaryIO:
    """The regular file `path`, opened by `files.open_regular` (a FIFO planted under a ring's
    name, which anyone may make in /dev/shm, never blocks the open), or OSError; RingGone for
    another kind of file."""
    try:
        return open_regular(path)
    except FileRefused:
        raise RingGone(f"{os.path.basename(path)}: not a frame ring (not a regular file)") from None


def _uid_of(pid: int) -> Optional[int]:
    """The user process `pid` runs as, or None when that cannot be told (no such process, no /proc)."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except (OSError, ValueError):
        return None


def _peek(path: str) -> Optional[np.ndarray]:
    """The header of an initialised ring of a layout version this code reads,
    else None."""
    try:
        segment = _open_segment(path)
    except (OSError, RingGone):
        return None
    with segment:
        hdr = _read_header(segment.fileno())
    return hdr if hdr is not None and hdr[_VERSION] == LAYOUT_VERSION else None


def _is_live(hdr: np.ndarray) -> bool:
    return hdr[_STATE] == _LIVE and _writer_alive(int(hdr[_PID]), int(hdr[_START]))


def _is_stale(name: str) -> bool:
    """True only when a segment provably has no live writer (a temporary
    `~new` one included: its writer died between making and renaming it)."""
    m = _NAME_RE.match(name)
    if m is None:
        return False  # not named by lited: not ours to judge
    if m[1] != boot_id():
        return True
    hdr = _peek(_path(name))
    if hdr is None:  # being created, or another layout: judge by the name's pid
        return not _pid_exists(int(m[2]))
    return not _is_live(hdr)


def sweep_stale(prefix: str = PREFIX) -> list:
    """Unlink segments left by a writer that died without unlinking (SIGKILL,
    power loss is handled by tmpfs itself) or from an earlier boot. Never
    touches a ring whose writer runs. Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(SHM_DIR)):
        if name.startswith(prefix) and _is_stale(name):
            try:
                os.unlink(_path(name))
            except (FileNotFoundError, PermissionError):  # another user's, in sticky /dev/shm: not ours
                continue  # (one planted to look stale stopped a daemon at its start)
            removed.append(name)
    return removed


def list_rings(stream: Optional[str] = None) -> list:
    """Names of rings with a live writer, for `stream` if given, newest writer
    first: what a client passes to `FrameRing.attach`."""
    found = []
    for name in os.listdir(SHM_DIR):
        m = _NAME_RE.match(name)
        if m is None or m[4] or m[1] != boot_id() or (stream is not None and m[3] != stream):
            continue
        hdr = _peek(_path(name))
        if hdr is not None and _is_live(hdr):
            found.append((-int(hdr[_START]), name))
    return [name for _, name in sorted(found)]


def _gid(group: Union[str, int]) -> int:
    return group if isinstance(group, int) else grp.getgrnam(group).gr_gid


def _claim(name: str) -> None:
    """Reserve `name` for this process, or raise if it already writes it."""
    with _OWNED_LOCK:
        if name in _OWNED:
            raise FileExistsError(f"{name}: this process already writes a ring for that stream")
        _OWNED.add(name)


def _create_file(name: str) -> int:
    """O_EXCL-create a claimed segment; a same-named leftover can only come
    from a dead process that had our pid, so it is replaced."""
    path = _path(name)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, MODE)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, MODE)


class FrameRing:
    """One ring, as its writer (`create`) or as a reader (`attach`).

    Threads: one thread writes (`begin_write`/`commit`/`abort`/`rebuilt`);
    any thread of the writer's process may `hold`/`release`; any thread may
    read (`latest`/`view`/`read`/`is_current`/`frame`)."""

    liveness_interval = 0.5  # s without a new frame before latest() checks the writer

    def __init__(self, name: str, mm: mmap.mmap, layout: _Layout, ino: int, writer: bool):
        """Private: use `FrameRing.create` or `FrameRing.attach`."""
        self.name = name
        self.path = _path(name)
        self.is_writer = writer
        self.slots = layout.slots
        self.shape = layout.shape
        self.dtype = layout.dtype
        self._layout = layout
        self._ino = ino
        self._fd = -1  # the writer's descriptor of the segment, kept for damage() and repair()
        self._fd_lock = threading.Lock()
        self._mm: Optional[mmap.mmap] = mm
        self._hdr = np.ndarray((_HDR_WORDS,), np.int64, buffer=mm)
        if writer:
            stat = _proc_stat(os.getpid())
            self.writer_pid, self._writer_start = os.getpid(), (stat[1] if stat else 0)
            self.generation = _new_generation()
        else:
            self.writer_pid, self._writer_start = int(self._hdr[_PID]), int(self._hdr[_START])
            self.generation = int(self._hdr[_GENERATION])
        slot_hdr = np.ndarray((layout.slots, _SLOT_WORDS), np.int64, buffer=mm, offset=_HDR_BYTES)
        self._seq = slot_hdr[:, _SEQ]
        self._rows = list(slot_hdr)
        frames = [np.ndarray(layout.shape, layout.dtype, buffer=mm,
                             offset=layout.data_offset + i * layout.stride)
                  for i in range(layout.slots)]
        self._wviews = frames if writer else None
        self._views = [f.view() for f in frames]
        for v in self._views:
            v.flags.writeable = False
        # Writer state: written by the capture thread; leases by any thread, under _lock.
        self._lock = threading.Lock()
        self._holds = [0] * layout.slots      # leases per slot
        self._numbers = [-1] * layout.slots   # per slot: frame number, or the next one when let go of (-1: empty)
        self._latest = -1
        self._writing = -1
        self._frame = 0
        # Segment life (writer): pending (made, not yet under the name) -> linked -> retired
        # (no more writes; a successor is pending) -> closed (state 2; unmapped once no frame is held).
        self._chain = threading.RLock()  # shared by a ring and the rings rebuilt from it
        self.pending = False
        self._replaces: Optional["FrameRing"] = None  # pending: the linked segment it will replace
        self._retired = False
        self._closed = False
        self.leases_broken = 0
        self.group: Union[str, int, None] = None
        self._owner_pid = os.getpid()
        # Reader state: when the frame count last moved.
        self._seen_frames = -1
        self._seen_at = 0.0

    # -- lifecycle --------------------------------------------------------

    @classmethod
    def create(cls, stream: str, slots: int, shape: Tuple[int, int, int], dtype: type = np.uint8,
               *, group: Union[str, int, None] = None, first_frame: int = 0) -> "FrameRing":
        """Create the writer's ring for `stream`: `slots` frames of `shape`
        (height, width, channels), mode 0o440, group `group` if given; its
        first frame gets number `first_frame`. Unlinked by `unlink()`/`close()`,
        or at normal interpreter exit."""
        layout = _Layout.compute(slots, shape, dtype)
        name = ring_name(stream)
        _claim(name)
        try:
            ring = cls._make(name, layout, group, first_frame, 0)
        except BaseException:
            _OWNED.discard(name)
            raise
        atexit.register(ring._unlink_at_exit)
        return ring

    @classmethod
    def _make(cls, name: str, layout: _Layout, group: Union[str, int, None], first_frame: int,
              first_seq: int, link: bool = True) -> "FrameRing":
        """A complete segment made under `<name>~new<n>`, then (`link`) renamed
        to `name`, replacing what was there in one step."""
        tmp_name = f"{name}{TMP_SUFFIX}{next(_TMP_NUMBERS)}"
        tmp = _path(tmp_name)
        fd = _create_file(tmp_name)
        try:
            os.fchmod(fd, MODE)  # exact bits whatever the umask
            if group is not None:
                os.fchown(fd, -1, _gid(group))
            try:
                os.posix_fallocate(fd, 0, layout.size)  # ENOSPC now, not SIGBUS mid-frame
            except OSError as exc:  # "[Errno 28] No space left on device" named neither the place nor the size
                raise RingError(f"{os.path.dirname(tmp)}: no room for frame ring {name} ({layout.size} bytes: "
                                f"{layout.slots} slots of {'x'.join(map(str, layout.shape))}): {exc.strerror} "
                                "(free some, or give the stream fewer slots)") from None
            mm = mmap.mmap(fd, layout.size)
            ring = cls(name, mm, layout, os.fstat(fd).st_ino, writer=True)
            ring._fd = fd
            ring.group = group
            ring._init_header(first_frame, first_seq)
            ring.path, ring.pending = tmp, True
            if link:
                ring._rename()
        except BaseException:
            os.close(fd)
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return ring

    def _rename(self) -> None:
        try:
            os.rename(self.path, _path(self.name))
        except PermissionError:  # sticky /dev/shm: a file of another user holds the name
            try:
                owner = os.stat(_path(self.name)).st_uid
            except OSError:
                raise RingError(f"{_path(self.name)}: cannot be put in place (permission denied)") from None
            raise RingError(f"{_path(self.name)} belongs to uid {owner}, not this daemon's: another user took this "
                            "ring's name in /dev/shm; remove it as root (the stream retries)") from None
        self.path, self.pending = _path(self.name), False

    def _init_header(self, first_frame: int, first_seq: int) -> None:
        hdr = self._hdr
        self._layout.write(hdr)
        hdr[_PID] = self.writer_pid
        hdr[_START] = self._writer_start
        hdr[_STATE] = _LIVE
        hdr[_LATEST] = -1
        hdr[_FRAMES] = self._frame = first_frame
        hdr[_GENERATION] = self.generation
        self._seq[:] = first_seq
        for row in self._rows:
            row[_FRAME] = -1
            row[_W], row[_H] = self.shape[1], self.shape[0]
        _fence()
        hdr[_MAGIC:_MAGIC + 1] = np.frombuffer(MAGIC, np.int64)

    def rebuilt(self, shape: Tuple[int, int, int]) -> "FrameRing":
        """Writer: a segment for frames of `shape` to write from now on, with
        a new generation; frame numbers go on from this ring's and its seqs
        start above all of this ring's. It is *pending*: readers opening the
        name still get this segment until `link()` on the new one puts it in
        place, atomically (the stream does that just before publishing the
        first result of it, so each result's segment is under the name until
        the next result is out). This ring is never written again; once
        replaced it is closed (state 2) and unmapped here when its last lease
        is released: frames still held stay intact, and readers keep their
        mappings. A ring rebuilt while itself still pending keeps its own
        temporary name while any of its frames is held: a result of it still
        to come links it in turn (dropped at once, the results of a slow model
        named a segment no name gave). It goes when its last lease does, or
        when a later segment is linked."""
        with self._chain:
            if not self.is_writer or self._retired or self._mm is None:
                raise RingError(f"{self.name}: only the live writer rebuilds its ring")
            if self._writing >= 0:
                raise RingError(f"slot {self._writing} is being written: commit or abort it first")
            layout = _Layout.compute(self.slots, shape, self.dtype)
            first_seq = (int(self._seq.max()) | 1) + 1
            new = FrameRing._make(self.name, layout, self.group, self._frame, first_seq, link=False)
            new._chain, new._replaces = self._chain, self
            self._retired = True
            if self.pending:
                with self._lock:
                    unheld = not any(self._holds)
                if unheld:  # no result of it can come: never linked
                    self._close()
            atexit.unregister(self._unlink_at_exit)
            atexit.register(new._unlink_at_exit)
            return new

    def link(self) -> None:
        """Put this pending segment under the ring's name (one rename) and
        close the ones it replaces (the linked one, and pending ones that
        were never linked). No-op unless pending."""
        with self._chain:
            if not self.pending or self._closed:
                return
            try:
                self._rename()
            except FileNotFoundError:  # its temporary name removed by another process (`rm /dev/shm/lited-*`)
                self.pending = False   # never under the name: the ring guard has the capture replace it
                raise RingError(f"{self.path}: removed by another process before it was put in place; "
                                "its frames cannot be read by name") from None
            old, self._replaces = self._replaces, None
            while old is not None:
                old._close()
                older, old._replaces = old._replaces, None
                old = older

    def _close(self) -> None:
        """State 2 for readers; a pending segment loses its temporary name;
        unmapped once no frame of it is held."""
        self._retired = self._closed = True
        if self._hdr is not None:
            self._hdr[_STATE] = _CLOSED
        if self.pending:
            self._unlink_path()
        with self._lock:
            idle = not any(self._holds)
        if idle:
            self._unmap()

    def _unlink_path(self) -> None:
        """Remove this segment's name (or temporary name) if it still is ours."""
        with suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)

    @classmethod
    def attach(cls, name: str) -> "FrameRing":
        """Map ring `name` read-only. Raises RingGone if it does not exist, is
        not initialised yet, or its writer is dead."""
        path = _path(name)
        try:
            segment = _open_segment(path)
        except FileNotFoundError:
            raise RingGone(f"{name}: no such ring (writer stopped or not started)") from None
        with segment:
            fd = segment.fileno()
            hdr = _read_header(fd)
            if hdr is None:
                raise RingGone(f"{name}: not an initialised lited frame ring")
            layout = _Layout.from_header(hdr)
            st = os.fstat(fd)
            writer_uid = _uid_of(int(hdr[_PID]))
            if writer_uid is not None and st.st_uid != writer_uid:  # made by someone else than the writer it names
                raise RingGone(f"{name}: owned by uid {st.st_uid}, not by its writer's ({writer_uid}): not its ring")
            if st.st_size < layout.size:
                raise RingError(f"{name}: {st.st_size} bytes, header needs {layout.size}")
            mm = mmap.mmap(fd, layout.size, access=mmap.ACCESS_READ)
        ring = cls(name, mm, layout, st.st_ino, writer=False)
        if not ring.writer_alive():
            ring.close()
            raise RingGone(f"{name}: its writer (pid {ring.writer_pid}) is gone")
        return ring

    def writer_alive(self) -> bool:
        """Is the writer still running and the segment still linked as ours?"""
        if self._mm is None or self._hdr[_STATE] != _LIVE:
            return False
        try:
            if os.stat(self.path).st_ino != self._ino:
                return False
        except FileNotFoundError:
            return False
        return _writer_alive(self.writer_pid, self._writer_start)

    def readable(self) -> bool:
        """Reader: do the frames in this mapping still hold what was written?
        Yes while the segment is live, and after its writer closed it on
        replacing it (state 2: never written again) as long as the writer
        runs; no once the writer is gone (a restart: its frames are stale)
        or the segment was wiped (a truncated one is given its size back as
        zeros)."""
        if self._mm is None or int(self._hdr[_GENERATION]) != self.generation:
            return False
        return self._hdr[_STATE] in (_LIVE, _CLOSED) and _writer_alive(self.writer_pid, self._writer_start)

    def close(self) -> None:
        """Unmap. A writer's close() unlinks as well: a ring nobody writes is
        useless. Views still held elsewhere stay valid until dropped."""
        if self.is_writer:
            self.unlink()
        else:
            self._unmap()

    def unlink(self) -> None:
        """Writer: mark the ring closed (readers get RingGone), remove it from
        /dev/shm (with the segment a pending one would replace) and unmap.
        Idempotent."""
        if not self.is_writer:
            raise RingError("only the writer unlinks its ring; readers close()")
        with self._chain:
            old, self._replaces = self._replaces, None
            if old is not None:
                old.unlink()
            if not self._closed:
                atexit.unregister(self._unlink_at_exit)
                self._retired = self._closed = True
                if self._hdr is not None:
                    self._hdr[_STATE] = _CLOSED
                self._unlink_path()
                _OWNED.discard(self.name)
            self._unmap()

    def _unlink_at_exit(self) -> None:
        if os.getpid() == self._owner_pid:  # not in a forked child
            self.unlink()

    def damage(self) -> Optional[str]:
        """Writer: why the segment is no longer the one this ring mapped
        (another process truncated it, or unlinked or replaced it at its
        path), None while it is intact or once it is unmapped. A segment
        closed or retired is only checked for its size (its name is no
        longer its own)."""
        with self._fd_lock:
            if self._fd < 0:
                return None
            size = os.fstat(self._fd).st_size
        if size < self._layout.size:
            return f"truncated to {size} bytes by another process"
        if self._closed or self._retired:
            return None
        try:
            if os.stat(self.path).st_ino != self._ino:
                return "replaced at its path by another file"
        except FileNotFoundError:
            return "unlinked by another process"
        return None

    def repair(self) -> bool:
        """Writer: give a truncated segment its size back at once (the lost
        pages come back as zeros), so that no access to the mapping faults;
        True if it had to. The frames and header in it are gone: replace
        the ring."""
        with self._fd_lock:
            if self._fd < 0 or os.fstat(self._fd).st_size >= self._layout.size:
                return False
            os.ftruncate(self._fd, self._layout.size)
            return True

    def _unmap(self) -> None:
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        mm, self._mm = self._mm, None
        if mm is None:
            return
        self._hdr = self._seq = self._rows = self._views = self._wviews = None
        # No mm.close(): a numpy array over an mmap keeps it alive but does not
        # pin it (no buffer export), so close() would succeed and leave every
        # view a caller still holds pointing at unmapped memory (SIGSEGV on the
        # next read). Dropping our references unmaps it once the last view goes.
        del mm

    def __enter__(self) -> "FrameRing":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "writer" if self.is_writer else "reader"
        return f"<FrameRing {self.name} {role} {self.slots}x{self.shape} {self.dtype} gen {self.generation}>"

    @property
    def frames(self) -> int:
        """The number the next frame will get: frames published in the
        stream so far, counting the segments this one replaced."""
        if self._hdr is None:
            return self._frame
        return int(self._hdr[_FRAMES])

    @property
    def frames_written(self) -> int:
        """Writer: `frames` as this process counts them (kept when another
        process wiped the header by truncating the segment)."""
        return self._frame

    # -- leases (writer's process) -----------------------------------------

    def hold(self, slot: int, seq: int) -> bool:
        """Pin frame (slot, seq): the writer will not rewrite the slot until
        `release(slot)`. False (nothing held) if the slot no longer holds
        that frame or the ring is unmapped. Each True needs one release."""
        with self._lock:
            seqs = self._seq
            if seqs is None or seq & 1 or seqs[slot] != seq:
                return False
            self._holds[slot] += 1
            return True

    def release(self, slot: int) -> None:
        """Give back one lease of `slot`. A retired ring is unmapped with its
        last lease (one never linked closed: no result of it can come now)."""
        with self._lock:
            if self._holds[slot] <= 0:
                raise RingError(f"slot {slot}: released more often than held")
            self._holds[slot] -= 1
            if not self._holds[slot]:
                self._numbers[slot] = self._frame  # let go of now: as recent as the newest frame
            unheld = not any(self._holds)
            idle = self._closed and unheld
        if unheld and self._retired and self.pending and not self._closed:
            with self._chain:
                if self.pending and not self._closed and not self.held:
                    self._close()
        elif idle:
            self._unmap()

    @property
    def held(self) -> int:
        """Leases taken and not released."""
        return sum(self._holds)

    # -- writer -----------------------------------------------------------

    def begin_write(self) -> Tuple[int, np.ndarray]:
        """(slot, writable HxWxC view) of the slot to fill in place: of the
        free slots (not held, not the latest frame's) the one least recently
        captured or let go of. Its seq is odd from now until `commit`/`abort`."""
        if self._writing >= 0:
            raise RingError(f"slot {self._writing} is being written: commit or abort it first")
        if self._wviews is None or self._retired:
            raise RingError("begin_write on a read-only, retired or closed ring")
        holds, numbers, latest = self._holds, self._numbers, self._latest
        with self._lock:
            slot = oldest = -1
            for i in range(self.slots):
                if i == latest:
                    continue
                if not holds[i] and (slot < 0 or numbers[i] < numbers[slot]):
                    slot = i
                if oldest < 0 or numbers[i] < numbers[oldest]:
                    oldest = i
            if slot < 0:  # every other slot is held: more holders than the ring was sized for
                slot = oldest
                self.leases_broken += 1
            self._seq[slot] += 1
        _fence()
        self._writing = slot
        return slot, self._wviews[slot]

    def commit(self, slot: int, ts_ns: Optional[int] = None) -> Tuple[int, int]:
        """Publish the frame written into `slot`, captured at `ts_ns`
        (CLOCK_MONOTONIC; default now). Returns its (slot, seq)."""
        self._check_writing(slot)
        row = self._rows[slot]
        frame = self._frame
        row[_FRAME] = frame
        row[_TS] = time.monotonic_ns() if ts_ns is None else ts_ns
        row[_WALL] = time.time_ns()
        _fence()
        seq = int(self._seq[slot]) + 1
        self._seq[slot] = seq
        _fence()
        self._hdr[_LATEST] = slot
        self._hdr[_FRAMES] = frame + 1
        self._frame = frame + 1
        self._numbers[slot] = frame
        self._latest = slot
        self._writing = -1
        return slot, seq

    def abort(self, slot: int) -> None:
        """Give `slot` back after a failed capture; it stays unpublished and
        anyone holding its old seq sees it changed."""
        self._check_writing(slot)
        self._rows[slot][_FRAME] = -1
        self._numbers[slot] = -1
        _fence()
        self._seq[slot] += 1
        self._writing = -1

    def _check_writing(self, slot: int) -> None:
        if slot != self._writing or slot < 0:
            raise RingError(f"slot {slot} is not being written (begin_write gave {self._writing})")

    # -- readers ----------------------------------------------------------

    def latest(self) -> Optional[Tuple[int, int]]:
        """(slot, seq) of the newest published frame, None before the first.
        Raises RingGone once the writer closed the ring, or (checked every
        `liveness_interval` s while no new frame arrives) died."""
        if self._mm is None:
            raise RingGone(f"{self.name}: closed")
        hdr = self._hdr
        for _ in range(_LATEST_RETRIES):
            if hdr[_STATE] != _LIVE:
                raise RingGone(f"{self.name}: the writer closed the ring")
            if not self.is_writer:
                self._check_liveness()
            slot = int(hdr[_LATEST])
            if slot < 0:
                return None
            seq = int(self._seq[slot])
            if not seq & 1:
                _fence()
                return slot, seq
            # The writer published a newer frame and is reusing this slot.
        return None

    def _check_liveness(self) -> None:
        frames = self._hdr[_FRAMES]
        now = time.monotonic()
        if frames != self._seen_frames:
            self._seen_frames = frames
            self._seen_at = now
        elif now - self._seen_at > self.liveness_interval:
            self._seen_at = now
            if not self.writer_alive():
                raise RingGone(f"{self.name}: its writer (pid {self.writer_pid}) is gone")

    def view(self, slot: int) -> np.ndarray:
        """Read-only zero-copy view of `slot`. The writer may reuse the slot at
        any time: validate with `is_current` after use, or use `frame()`."""
        views = self._views
        if views is None:
            raise RingGone(f"{self.name}: closed")
        return views[slot]

    def _stable(self, slot: int, seq: int) -> bool:
        """Raises RingGone once the ring is unmapped (another thread closed it):
        a frame of a closed ring is never reported as current."""
        seqs = self._seq
        if seqs is None:
            raise RingGone(f"{self.name}: closed")
        if not 0 <= slot < self.slots:  # a negative one would index from the end: another slot's frame
            raise ValueError(f"{self.name}: slot {slot}: the ring has slots 0 to {self.slots - 1}")
        return not seq & 1 and seqs[slot] == seq

    def is_current(self, slot: int, seq: int) -> bool:
        """Does `slot` still hold frame `seq`? True after using a view means
        everything read from it belonged to that frame."""
        _fence()
        return bool(self._stable(slot, seq))

    def read(self, slot: int, seq: int, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Copy frame (slot, seq) into `out` (allocated if None) and return it;
        None if the writer touched the slot before or during the copy: a torn
        frame is never returned."""
        if out is None:
            out = np.empty(self.shape, self.dtype)
        if not self._stable(slot, seq):
            return None
        _fence()
        np.copyto(out, self._views[slot], casting="no")
        return out if self.is_current(slot, seq) else None

    def meta(self, slot: int, seq: int) -> Optional[FrameMeta]:
        """Frame number and timestamps of frame (slot, seq), None if the slot
        no longer holds it."""
        if not self._stable(slot, seq):
            return None
        _fence()
        row = self._rows[slot]
        meta = FrameMeta(int(row[_FRAME]), int(row[_TS]), int(row[_WALL]),
                         int(row[_W]), int(row[_H]))
        return meta if self.is_current(slot, seq) else None

    @contextmanager
    def frame(self, slot: int, seq: int) -> Iterator[np.ndarray]:
        """Zero-copy read-only view of frame (slot, seq) for the `with` body;
        raises FrameOverwritten on entry or exit if the writer reused the slot,
        so results computed from a torn frame are never kept."""
        if not self._stable(slot, seq):
            raise FrameOverwritten(f"slot {slot} no longer holds seq {seq}")
        _fence()
        yield self._views[slot]
        if not self.is_current(slot, seq):
            raise FrameOverwritten(f"slot {slot} was rewritten while its view was in use")
