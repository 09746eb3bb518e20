"""The uplink's outbox: durable, bounded store-and-forward on disk.

What it promises (docs/uplink.md):
- a record counts as queued only once `put_many` returns, and it returns
  only after the bytes are written and fdatasync'ed: a queued record survives
  a daemon restart, `kill -9` and a power cut;
- readers see only durable records, so nothing is sent before it is on disk
  and a sequence number, once sent, is never given to another record;
- the segments' total size stays under `max_bytes`: the oldest segment goes
  first and its unacknowledged records are counted in `dropped`; a full disk
  (ENOSPC, EDQUOT) is handled the same way, and when nothing is left to drop
  the new records are refused and counted in `refused`. Nothing here raises
  on a full disk: the daemon keeps serving.

Layout under the outbox directory:
    seg-<first seq, 20 digits>.log   append-only segments of records
    state.json                       {"epoch", "acked_below", "next_seq", "dropped", "refused"}
                                     (tmp + fsync + rename + fsync of the directory)
Record: header  magic b"LOB1" | u32 body length | u32 crc32(body)
        body    u64 seq | f64 wall time | u16 topic length | u32 meta length | topic | meta | payload
A restart starts a new segment; on open every segment is scanned and cut at
the first record whose magic, length or crc is wrong (a torn tail).

`epoch` is made once, when the directory is new: a message id is
`<epoch>:<seq>`, so a reinstalled device (new state, seqs from 1 again) is
not taken for a replay by the server's duplicate filter.

Memory is O(segments), not O(records): records are read back from the files.
Standard library only.
"""
from __future__ import annotations

import bisect
import contextlib
import errno
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

log = logging.getLogger("lited.outbox")

MAGIC = b"LOB1"
HEAD = struct.Struct("<4sII")          # magic, body length, crc32(body)
BODY = struct.Struct("<QdHI")          # seq, wall time, topic length, meta length
MAX_RECORD = 16 << 20
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
DROP_LOG_INTERVAL = 10.0


@dataclass
class Record:
    seq: int
    ts: float            # wall-clock time it was queued
    topic: str
    meta: bytes          # the writer's own small header (the uplink keeps MQTT properties here)
    payload: bytes
    where: Tuple[str, int, int]   # (segment path, offset, length): read it again with `read_at`


@dataclass
class _Segment:
    path: str
    first: int
    last: int            # last seq in it (first - 1 while empty)
    count: int
    size: int


