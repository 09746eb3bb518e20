"""Python's UTF-8 mode for lited's commands, whatever the locale.

Why: under a locale that is not UTF-8 (zh_CN.GBK, en_US.ISO-8859-1: a board's
shell, where the unit's PYTHONUTF8=1 does not reach) Chinese labels and paths
were `'latin-1' codec can't encode`, a bundle directory of a Chinese name
"not a directory", and build_sdk named `人脸.onnx` in mojibake. Bundles,
configs, labels and names are UTF-8 text, so lited reads and prints them so.
"""
from __future__ import annotations

import os
import sys


def in_utf8_mode(module: str) -> None:
    """Run `python -m module` with this process's arguments again in UTF-8 mode
    (PYTHONUTF8=1, which the engine processes inherit) unless it is in it, or its
    locale is UTF-8 already (the C locale too: Python coerces it). Returns only
    when nothing needs doing, or the exec failed (then it goes on as it is)."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return
    os.environ["PYTHONUTF8"] = "1"
    try:
        os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])
    except OSError:
        pass
