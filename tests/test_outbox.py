"""The uplink's outbox on a real disk: kill -9 mid-write, torn and corrupt
records, the byte bound, acknowledgements, a full disk (a real 1 MiB tmpfs)."""
from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lited.service.outbox import HEAD, Outbox

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from outbox_writer import payload_for  # noqa: E402


def test_kill9_mid_write_keeps_every_durable_record(tmp_path):
    """A writer process is SIGKILLed at a random moment while it writes, 12 times: every seq it
    reported (put_many returned = durable) comes back intact, in order, once,
    and no seq is ever handed out twice."""
    d = str(tmp_path / "ob")
    confirmed: list = []
    for rnd in range(12):
        # a cap far above what 12 short rounds write: dropping the oldest is tested on its own
        proc = subprocess.Popen([sys.executable, str(HERE / "outbox_writer.py"), d, str(1 << 30), str(256 << 10)],
                                stdout=subprocess.PIPE)
        head = proc.stdout.readline()          # it is writing (start-up costs vary on a loaded machine)
        time.sleep(random.uniform(0.0, 0.2))
        proc.kill()
        out, _ = proc.communicate()
        confirmed += [int(x) for x in (head + out).split()]
        ob = Outbox(d, max_bytes=1 << 30, segment_bytes=256 << 10)
        assert ob.dropped == 0, f"round {rnd}: the cap was reached, the test wrote too much"
        recs = ob.read(0, 1 << 30, max_bytes=1 << 30)
        seqs = [r.seq for r in recs]
        assert seqs == sorted(set(seqs)), f"round {rnd}: order or duplicates"
        have = {r.seq: r for r in recs}
        for s in confirmed:
            assert s in have, f"round {rnd}: durable record {s} lost"
            assert have[s].payload == payload_for(s)
        assert ob.next_seq > max(confirmed, default=0)
        ob.close()
    assert len(confirmed) > 12 * 3, confirmed[-3:]


def test_torn_tail_and_bitflip_are_cut_never_sent(tmp_path):
    d = tmp_path / "ob"
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
    for _ in range(100):
        ob.put("t", b"x" * 100)
    ob.close()
    seg = sorted(d.glob("seg-*.log"))[-1]
    with open(seg, "ab") as fh:             # a power cut in the middle of an append
        fh.write(HEAD.pack(b"LOB1", 500, 123) + b"partial")
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
    assert [r.seq for r in ob.read(0, 1000)] == list(range(1, 101))
    assert ob.truncated_bytes > 0
    assert ob.put("t", b"y") == 101
    ob.close()
    seg = sorted(d.glob("seg-*.log"))[-1]    # a restart starts a new segment
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF                         # a flipped bit in the last record's payload
    seg.write_bytes(bytes(data))
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
    assert [r.seq for r in ob.read(0, 1000)] == list(range(1, 101))   # 101 was corrupt: cut, never sent wrong
    assert ob.put("t", b"z") == 102          # and its seq is not handed out again


@pytest.mark.parametrize("where", ["payload", "header"])
def test_a_damaged_record_inside_a_segment_loses_only_itself(tmp_path, where):
    """One flipped byte in the middle of a segment cut every intact record after it, uncounted
    (the audit: seqs 214-219 lost for one bad one and a torn tail)."""
    d = tmp_path / "ob"
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
    where_of = {}
    for _ in range(20):
        (seq,) = ob.put_many([("t", b"", b"x" * 100)])
        where_of[seq] = ob.read(seq - 1, 1)[0].where
    ob.close()
    path, offset, length = where_of[10]
    data = bytearray(Path(path).read_bytes())
    data[offset + (length - 1 if where == "payload" else 1)] ^= 0xFF  # its payload, or its magic
    data += HEAD.pack(b"LOB1", 500, 123) + b"partial"  # and a torn tail
    Path(path).write_bytes(bytes(data))
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
    assert [r.seq for r in ob.read(0, 1000)] == [s for s in range(1, 21) if s != 10]
    st = ob.stats()
    assert st["dropped"] == 1 and st["damaged_bytes"] == length and st["truncated_bytes"] > 0, st
    assert ob.put("t", b"z") == 21
    ob.close()
    for _ in range(3):  # the damaged bytes stay until the segment is acked: each start counted them again
        ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=64 << 10)
        assert ob.stats()["dropped"] == 1 and [r.seq for r in ob.read(0, 1000)][-1] == 21, ob.stats()
        ob.close()


def test_bound_drops_oldest_and_counts_across_a_restart(tmp_path):
    d = tmp_path / "ob"
    ob = Outbox(str(d), max_bytes=256 << 10, segment_bytes=32 << 10)
    for _ in range(100):
        ob.put_many([("t", b"", os.urandom(1000)) for _ in range(10)])
    st = ob.stats()
    assert sum(p.stat().st_size for p in d.glob("seg-*.log")) <= 256 << 10
    seqs = [r.seq for r in ob.read(0, 10_000, 1 << 30)]
    assert seqs[-1] == 1000 and seqs == list(range(seqs[0], 1001)), "the newest are kept, contiguous"
    assert st["dropped"] == seqs[0] - 1 > 0
    ob.close()
    assert Outbox(str(d), max_bytes=256 << 10, segment_bytes=32 << 10).stats()["dropped"] == st["dropped"]


