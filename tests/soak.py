"""Soak: lited serving a synthetic stream at full speed for N minutes, with two
subscriber processes attached (one reads every result's frame from shared
memory), while the RSS, open fds and threads of the daemon and its engine
process (summed) and its /dev/shm rings are sampled. Exits non-zero when memory, fds or rings grow past the thresholds.

    python tests/soak.py --minutes 30                  # the documented long run
    LITED_SOAK_MINUTES=30 python tests/soak.py         # the same
    python tests/soak.py --minutes 1 --json out.json   # what CI runs (tests/test_reliability_soak.py)

RSS growth is the slope of a least-squares line through the samples of the
last two thirds of the run (the first third is warm-up: allocator pools,
ZeroMQ queues and Paddle Lite's arenas fill there), reported in MB/hour.

Also holds the helpers the reliability tests share: /proc sampling of a
process (`rss_mb`, `fd_count`, `threads`), the rings a daemon owns
(`shm_rings`), and `Recorder`, a subscriber thread that keeps every message
with its arrival time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from lited.cores import CLAIM_PREFIX  # noqa: E402 - after the path above

DEFAULT_SOURCE = "synth://?size=640x480&fps=0"


# -- /proc sampling ----------------------------------------------------------

def tree(pid: int) -> list:
    """The daemon and its children (its engine processes)."""
    from lited.engine_process import child_pids

    return [pid, *child_pids(pid)]


def rss_mb(pid: int, children: bool = False) -> float:
    """RSS of `pid` (with `children`: plus its engine processes)."""
    total = 0
    for p in tree(pid) if children else [pid]:
        with open(f"/proc/{p}/statm") as fh:
            total += int(fh.read().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def fd_count(pid: int, children: bool = False) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in (tree(pid) if children else [pid]))


def threads(pid: int, children: bool = False) -> int:
    total = 0
    for p in tree(pid) if children else [pid]:
        with open(f"/proc/{p}/status") as fh:
            total += next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    return total


def shm_rings(pid: int) -> list:
    """Names of the /dev/shm frame rings written by process `pid`."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("lited-") and f"-{pid}-" in n
                  and not n.startswith(CLAIM_PREFIX))  # (where it says which cores its engines are on)


def fit_per_hour(times: list, values: list) -> float:
    """Slope of the least-squares line through (times in s, values), per hour."""
    import numpy as np

    if len(times) < 2:
        return 0.0
    slope = np.polyfit(np.asarray(times, float), np.asarray(values, float), 1)[0]
    return float(slope * 3600)


# -- a subscriber that records everything ------------------------------------

