"""Boot a real systemd in a throwaway container, for tests of units and sd_notify.

How, and why this way:
- `systemd-nspawn --directory=/ --volatile=yes -b`: the root is an empty
  tmpfs with the host's /usr mounted read-only over it, so nothing has to be
  built or downloaded and nothing the container does reaches the host's /etc
  or /var. systemd populates /etc at boot (machine-id, passwd via
  systemd-sysusers); it boots in one to three seconds.
- `--register=no --keep-unit`: the host's PID 1 need not be systemd (CI runs
  in a VM whose init is something else), so there is no machined and no bus
  to ask for a scope. The launcher instead moves itself into a cgroup of its
  own, so concurrent containers don't share nspawn's `payload` cgroup.
- nspawn refuses to clean up /run/systemd/nspawn/propagate unless it is on
  tmpfs; the launcher mounts one there in a private mount namespace.
- Without machined, `systemd-run -M` and `machinectl shell` are out:
  `Container.run` enters the container's namespaces with `nsenter` instead.
  Commands run as root inside, outside any unit; to run something as a unit,
  run `systemd-run --wait --pipe ...` through it.
- The fresh /etc has no nsswitch.conf, so user names of DynamicUser= units
  do not resolve through NSS there (systemd itself does not care).

Requires root, `systemd-nspawn` (Debian: systemd-container), `nsenter` and
`unshare` (util-linux). `require_nspawn()` skips without them, except under
CI=true where only a non-root run may skip.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from lited.engine_process import child_pids

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# systemd-firstboot wants a console to ask questions on; there is none.
INIT_ARGS = ("systemd.mask=systemd-firstboot.service",)

CGROUP_ROOT = Path("/sys/fs/cgroup")

_LAUNCHER = r"""
set -eu
for dir in $LITED_NSPAWN_CGROUPS; do echo $$ > "$dir/cgroup.procs"; done
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
exec "$@"
"""

_names = itertools.count()

PR_SET_PDEATHSIG = 1


def nspawn_missing() -> Optional[str]:
    """Why a container cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return None


def require_nspawn() -> None:
    """Skip the calling test when containers cannot be booted; under CI=true
    only the lack of root is a reason to skip, the lack of tools is a failure."""
    reason = nspawn_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(reason)
    pytest.skip(reason)


class Container:
    """A booted container: run commands in it, reach its files, stop it."""

    def __init__(self, name: str, nspawn: subprocess.Popen, leader: int, log: Path) -> None:
        self.name = name
        self.leader = leader  # host pid of the container's PID 1 (systemd)
        self.log = log  # nspawn's own output and the container's console
        self.boot_seconds = 0.0
        self.boot_state = ""  # what `systemctl is-system-running` said when the boot ended
        self._nspawn = nspawn

    def run(self, cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None,
            input: Optional[str] = None, timeout: float = 60, check: bool = False
            ) -> subprocess.CompletedProcess:
        """Run `cmd` as root inside the container, with a clean environment."""
        clean = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                 **(env or {})}
        argv = ["nsenter", f"--target={self.leader}", "--all", "--", "env", "-i",
                *(f"{k}={v}" for k, v in clean.items()), *cmd]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode} in {self.name}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def path(self, path: str) -> Path:
        """Host path of `path` inside the container (read or write it directly)."""
        return Path(f"/proc/{self.leader}/root") / path.lstrip("/")

    def stop(self, timeout: float = 20) -> None:
        """Halt the container cleanly; kill it if that takes longer than `timeout`."""
        if self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)  # nspawn asks PID 1 to halt
            try:
                self._nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)  # takes the whole pid namespace
                self._nspawn.wait(10)


