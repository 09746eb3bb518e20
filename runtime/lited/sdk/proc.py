"""Run a converter and turn its pages of logs into one line on failure.

x2paddle and paddle_lite_opt print progress, warnings and tracebacks, and
paddle_lite_opt aborts (SIGABRT) on any error. The full log goes to a file in
the work directory; the user gets the line that says what went wrong.
"""
from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from lited.errors import GLOG, glog_fatal
from lited.sdk import BuildError

_X2PADDLE_OP = re.compile(r"^=+ (\S+) =+$")
_X2PADDLE_SHAPES = re.compile(r"^Stopping at incomplete shape inference at (\w+): (\S+)")
QUANTIZED_ONNX_OPS = ("QuantizeLinear", "DequantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
_ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception): \S")


def reason(log: str) -> str:
    """The line of a converter log that says why it failed."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if any("OPs are not supported yet" in line for line in lines):  # x2paddle
        start = next(i for i, line in enumerate(lines) if "OPs are not supported yet" in line)
        ops = []
        for line in lines[start + 1:]:
            match = _X2PADDLE_OP.match(line)
            if not match:
                break
            ops.append(match.group(1))
        return f"unsupported ONNX op(s): {', '.join(ops) or '?'}"
    stopped = next((m for m in map(_X2PADDLE_SHAPES.match, lines) if m), None)
    if stopped and lines[-1].startswith("KeyError"):  # x2paddle's `KeyError: 0` says only this
        op, tensor = stopped.groups()
        if op.startswith("QLinear") or op in QUANTIZED_ONNX_OPS:
            return (f"a quantized ONNX model, which it cannot convert (shape inference stopped at {op}, "
                    f"{tensor}): build from the float model (--int8 makes an int8 one)")
        return (f"shape inference stopped at {op} ({tensor}), {lines[-1]}: give the input's sides in "
                "the config's `inputs` (an ONNX exported with dynamic sides), or export it with fixed ones")
    fatal = glog_fatal(lines)  # paddle_lite_opt's fatal glog line
    if fatal is not None:
        return fatal
    for line in reversed(lines):  # Paddle's `XxxError: ...` or a traceback's exception line
        if _ERROR.match(line):
            return line
    for line in reversed(lines):  # else the last words
        if not GLOG.match(line):
            return line
    return "no output"


def fixed_addresses() -> None:
    """In a child before it runs: its memory at the same addresses every run (no ASLR),
    where the kernel lets a process ask (a container's seccomp may not: then as it is)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).personality(0x0040000)  # ADDR_NO_RANDOMIZE


def run(cmd: list, log_path: Path, what: str, cwd: Path | None = None, env: dict | None = None,
        same_addresses: bool = False) -> str:
    """Run `cmd` (in `cwd`, with `env`, at `fixed_addresses`), keep its output in `log_path`;
    BuildError naming `what` on failure."""
    try:
        proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, errors="replace", cwd=cwd, env=env,
                              preexec_fn=fixed_addresses if same_addresses else None)
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {cmd[0]}: {exc.strerror}") from None
    log_path.write_text(proc.stdout)
    if proc.returncode != 0:
        status = signal.Signals(-proc.returncode).name if proc.returncode < 0 else f"exit {proc.returncode}"
        raise BuildError(f"{what}: {reason(proc.stdout)} ({status}; log {log_path})")
    return proc.stdout
