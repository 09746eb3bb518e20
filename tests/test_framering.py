"""Frame ring over real /dev/shm, with real second processes.

The lapping test is the one that matters: a reader process copies 1080p
frames while this process rewrites a 2- or 3-slot ring as fast as it can; a
torn frame must be detected every time and never returned.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid

import cv2
import numpy as np
import pytest

from lited.stream.ring import (
    SHM_DIR, FrameOverwritten, FrameRing, RingError, RingGone, boot_id, list_rings, sweep_stale,
)


def _stream() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_ring():
    """FrameRing.create that unlinks whatever the test left behind."""
    rings = []

    def make(slots=3, shape=(48, 64, 3), dtype=np.uint8) -> FrameRing:
        ring = FrameRing.create(_stream(), slots, shape, dtype)
        rings.append(ring)
        return ring

    yield make
    for ring in rings:
        ring.unlink()


def _python(code: str, *args: str) -> subprocess.Popen:
    """A fresh interpreter (nothing inherited from pytest) running `code`."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, text=True)


def _publish(ring: FrameRing, value) -> tuple:
    slot, arr = ring.begin_write()
    arr[...] = value
    return ring.commit(slot)


def test_round_trip_real_frames(make_ring):
    writer = make_ring(slots=3, shape=(480, 640, 3))
    assert writer.name == f"lited-{boot_id()}-{os.getpid()}-{writer.name.split('-', 3)[3]}"
    assert stat.S_IMODE(os.stat(writer.path).st_mode) == 0o440
    img = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    slot, arr = writer.begin_write()
    np.copyto(arr, img)
    published = writer.commit(slot, ts_ns=123456789)

    reader = FrameRing.attach(writer.name)
    try:
        assert (reader.slots, reader.shape, reader.dtype) == (3, (480, 640, 3), np.uint8)
        assert reader.latest() == published
        out = np.zeros_like(img)
        assert reader.read(*published, out=out) is out
        np.testing.assert_array_equal(out, img)
        np.testing.assert_array_equal(reader.view(slot), img)
        meta = reader.meta(*published)
        assert (meta.frame, meta.ts_ns, meta.width, meta.height) == (0, 123456789, 640, 480)
        assert reader.is_current(*published) and reader.writer_alive()
        assert reader.frames == 1
    finally:
        reader.close()

    # A float ring, filled by OpenCV straight into the slot (no copy).
    ring = make_ring(slots=2, shape=(48, 64, 3), dtype=np.float32)
    slot, arr = ring.begin_write()
    src = np.arange(48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3)
    assert cv2.multiply(src, 2.0, dst=arr) is arr
    published = ring.commit(slot)
    with FrameRing.attach(ring.name) as reader:
        np.testing.assert_array_equal(reader.read(*published), src * 2)


def test_opencv_capture_fills_slot_in_place(make_ring, tmp_path):
    video = str(tmp_path / "v.avi")
    out = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for value in (30, 130):
        out.write(np.full((48, 64, 3), value, np.uint8))
    out.release()
    ring = make_ring(slots=2, shape=(48, 64, 3))
    cap = cv2.VideoCapture(video)
    for value in (30, 130):
        slot, arr = ring.begin_write()
        ok, img = cap.read(image=arr)
        assert ok and img is arr
        ring.commit(slot)
        assert abs(float(ring.view(slot).mean()) - value) < 3
    slot, arr = ring.begin_write()
    ok, _ = cap.read(image=arr)
    assert not ok  # end of file: the capture code aborts
    ring.abort(slot)
    assert ring.latest()[0] != slot
    cap.release()


def test_reader_mapping_is_read_only(make_ring):
    writer = make_ring()
    published = _publish(writer, 7)
    reader = FrameRing.attach(writer.name)
    try:
        view = reader.view(published[0])
        with pytest.raises(ValueError):
            view[0, 0, 0] = 1
        with pytest.raises(ValueError):
            view.flags.writeable = True
        with pytest.raises(RingError):  # no writer API on a reader
            reader.begin_write()
        with pytest.raises(TypeError):
            reader._mm[0:1] = b"x"
        # The kernel mapping itself is PROT_READ: not even native code can write.
        with open("/proc/self/maps") as f:
            perms = [line.split()[1] for line in f if line.rstrip().endswith(writer.path)]
        assert "r--s" in perms and "rw-s" in perms  # reader's and writer's mappings
        # In-process consumers get read-only views too.
        with pytest.raises(ValueError):
            writer.view(published[0])[0, 0, 0] = 1
        assert int(reader.view(published[0]).max()) == 7
    finally:
        reader.close()


