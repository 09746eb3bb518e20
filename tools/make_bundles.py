#!/usr/bin/env python3
"""Assemble a bundle for each shared model: `make bundles`.

For every manifest in tests/bundles/<name>.json whose model is in
../shared/models/<name>/, writes build/bundles/<name>/ with the model files
(x86 by default), labels, its golden image (../shared/images/<golden.image>)
and the manifest with checksums filled in. `--engines openvino,onnxruntime`
also puts the model's ONNX original in, as `model.onnx` listed for those
engines (the order build_sdk writes). `--update-golden` runs each bundle on
its golden image and writes the result back into tests/bundles/<name>.json
as its expected result (what `lited infer --json` prints, as
tools/build_sdk.py records it).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from lited.bundle import load_bundle, seal
from lited.sdk.engine_files import ONNX_NAME

# each shared model's ONNX original (under ../shared/models/<name>/onnx/)
ONNX_FILES = {"ultraface": "version-RFB-320.onnx", "fastestdet": "FastestDet.onnx",
              "mobilenetv2": "mobilenet_v2_dequant_fp32.onnx", "ppocrv4_det": "ch_PP-OCRv4_det_infer.onnx",
              "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_sanitized.onnx", "nanodet_m": "nanodet_m.onnx",
              "ppocrv4_rec": "ch_PP-OCRv4_rec_infer.onnx"}


def assemble(name: str, models_dir: Path, out_dir: Path, targets: tuple = ("x86",), engines: tuple = ()) -> Path:
    """Copy one shared model's files and sealed manifest (tests/bundles/<name>.json)
    into out_dir/name; with `engines`, its ONNX too, listed for them."""
    manifest = json.loads((ROOT / "tests" / "bundles" / f"{name}.json").read_text())
    src, dst = models_dir / name, out_dir / name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for target in targets:
        spec = manifest["models"].get(target)
        if spec and (src / spec["file"]).is_file():
            shutil.copy2(src / spec["file"], dst / spec["file"])
    if engines:
        shutil.copy2(src / "onnx" / ONNX_FILES[name], dst / ONNX_NAME)
        onnx = {"file": ONNX_NAME, "engines": list(engines)}
        manifest = {**manifest, "schema": 2, "models": {
            t: [onnx, {**spec, "engine": "paddle_lite"}] if t == "x86" else [spec, onnx]
            for t, spec in manifest["models"].items()}}
    if manifest.get("labels"):
        shutil.copy2(src / manifest["labels"], dst / manifest["labels"])
    if manifest.get("golden"):
        shutil.copy2(models_dir.parent / "images" / manifest["golden"]["image"], dst / manifest["golden"]["image"])
    (dst / "manifest.json").write_text(json.dumps(seal(manifest, dst), indent=2) + "\n")
    load_bundle(dst)
    return dst


def compact_json(obj: object) -> str:
    """json.dumps(indent=2) with lists of numbers on one line (boxes, shapes, means)."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[\s*(-?[\d.e+-]+(?:,\s*-?[\d.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


def update_golden(name: str, bundle: Path) -> None:
    """Record what the bundle finds on its golden image as its expected result."""
    import cv2

    from lited.cli import format_result
    from lited.model import Model

    path = ROOT / "tests" / "bundles" / f"{name}.json"
    manifest = json.loads(path.read_text())
    image = cv2.imread(str(bundle / manifest["golden"]["image"]))
    result = json.loads(format_result({"image": "", **Model(load_bundle(bundle)).infer(image)}, True))
    manifest["golden"]["expected"] = {"detections": result["detections"], "classes": result["classes"]}
    path.write_text(compact_json(manifest))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bundles")
    ap.add_argument("--targets", default="x86", help="comma-separated targets to copy (x86,arm)")
    ap.add_argument("--update-golden", action="store_true",
                    help="record each bundle's result on its golden image in tests/bundles/<name>.json")
    ap.add_argument("--engines", default="", help="also the ONNX, for these engines (openvino,onnxruntime)")
    ap.add_argument("names", nargs="*", help="models to assemble (default: all found)")
    args = ap.parse_args()
    if not args.models.is_dir():
        print(f"make_bundles: {args.models} is absent: no shared models to assemble", file=sys.stderr)
        return 2
    names = args.names or sorted(p.stem for p in (ROOT / "tests" / "bundles").glob("*.json")
                                 if (args.models / p.stem).is_dir())
    for name in names:
        engines = tuple(e for e in args.engines.split(",") if e)
        bundle = assemble(name, args.models, args.out, tuple(args.targets.split(",")), engines)
        if args.update_golden:
            update_golden(name, bundle)
            bundle = assemble(name, args.models, args.out, tuple(args.targets.split(",")), engines)
        print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
