"""Parts of `tools/build_sdk.py`: model conversion, config import, bundle writing.

Everything here runs in the tools venv (`.venv-tools`: paddlepaddle 2.6.2,
x2paddle, paddle_lite_opt), never in the daemon's: the converters pin numpy,
protobuf and paddle versions the daemon must not inherit. What needs the
daemon itself (validating the bundle, computing the golden result) goes
through the daemon venv's `lited` in a subprocess.
"""
from __future__ import annotations

import sys
from pathlib import Path

# lited.bundle is stdlib-only: the tools reuse its naming and checksum rules
# (NAME_RE, seal_models) from the source tree instead of copying them.
_RUNTIME = str(Path(__file__).resolve().parents[2] / "runtime")
if _RUNTIME not in sys.path:
    sys.path.insert(0, _RUNTIME)


class BuildError(Exception):
    """A bad input or a failed step: one line for the user, exit code 2."""
