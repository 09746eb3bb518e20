"""Where the tools venv and the daemon venv are, and how to get into the former.

build_sdk.py must run with paddlepaddle 2.6.2 / x2paddle / paddle_lite_opt,
which live only in `.venv-tools`; run from any other interpreter it re-executes
itself there instead of failing later on a missing import. Stdlib only: this
runs before anything heavy can be imported.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS_VENV = Path(os.environ.get("LITED_TOOLS_VENV", ROOT / ".venv-tools"))
DAEMON_VENV = Path(os.environ.get("LITED_DAEMON_VENV", ROOT / ".venv"))
REQUIREMENTS = ROOT / "tools" / "requirements-tools.txt"
_REEXEC_MARK = "LITED_BUILD_SDK_REEXEC"


def create_commands() -> str:
    """The commands that make the tools venv (what `make tools-venv` runs)."""
    return (f"/root/.pyenv/versions/3.10.13/bin/python -m venv {TOOLS_VENV} && "
            f"{TOOLS_VENV}/bin/pip install -r {REQUIREMENTS}")


def in_tools_venv() -> bool:
    return Path(sys.prefix).resolve() == TOOLS_VENV.resolve()


def ensure_tools_venv(script: str, argv: list) -> None:
    """Re-execute `script` with the tools venv's Python unless already there.

    Returns only when running inside the tools venv; otherwise replaces the
    process, or exits 2 telling the exact commands when the venv is absent.
    """
    if in_tools_venv():
        return
    python = TOOLS_VENV / "bin" / "python"
    if not python.is_file():
        _die(f"the tools venv {TOOLS_VENV} is absent; create it with `make tools-venv`, "
             f"i.e.: {create_commands()}")
    if os.environ.get(_REEXEC_MARK):
        _die(f"re-executed with {python} but sys.prefix is {sys.prefix}; run it as: {python} {script}")
    os.environ[_REEXEC_MARK] = "1"
    os.execv(str(python), [str(python), script, *argv])


def _die(message: str) -> None:
    print(f"build_sdk: {message}", file=sys.stderr)
    sys.exit(2)


def tool(name: str) -> Path:
    """A console script of the tools venv (paddle_lite_opt, x2paddle)."""
    return Path(sys.executable).parent / name


def daemon_python(venv: Path = DAEMON_VENV) -> Path:
    return venv / "bin" / "python"


def daemon_lited(venv: Path = DAEMON_VENV) -> Path:
    return venv / "bin" / "lited"