@pytest.mark.parametrize("slots", [2, 3, 5])
def test_writer_never_hands_out_latest_slot(make_ring, slots):
    ring = make_ring(slots=slots)
    latest, used = None, []
    for i in range(60):
        slot, arr = ring.begin_write()
        assert slot != latest and arr.flags.writeable
        with pytest.raises(RingError, match="commit or abort"):
            ring.begin_write()
        used.append(slot)
        if i % 7 == 3:
            ring.abort(slot)
        else:
            latest, _ = ring.commit(slot)
            assert ring.latest()[0] == latest
    assert set(used) == set(range(slots))
    assert ring.frames == sum(1 for i in range(60) if i % 7 != 3)


def test_overwrite_is_detected_in_process(make_ring):
    writer = make_ring(slots=2)
    _publish(writer, 1)
    held = _publish(writer, 2)  # slot 1 holds frame 1
    reader = FrameRing.attach(writer.name)
    try:
        assert reader.latest() == held
        with reader.frame(*held) as view:
            assert int(view[0, 0, 0]) == 2
        _publish(writer, 3)  # goes to slot 0: the latest slot is never rewritten
        assert reader.is_current(*held)
        with pytest.raises(FrameOverwritten):
            with reader.frame(*held) as view:
                slot, arr = writer.begin_write()  # now slot 1: seq odd
                assert slot == held[0]
        out = np.empty(reader.shape, reader.dtype)
        assert reader.read(*held, out=out) is None
        assert reader.meta(*held) is None
        writer.abort(slot)  # an aborted slot is not published and the old seq stays dead
        assert not reader.is_current(*held)
        assert reader.latest() != held
        with pytest.raises(FrameOverwritten):
            with reader.frame(*held):
                pass
    finally:
        reader.close()


_LAPPING_READER = """
import json, sys, time
import numpy as np
from lited.stream.ring import FrameRing

ring = FrameRing.attach(sys.argv[1])
out = np.empty(ring.shape, ring.dtype)
ok = torn = torn_pixels = bad = missed = 0
print("ready", flush=True)
deadline = time.monotonic() + 6
while time.monotonic() < deadline and not (torn >= 30 and ok >= 30):
    got = ring.latest()
    if got is None:
        continue
    meta = ring.meta(*got)
    if meta is None:
        missed += 1
        continue
    if ring.read(*got, out=out) is None:
        torn += 1
        torn_pixels += int(out.min() != out.max())  # the copy really was torn
        continue
    ok += 1
    lo, hi = int(out.min()), int(out.max())
    bad += int(lo != hi or lo != meta.frame % 251)
print(json.dumps(dict(ok=ok, torn=torn, torn_pixels=torn_pixels, bad=bad, missed=missed)))
"""


@pytest.mark.parametrize("slots", [2, 3])
def test_lapping_writer_never_yields_torn_frame(make_ring, slots):
    ring = make_ring(slots=slots, shape=(1080, 1920, 3))
    _publish(ring, 0)
    reader = _python(_LAPPING_READER, ring.name)
    try:
        assert reader.stdout.readline().strip() == "ready"
        written = 0
        while reader.poll() is None:  # full speed; frame n is all n % 251
            slot, arr = ring.begin_write()
            arr.fill(ring.frames % 251)
            ring.commit(slot)
            written += 1
        stats = json.loads(reader.stdout.read())
    finally:
        reader.kill()
        reader.wait()
    print(f"slots={slots} written={written} {stats}")
    assert reader.returncode == 0
    assert stats["bad"] == 0, stats  # no inconsistent frame ever returned
    assert stats["ok"] > 0 and stats["torn"] > 0, stats


_HOLDER = """
import sys, time
from lited.stream.ring import FrameRing
ring = FrameRing.create(sys.argv[1], 2, (8, 8, 3))
print(ring.name, flush=True)
if sys.argv[2] == "hold":
    time.sleep(60)
"""


