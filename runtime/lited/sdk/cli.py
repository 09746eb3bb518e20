"""`python -m lited.sdk`: the command line of tools/build_sdk.py, run in the tools venv.

Every bad input ends in one line on stderr and exit code 2. The mapping
from training configs to the manifest is in docs/build_sdk.md; the bundle
format in docs/bundle.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lited.errors import OneLineParser
from lited.sdk import BuildError
from lited.sdk.builder import Options, build
from lited.sdk.venv import DAEMON_VENV

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="build_sdk.py",
                       description="Build a lited SDK bundle (a zip) from an ONNX or Paddle model and its config.")
    ap.add_argument("--model", required=True, type=Path,
                    help="ONNX file, .pdmodel (with .pdiparams beside it) or a Paddle inference model directory")
    ap.add_argument("--config", action="append", default=[], type=Path, metavar="CFG",
                    help="PaddleDetection infer_cfg.yml, PaddleClas inference config or a manifest fragment "
                         "(JSON/YAML); at least one; repeat to merge, later wins")
    ap.add_argument("--targets", default="x86,arm", help="comma-separated: x86, arm, opencl (default x86,arm)")
    ap.add_argument("--out", required=True, type=Path, help="the zip to write")
    ap.add_argument("--name", help="bundle name (default: the config's, else the model's file or folder name)")
    ap.add_argument("--version", help="bundle version (default: the config's, else 1.0.0)")
    ap.add_argument("--golden", type=Path, metavar="IMAGE",
                    help="self-test image; its expected result comes from running the new model with lited")
    ap.add_argument("--labels", type=Path, metavar="FILE", help="class names, one a line (overrides the config's)")
    ap.add_argument("--notice", type=Path, metavar="FILE", help="licence and source, copied as NOTICE")
    ap.add_argument("--fp16", action="store_true", help="fp16 kernels for the arm target (ARMv8.2+ boards)")
    ap.add_argument("--quant-weights", choices=("int8", "int16"), dest="quant",
                    help="store weights quantized (smaller file; computed in float)")
    ap.add_argument("--no-onnx", action="store_false", dest="onnx",
                    help="do not keep the ONNX model in the bundle (by default it is kept beside the .nb, "
                         "for the OpenVINO and onnxruntime engines)")
    ap.add_argument("--openvino-ir", action="store_true", help="also write an OpenVINO IR (model.xml + model.bin)")
    ap.add_argument("--int8", type=Path, metavar="DIR",
                    help="also make an int8 model, calibrated on the images in DIR, and report its accuracy "
                         "and speed against fp32")
    ap.add_argument("--int8-engine", choices=("openvino", "onnxruntime"),
                    help="quantiser and engine of the int8 model: OpenVINO NNCF (default) or onnxruntime's")
    ap.add_argument("--int8-eval", type=Path, metavar="DIR",
                    help="images for the int8 accuracy report (default: the calibration images)")
    ap.add_argument("--opt", type=Path, help="another paddle_lite_opt (default: the tools venv's)")
    ap.add_argument("--lited-venv", type=Path, dest="daemon_venv",
                    help=f"venv whose lited checks the bundle and computes the golden result (default {DAEMON_VENV})")
    ap.add_argument("--keep-dir", type=Path, metavar="DIR", help="also leave the bundle directory at DIR")
    ap.add_argument("--workdir", type=Path, metavar="DIR", help="keep intermediate files and logs in DIR")
    return ap


def main(argv: list) -> int:
    args = build_parser().parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        print("build_sdk: --targets: expected at least one target", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.int8_engine and args.int8 is None:  # it was taken and ignored, and named in the README's command
        print("build_sdk: --int8-engine needs --int8 DIR (the calibration images): it picks the int8 model's "
              "quantiser", file=sys.stderr)
        return EXIT_BAD_INPUT
    opts = Options(model=args.model, configs=args.config, targets=list(dict.fromkeys(targets)), out=args.out,
                   name=args.name, version=args.version, golden=args.golden, labels=args.labels,
                   notice=args.notice, fp16=args.fp16, quant=args.quant, opt=args.opt,
                   daemon_venv=args.daemon_venv or DAEMON_VENV,
                   daemon_venv_asked=args.daemon_venv is not None or "LITED_DAEMON_VENV" in os.environ,
                   daemon_venv_flag=args.daemon_venv is not None, keep_dir=args.keep_dir, workdir=args.workdir, argv=argv,
                   onnx=args.onnx, openvino_ir=args.openvino_ir, int8=args.int8,
                   int8_engine=args.int8_engine or "openvino", int8_eval=args.int8_eval)
    try:
        summary = build(opts)
    except BuildError as exc:
        print(f"build_sdk: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    manifest = summary["manifest"]
    size = summary["zip"].stat().st_size
    print(f"{summary['zip']}: {manifest['name']} {manifest['version']} ({manifest['task']}; "
          f"{', '.join(manifest['models'])}; {size / 1e6:.1f} MB)")
    return 0