class Outbox:
    """The durable queue of uplink messages on disk (the module's docstring says its format)."""
    def __init__(self, directory: str, max_bytes: int = 64 << 20, segment_bytes: int = 1 << 20,
                 ack_flush_s: float = 1.0) -> None:
        self.dir = str(directory)
        self.max_bytes = max_bytes
        self.ack_flush_s = ack_flush_s
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        # a segment is what a full disk costs at once: small beside the bound and the file system
        fs = os.statvfs(self.dir)
        self.segment_bytes = max(4096, min(segment_bytes, max_bytes // 8, fs.f_blocks * fs.f_frsize // 16))
        self._lock = threading.Lock()            # segments, seqs, acks, counters
        self._write_lock = threading.Lock()      # one writer at a time: append + fdatasync
        self._state_lock = threading.Lock()      # state.json
        self._acked: set = set()                 # acked seqs above acked_below
        self._last_state_write = 0.0
        self._last_drop_log = -DROP_LOG_INTERVAL
        self._last_refuse_log = -DROP_LOG_INTERVAL
        self._last_state_log = -DROP_LOG_INTERVAL
        self._state_failures = 0
        # what fails now, for status (a read-only or failing disk was said in the log alone): records, state
        self._failing = {"records": "", "state": ""}
        self._stuck: List[_Segment] = []         # acknowledged segments a read-only directory would not let go
        self.truncated_bytes = 0                 # torn tails cut on open
        self.damaged_bytes = 0                   # damaged stretches skipped on open (records after them kept)
        state = self._read_state()
        self.epoch = state.get("epoch") or secrets.token_hex(4)
        self.acked_below = int(state.get("acked_below", 1))
        self.dropped = int(state.get("dropped", 0))
        self.refused = int(state.get("refused", 0))
        # damaged stretches ("<segment>@<offset>") whose lost records are in `dropped` already: the
        # bytes stay in their segment until it is acked, and each start counted them again
        self._damage_counted: set = set(state.get("damage_counted", []))
        self._segments: List[_Segment] = self._recover()
        last = max([s.last for s in self._segments] + [int(state.get("next_seq", 1)) - 1, self.acked_below - 1])
        self.next_seq = last + 1
        self.durable_last = last                 # readers see seq <= durable_last only
        self._fd: Optional[int] = None
        self._hint: Tuple[int, str, int] = (0, "", 0)   # (seq, segment, offset after it) of the last read
        self._write_state(force=True)
        self._gc_locked()

    # -- recovery
    def _read_state(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json")) as fh:
                state = json.load(fh)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _recover(self) -> list:
        segments, found = [], set()
        names = sorted(n for n in os.listdir(self.dir) if n.startswith("seg-") and n.endswith(".log"))
        for name in names:
            path = os.path.join(self.dir, name)
            try:
                first = int(name[4:-4])
            except ValueError:
                continue
            with open(path, "rb") as fh:
                data = fh.read()
            count, last, good, skipped, lost, new = 0, first - 1, 0, [], 0, 0
            for rec in _scan(data, path, skipped=skipped):
                if skipped and rec.where[1] == skipped[-1][0] + skipped[-1][1]:  # the seqs the stretch held
                    stretch = f"{name}@{skipped[-1][0]}"
                    if stretch not in self._damage_counted:
                        lost += max(0, rec.seq - max(last + 1, self.acked_below))
                        new += 1
                    found.add(stretch)
                count, last, good = count + 1, rec.seq, rec.where[1] + rec.where[2]
            if skipped:
                said = f"{lost} records lost there (counted in dropped)" if new else \
                    "its records counted in dropped when it was first found"
                log.warning("%s: skipped %d damaged bytes at offset %s; %s, the intact ones after them kept", path,
                            sum(b for _, b in skipped), ", ".join(str(o) for o, _ in skipped), said,
                            extra={"event": "outbox_damaged"})
                self.damaged_bytes += sum(b for _, b in skipped)
                self.dropped += lost
            if good < len(data):
                log.warning("%s: cutting a torn tail of %d bytes at offset %d", path, len(data) - good, good,
                            extra={"event": "outbox_torn"})
                self.truncated_bytes += len(data) - good
                try:
                    with open(path, "r+b") as fh:
                        fh.truncate(good)
                        os.fsync(fh.fileno())
                except OSError as exc:  # read-only (an SD card remounted so): read up to it, cut at a later start
                    self._failing["records"] = f"cannot cut the torn tail of {name}: {exc.strerror or exc}"
                    log.warning("%s: cannot cut its torn tail (%s): its records before it are read, the tail "
                                "is cut at a start that can", path, exc.strerror or exc, extra={"event": "outbox_torn"})
            if count == 0:
                _unlinked(path)  # (read-only: left, and skipped again at the next start)
                continue
            segments.append(_Segment(path, first, last, count, good))
        self._damage_counted = found  # those of segments gone (acked) are forgotten
        return segments

    # -- writing
    def put(self, topic: str, payload: bytes, meta: bytes = b"") -> Optional[int]:
        seqs = self.put_many([(topic, meta, payload)])
        return seqs[0] if seqs else None

    def put_many(self, items: Iterable[Tuple[str, bytes, bytes]]) -> Optional[List[int]]:
        """Append (topic, meta, payload) records and return their seqs once they
        are durable (one fdatasync for all); None if they were refused (the
        disk is full and nothing older is left to drop: counted in `refused`)."""
        items = list(items)
        with self._write_lock:
            with self._lock:
                first = self.next_seq
                now = time.time()
                records = []
                for i, (topic, meta, payload) in enumerate(items):
                    t = topic.encode()
                    body = BODY.pack(first + i, now, len(t), len(meta)) + t + meta + payload
                    if len(body) > MAX_RECORD or HEAD.size + len(body) > self.max_bytes // 4:
                        raise ValueError(f"a record of {len(body)} bytes is over the limit of "
                                         f"{min(MAX_RECORD, self.max_bytes // 4)} (a quarter of outbox.max_bytes, "
                                         f"at most {MAX_RECORD >> 20} MiB)")
                    records.append(HEAD.pack(MAGIC, len(body), zlib.crc32(body)) + body)
                blob = b"".join(records)
                seg = self._append_locked(first, blob, len(records))
                if seg is None:
                    self.refused += len(records)
                    refused = True
                    self._failing["records"] = "the disk is full and nothing older is left to drop"
                    self._say_refused(f"outbox: the disk is full and nothing older is left to drop: refused "
                                      f"{len(records)} records ({self.refused} so far)")  # it was counted in silence
                else:
                    refused = False
                    fd, before = self._fd, seg.size - len(blob)
            if refused:
                self._write_state(force=True)
                return None
            try:
                os.fdatasync(fd)
            except OSError as exc:          # a late ENOSPC/EIO: the batch is not durable, take it back
                with self._lock:
                    if self._fd == fd and seg.size == before + len(blob):
                        os.ftruncate(fd, before)
                        seg.size, seg.count, seg.last = before, seg.count - len(records), first - 1
                        self.next_seq = first
                    self.refused += len(records)
                    self._failing["records"] = f"cannot make records durable: {exc.strerror or exc}"
                log.error("outbox: cannot make %d records durable (%s); refused", len(records), exc,
                          extra={"event": "outbox_refused"})
                return None
            with self._lock:
                self.durable_last = max(self.durable_last, first + len(records) - 1)
                self._works_again("records", "storing records")
        return list(range(first, first + len(records)))

    def refuse(self, count: int, why: str, failing: bool = False) -> None:
        """`count` records refused before they reached the log (`put_many`'s
        ValueError: each over the record limit; `failing`: its OSError, the disk
        failing, which status shows until records are stored again): counted in
        `refused` like the ones a full disk refuses, and logged (at most every
        DROP_LOG_INTERVAL s)."""
        with self._lock:
            self.refused += count
            if failing:
                self._failing["records"] = why
            self._say_refused(f"outbox: refused {count} records ({self.refused} so far): {why}")

    def _works_again(self, kind: str, what: str) -> None:
        """A write of `kind` that had failed went through: said once, and status clears."""
        if self._failing[kind]:
            log.info("outbox: %s again (%s before)", what, self._failing[kind], extra={"event": "outbox_ok"})
            self._failing[kind] = ""

    def _append_locked(self, first: int, blob: bytes, count: int) -> Optional[_Segment]:
        while True:
            self._make_room_locked(len(blob))
            try:
                seg = self._current_locked(first)
            except OSError as exc:
                if exc.errno not in FULL_DISK:
                    raise  # read-only, an I/O error: said by the caller with its reason
                if not self._drop_oldest_locked("the disk is full"):
                    return None
                continue
            try:
                n = os.write(self._fd, blob)
                if n != len(blob):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError as exc:
                if exc.errno not in FULL_DISK:
                    raise
                os.ftruncate(self._fd, seg.size)      # take back our partial bytes
                if not self._drop_oldest_locked("the disk is full"):
                    if seg.count == 0 or seg.size == 0:
                        return None
                    self._close_segment_locked()      # a fresh segment may fit where this one cannot grow
                    if not self._drop_oldest_locked("the disk is full"):
                        return None
                continue
            seg.size += len(blob)
            seg.last = first + count - 1
            seg.count += count
            self.next_seq = first + count
            return seg

    def _current_locked(self, seq: int) -> _Segment:
        seg = self._segments[-1] if self._segments else None
        if seg is None or self._fd is None or seg.size >= self.segment_bytes:
            self._close_segment_locked()
            path = os.path.join(self.dir, f"seg-{seq:020d}.log")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _fsync_dir(self.dir)
            seg = _Segment(path, seq, seq - 1, 0, 0)
            self._segments.append(seg)
        return seg

    def _close_segment_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)    # its records were fdatasync'ed by their put_many
            self._fd = None
            if self._segments and self._segments[-1].count == 0:
                os.unlink(self._segments.pop().path)

    # -- bounding
    def _make_room_locked(self, incoming: int) -> None:
        while self._segments and sum(s.size for s in self._segments) + incoming > self.max_bytes:
            if not self._drop_oldest_locked(f"over {self.max_bytes} bytes"):
                break

    def _drop_oldest_locked(self, why: str) -> bool:
        """Delete the oldest segment, counting its unacknowledged records. False when
        there is none to drop, or the directory refuses the unlink (read-only): then
        nothing changes (a read-only outbox counted its whole backlog as dropped,
        segment by segment, and left every file on the disk it had filled)."""
        if not self._segments or (len(self._segments) == 1 and self._fd is not None):
            return False
        seg = self._segments.pop(0)
        before = (self._acked, self.acked_below, self.dropped)
        unacked = sum(1 for s in range(max(seg.first, self.acked_below), seg.last + 1) if s not in self._acked)
        self.dropped += unacked
        self._acked = {s for s in self._acked if s > seg.last}
        self.acked_below = max(self.acked_below, seg.last + 1)
        self._write_state(force=True)   # before the unlink: a seq is never handed out twice
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._segments.insert(0, seg)
            self._acked, self.acked_below, self.dropped = before
            self._write_state(force=True)
            self._say_refused(f"outbox: cannot drop the oldest records ({exc.strerror or exc}): refusing new "
                              f"records ({self.refused} so far)")
            return False
        if unacked:
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL:   # a full disk must not flood the journal
                self._last_drop_log = now
                log.warning("outbox: %s: dropped the oldest unsent records (%d so far; now %d-%d)", why,
                            self.dropped, seg.first, seg.last, extra={"event": "outbox_dropped"})
        return True

    def _say_refused(self, message: str) -> None:
        """Why records are refused, at most every DROP_LOG_INTERVAL s: a full or
        read-only disk must not flood the journal."""
        now = time.monotonic()
        if now - self._last_refuse_log >= DROP_LOG_INTERVAL:
            self._last_refuse_log = now
            log.warning("%s", message, extra={"event": "outbox_refused"})

    def _gc_locked(self) -> None:
        """Delete segments whose records are all acknowledged (not counted as dropped)."""
        done = []
        while self._segments and self._segments[0].last < self.acked_below and (
                len(self._segments) > 1 or self._fd is None):
            done.append(self._segments.pop(0))
        self._stuck = [seg for seg in self._stuck if not _unlinked(seg.path)]  # the directory writable again
        if done:
            self._write_state(force=True)
            # read-only: kept in `bytes` until it can go (a later start finds it acknowledged, or sends again)
            self._stuck += [seg for seg in done if not _unlinked(seg.path)]

    # -- acknowledgements and reading
    def ack(self, seq: int) -> bool:
        """The record reached where it had to go; False if it was not pending."""
        with self._lock:
            if seq < self.acked_below or seq in self._acked or seq > self.durable_last:
                return False
            self._acked.add(seq)
            while self.acked_below in self._acked:
                self._acked.discard(self.acked_below)
                self.acked_below += 1
            self._gc_locked()
        self._write_state(force=False)
        return True

    def is_pending(self, seq: int) -> bool:
        with self._lock:
            return self.acked_below <= seq <= self.durable_last and seq not in self._acked

    def read(self, after: int, limit: int, max_bytes: int = 4 << 20) -> List[Record]:
        """Up to `limit` durable, unacknowledged records with seq > after, oldest first."""
        out: List[Record] = []
        with self._lock:
            after = max(after, self.acked_below - 1)
            end = self.durable_last
            firsts = [s.first for s in self._segments]
            i = max(0, bisect.bisect_right(firsts, after + 1) - 1)
            segs = [(s.path, s.size) for s in self._segments[i:] if s.last > after]
        budget = max_bytes
        hint_seq, hint_path, hint_off = self._hint
        for path, size in segs:
            start = hint_off if path == hint_path and hint_seq <= after and hint_off <= size else 0
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(size - start)
            except FileNotFoundError:       # dropped meanwhile
                continue
            for rec in _scan(data, path, start):
                if rec.seq <= after or rec.seq > end or not self.is_pending(rec.seq):
                    continue
                out.append(rec)
                budget -= rec.where[2]
                if len(out) >= limit or budget <= 0:
                    break
            if out:   # the next read (after the last record returned) starts where this one ended
                last = out[-1]
                self._hint = (last.seq, last.where[0], last.where[1] + last.where[2])
            if len(out) >= limit or budget <= 0:
                break
        return out

    def read_at(self, where: Tuple[str, int, int]) -> Optional[Record]:
        """The record at `where` (from a Record), None if its segment was dropped."""
        path, offset, length = where
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(length)
        except FileNotFoundError:
            return None
        recs = list(_scan(data, path, offset))
        return recs[0] if recs else None

    def stats(self) -> dict:
        with self._lock:
            on_disk = self._segments + self._stuck
            size = sum(s.size for s in on_disk)
            queued = max(0, self.durable_last - self.acked_below + 1 - len(self._acked))
            return {"queued": queued, "bytes": size, "max_bytes": self.max_bytes, "segments": len(on_disk),
                    "dropped": self.dropped, "refused": self.refused, "next_seq": self.next_seq,
                    "acked_below": self.acked_below, "truncated_bytes": self.truncated_bytes,
                    "damaged_bytes": self.damaged_bytes, "epoch": self.epoch,
                    "problem": "; ".join(p for p in self._failing.values() if p)}

    def _write_state(self, force: bool) -> None:
        with self._state_lock:
            now = time.monotonic()
            if not force and now - self._last_state_write < self.ack_flush_s:
                return
            self._last_state_write = now
            state = {"epoch": self.epoch, "acked_below": self.acked_below, "next_seq": self.next_seq,
                     "dropped": self.dropped, "refused": self.refused,
                     "damage_counted": sorted(self._damage_counted)}
            tmp = os.path.join(self.dir, "state.json.tmp")
            try:
                with open(tmp, "w") as fh:
                    json.dump(state, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, os.path.join(self.dir, "state.json"))
                _fsync_dir(self.dir)
            except OSError as exc:   # a full disk must not stop the daemon: written again later
                self._last_state_write = 0.0
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                self._state_failures += 1
                self._failing["state"] = f"cannot write state.json: {exc.strerror or exc}"
                if now - self._last_state_log >= DROP_LOG_INTERVAL:  # once per record, 30 lines in 10 s, before
                    self._last_state_log = now
                    log.warning("outbox: cannot write state.json: %s (failure %d)", exc, self._state_failures,
                                extra={"event": "outbox_state"})
            else:
                self._works_again("state", "writing state.json")

    def close(self) -> None:
        with self._write_lock, self._lock:
            self._write_state(force=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _scan(data: bytes, path: str, base: int = 0, skipped: Optional[list] = None):
    """Yield each valid Record in `data`. Past a bad one (a flipped bit, a torn write) it looks for the
    next valid record and goes on from there: one damaged record cut off every intact one after it in
    its segment, uncounted. `skipped` gets (offset, bytes) of each bad stretch followed by a good record
    (a bad stretch at the end is the torn tail: the caller cuts it)."""
    off, n = 0, len(data)
    while off + HEAD.size <= n:
        rec = _record_at(data, off, path, base)
        if rec is None:
            bad = off
            off = data.find(MAGIC, off + 1)
            while off != -1 and _record_at(data, off, path, base) is None:
                off = data.find(MAGIC, off + 1)
            if off == -1:
                return
            if skipped is not None:
                skipped.append((base + bad, off - bad))
            continue
        yield rec
        off += rec.where[2]


def _record_at(data: bytes, off: int, path: str, base: int) -> Optional[Record]:
    """The record starting at `off` if it is whole and its crc holds, else None."""
    if off + HEAD.size > len(data):
        return None
    magic, length, crc = HEAD.unpack_from(data, off)
    start, end = off + HEAD.size, off + HEAD.size + length
    if magic != MAGIC or length < BODY.size or length > MAX_RECORD or end > len(data):
        return None
    body = memoryview(data)[start:end]
    if zlib.crc32(body) != crc:
        return None
    seq, ts, tlen, mlen = BODY.unpack_from(body, 0)
    if BODY.size + tlen + mlen > length:
        return None
    t0 = BODY.size
    topic = bytes(body[t0:t0 + tlen]).decode("utf-8", "replace")
    meta = bytes(body[t0 + tlen:t0 + tlen + mlen])
    return Record(seq, ts, topic, meta, bytes(body[t0 + tlen + mlen:]), (path, base + off, end - off))


def _unlinked(path: str) -> bool:
    """Whether `path` is gone now (removed here, or by someone else)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
