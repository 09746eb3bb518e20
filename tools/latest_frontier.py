#!/usr/bin/env python3
"""What policy `latest` can reach on a steady camera, by the model's run length.

A model slower than the camera finishes at a phase of the camera's frame
grid that its run length fixes: the newest frame is then some age old, and
the engine either starts it or waits (idle) for the next one. For a steady
run the ages repeat in a short cycle, so the capture-to-result latency a
scheduler can reach at a given idle budget follows from arithmetic, not from
lited. This simulates that schedule (frames every T ms, each prepared P ms
after it is published; runs of R ms with a Gaussian jitter) for lited's hold
rule (the runner's own `hold_limit` and `worth_holding`: wait when the next
frame is due within sqrt(2 HOLD_SHARE T R) ms, within a running budget of
HOLD_SHARE of the engine's time) and for the best threshold rule of that kind at a given idle
budget (every threshold and budget tried), and prints the p50 latency over
the model's own work (P + R) beside the idle share: the bound docs/BENCHMARKS.md
quotes for issue 14's aims.

    python tools/latest_frontier.py [--camera-fps 30] [--prep-ms 1] [--jitter 0.03] [--intervals 1.5,1.95]

A row's length in camera intervals is the prep and the run together (1.0 at 30 fps and 1 ms of prep:
a run of 32.3 ms), as the engine frees that long after the frame it started was published.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))
from lited.stream.runner import ModelRunner, hold_limit, worth_holding  # noqa: E402

RUNS_IN_CAMERA_INTERVALS = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.2, 2.5, 3.0)


def schedule(interval: float, prep: float, run: float, share: float, limit: float, jitter: float,
             runs: int = 4000, seed: int = 1) -> tuple:
    """(p50 latency / own work, idle share) of `runs` runs under a hold rule of
    threshold `limit` ms and budget `share`."""
    rnd = random.Random(seed)
    now, held, engine, latency = 0.37, 0.0, 0.0, []
    for _ in range(runs):
        newest = int((now - prep) // interval)  # the newest frame prepared when the engine frees
        age = now - newest * interval
        cost = (newest + 1) * interval + prep - now  # waiting for the next one, prepared
        if worth_holding(cost, age, limit, held, engine, share):
            start, captured = now + cost, (newest + 1) * interval
            held += cost
        else:
            start, captured = now, newest * interval
        took = run * (1 + rnd.gauss(0, jitter)) if jitter else run
        latency.append(start - captured + took)
        engine += took
        now = start + took
    return statistics.median(latency) / (prep + run), held / (engine + held)


def lited_rule(interval: float, prep: float, run: float, jitter: float) -> tuple:
    share = ModelRunner.HOLD_SHARE
    return schedule(interval, prep, run, share, hold_limit(share, interval, run), jitter)


def best_rule(interval: float, prep: float, run: float, jitter: float, max_idle: float) -> tuple:
    """The lowest p50 latency ratio of any threshold (0-33 ms, by 1 ms) and budget (0-6%, by 0.5%) idling at most `max_idle`."""
    found = (float("inf"), 0.0)
    for share in (x / 1000 for x in range(0, 61, 5)):
        for limit in (float(x) for x in range(0, 34)):
            ratio, idle = schedule(interval, prep, run, share, limit, jitter, runs=1500)
            if idle <= max_idle and ratio < found[0]:
                found = (ratio, idle)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--camera-fps", type=float, default=30.0)
    ap.add_argument("--prep-ms", type=float, default=1.0, help="from a frame published to prepared")
    ap.add_argument("--jitter", type=float, default=0.03, help="run-to-run spread of the run (relative sd)")
    ap.add_argument("--intervals", default=",".join(map(str, RUNS_IN_CAMERA_INTERVALS)),
                    help="prep + run, in camera intervals, one row each (comma-separated)")
    args = ap.parse_args()
    try:
        rows = [float(x) for x in args.intervals.split(",")]
    except ValueError:
        ap.error(f"--intervals: numbers separated by commas, not {args.intervals!r}")
    interval = 1000 / args.camera_fps
    print(f"camera {args.camera_fps:g} fps, prep {args.prep_ms:g} ms, run jitter {args.jitter:.0%}: "
          "p50 capture-to-result latency / (prep + run), and the engine's idle share\n")
    print("| prep + run, camera intervals | run ms | lited's hold rule | best threshold, idle <= 2% | "
          "best threshold, idle <= 3% |")
    print("| --- | --- | --- | --- | --- |")
    for intervals in rows:
        run = intervals * interval - args.prep_ms
        cells = [lited_rule(interval, args.prep_ms, run, args.jitter),
                 best_rule(interval, args.prep_ms, run, args.jitter, 0.02),
                 best_rule(interval, args.prep_ms, run, args.jitter, 0.03)]
        length = f"{intervals:.2f}"
        length = length[:-1] if length.endswith("0") else length  # 1.0, 1.5, 1.95
        print(f"| {length} | {run:.1f} | " + " | ".join(f"{r:.2f} ({i:.1%} idle)" for r, i in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
