#!/usr/bin/env python3
"""NMS: OpenCV's cv2.dnn.NMSBoxes(Batched) beside lited's numpy loop, side by side;
and the candidate selection before it, one comparison beside a maximum per row.

    python tools/bench_nms.py [--reps 9] [--update docs/BENCHMARKS.md]

The numbers behind `OPENCV_UP_TO` and `rows_reaching` in runtime/lited/decoders/nms.py. Inputs
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

from lited.decoders.nms import OPENCV_UP_TO, candidates, nms_numpy, nms_opencv

SIZES = (5, 10, 50, 200, 500, 700, 1000, 2000)
TITLE = "## NMS: OpenCV beside the numpy loop"
# score tables as heads give them: (name, rows, classes, in memory as [C, N])
SCORE_TABLES = (("NanoDet-m 416, one level's [2704, 80]", 2704, 80, False),
                ("YOLOv8 640, [84, 8400] read as [8400, 80]", 8400, 80, True),
                ("PP-PicoDet 320, [1600, 80]", 1600, 80, False))
HITS = 40  # scores over the threshold: the tens a detector leaves


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


def row_max_candidates(scores: np.ndarray, threshold: float) -> tuple:
    """Each row's best class over the threshold the textbook way: a maximum per row first."""
    best = scores.max(axis=1)
    row = np.flatnonzero(best >= threshold)
    return row, scores[row].argmax(axis=1), best[row]


def measure_candidates(reps: int = 9) -> list:
    """µs per call of lited's `candidates` beside `row_max_candidates`, alternating, results compared."""
    rng = np.random.default_rng(1)
    rows = []
    for name, n, c, transposed in SCORE_TABLES:
        t_max, t_lited, differ = [], [], 0
        for r in range(reps):
            table = rng.uniform(0, 0.3, (c, n) if transposed else (n, c)).astype(np.float32)
            table.flat[rng.choice(table.size, HITS, replace=False)] = rng.uniform(0.5, 1, HITS)
            scores = table.T if transposed else table
            mine, theirs = candidates(scores, 0.5, "none", False, 0), row_max_candidates(scores, 0.5)
            differ += not all(np.array_equal(a, b) for a, b in zip(mine, theirs))
            order = ((candidates, (scores, 0.5, "none", False, 0)), (row_max_candidates, (scores, 0.5)))
            times = {fn: _time(fn, args, 20) for fn, args in (order if r % 2 else order[::-1])}
            t_lited.append(times[candidates])
            t_max.append(times[row_max_candidates])
        ratios = [a / b for a, b in zip(t_lited, t_max)]
        rows.append({"name": name, "max_us": statistics.median(t_max), "lited_us": statistics.median(t_lited),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "differ": differ, "reps": reps})
    return rows


def render(rows: list, cand: list) -> str:
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
    lines += ["", f"Before NMS, the candidates: each row's best class at or over the threshold (0.5; {HITS} scores "
              "over it). lited's `candidates` compares the table once in its memory order and takes the few rows "
              "hit (`rows_reaching`); the textbook way takes each row's maximum first. µs per call, median of "
              f"{cand[0]['reps']} runs in alternating order; *differ*: runs whose candidates were not identical.", "",
              "| score table | maximum per row µs | lited µs | lited / maximum per row | differ |",
              "| --- | --- | --- | --- | --- |"]
    for r in cand:
        lines.append(f"| {r['name']} | {r['max_us']:.0f} | {r['lited_us']:.0f} | {r['ratio']:.2f} "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['differ']}/{r['reps']} |")
    return "\n".join(lines) + "\n"


def section(reps: int = 9) -> str:
    """The whole section: NMS, then the candidates."""
    return render(measure(reps), measure_candidates(reps))


def replace_section(text: str, section: str) -> str:
    """`text` with its NMS section replaced (or the section appended)."""
    pattern = re.compile(re.escape(TITLE) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n", text).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + section


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--update", type=Path, help="replace the NMS section of this file (docs/BENCHMARKS.md)")
    args = ap.parse_args()
    text = section(args.reps)
    print(text)
    if args.update:
        args.update.write_text(replace_section(args.update.read_text(), text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
