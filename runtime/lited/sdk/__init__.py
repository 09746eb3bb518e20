"""The SDK builder behind `tools/build_sdk.py`: model conversion, config
import, bundle writing (docs/build_sdk.md).

Everything here runs in the tools venv (`.venv-tools`: paddlepaddle 2.6.2,
x2paddle, paddle_lite_opt; lited itself is installed there without its
dependencies), never in the daemon's: the converters pin numpy, protobuf and
paddle versions the daemon must not inherit. What needs the daemon itself
(validating the bundle, computing the golden result) goes through the daemon
venv's `lited` in a subprocess (judge.py).
"""
from __future__ import annotations

from pathlib import Path


class BuildError(Exception):
    """A bad input or a failed step: one line for the user, exit code 2."""


def read_utf8(path: Path, where: str) -> str:
    """A text input's contents (a labels file, a config): UTF-8, a byte-order mark at its start
    dropped (Windows Notepad writes one: it had become part of the first label); else one line
    naming `where` (a GBK file was a traceback)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BuildError(f"{where}: {path}: not UTF-8 text (byte {exc.start}: save it as UTF-8)") from None