def test_acks_free_segments_and_a_restart_replays_only_unacked(tmp_path):
    d = tmp_path / "ob"
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=16 << 10)
    first = ob.put_many([("t", b"m", b"p" * 200)] * 300)
    assert first == list(range(1, 301))
    for s in range(1, 201):
        assert ob.ack(s)
    assert not ob.ack(5), "acknowledged twice"
    ob.ack(250)                              # out of order: 201..249 still pending
    assert ob.stats()["segments"] < 4 and ob.stats()["queued"] == 99
    rec = ob.read(0, 1)[0]
    assert (rec.seq, rec.topic, rec.meta) == (201, "t", b"m") and ob.read_at(rec.where).payload == rec.payload
    epoch = ob.epoch
    ob.close()
    ob = Outbox(str(d), max_bytes=1 << 20, segment_bytes=16 << 10)
    seqs = [r.seq for r in ob.read(0, 1000)]
    # only the contiguous low-water mark is kept on disk: 250 may come again (the server drops it by id)
    assert seqs[0] == 201 and set(range(201, 301)) - {250} <= set(seqs) <= set(range(201, 301))
    assert ob.epoch == epoch, "the epoch is kept: ids stay unique"


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A real tmpfs of `size` mounted for the test (root), unmounted after."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_drops_oldest_counts_and_never_raises(tmp_path):
    """A 1 MiB tmpfs holds the outbox; its byte bound is far above what fits."""
    with small_disk(tmp_path, "1m") as mnt:
        ob = Outbox(str(mnt / "ob"), max_bytes=64 << 20, segment_bytes=128 << 10)
        results = [ob.put_many([("t", b"", os.urandom(3000))] * 2) for _ in range(1000)]   # ~6 MB into 1 MiB
        st = ob.stats()
        assert all(r is not None for r in results[-50:]), "new records keep being taken"
        assert st["dropped"] > 1000
        seqs = [r.seq for r in ob.read(0, 10_000, 1 << 30)]
        assert seqs[-1] == results[-1][-1] and seqs == list(range(seqs[0], seqs[-1] + 1))
        assert st["dropped"] + st["refused"] + len(seqs) == 2000
        ob.close()


def test_a_full_disk_with_nothing_to_drop_refuses_says_so_and_does_not_flood_the_log(tmp_path, caplog):
    """The disk filled by another file: every record refused and counted, but the log had 30
    "cannot write state.json" lines in 10 s and none saying records were refused."""
    with small_disk(tmp_path, "256k") as mnt:
        ob = Outbox(str(mnt / "ob"), max_bytes=64 << 20, segment_bytes=128 << 10)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)  # someone else's file takes what is left
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        with caplog.at_level("WARNING", logger="lited"):
            results = [ob.put_many([("t", b"", os.urandom(3000))]) for _ in range(30)]
        assert results == [None] * 30 and ob.stats()["refused"] == 30
        lines = [r.getMessage() for r in caplog.records]
        assert [m for m in lines if "refused" in m] == \
            ["outbox: the disk is full and nothing older is left to drop: refused 1 records (1 so far)"], lines
        assert len([m for m in lines if "state.json" in m]) <= 1, lines
        assert not (mnt / "ob" / "state.json.tmp").exists()
        ob.close()


def test_a_record_over_a_quarter_of_the_bound_is_refused_counted_and_said(tmp_path, caplog):
    """Seen: `attach: frame` with outbox.max_bytes at its minimum (64 KiB): every
    frame was refused with nothing in the log and outbox.refused at 0."""
    box = Outbox(str(tmp_path / "ob"), 64 << 10)
    with pytest.raises(ValueError, match=r"a record of \d+ bytes is over the limit of 16384 \(a quarter of "
                                         r"outbox.max_bytes"):
        box.put_many([("lited/d/frames/cam", b"", b"\xff" * 20000)])
    assert box.put_many([("lited/d/results/cam", b"", b"{}")]) == [1]  # the next fits: nothing was taken
    with caplog.at_level("WARNING", logger="lited"):
        box.refuse(2, "a record of 20040 bytes is over the limit")
        box.refuse(2, "again")  # counted, not logged again within DROP_LOG_INTERVAL
    assert box.stats()["refused"] == 4
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == \
        ["outbox: refused 2 records (2 so far): a record of 20040 bytes is over the limit"]


def test_a_read_only_outbox_keeps_its_backlog(tmp_path, monkeypatch):
    """An uplink audit: an outbox whose directory turned read-only (a bind mount remounted ro)
    counted its whole backlog as dropped, segment by segment, each file left on the disk; with
    the directory writable again the disk stayed full and every new record was refused. Now a
    segment that cannot be unlinked is kept, and the new records are refused instead."""
    import errno

    from lited.service import outbox as outbox_module

    ob = Outbox(str(tmp_path), max_bytes=64 << 10, segment_bytes=8 << 10)
    payload = b"x" * 2000
    for _ in range(24):  # about 48 KB: several segments, under max_bytes
        assert ob.put("t", payload) is not None
    before = ob.stats()
    real_unlink = os.unlink

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(outbox_module.os, "unlink", read_only)
    # past max_bytes: the oldest segment would go, but cannot; the disk, not the bound, then says no
    seqs = [ob.put("t", payload) for _ in range(20)]
    during = ob.stats()
    assert during["dropped"] == before["dropped"] == 0, (before, during)  # it counted the whole backlog
    assert during["queued"] == before["queued"] + len([s for s in seqs if s is not None])
    assert during["segments"] >= before["segments"]
    monkeypatch.setattr(outbox_module.os, "unlink", real_unlink)
    assert ob.put("t", payload) is not None  # writable again: the oldest goes, counted
    assert ob.stats()["dropped"] > 0
