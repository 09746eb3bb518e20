#!/usr/bin/env python3
"""Speed of lited beside bare Paddle Lite and onnxruntime, in one run.

    python tools/bench.py [--models ultraface,fastestdet] [--runs 200] [--out docs/BENCHMARKS.md]

Sections (each a function below, each a table in docs/BENCHMARKS.md):
- infer: per model, bare `predictor.run()` (the limit), lited's
  preprocess + infer + decode on a real image, and onnxruntime (1 thread)
  on the ONNX original with the same input; lited's added time over run().
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "runtime"))
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))
IMAGE_FOR = {"ultraface": "astronaut", "fastestdet": "coffee", "mobilenetv2": "chelsea",
             "ppocrv4_det": "page", "ppocr_cls": "page"}
ONNX = {"ultraface": "version-RFB-320.onnx", "fastestdet": "FastestDet.onnx",
        "mobilenetv2": "mobilenet_v2_dequant_fp32.onnx", "ppocrv4_det": "ch_PP-OCRv4_det_infer.onnx",
        "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_sanitized.onnx"}


def progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def timed(fn, runs: int, warmup: int = 5) -> list:
    """Milliseconds of `runs` calls of fn, after `warmup` calls; GC off while timing."""
    for _ in range(warmup):
        fn()
    gc.disable()
    try:
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    finally:
        gc.enable()


def pct(values: list, q: float) -> float:
    return float(np.percentile(values, q))


def bench_infer(names: list, bundles: Path, runs: int) -> list:
    """Rows: bare run(), lited end to end, onnxruntime, on one real image each."""
    import onnxruntime as ort

    from lited.model import load_model

    rows = []
    for i, name in enumerate(names):
        progress(i, len(names), f"infer: {name}")
        model = load_model(str(bundles / name))
        image = cv2.imread(str(SHARED / "images" / f"{IMAGE_FOR[name]}.png"))
        model.infer(image)
        x = model.preprocess.tensor.copy()
        predictor = model.engine._predictor  # the very predictor lited uses: the limit
        bare = timed(predictor.run, runs)
        stages = {"preprocess": [], "infer": [], "postprocess": []}

        def lited_once() -> None:
            t = model.infer(image)["timings_ms"]
            for k in stages:
                stages[k].append(t[k])
        total = timed(lited_once, runs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(SHARED / "models" / name / "onnx" / ONNX[name]), options,
                                       providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        onnx = timed(lambda: session.run(None, feed), runs)
        bare_ms = statistics.median(bare)
        total_ms = statistics.median(total)
        rows.append({
            "model": name, "input": "x".join(map(str, x.shape[2:])), "bare": bare_ms, "bare_p90": pct(bare, 90),
            "lited": total_ms, "lited_p90": pct(total, 90),
            "pre": statistics.median(stages["preprocess"]), "post": statistics.median(stages["postprocess"]),
            "infer_stage": statistics.median(stages["infer"]), "onnx": statistics.median(onnx),
        })
        del model, predictor, session
        gc.collect()
    progress(len(names), len(names), "infer: done")
    return rows


def table_infer(rows: list) -> str:
    out = ["| model | input | bare `run()` ms (p50 / p90) | lited end to end ms (p50 / p90) | lited / bare | "
           "preprocess ms | decode ms | added over `run()` | onnxruntime 1 thread ms | onnxruntime / bare |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        added = r["lited"] - r["bare"]
        out.append(f"| {r['model']} | {r['input']} | {r['bare']:.2f} / {r['bare_p90']:.2f} | "
                   f"{r['lited']:.2f} / {r['lited_p90']:.2f} | {r['lited'] / r['bare']:.3f} | {r['pre']:.3f} | "
                   f"{r['post']:.3f} | {added:.3f} ms ({100 * added / r['bare']:.1f}%) | {r['onnx']:.2f} | "
                   f"{r['onnx'] / r['bare']:.2f} |")
    return "\n".join(out)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import paddlelite

    return (f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, paddlelite {getattr(paddlelite, '__version__', '2.13rc0')}, "
            f"numpy {np.__version__}, OpenCV {cv2.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(IMAGE_FOR), help="comma-separated shared models")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = ap.parse_args()
    if not (SHARED / "models").is_dir():
        print(f"bench: {SHARED / 'models'} is absent: nothing to measure", file=sys.stderr)
        return 2
    names = [n for n in args.models.split(",") if (SHARED / "models" / n).is_dir()]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_bundles.py"), "--out", tmp, *names],
                       check=True, stdout=subprocess.DEVNULL)
        rows = bench_infer(names, Path(tmp), args.runs)
    text = render(rows, args.runs)
    args.out.write_text(text)
    print(text)
    return 0


def render(infer_rows: list, runs: int) -> str:
    return f"""# Benchmarks

Written by `python tools/bench.py` ({time.strftime('%Y-%m-%d')}); every row comes from the same run
on the same machine, so the ratios are what to read.

Machine: {machine()}

## Single image: lited beside bare Paddle Lite and onnxruntime

Median (p50) and p90 of {runs} calls after 5 warm-up calls, one real image per model.
*bare `run()`* is `predictor.run()` alone on the predictor lited built (the limit);
*lited end to end* is preprocess from the decoded image + input hand-over + `run()` +
output copy + decode, as `lited infer` does it; *added over `run()`* is the difference.
onnxruntime runs the ONNX original on the same input tensor with one thread.

{table_infer(infer_rows)}

Paddle Lite's x86 kernels are not its ARM kernels (NEON): on x86 onnxruntime is faster, on
the boards lited targets Paddle Lite is the usual choice. The x86 Python build of Paddle Lite
cannot set a thread count (`MobileConfig.set_threads` exists only on ARM builds).
"""


if __name__ == "__main__":
    sys.exit(main())
