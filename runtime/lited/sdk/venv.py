"""Where the tools venv and the daemon venv are (a source checkout's `.venv-tools`
and `.venv`, or what LITED_TOOLS_VENV / LITED_DAEMON_VENV say)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # runtime/lited/sdk/venv.py -> the checkout
TOOLS_VENV = Path(os.environ.get("LITED_TOOLS_VENV", ROOT / ".venv-tools"))
DAEMON_VENV = Path(os.environ.get("LITED_DAEMON_VENV", ROOT / ".venv"))


def tool(name: str) -> Path:
    """A console script of the tools venv (paddle_lite_opt, x2paddle)."""
    return Path(sys.executable).parent / name


def daemon_python(venv: Path = DAEMON_VENV) -> Path:
    return venv / "bin" / "python"


def daemon_lited(venv: Path = DAEMON_VENV) -> Path:
    return venv / "bin" / "lited"
