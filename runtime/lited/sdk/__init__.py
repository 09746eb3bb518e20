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


class BuildError(Exception):
    """A bad input or a failed step: one line for the user, exit code 2."""
