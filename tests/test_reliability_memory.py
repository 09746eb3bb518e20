"""Memory an adversarial tester could make the daemon take (issue 20, items
8-12), and the budget that now bounds it (docs/RELIABILITY.md, "Memory
budget"). The daemon's RSS is measured by the kernel (VmHWM, the peak, reset
through /proc/PID/clear_refs before each attack; and VmRSS after).

- an infer request with a 20000x20000 PNG (1 MB of file) is refused from its
  header, before decoding (it took the daemon from 105 to 2,364 MB);
- a bundle whose manifest.json is /dev/zero, or whose labels file is 50 MB,
  is refused by size (the first grew the daemon 1.1 GB a second for ever,
  the second added 770 MB);
- a DEALER that asks for 250 quality-100 1080p snapshots and never reads:
  past 16 MiB of replies unread, its replies are dropped and counted (RSS
  went 123 -> 1,108 MB);
- 50 senders with 4 arrays of 7.7 MB each: the requests share one byte
  budget (`limits.max_inflight_bytes`), the rest are told `busy`, and the
  memory goes back afterwards (1,085 MB peak, 350-430 MB kept);
- all of them at once, and the daemon's peak RSS stays under the stated
  bound: idle + max_inflight_bytes + 64 MiB of replies + max_clients x 3 x
  (max_request_bytes + 64 KiB) inside ZeroMQ + 128 MiB of slack;
  clients past max_clients are refused (they get in once others leave).

A watcher SIGKILLs the daemon if it passes KILL_ABOVE_MB (so a run against
a daemon without these bounds cannot eat the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from conftest import need_shared
from daemon_process import DaemonProcess
from lited import protocol
from lited.client import ClientError
from soak import Recorder

MAX_REQUEST = 8 << 20
MAX_INFLIGHT = 128 << 20
MAX_CLIENTS = 8
REPLY_BYTES_TOTAL = 64 << 20   # service/bus.py
PER_CLIENT = 3 * (MAX_REQUEST + (64 << 10))  # inside ZeroMQ: RCVHWM (2) + the one arriving, each up to MAXMSGSIZE
SLACK = 128 << 20  # allocator slack, and ZeroMQ's buffers of clients that just left (measured: see the docs)
KILL_ABOVE_MB = 3000
MB = 1 << 20


def rss(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of `pid`, in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM = VmRSS


class Guard:
    """SIGKILLs the daemon if its RSS passes KILL_ABOVE_MB (then the test fails on it)."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d, self.killed_at = d, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                now = rss(self.d.proc.pid)
            except (OSError, KeyError):
                return
            if now > KILL_ABOVE_MB:
                self.killed_at = now
                self.d.proc.kill()
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A grey PNG of side x side zeros, written row by row (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(side + 1)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def bad_bundles(tmp_path: Path, bundles_dir: Path) -> dict:
    """Bundles whose manifest is /dev/zero, and whose labels file is 50 MB."""
    zero = tmp_path / "zero-manifest"
    shutil.copytree(bundles_dir / "ultraface", zero)
    (zero / "manifest.json").unlink()
    (zero / "manifest.json").symlink_to("/dev/zero")
    labels = tmp_path / "big-labels"
    shutil.copytree(bundles_dir / "ultraface", labels)
    manifest = json.loads((labels / "manifest.json").read_text())
    with open(labels / manifest["labels"], "w") as fh:
        for i in range(50):
            fh.write(("face\n" if i == 0 else "") + "".join(f"label-{i}-{j}\n" for j in range(80_000)))
    return {"zero": zero, "labels": labels}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, bundles_dir):
    tmp = tmp_path_factory.mktemp("memory")
    # A 1080p camera-like frame (a photo with sensor noise): 1.9 MB as a quality-100 JPEG.
    photo = cv2.resize(cv2.imread(str(need_shared("images", "astronaut.png"))), (1920, 1080))
    noise = np.random.default_rng(0).integers(-12, 12, photo.shape)
    (tmp / "frames").mkdir()
    cv2.imwrite(str(tmp / "frames" / "cam.png"), np.clip(photo + noise, 0, 255).astype(np.uint8))
    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "limits": {"max_request_bytes": MAX_REQUEST, "max_inflight_bytes": MAX_INFLIGHT,
                         "max_clients": MAX_CLIENTS},
              "streams": [{"name": "cam", "source": f"images://{tmp / 'frames'}?loop=1&fps=5"}]}
    d = DaemonProcess(tmp, config).start()
    with Recorder(d.pub) as rec:  # serving: frames for snapshots
        rec.wait(lambda ms: [m for _, m in ms if m.get("type") == "result"], stream="cam")
    with d.client(timeout=30) as client:  # the request worker's engine process, once
        client.infer(image=np.zeros((240, 320, 3), np.uint8))
    time.sleep(1)
    d.idle_mb = rss(d.proc.pid)
    d.tmp = tmp
    yield d
    assert d.proc.poll() is None, d.output()[-3000:]
    assert d.stop() == 0, d.output()[-3000:]


