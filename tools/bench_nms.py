#!/usr/bin/env python3
"""NMS: OpenCV's cv2.dnn.NMSBoxes(Batched) beside lited's numpy loop, side by side.

    python tools/bench_nms.py [--reps 9] [--update docs/BENCHMARKS.md]

The numbers behind `OPENCV_UP_TO` in runtime/lited/decoders/nms.py. Inputs
are detector-like (boxes clustered around objects, scores above a
threshold, top_k 100, IoU 0.45), one class and 80; each size is timed in
alternating order, and the two results are compared every time. `tools/bench.py`
puts this section into docs/BENCHMARKS.md; `--update` replaces just it.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from lited.decoders.nms import OPENCV_UP_TO, nms_numpy, nms_opencv

SIZES = (5, 10, 50, 200, 500, 700, 1000, 2000)
TITLE = "## NMS: OpenCV beside the numpy loop"


def _inputs(rng: np.random.Generator, n: int, classes: int) -> tuple:
    centers = rng.uniform(50, 590, size=(max(1, n // 10), 2))
    c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(20, 120, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    return boxes, rng.uniform(0.3, 1.0, n).astype(np.float32), (rng.integers(0, classes, n) if classes > 1 else None)


def _time(fn, args: tuple, n: int) -> float:
    loops = max(1, 2000 // n)
    t0 = time.perf_counter()
    for _ in range(loops):
        fn(*args)
    return (time.perf_counter() - t0) / loops * 1e6


def measure(reps: int = 9) -> list:
    rng = np.random.default_rng(0)
    rows = []
    load = os.getloadavg()[0]
    for n in SIZES:
        for classes in (1, 80):
            t_np, t_cv, differ = [], [], 0
            for r in range(reps):
                boxes, scores, cls = _inputs(rng, n, classes)
                args = (boxes, scores, 0.45, 100, cls)
                differ += not np.array_equal(nms_numpy(*args), nms_opencv(*args))
                order = (nms_numpy, nms_opencv) if r % 2 else (nms_opencv, nms_numpy)
                times = {fn: _time(fn, args, n) for fn in order}
                t_np.append(times[nms_numpy])
                t_cv.append(times[nms_opencv])
            ratios = [c / p for c, p in zip(t_cv, t_np)]
            rows.append({"n": n, "classes": classes, "numpy_us": statistics.median(t_np),
                         "opencv_us": statistics.median(t_cv), "ratio": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios), "differ": differ, "reps": reps,
                         "load": load})
    return rows


def render(rows: list) -> str:
    lines = [TITLE, "", f"`tools/bench_nms.py`: µs per call (median of {rows[0]['reps']} runs, each size timed in "
             "alternating order), top_k 100, IoU 0.45. *OpenCV / numpy* is the median of the per-run ratios "
             f"(min-max). lited uses OpenCV up to {OPENCV_UP_TO} candidates (the tens a thresholded detector "
             "leaves: 4 to 11 on the shared photos), numpy above: OpenCV's loop cannot stop at top_k kept "
             "boxes. *differ*: runs whose kept boxes were not identical. Load average when it started: "
             f"{rows[0]['load']:.1f} (absolute times move with it; the ratios are side by side).", "",
             "| candidates | classes | numpy µs | OpenCV µs | OpenCV / numpy | differ |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['classes']} | {r['numpy_us']:.0f} | {r['opencv_us']:.0f} | "
                     f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['differ']}/{r['reps']} |")
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its NMS section replaced (or the section appended)."""
    pattern = re.compile(re.escape(TITLE) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip("\n"), text).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--update", type=Path, help="replace the NMS section of this file (docs/BENCHMARKS.md)")
    args = ap.parse_args()
    section = render(measure(args.reps))
    print(section)
    if args.update:
        args.update.write_text(replace_section(args.update.read_text(), section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
