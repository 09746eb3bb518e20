"""A client written from docs/protocol.md alone: pyzmq, msgpack, numpy, mmap
and the standard library; nothing of lited is imported (the test checks).

    python tests/independent_client.py PUB REQ STREAM COUNT OUT.json

Subscribes to STREAM and, for each of COUNT results as it arrives, reads the
result's frame from shared memory the way the document says: map the ring
named in `frame.ring`, check that the header's generation (word 15) is
`frame.generation` (else map the name again), check the slot's seq before
and after copying. Meanwhile a thread opens the ring's name over and over:
the document says the name is never missing while the stream runs. At the
end it asks for a snapshot and sends one request with `v: 2`. Writes what
it saw to OUT.json.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import sys
import threading
import time

import msgpack
import numpy as np
import zmq


class Segment:
    """One mapped ring segment, read-only."""

    def __init__(self, name: str) -> None:
        fd = os.open("/dev/shm/" + name, os.O_RDONLY)
        try:
            self.mm = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if self.mm[:8] != b"LITEDRNG":
            raise RuntimeError(f"{name}: no magic")
        header = np.frombuffer(self.mm, "<i8", 16)
        if header[1] != 1:
            raise RuntimeError(f"{name}: layout version {header[1]}")
        self.slots, height, width, channels = (int(v) for v in header[2:6])
        self.dtype = np.dtype(self.mm[48:56].rstrip(b"\0").decode("ascii"))
        self.shape = (height, width, channels)
        self.frame_bytes, self.stride, self.data = int(header[7]), int(header[8]), int(header[9])
        self.generation = int(header[15])
        self.rows = np.frombuffer(self.mm, "<i8", 8 * self.slots, 128).reshape(self.slots, 8)

    def read(self, slot: int, seq: int):
        """(pixels, frame number) of frame (slot, seq), None if the slot no longer has it."""
        if self.rows[slot, 0] != seq:
            return None
        number = int(self.rows[slot, 1])
        start = self.data + slot * self.stride
        pixels = np.frombuffer(self.mm, self.dtype, self.frame_bytes // self.dtype.itemsize, start).copy()
        if self.rows[slot, 0] != seq:
            return None
        return pixels.reshape(self.shape), number


def watch_name(name_box: list, stop: threading.Event, counts: dict) -> None:
    """Open the ring's name in a loop: it must never be missing."""
    while not stop.is_set():
        if not name_box:
            time.sleep(0.001)
            continue
        time.sleep(0.0002)  # ~thousands of opens a second, and the daemon still gets a core
        try:
            fd = os.open("/dev/shm/" + name_box[0], os.O_RDONLY)
        except FileNotFoundError:
            counts["missing"] += 1
            continue
        try:
            if os.pread(fd, 8, 0) != b"LITEDRNG":
                counts["half_made"] += 1
        finally:
            os.close(fd)
        counts["opened"] += 1


def request(sock: zmq.Socket, payload: dict) -> dict:
    sock.send(msgpack.packb(payload, use_bin_type=True))
    if not sock.poll(20000):
        raise TimeoutError(f"no reply to {payload.get('method')}")
    return msgpack.unpackb(sock.recv(), raw=False)


def main() -> int:
    pub, req, stream, count, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, f"result/{stream}".encode())
    sub.connect(pub)
    segments: dict = {}
    seen: list = []
    name_box: list = []
    counts = {"missing": 0, "half_made": 0, "opened": 0}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_name, args=(name_box, stop, counts), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 120
    while len(seen) < count and time.monotonic() < deadline:
        if not sub.poll(1000):
            continue
        topic, payload = sub.recv_multipart()
        result = msgpack.unpackb(payload, raw=False)
        if result.get("v") != 1 or result.get("type") != "result" or result.get("stream") != stream:
            continue
        frame = result["frame"]
        entry = {"seq": result["seq"], "skipped": result["skipped"], "generation": frame["generation"],
                 "size": [frame["width"], frame["height"]], "model": [result["model"], result["model_key"]]}
        seen.append(entry)
        name_box[:] = [frame["ring"]]
        segment = segments.get(frame["ring"])
        if segment is None or segment.generation != frame["generation"]:
            segment = segments[frame["ring"]] = Segment(frame["ring"])
            if segment.generation != frame["generation"]:
                entry["error"] = f"generation {frame['generation']} replaced by {segment.generation}"
                continue
        got = segment.read(frame["slot"], frame["slot_seq"])
        if got is None:
            entry["error"] = "overwritten"
            continue
        pixels, number = got
        entry["md5"] = hashlib.md5(pixels.tobytes()).hexdigest()
        entry["row_frame"] = number
        entry["shape"] = list(pixels.shape)
    stop.set()
    watcher.join()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(req)
    snapshot = request(dealer, {"v": 1, "id": "snap", "method": "snapshot", "params": {"stream": stream}})
    wrong_version = request(dealer, {"v": 2, "id": 77, "method": "ping"})
    status = request(dealer, {"v": 1, "id": 78, "method": "status"})["result"]
    if snapshot.get("ok"):
        snapshot["result"].pop("jpeg")
    with open(out, "w") as fh:
        json.dump({"results": seen, "name": counts, "snapshot": snapshot, "wrong_version": wrong_version,
                   "ready": status["ready"], "models": status["models"],
                   "stream_model": status["streams"][0]["model"]}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