def test_sweep_removes_only_dead_rings(make_ring):
    live = make_ring()
    stream = _stream()
    holder = _python(_HOLDER, stream, "hold")
    try:
        dead_name = holder.stdout.readline().strip()
        reader = FrameRing.attach(dead_name)
        other_boot = "00000000" if boot_id() != "00000000" else "11111111"
        old = os.path.join(SHM_DIR, f"lited-{other_boot}-{os.getpid()}-{_stream()}")
        with open(old, "wb") as f:
            f.write(b"\0" * 4096)

        removed = sweep_stale()
        assert dead_name not in removed and live.name not in removed
        assert list_rings(stream) == [dead_name]
        assert os.path.basename(old) in removed and not os.path.exists(old)

        holder.send_signal(signal.SIGKILL)  # no atexit, no unlink
        holder.wait()
        assert os.path.exists(os.path.join(SHM_DIR, dead_name))
        assert not reader.writer_alive()
        reader.liveness_interval = 0.0
        reader.latest()  # first call notes the frame count, second finds it frozen
        with pytest.raises(RingGone):
            reader.latest()
        with pytest.raises(RingGone, match="gone"):
            FrameRing.attach(dead_name)
        assert list_rings(stream) == []

        removed = sweep_stale()
        assert dead_name in removed and live.name not in removed
        assert not os.path.exists(os.path.join(SHM_DIR, dead_name))
        assert os.path.exists(live.path) and FrameRing.attach(live.name).writer_alive()
        reader.close()
    finally:
        holder.kill()
        holder.wait()


def test_unlink_and_exit_remove_segment(make_ring):
    ring = make_ring()
    published = _publish(ring, 5)
    reader = FrameRing.attach(ring.name)
    view = reader.view(published[0])
    ring.unlink()
    assert not os.path.exists(ring.path)
    with pytest.raises(RingGone):
        reader.latest()
    assert not reader.writer_alive()
    assert int(view.max()) == 5  # still mapped: no crash for a reader mid-frame
    reader.close()
    with pytest.raises(RingGone, match="no such ring"):
        FrameRing.attach(ring.name)

    exits = _python(_HOLDER, _stream(), "exit")  # normal exit: atexit unlinks
    name = exits.stdout.readline().strip()
    assert exits.wait() == 0
    assert name.startswith("lited-") and not os.path.exists(os.path.join(SHM_DIR, name))


def test_steady_state_allocates_nothing(make_ring):
    writer = make_ring(slots=3, shape=(480, 640, 3))
    reader = FrameRing.attach(writer.name)
    out = np.empty(reader.shape, reader.dtype)

    def cycle(i: int) -> None:
        slot, arr = writer.begin_write()
        arr[0, 0, 0] = i & 255
        writer.commit(slot)
        assert reader.read(*reader.latest(), out=out) is out

    try:
        for i in range(20):
            cycle(i)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for i in range(500):
                cycle(i)
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert current - base < 10_000, current - base
        assert peak - base < 10_000, peak - base  # a per-frame buffer would be 900 KB
        assert int(out[0, 0, 0]) == 499 & 255
    finally:
        reader.close()


def test_held_frames_stay_and_a_frame_let_go_of_outlives_margin_frames(make_ring):
    """Leases: the writer never rewrites a held frame; of the free slots it
    takes the one least recently captured or let go of, so the newest
    frames stay, and a frame let go of outlives `margin` more frames."""
    margin = 2
    ring = make_ring(slots=3 + 2 + margin)  # 3 held, latest + writing, the margin
    reader = FrameRing.attach(ring.name)
    try:
        held = [_publish(ring, n) for n in range(3)]
        for slot, seq in held:
            assert ring.hold(slot, seq)
        assert ring.hold(*held[0])  # two holders of one frame: both must release
        assert ring.held == 4
        newest = []
        for n in range(3, 200):
            newest = (newest + [(n, _publish(ring, n % 251))])[-(margin + 1):]
            for value, (slot, seq) in enumerate(held):  # held frames intact, for any reader
                assert reader.is_current(slot, seq) and int(reader.view(slot).max()) == value
            for number, got in newest:  # and the newest margin + 1 frames are readable
                assert reader.meta(*got).frame == number
        assert ring.leases_broken == 0
        ring.release(held[1][0])  # let go of: it outlives the older free frames, `margin` frames at least
        for n in range(margin):
            _publish(ring, n)
            assert reader.is_current(*held[1])
        for n in range(3):
            _publish(ring, n)
        assert not reader.is_current(*held[1])  # then it goes like any other
        ring.release(held[0][0])
        _publish(ring, 2)
        assert reader.is_current(*held[0])  # still held once
        ring.release(held[0][0])
        ring.release(held[2][0])
        with pytest.raises(RingError, match="released more often than held"):
            ring.release(held[2][0])
        assert ring.held == 0
        slot, _ = ring.begin_write()
        assert not ring.hold(slot, int(reader._seq[slot]))  # a slot being written cannot be held
        ring.abort(slot)
        assert not ring.hold(*held[1])  # nor a frame that is gone
    finally:
        reader.close()


