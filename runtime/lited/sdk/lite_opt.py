"""paddle_lite_opt: one naive-buffer `.nb` per bundle target.

Run as a subprocess, not through `lite.Opt` in-process: on any error it
aborts the whole process with SIGABRT. Each target is checked before the
slow steps (`--print_supported_ops` aborts with "Wrong target" for a target
this build of opt lacks), so a bad `--targets` fails in a second.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from lited.engines.paddle_lite import NB_HEADER
from lited.sdk import BuildError, proc
from lited.sdk.paddle_model import PaddleModel
from lited.sdk.venv import tool

# bundle target -> paddle_lite_opt --valid_targets (OpenCL falls back to ARM kernels)
VALID_TARGETS = {"x86": "x86", "arm": "arm", "opencl": "opencl,arm"}
QUANT_TYPES = {"int8": "QUANT_INT8", "int16": "QUANT_INT16"}
OPT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # opt's whole environment (see optimize)


class LiteOpt:
    """One paddle_lite_opt executable (default: the tools venv's)."""

    def __init__(self, path: Path | None, workdir: Path) -> None:
        self.path = Path(path) if path else tool("paddle_lite_opt")
        self.workdir = workdir
        if not self.path.is_file():
            raise BuildError(f"paddle_lite_opt not found at {self.path} (pip package paddlelite in the tools venv)")

    def version(self) -> str:
        """The version opt writes into every `.nb`, e.g. `v2.13-rc`."""
        out = proc.run([self.path, "--version"], self.workdir / "opt_version.log", "paddle_lite_opt --version")
        return out.strip().splitlines()[-1].strip()

    def check_target(self, target: str) -> None:
        """Refuse a target this opt cannot build, before any conversion."""
        if target not in VALID_TARGETS:
            raise BuildError(f"--targets: unknown target '{target}' (paddle_lite_opt builds "
                             f"{', '.join(VALID_TARGETS)})")
        try:
            proc.run([self.path, "--print_supported_ops=true", f"--valid_targets={VALID_TARGETS[target]}"],
                     self.workdir / f"opt_check_{target}.log", f"target '{target}'")
        except BuildError as exc:
            raise BuildError(f"{exc} ({self.path} cannot build {VALID_TARGETS[target]} models)") from None

    def optimize(self, model: PaddleModel, target: str, out_dir: Path, fp16: bool = False,
                 quant: str | None = None) -> Path:
        """Write out_dir/model_<target>.nb. fp16 applies to the arm target only: x86 has no
        fp16 kernels, and opt aborts on fp16 with opencl (whose precision is the runtime's choice)."""
        valid = VALID_TARGETS[target]
        name = f"model_{target}"
        # opt (paddlelite's, a Python script) orders some fused ops by where their nodes lie in
        # memory, so anything of another length before them gave another `.nb`: the paths on its
        # command line (another --workdir, the model named another way), even its environment
        # (PYTHONPATH, HOME); and, its memory placed at random, 3 runs in 16 of the same command
        # did. It runs in a folder of its own, on the same names, with an environment of its own,
        # at fixed addresses, so the same model, config and opt build the same bytes.
        here = (self.workdir / f"opt_{target}").resolve()
        shutil.rmtree(here, ignore_errors=True)
        here.mkdir(parents=True)
        (here / "model.pdmodel").symlink_to(model.model_file.resolve())
        (here / "model.pdiparams").symlink_to(model.params_file.resolve())
        cmd = [self.path.resolve(), "--model_file=model.pdmodel", "--param_file=model.pdiparams",
               "--optimize_out_type=naive_buffer", f"--optimize_out={name}", f"--valid_targets={valid}"]
        if fp16 and target == "arm":
            cmd.append("--enable_fp16=true")
        if quant:
            cmd += ["--quant_model=true", f"--quant_type={QUANT_TYPES[quant]}"]
        proc.run(cmd, self.workdir / f"opt_{target}.log", f"paddle_lite_opt --valid_targets={valid}", cwd=here,
                 env=OPT_ENV | {k: v for k, v in os.environ.items() if k == "LD_LIBRARY_PATH"}, same_addresses=True)
        if not (here / f"{name}.nb").is_file():
            raise BuildError(f"paddle_lite_opt --valid_targets={valid} wrote no {name}.nb "
                             f"(log {self.workdir / f'opt_{target}.log'})")
        nb = out_dir / f"{name}.nb"
        shutil.move(here / f"{name}.nb", nb)
        zero_version_padding(nb)
        return nb


def zero_version_padding(nb: Path) -> None:
    """opt writes its version into a 16-byte field of the header, C string then
    whatever its stack held (a pointer: 4 to 7 bytes that differ at every run):
    zeroed, the same model gives the same `.nb`, byte for byte. A rebuild of a
    release then has the release's checksums, and the installer does not refuse
    it as the same version with other bytes. Paddle Lite reads the field only
    up to the NUL."""
    with open(nb, "r+b") as fh:
        head = fh.read(NB_HEADER.size)
        if len(head) < NB_HEADER.size:
            return  # truncated: the bundle check says so
        field = head[2:18]
        end = field.find(b"\0")
        if end < 0 or not field[end:].strip(b"\0"):
            return
        fh.seek(2 + end)
        fh.write(bytes(len(field) - end))