def bound_mb(d: DaemonProcess) -> float:
    return d.idle_mb + (MAX_INFLIGHT + REPLY_BYTES_TOTAL + MAX_CLIENTS * PER_CLIENT + SLACK) / MB


class Attack:
    """Runs attacks (callables) in threads at once; the daemon's peak RSS meanwhile."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d

    def run(self, *attacks) -> float:
        reset_peak(self.d.proc.pid)
        guard = Guard(self.d)
        errors: list = []

        def wrap(fn):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=wrap, args=(a,)) for a in attacks]
        try:
            for t in threads:  # in order, a moment apart: the first ones reach the queue first
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join(120)
        finally:
            guard.close()
        assert guard.killed_at is None, f"the daemon passed {KILL_ABOVE_MB} MB ({guard.killed_at:.0f} MB): killed"
        assert self.d.proc.poll() is None, self.d.output()[-3000:]
        assert not errors, errors
        return rss(self.d.proc.pid, "VmHWM")


def dealers(d: DaemonProcess, count: int, ctx: zmq.Context) -> list:
    socks = []
    for _ in range(count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(d.req)
        socks.append(s)
    return socks


def flood(d: DaemonProcess, senders: int, per_sender: int, params: dict, answers: dict,
          duration: float = 30, patience: float = 6) -> None:
    """`senders` DEALERs each send `per_sender` infer requests at once (one
    encoded message, sent zero-copy) and read the replies; a sender left
    without a reply for `patience` s (refused over max_clients: its ZeroMQ
    dropped what it had queued) reconnects and sends what is unanswered
    again, as a determined attacker would, for up to `duration` s. Counts
    reply codes in `answers` (`unanswered`: still owed at the end)."""
    ctx = zmq.Context()
    message = protocol.encode_request("infer", params, 1)
    pending = {}  # socket -> [replies owed, last activity]

    def connect(owed: int) -> None:
        (sock,) = dealers(d, 1, ctx)
        for _ in range(owed):
            sock.send(message, copy=False)
        pending[sock] = [owed, time.monotonic()]

    try:
        for _ in range(senders):
            connect(per_sender)
        deadline = time.monotonic() + duration
        while pending and time.monotonic() < deadline:
            poller = zmq.Poller()
            for sock in pending:
                poller.register(sock, zmq.POLLIN)
            for sock, _ in poller.poll(200):
                reply = msgpack.unpackb(sock.recv(), raw=False)
                code = "ok" if reply["ok"] else reply["error"]["code"]
                answers[code] = answers.get(code, 0) + 1
                state = pending[sock]
                state[0] -= 1
                state[1] = time.monotonic()
                if not state[0]:
                    del pending[sock]
                    sock.close(0)
            for sock, (owed, last) in list(pending.items()):
                if time.monotonic() - last > patience:
                    del pending[sock]
                    sock.close(0)
                    connect(owed)
        answers["unanswered"] = sum(owed for owed, _ in pending.values())
    finally:
        for sock in pending:
            sock.close(0)
        ctx.term()


def never_reading_snapshots(d: DaemonProcess, count: int = 250) -> None:
    """250 quality-100 snapshots of the 1080p stream, asked for and never read."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)  # its ZeroMQ stops reading too: the replies stay on the daemon's side
    s.setsockopt(zmq.RCVBUF, 4096)
    s.connect(d.req)
    try:
        for i in range(count):  # about as fast as the worker encodes them (the queue holds 32)
            s.send(protocol.encode_request("snapshot", {"stream": "cam", "quality": 100}, i))
            time.sleep(0.04)
        time.sleep(3)  # the replies pile up unread
    finally:
        s.close(0)
        ctx.term()