def test_a_ring_held_full_breaks_the_oldest_lease_rather_than_stop(make_ring):
    ring = make_ring(slots=3)
    first, second, _ = (_publish(ring, n) for n in range(3))
    assert ring.hold(*first) and ring.hold(*second)
    fourth = _publish(ring, 3)  # every slot but the latest is held: the oldest lease goes
    assert fourth[0] == first[0] and ring.leases_broken == 1
    assert not ring.is_current(*first) and ring.is_current(*second)


_NAME_WATCHER = """
import json, os, sys, time
path = "/dev/shm/" + sys.argv[1]
missing = opened = 0
generations = set()
deadline = time.monotonic() + 20
# "ready" once it has read the first segment, and a last read after ".stop" (which comes after the
# last rebuild): so it sees at least two generations however little of the CPU it gets meanwhile
while time.monotonic() < deadline:
    stop = os.path.exists(path + ".stop")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        missing += 1
        continue
    try:
        header = os.pread(fd, 128, 0)
    finally:
        os.close(fd)
    opened += 1
    if header[:8] != b"LITEDRNG":
        missing += 1  # a name that shows a half-made segment is as bad as none
        continue
    if not generations:
        print("ready", flush=True)
    generations.add(int.from_bytes(header[120:128], "little"))
    if stop:
        break
print(json.dumps({"missing": missing, "opened": opened, "generations": sorted(generations)}))
"""


def test_a_rebuilt_ring_replaces_its_name_atomically(make_ring):
    """A new frame size: a new segment, pending until `link()` renames it
    into place (a reader opening the name in a loop never finds it missing or
    half-made), with a new generation, frame numbers that go on and seqs
    above the old segment's; the old segment is closed but its frames stay
    intact while held."""
    ring = make_ring(slots=3, shape=(48, 64, 3))
    watcher = _python(_NAME_WATCHER, ring.name)
    rings = [ring]
    try:
        assert watcher.stdout.readline().strip() == "ready"
        reader = FrameRing.attach(ring.name)
        old = _publish(ring, 7)
        assert ring.hold(*old)
        generations = [ring.generation]
        for i in range(40):
            linked = ring
            ring = ring.rebuilt((48, 64 + 16 * (i % 2 + 1), 3))
            rings.append(ring)
            generations.append(ring.generation)
            for _ in range(3):
                _publish(ring, i)
            if i == 0:  # pending: the name still gives the segment it replaces, which still reads as live
                with FrameRing.attach(ring.name) as named:
                    assert named.generation == linked.generation and named.writer_alive()
                assert ring.pending and "~new" in os.path.basename(ring.path) and os.path.exists(ring.path)
            ring.link()
            assert not ring.pending and ring.path == os.path.join(SHM_DIR, ring.name)
            time.sleep(0.005)  # the watcher gets turns between rebuilds, on a loaded machine too
        _publish(ring, 9)
        open(ring.path + ".stop", "w").close()
        stats = json.loads(watcher.stdout.read())
    finally:
        watcher.kill()
        watcher.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rings[-1].path + ".stop")
    assert stats["missing"] == 0 and stats["opened"] > 100, stats
    assert len(set(generations)) == len(generations) and generations == sorted(generations)
    assert set(stats["generations"]) <= set(generations) and len(stats["generations"]) > 1
    assert ring.frames == 1 + 40 * 3 + 1  # frame numbers never restart
    assert reader.generation == generations[0]
    assert not reader.writer_alive()  # the name is another segment's now
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(ring.name + "~")]  # no temporary left
    fresh = FrameRing.attach(ring.name)
    try:
        assert fresh.generation == ring.generation and fresh.meta(*fresh.latest()).frame == ring.frames - 1
        # the old frame's (slot, seq) means nothing in the new segment: its seqs start above
        assert not fresh.is_current(*old) and min(fresh._seq) > old[1]
        # but the old segment, closed, still has it for whoever mapped it (and the writer holds it)
        assert reader.is_current(*old) and int(reader.view(old[0]).max()) == 7
        assert rings[0].is_current(*old)
        rings[0].release(old[0])  # its last lease: the writer unmaps it
        with pytest.raises(RingGone):
            rings[0].is_current(*old)
        assert reader.is_current(*old)  # a reader's mapping is its own
    finally:
        fresh.close()
        reader.close()


def test_a_ring_rebuilt_twice_before_it_is_linked_leaves_one_pending(make_ring):
    ring = make_ring(slots=3, shape=(8, 8, 3))
    first = ring.rebuilt((8, 16, 3))
    second = first.rebuilt((8, 24, 3))  # the first was never linked: it goes, name and all
    assert not os.path.exists(first.path) or os.stat(first.path).st_ino != first._ino
    with FrameRing.attach(ring.name) as named:
        assert named.generation == ring.generation
    second.link()
    with FrameRing.attach(ring.name) as named:
        assert named.generation == second.generation and named.shape == (8, 24, 3)
    first.link()  # superseded: nothing happens
    with FrameRing.attach(ring.name) as named:
        assert named.generation == second.generation
    second.unlink()
    assert not os.path.exists(os.path.join(SHM_DIR, ring.name))


