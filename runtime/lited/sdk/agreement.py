"""What the builder asks the daemon's own lited about a bundle's models, on a
folder of images. Runs in the daemon venv (`python -m lited.sdk.agreement`,
started by judge.py), never in the tools venv: preprocessing, engines and
decoders must be the board's, not the converters'.

    tensors BUNDLE IMAGES OUT.npz    every model input for each image, as lited feeds it
                                     (what a quantiser calibrates on)
    compare BUNDLE ENGINE IMAGES     fp32 against int8 on one engine: accuracy (boxes
                                     matched at IoU 0.7, top-1 agreement) and speed

Each prints one JSON object on stdout; a bad input is one line on stderr, exit 2.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MATCH_IOU = 0.7
SPEED_ROUNDS = 5       # interleaved bursts of each model's bare run() loop
SPEED_BURST_S = 0.4


def images(folder: str) -> list:
    """(name, BGR image) for every readable image in `folder`, by name."""
    import cv2

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    out = [(p.name, cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths]
    out = [(name, image) for name, image in out if image is not None]
    if not out:
        raise ValueError(f"{folder}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def tensors(bundle_dir: str, folder: str, out: str) -> dict:
    """Write input k of image i as `i_k` into the .npz `out`."""
    import numpy as np

    from lited.bundle import load_bundle
    from lited.model import Model

    model = Model(load_bundle(bundle_dir), warmup=0)
    arrays = {}
    shown = images(folder)
    for i, (_, image) in enumerate(shown):
        for k, array in enumerate(model.input_arrays(image)):
            arrays[f"{i}_{k}"] = array
    model.close()
    np.savez(out, **arrays)
    return {"images": len(shown), "inputs": len(model.bundle.inputs)}


def _bursts(engines: dict) -> dict:
    """Median ms and CPU ms per run of each engine's bare run() loop, in
    interleaved bursts (load on a shared machine drifts between them)."""
    wall: dict = {k: [] for k in engines}
    cpu: dict = {k: [] for k in engines}
    for _ in range(SPEED_ROUNDS):
        for key, engine in engines.items():
            times, c0, t0 = [], time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < SPEED_BURST_S or len(times) < 3:
                t = time.perf_counter()
                engine.run()
                times.append((time.perf_counter() - t) * 1e3)
            wall[key].append(statistics.median(times))
            cpu[key].append((time.process_time() - c0) * 1e3 / len(times))
    return {k: {"ms": statistics.median(wall[k]), "cpu_ms": statistics.median(cpu[k]),
                "ms_range": [min(wall[k]), max(wall[k])]} for k in engines}


def compare(bundle_dir: str, engine: str, folder: str) -> dict:
    """The bundle's fp32 and int8 files on `engine`, on every image of `folder`."""
    from lited.bundle import load_bundle
    from lited.model import Model
    from lited.selftest import matched_boxes

    bundle = load_bundle(bundle_dir)
    models = {p: Model(bundle, engine=engine, precision=p, options={"threads": 1}) for p in ("fp32", "int8")}
    frames = top1 = ref_boxes = got_boxes = matched = 0
    for _, image in images(folder):
        ref, got = (models[p].infer(image) for p in ("fp32", "int8"))
        frames += 1
        if ref["classes"] or got["classes"]:
            top1 += bool(ref["classes"] and got["classes"] and ref["classes"][0]["label"] == got["classes"][0]["label"])
        ref_boxes += len(ref["detections"])
        got_boxes += len(got["detections"])
        matched += matched_boxes(ref["detections"], got["detections"], MATCH_IOU)
    speed = _bursts({p: m.engine for p, m in models.items()})
    sizes = {p: sum(f.stat().st_size for f in (m.model_file.path, m.model_file.params and m.model_file.params.path) if f)
             for p, m in models.items()}
    for m in models.values():
        m.close()
    out = {"engine": engine, "frames": frames, "bytes": sizes, "speed": speed,
           "speedup": speed["fp32"]["ms"] / speed["int8"]["ms"],
           "cpu_speedup": speed["fp32"]["cpu_ms"] / speed["int8"]["cpu_ms"]}
    if bundle.task in ("classification", "text_orientation") or not (ref_boxes or got_boxes):
        out["top1_agreement"] = top1 / frames
    else:
        out.update({"fp32_boxes": ref_boxes, "int8_boxes": got_boxes, "matched": matched,
                    "recall": matched / ref_boxes if ref_boxes else None,
                    "precision": matched / got_boxes if got_boxes else None})
    return out


def summary(report: dict) -> str:
    """One line for people: accuracy beside speed and size."""
    if "top1_agreement" in report:
        accuracy = f"top-1 agreement with fp32 {report['top1_agreement']:.0%} of {report['frames']} images"
    else:
        recall, precision = report["recall"], report["precision"]
        accuracy = (f"boxes fp32 {report['fp32_boxes']} / int8 {report['int8_boxes']}, {report['matched']} matched at "
                    f"IoU {MATCH_IOU} (recall {'-' if recall is None else f'{recall:.0%}'}, precision "
                    f"{'-' if precision is None else f'{precision:.0%}'}) on {report['frames']} images")
    s, b = report["speed"], report["bytes"]
    return (f"{accuracy}; {s['fp32']['ms']:.2f} -> {s['int8']['ms']:.2f} ms a run (x{report['speedup']:.2f}; "
            f"CPU x{report['cpu_speedup']:.2f}); {b['fp32'] / 1e6:.1f} -> {b['int8'] / 1e6:.1f} MB")


def main(argv: list) -> int:
    try:
        if argv[:1] == ["tensors"] and len(argv) == 4:
            result = tensors(*argv[1:])
        elif argv[:1] == ["compare"] and len(argv) == 4:
            result = compare(*argv[1:])
        else:
            print("usage: python -m lited.sdk.agreement tensors BUNDLE IMAGES OUT.npz | compare BUNDLE ENGINE IMAGES",
                  file=sys.stderr)
            return 2
    except Exception as exc:  # noqa: BLE001 - one line for the builder, which shows it
        from lited.errors import first_line

        print(f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