def failing_reload(d: DaemonProcess, bundle: Path, expect: str) -> None:
    with d.client(timeout=60) as client:
        with pytest.raises(ClientError) as info:
            client.reload(model="face", bundle=str(bundle), timeout=60)
    assert info.value.code == "failed" and expect in str(info.value), info.value


def test_each_attack_alone_stays_bounded(daemon, tmp_path, bundles_dir):
    d, attack = daemon, Attack(daemon)
    bomb = png_bomb(tmp_path / "bomb.png").read_bytes()
    bad = bad_bundles(tmp_path, bundles_dir)
    report = {}

    answers: dict = {}
    report["png 20000x20000"] = (attack.run(lambda: flood(d, 1, 1, {"image": bomb}, answers)), dict(answers))
    assert answers == {"too_large": 1, "unanswered": 0}, answers
    report["manifest /dev/zero"] = (attack.run(lambda: failing_reload(d, bad["zero"], "not a regular file")), "failed")
    report["labels 50 MB"] = (attack.run(lambda: failing_reload(d, bad["labels"], "over the limit of 4 MiB")),
                              "failed")
    with d.client() as client:
        before = client.status()["bus"]["replies_dropped_slow"]
    report["250 snapshots unread"] = (attack.run(lambda: never_reading_snapshots(d)), "")
    with d.client() as client:
        bus = client.status()["bus"]
    assert bus["replies_dropped_slow"] - before > 10, bus  # dropped, and counted
    assert bus["reply_bytes_queued"] <= 16 << 20, bus  # what one client may leave unread
    answers = {}
    array = {"array": bytes(1600 * 1600 * 3), "shape": [1600, 1600, 3]}  # 7.7 MB
    report["50 x 4 arrays of 7.7 MB"] = (attack.run(lambda: flood(d, 50, 4, array, answers)), dict(answers))
    assert answers.get("ok", 0) + answers.get("busy", 0) >= 1, answers
    with d.client() as client:
        assert client.status()["bus"]["clients_refused"] > 0
    time.sleep(2)
    after = rss(d.proc.pid)
    print(f"\nRELIABILITY memory, idle {d.idle_mb:.0f} MB, bound {bound_mb(d):.0f} MB: " + "; ".join(
        f"{k}: peak {v[0]:.0f} MB {v[1] or ''}" for k, v in report.items()) + f"; {after:.0f} MB 2 s after the flood")
    for name, (peak, _) in report.items():
        assert peak < bound_mb(d), (name, peak)
    assert after < d.idle_mb + 64, after  # what the arrays took went back


def test_the_worst_of_them_at_once_stays_under_the_budget(daemon, tmp_path, bundles_dir):
    d = daemon
    bomb = png_bomb(tmp_path / "bomb.png").read_bytes()
    bad = bad_bundles(tmp_path, bundles_dir)
    arrays: dict = {}
    bombs: dict = {}
    big = {"array": bytes(1600 * 1600 * 3), "shape": [1600, 1600, 3]}
    peak = Attack(d).run(lambda: failing_reload(d, bad["zero"], "not a regular file"),
                         lambda: failing_reload(d, bad["labels"], "over the limit of 4 MiB"),
                         lambda: never_reading_snapshots(d),
                         lambda: flood(d, 20, 2, {"image": bomb}, bombs),
                         lambda: flood(d, 100, 4, big, arrays))
    time.sleep(2)
    after = rss(d.proc.pid)
    print(f"\nRELIABILITY memory budget: everything at once, peak {peak:.0f} MB (bound {bound_mb(d):.0f} MB, "
          f"idle {d.idle_mb:.0f} MB), {after:.0f} MB 2 s later; arrays {arrays}, PNG bombs {bombs}")
    assert peak < bound_mb(d), peak
    assert set(bombs) <= {"too_large", "busy", "unanswered"} and bombs.get("too_large"), bombs  # never decoded
    assert arrays.get("ok", 0) + arrays.get("busy", 0) >= 1, arrays
    with d.client() as client:
        assert client.ping()["pong"]
