"""Ask the daemon itself about a bundle just built: is it valid, what does it say.

The judge of a bundle is `lited` as it will run on the board, so both the
validation and the golden result go through the daemon venv (a subprocess:
its numpy/opencv/paddlelite pins are not the tools venv's). The golden
result is exactly what `lited infer --json` prints, which `lited selftest`
compares against later.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lited.sdk import BuildError
from lited.native_crash import death
from lited.sdk.venv import daemon_lited, daemon_python

_VALIDATE = ("import sys\n"
             "from lited.bundle import BundleError, load_bundle\n"
             "try:\n"
             "    load_bundle(sys.argv[1], check_models=sys.argv[2] == '1')\n"
             "except BundleError as exc:\n"
             "    sys.exit(str(exc))\n")


def _run(cmd: list, what: str, every: str | None = None) -> str:
    """`cmd`'s stdout; BuildError with its last line on stderr (each line holding `every`, if any do)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          errors="replace")
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "libpng warning" not in line]
        said = [line for line in lines if every and every in line] or lines[-1:]
        raise BuildError(f"{what}: {'; '.join(said) if said else death(proc.returncode, None)}")
    return proc.stdout


class LitedVenv:
    """The daemon's venv (`.venv` by default), whose lited judges the bundle."""

    def __init__(self, venv: Path) -> None:
        self.venv = venv

    @property
    def present(self) -> bool:
        return daemon_python(self.venv).is_file() and daemon_lited(self.venv).is_file()

    def validate(self, bundle: Path, check_model: bool) -> None:
        """lited.bundle's full check; `check_model` also checks this machine's model file."""
        try:
            _run([daemon_python(self.venv), "-c", _VALIDATE, bundle, "1" if check_model else "0"],
                 "lited refused the bundle")
        except BuildError as exc:  # the bundle is built in a work directory a failure removes: not its path
            raise BuildError(str(exc).replace(f"bundle {bundle}/", f"{Path(bundle).name}/")) from None

    def infer(self, bundle: Path, image: Path, engine: str | None = None, precision: str | None = None) -> dict:
        """`lited infer --json` on one image: {"detections": [...], "classes": [...]}
        (on `engine` and `precision` when given, else the bundle's first choice)."""
        choice = [*(["--engine", engine] if engine else []), *(["--precision", precision] if precision else [])]
        out = _run([daemon_lited(self.venv), "infer", "--bundle", bundle, *choice, "--json", image],
                   f"lited infer on {image.name}{' with ' + engine if engine else ''}")
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise BuildError(f"lited infer on {image.name}: expected one JSON line, got {out[:200]!r}") from None
        text = {"text": result["text"]} if "text" in result else {}  # a text recognizer's reading is its result
        return {"detections": result.get("detections", []), "classes": result.get("classes", []), **text}

    def inspect(self, bundle: Path) -> dict:
        """`lited inspect --json`: what the runtime makes of the bundle here (its decoder's
        reading of the outputs, its warnings)."""
        return json.loads(_run([daemon_lited(self.venv), "inspect", "--bundle", bundle, "--json"], "lited inspect"))

    def selftest(self, bundle: Path) -> list:
        """`lited selftest`: the golden image on every engine the bundle lists and
        the daemon venv has; its lines (which engines passed, which were skipped)."""
        out = _run([daemon_lited(self.venv), "selftest", "--bundle", bundle], "lited selftest",
                   every=" FAILED: ")  # every engine that disagrees, not the last one only
        return [line for line in out.splitlines() if line.strip()]

    def agreement(self, *args: object) -> dict:
        """`python -m lited.sdk.agreement ARGS` (tensors or compare) in the daemon venv: its JSON."""
        out = _run([daemon_python(self.venv), "-m", "lited.sdk.agreement", *args], f"lited {args[0]}")
        return json.loads(out.strip().splitlines()[-1])