def test_a_pending_ring_with_a_frame_in_flight_is_linked_by_its_result_though_rebuilt_again(make_ring):
    """The size changes twice while a slow model runs a frame of the size in between: that
    segment was dropped at the second change, so its result named a generation no name gave
    (the frames audit: 22 to 29 of some 35 results unreadable). It now keeps its own temporary
    name while a frame of it is held, its result links it, the next one's links the next; one
    whose last frame goes without a result is dropped then."""
    ring = make_ring(slots=3, shape=(8, 8, 3))
    middle = ring.rebuilt((8, 16, 3))
    in_flight = _publish(middle, 5)
    assert middle.hold(*in_flight)            # the model is on it
    last = middle.rebuilt((8, 24, 3))         # the size changes again meanwhile
    assert os.path.exists(middle.path) and middle.path != last.path
    middle.link()                             # its result is published
    with FrameRing.attach(ring.name) as named:
        assert named.generation == middle.generation and int(named.view(in_flight[0]).max()) == 5
    middle.release(in_flight[0])
    last.link()
    with FrameRing.attach(ring.name) as named:
        assert named.generation == last.generation
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(ring.name + "~")]

    orphan = last.rebuilt((8, 8, 3))
    held = _publish(orphan, 6)
    assert orphan.hold(*held)
    newest = orphan.rebuilt((8, 16, 3))
    assert os.path.exists(orphan.path)
    orphan.release(held[0])                   # dropped without a result: no result can link it now
    assert not os.path.exists(orphan.path)
    newest.link()
    with FrameRing.attach(ring.name) as named:
        assert named.generation == newest.generation
    newest.unlink()
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(ring.name)]


def test_sweep_removes_a_half_made_segment_of_a_dead_writer(make_ring):
    holder = _python(_HOLDER, _stream(), "exit")
    name = holder.stdout.readline().strip()
    assert holder.wait() == 0
    tmp = os.path.join(SHM_DIR, name + "~new")  # as if it died between making and renaming
    with open(tmp, "wb") as f:
        f.write(b"\0" * 4096)
    live = make_ring()
    assert os.path.basename(tmp) in sweep_stale() and not os.path.exists(tmp)
    assert os.path.exists(live.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to plant a file as one user and sweep as another")
def test_a_stale_looking_name_another_user_planted_does_not_stop_the_sweep():
    """`touch /dev/shm/lited-00000000-999999-x` by one user stopped another's daemon at its start:
    the sweep of stale rings raised PermissionError (sticky /dev/shm) for a file it may not remove."""
    from lited.stream.ring import sweep_stale

    path = f"/dev/shm/lited-00000000-999999-planted{os.getpid()}"  # another boot's name: stale
    open(path, "w").close()
    try:
        pid = os.fork()
        if pid == 0:  # the sweep as user nobody, in a fork (the venv's Python lies where nobody cannot reach)
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                sweep_stale()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the sweep failed on root's planted file"
        assert os.path.exists(path)  # not nobody's to remove
    finally:
        os.unlink(path)


def test_a_fifo_or_another_users_file_under_a_ring_name_is_no_ring(make_ring):
    """Anyone may create a file in /dev/shm: a FIFO under a ring's name (left when its daemon
    stopped) hung `frame()` in `os.open` for ever, and the daemon's sweep with it; a file
    another user wrote under the name was mapped as the ring."""
    name = f"lited-{boot_id()}-{os.getpid()}-{_stream()}"
    os.mkfifo(os.path.join(SHM_DIR, name))
    try:
        started = time.monotonic()
        with pytest.raises(RingGone, match="not a frame ring \\(not a regular file\\)"):
            FrameRing.attach(name)
        sweep_stale()
        assert time.monotonic() - started < 2
    finally:
        os.unlink(os.path.join(SHM_DIR, name))
    if os.geteuid() != 0:
        return
    writer = make_ring()
    _publish(writer, 7)
    os.chown(os.path.join(SHM_DIR, writer.name), 65534, -1)  # as if another user had made it under this name
    with pytest.raises(RingGone, match=f"owned by uid 65534, not by its writer's \\({os.getuid()}\\)"):
        FrameRing.attach(writer.name)