@contextlib.contextmanager
def booted_container(binds: Sequence[str] = (), rw_binds: Sequence[str] = (),
                     private_network: bool = True, boot_timeout: float = 20) -> Iterator[Container]:
    """Boot systemd in a volatile copy of this host and yield it booted.

    `binds` are host paths mounted read-only at the same place (`SRC:DST` to
    move them), `rw_binds` the same writable. Raises if the boot is not done
    within `boot_timeout` seconds; always stops the container on exit.
    """
    name = f"lited-test-{os.getpid()}-{next(_names)}"
    _remove_cgroups(_stale_cgroups())
    workdir = Path(tempfile.mkdtemp(prefix=name + "-"))
    log = workdir / "console.log"
    cgroups = _make_cgroups(name)
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _LAUNCHER, "sh",
            "systemd-nspawn", "--quiet", "--directory=/", "--volatile=yes", f"--machine={name}",
            "--register=no", "--keep-unit", "--console=pipe", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off",
            *(["--private-network"] if private_network else []),
            *(f"--bind-ro={b}" for b in binds), *(f"--bind={b}" for b in rw_binds),
            "--boot", "--", *INIT_ARGS]
    env = {**os.environ, "LITED_NSPAWN_CGROUPS": " ".join(str(c) for c in cgroups)}
    started = time.monotonic()
    with open(log, "wb") as out:
        nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=_halt_with_parent)
    container: Optional[Container] = None
    try:
        leader = _wait_for_leader(nspawn, started + boot_timeout, log)
        container = Container(name, nspawn, leader, log)
        _wait_booted(container, started + boot_timeout)
        container.boot_seconds = time.monotonic() - started
        yield container
    finally:
        if container is not None:
            container.stop()
        elif nspawn.poll() is None:  # no init found in time: kill it and nspawn
            for pid in child_pids(nspawn.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            nspawn.kill()
            nspawn.wait(10)
        _remove_cgroups(cgroups)
        shutil.rmtree(workdir, ignore_errors=True)


def _halt_with_parent() -> None:
    """In the child before exec: if the test process dies, nspawn gets SIGTERM
    and halts the container instead of leaving it running (survives exec)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _cgroup_tops() -> List[Path]:
    """The hierarchies nspawn looks at: v2, or the hybrid layout's
    name=systemd plus unified."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [CGROUP_ROOT / sub for sub in ("systemd", "unified") if (CGROUP_ROOT / sub).is_dir()]


def _make_cgroups(name: str) -> List[Path]:
    """One cgroup per container in each hierarchy."""
    made = []
    for top in _cgroup_tops():
        path = top / name
        path.mkdir()
        made.append(path)
    return made


def _stale_cgroups() -> List[Path]:
    """Cgroups left by a test process that was killed: the pid in the name is gone."""
    return [path for top in _cgroup_tops() for path in top.glob("lited-test-*-*")
            if not Path("/proc", path.name.split("-")[2]).exists()]


def _remove_cgroups(cgroups: Sequence[Path]) -> None:
    for top in cgroups:
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):  # still busy only if something leaked
                os.rmdir(dirpath)


def _wait_for_leader(nspawn: subprocess.Popen, deadline: float, log: Path) -> int:
    """Host pid of the container's init: nspawn's child in another pid
    namespace that has exec'd systemd."""
    own_ns = os.readlink("/proc/self/ns/pid")
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited {nspawn.returncode}:\n{log.read_text(errors='replace')}")
        for pid in child_pids(nspawn.pid):
            with contextlib.suppress(OSError):
                if (os.readlink(f"/proc/{pid}/ns/pid") != own_ns
                        and Path(f"/proc/{pid}/comm").read_text().strip() == "systemd"):
                    return pid
        time.sleep(0.05)
    raise TimeoutError(f"no container init under systemd-nspawn:\n{log.read_text(errors='replace')}")


def _wait_booted(container: Container, deadline: float) -> None:
    """Until `systemctl is-system-running` says the boot is over."""
    state = ""
    while time.monotonic() < deadline:
        left = max(deadline - time.monotonic(), 1)
        try:
            state = container.run(["systemctl", "is-system-running", "--wait"], timeout=left).stdout.strip()
        except subprocess.TimeoutExpired:
            break
        if state in ("running", "degraded"):
            container.boot_state = state
            return
        time.sleep(0.1)
    raise TimeoutError(f"container {container.name} not booted (state '{state}'):\n"
                       f"{container.log.read_text(errors='replace')}")