class Recorder:
    """Subscribes to results and events of every stream in a thread; keeps
    (arrival monotonic time, message) for each message."""

    def __init__(self, endpoint: str) -> None:
        from lited.client import Subscriber

        self.messages: list = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._sub = Subscriber(endpoint, events=True)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        time.sleep(0.3)  # let the subscription reach the publisher

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._sub.recv(0.1)
            if msg is not None:
                with self.lock:
                    self.messages.append((time.monotonic(), msg))

    def since(self, t: float = 0.0, stream: Optional[str] = None, kind: Optional[str] = None) -> list:
        with self.lock:
            return [(at, m) for at, m in self.messages if at >= t and (stream is None or m.get("stream") == stream)
                    and (kind is None or m.get("type") == kind)]

    def wait(self, predicate: Callable[[list], object], t: float = 0.0, timeout: float = 30.0,
             stream: Optional[str] = None, kind: Optional[str] = None):
        """Wait until predicate(messages since t) is truthy; its value, or AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.since(t, stream, kind))
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {stream or 'any'} {kind or ''} "
                                     f"messages; last: {[m for _, m in self.since(t, stream)][-5:]}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sub.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def max_gap(times: list) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


# -- subscriber process ------------------------------------------------------

def run_subscriber(endpoint: str, stream: str, out: Path, frames: bool) -> int:
    """Count results until SIGTERM; with `frames`, copy each result's frame
    out of shared memory. Writes a JSON summary to `out`."""
    from lited.client import FrameOverwritten, RingGone, Subscriber

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = {"results": 0, "frames_read": 0, "overwritten": 0, "ring_gone": 0, "seq_backwards": 0,
             "max_gap_s": 0.0, "first_at": None, "last_at": None}
    last_seq, last_at = -1, None
    with Subscriber(endpoint, streams=[stream]) as sub:
        while not stop.is_set():
            msg = sub.recv(0.2)
            if msg is None or msg.get("type") != "result":
                continue
            now = time.monotonic()
            stats["results"] += 1
            stats["first_at"] = stats["first_at"] or time.time()
            stats["last_at"] = time.time()
            if last_at is not None:
                stats["max_gap_s"] = max(stats["max_gap_s"], now - last_at)
            last_at = now
            if msg["seq"] <= last_seq:
                stats["seq_backwards"] += 1
            last_seq = msg["seq"]
            if frames:
                try:
                    frame = sub.frame(msg)
                    assert frame.shape == (msg["frame"]["height"], msg["frame"]["width"], 3)
                    stats["frames_read"] += 1
                except FrameOverwritten:
                    stats["overwritten"] += 1
                except RingGone:
                    stats["ring_gone"] += 1
    stats["max_gap_s"] = round(stats["max_gap_s"], 3)
    out.write_text(json.dumps(stats))
    return 0


# -- the soak ----------------------------------------------------------------

def soak(minutes: float, interval: float, source: str, workdir: Path, log: Callable[[str], None]) -> dict:
    from conftest import make_bundle
    from daemon_process import DaemonProcess

    bundle = make_bundle("ultraface", workdir / "bundles")
    config = {"models": {"face": str(bundle)}, "streams": [{"name": "soak", "source": source}]}
    daemon = DaemonProcess(workdir, config).start()
    pid = daemon.proc.pid
    subs = []
    try:
        for i, frames in enumerate((True, False)):
            out = workdir / f"sub{i}.json"
            args = [sys.executable, __file__, "--subscriber", daemon.pub, "soak", str(out)] + (
                ["--frames"] if frames else [])
            subs.append((subprocess.Popen(args), out))
        with daemon.client() as client:
            deadline = time.monotonic() + 60
            while not any(st["counters"]["inferred"] for st in client.status()["streams"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("no result within 60 s")
                time.sleep(0.1)
            start = time.monotonic()
            end = start + minutes * 60
            samples = []
            next_log = start
            while True:
                now = time.monotonic()
                status = client.status()
                stream = status["streams"][0]
                samples.append({"t": round(now - start, 2), "rss_mb": round(rss_mb(pid, True), 2),
                                "fds": fd_count(pid, True), "threads": threads(pid, True), "rings": len(shm_rings(pid)),
                                "inferred": stream["counters"]["inferred"], "fps": stream["fps"],
                                "engine_restarts": stream["counters"]["engine_restarts"],
                                "state": stream["state"]})
                if now >= next_log:
                    s = samples[-1]
                    log(f"soak: {s['t']:7.0f} s  rss {s['rss_mb']:7.1f} MB  fds {s['fds']}  threads {s['threads']}  "
                        f"rings {s['rings']}  inferred {s['inferred']}  {s['fps']:.0f} fps")
                    next_log = now + 60
                if now >= end:
                    break
                time.sleep(min(interval, max(0.0, end - now)))
        for proc, _ in subs:
            proc.send_signal(signal.SIGTERM)
        subscribers = []
        for proc, out in subs:
            proc.wait(30)
            subscribers.append({"exit": proc.returncode, **(json.loads(out.read_text()) if out.exists() else {})})
    finally:
        for proc, _ in subs:
            if proc.poll() is None:
                proc.kill()
        exit_code = daemon.stop()
    leftover = shm_rings(pid)
    return analyse(samples, subscribers, exit_code, leftover, minutes, source)


def analyse(samples: list, subscribers: list, exit_code: int, leftover: list, minutes: float, source: str) -> dict:
    cut = samples[len(samples) // 3]["t"]
    tail = [s for s in samples if s["t"] >= cut]
    t = [s["t"] for s in tail]
    span_h = (t[-1] - t[0]) / 3600 if len(t) > 1 else 0.0
    first, last = samples[0], samples[-1]
    inferred = last["inferred"] - first["inferred"]
    return {
        "minutes": minutes, "source": source, "samples": len(samples),
        "duration_s": last["t"], "window_s": round(t[-1] - t[0], 1),
        "inferred": inferred, "fps_mean": round(inferred / max(last["t"], 1e-9), 1),
        "rss_mb": {"start": first["rss_mb"], "window_start": tail[0]["rss_mb"], "end": last["rss_mb"],
                   "max": max(s["rss_mb"] for s in samples),
                   "per_hour": round(fit_per_hour(t, [s["rss_mb"] for s in tail]), 2),
                   "window_growth": round(fit_per_hour(t, [s["rss_mb"] for s in tail]) * span_h, 2)},
        "fds": {"start": first["fds"], "window_start": tail[0]["fds"], "end": last["fds"],
                "max": max(s["fds"] for s in samples), "growth": last["fds"] - tail[0]["fds"]},
        "threads": {"start": first["threads"], "end": last["threads"], "max": max(s["threads"] for s in samples)},
        "rings": {"max": max(s["rings"] for s in samples), "min": min(s["rings"] for s in samples),
                  "growth": last["rings"] - tail[0]["rings"], "left_after_stop": leftover},
        "states": sorted({s["state"] for s in samples}),
        "engine_restarts": last["engine_restarts"],
        "subscribers": subscribers,
        "daemon_exit": exit_code,
    }


def verdict(report: dict, max_rss_per_hour: float, max_window_growth: float) -> list:
    """What went wrong, as lines; empty when the run passed."""
    problems = []
    rss = report["rss_mb"]
    if rss["per_hour"] > max_rss_per_hour:
        problems.append(f"RSS grows {rss['per_hour']} MB/hour (limit {max_rss_per_hour})")
    if rss["window_growth"] > max_window_growth:
        problems.append(f"RSS grew {rss['window_growth']} MB over the last 2/3 (limit {max_window_growth})")
    if report["fds"]["growth"] > 0:
        problems.append(f"open fds grew by {report['fds']['growth']}")
    if report["rings"]["growth"] > 0 or report["rings"]["max"] > 1:
        problems.append(f"/dev/shm rings grew: {report['rings']}")
    if report["rings"]["left_after_stop"]:
        problems.append(f"rings left in /dev/shm after stop: {report['rings']['left_after_stop']}")
    if report["states"] != ["streaming"]:
        problems.append(f"stream states seen: {report['states']}")
    if report["engine_restarts"]:
        problems.append(f"the engine process was restarted {report['engine_restarts']} times")
    if report["daemon_exit"] != 0:
        problems.append(f"daemon exited {report['daemon_exit']}")
    for i, sub in enumerate(report["subscribers"]):
        if sub.get("exit") != 0 or not sub.get("results"):
            problems.append(f"subscriber {i}: {sub}")
        elif sub["max_gap_s"] > 2.0 or sub["seq_backwards"]:
            problems.append(f"subscriber {i}: gap {sub['max_gap_s']} s, {sub['seq_backwards']} seqs backwards")
    return problems


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("LITED_SOAK_MINUTES", "2")))
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--source", default=DEFAULT_SOURCE)
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--max-rss-mb-per-hour", type=float,
                    help="default: 1 for runs of 30 minutes or more, else 60 (a short fit is noisy)")
    ap.add_argument("--max-window-growth-mb", type=float, default=None,
                    help="RSS growth allowed over the fitted window (default: 4, or per-hour limit x window)")
    ap.add_argument("--workdir", type=Path, help="keep the daemon's config and log here")
    ap.add_argument("--subscriber", nargs=3, metavar=("ENDPOINT", "STREAM", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--frames", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.subscriber:
        endpoint, stream, out = args.subscriber
        return run_subscriber(endpoint, stream, Path(out), args.frames)
    per_hour = args.max_rss_mb_per_hour
    if per_hour is None:
        per_hour = 1.0 if args.minutes >= 30 else 60.0
    window_limit = args.max_window_growth_mb
    if window_limit is None:
        window_limit = 4.0 if args.minutes < 30 else max(1.0, per_hour * args.minutes / 60)
    from conftest import SHARED

    if not (SHARED / "models" / "ultraface").is_dir():
        print(f"soak: {SHARED}/models/ultraface is absent (set LITED_SHARED to the shared models)", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lited-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"soak: {args.minutes:g} min of {args.source}, 2 subscribers, sampling every {args.interval:g} s "
        f"(workdir {workdir})")
    report = soak(args.minutes, args.interval, args.source, workdir, log)
    problems = verdict(report, per_hour, window_limit)
    report["limits"] = {"rss_mb_per_hour": per_hour, "window_growth_mb": window_limit}
    report["problems"] = problems
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    for line in problems:
        log(f"soak: FAIL: {line}")
    if not problems:
        log(f"soak: PASS: RSS {report['rss_mb']['per_hour']:+.2f} MB/hour over the last "
            f"{report['window_s']:.0f} s, fds {report['fds']['growth']:+d}, rings {report['rings']['growth']:+d}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
