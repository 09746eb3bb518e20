#!/usr/bin/env python3
"""Build a lited SDK bundle (a zip) from an ONNX or Paddle model and its config.

    python tools/build_sdk.py --model M.onnx --config infer_cfg.yml --targets x86,arm --out my_sdk.zip

The builder is the package `lited.sdk` (docs/build_sdk.md); it runs in the
tools venv (.venv-tools, `make tools-venv`: paddlepaddle, x2paddle,
paddle_lite_opt), so this script hands over to that venv's Python whatever
Python started it. Every bad input ends in one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

TOOLS_VENV = Path(os.environ.get("LITED_TOOLS_VENV", Path(__file__).resolve().parent.parent / ".venv-tools"))


def main(argv: list) -> int:
    python = TOOLS_VENV / "bin" / "python"
    if not python.is_file():
        root = Path(__file__).resolve().parent.parent
        print(f"build_sdk: the tools venv {TOOLS_VENV} is absent; create it with `make tools-venv`, i.e. with "
              f"CPython 3.10: python3.10 -m venv {TOOLS_VENV} && {TOOLS_VENV}/bin/pip install -r "
              f"{root}/tools/requirements-tools.txt && {TOOLS_VENV}/bin/pip install --no-deps -e {root}",
              file=sys.stderr)
        return 2
    os.execv(str(python), [str(python), "-m", "lited.sdk", *argv])
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
