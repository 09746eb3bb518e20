"""The systemd side of lited, checked against real systemd tools.

- The unit files pass `systemd-analyze verify` without a single warning and
  `systemd-analyze security` rates them 2.0 or lower.
- lited.service.sdnotify talks to a real notify socket that the test binds: READY,
  STATUS, WATCHDOG=1, and no WATCHDOG=1 once a loop stops beating.
- lited.service.logs writes one compact line per record to stderr off systemd.
- In a booted container (tests/nspawn.py, marked `systemd`): a Type=notify
  unit becomes active with its STATUS and journal fields; the real units,
  hardening and all, run the real `lited serve` (this checkout's, through a
  test drop-in) on a synth:// stream: lited.service and lited@cam1.service
  side by side, reload, clean stop. systemd's watchdog restarting a hung
  daemon is in tests/test_install_sdk.py, on the daemon the installer set up.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from conftest import ROOT, make_bundle, need_shared
from lited.service.sdnotify import Notifier
from nspawn import Container, booted_container, require_nspawn

UNIT_SOURCES = ROOT / "systemd"
INSTALL = UNIT_SOURCES / "install.sh"
#: What the units run in production, and what stands in for it here.
DEPLOYED_LITED = "/opt/lited/venv/bin/lited"
VENV_LITED = Path(sys.executable).with_name("lited")
#: lited.service, and lited@.service as the instance systemd would load.
UNITS = ("lited.service", "lited@cam1.service")
MAX_EXPOSURE = 2.0

CHILD_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "runtime")}


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install {package}")
    return path


# --- unit files -------------------------------------------------------------

@pytest.fixture(scope="module")
def unit_dir() -> Iterator[Path]:
    """The units as install.sh lays them out, ExecStart on this venv's `lited`:
    verify fails on an ExecStart binary that does not exist, and
    /opt/lited/venv is not on a development machine."""
    if not VENV_LITED.exists():
        pytest.fail(f"{VENV_LITED} is missing: pip install -e . into this venv")
    with tempfile.TemporaryDirectory(prefix="lited-units-") as tmp:
        root = Path(tmp)
        subprocess.run([str(INSTALL), str(root)], check=True,
                       env={**os.environ, "UNITDIR": "/", "SYSUSERSDIR": "/sysusers.d"})
        for unit in ("lited.service", "lited@.service"):
            path = root / unit
            text = path.read_text()
            assert text.count(DEPLOYED_LITED) == 2, f"{unit}: expected {DEPLOYED_LITED} in ExecStart and ExecReload"
            path.write_text(text.replace(DEPLOYED_LITED, str(VENV_LITED)))
        yield root


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_warnings(unit_dir: Path, unit: str) -> None:
    analyze = need_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "verify", str(unit_dir / unit)], capture_output=True, text=True)
    # verify exits 0 on warnings (unknown keys, bad specifiers): any stderr fails.
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_at_most_2(unit_dir: Path, unit: str) -> None:
    analyze = need_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit_dir / unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


BOARDS = ("jetson", "raspberrypi", "rk3399", "x86")
#: What the memory comments count on: the daemon, and each engine process (one per stream).
DAEMON_MB, ENGINE_MB = 150, 130


def streams_that_fit(text: str) -> tuple:
    """(MemoryMax in MB, the stream count its comment gives) of a unit file or drop-in."""
    value = re.search(r"^MemoryMax=(\d+)([MG])$", text, re.M)
    said = re.search(r"fits (\d+) (?:streams|of them)", text)
    assert value and said, text
    return int(value.group(1)) * (1024 if value.group(2) == "G" else 1), int(said.group(1))


@pytest.mark.parametrize("board", BOARDS)
def test_p11_board_profiles_verify_and_say_what_memory_fits(board: str, tmp_path: Path) -> None:
    """Each board's drop-in, installed beside the units as install.sh lays it
    out, verifies without a warning, keeps the exposure, and its MemoryMax
    fits the streams its comment promises at ~130 MB an engine process."""
    assert sorted(p.stem for p in (UNIT_SOURCES / "boards").glob("*.conf")) == list(BOARDS)
    analyze = need_tool("systemd-analyze", "systemd")
    subprocess.run([str(INSTALL), str(tmp_path)], check=True,
                   env={**os.environ, "UNITDIR": "/", "SYSUSERSDIR": "/sysusers.d", "BOARD": board})
    unit = tmp_path / "lited.service"
    unit.write_text(unit.read_text().replace(DEPLOYED_LITED, str(VENV_LITED)))
    dropin = (tmp_path / "lited.service.d" / "20-board.conf").read_text()
    assert dropin == (UNIT_SOURCES / "boards" / f"{board}.conf").read_text()
    assert (tmp_path / "lited@.service.d" / "20-board.conf").read_text() == dropin
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                            text=True)
    assert float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout).group(1)) <= MAX_EXPOSURE
    memory_mb, streams = streams_that_fit(dropin)
    assert streams == (memory_mb - DAEMON_MB) // ENGINE_MB, (board, memory_mb, streams)
    devices = re.findall(r"^DeviceAllow=(\S+) rw$", dropin, re.M)
    wanted = {"jetson": {"/dev/nvmap", "char-nvhost*", "/dev/nvhost-ctrl", "/dev/nvhost-gpu"},
              "rk3399": {"/dev/mali0"}, "raspberrypi": {"/dev/vchiq", "char-dma_heap"}, "x86": set()}[board]
    assert wanted <= set(devices), devices
    # without a board, no profile is left behind
    subprocess.run([str(INSTALL), str(tmp_path)], check=True,
                   env={**os.environ, "UNITDIR": "/", "SYSUSERSDIR": "/sysusers.d", "BOARD": "none"})
    assert not (tmp_path / "lited.service.d" / "20-board.conf").exists()


def test_p11_the_default_memory_limit_says_what_it_fits() -> None:
    memory_mb, streams = streams_that_fit((UNIT_SOURCES / "lited-common.conf").read_text())
    assert (memory_mb, streams) == (1024, (1024 - DAEMON_MB) // ENGINE_MB)


def test_sysusers_creates_user_and_groups(unit_dir: Path, tmp_path: Path) -> None:
    sysusers = need_tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    result = subprocess.run([sysusers, f"--root={tmp_path}", str(unit_dir / "sysusers.d" / "lited.conf")],
                            capture_output=True, text=True)
    # It reports what it creates on stderr; anything else is a complaint about the file.
    complaints = [line for line in result.stderr.splitlines() if not line.startswith("Creating ")]
    assert (result.returncode, complaints) == (0, []), result.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    group = (tmp_path / "etc/group").read_text()
    assert re.search(r"^lited:x:\d+:\d+:[^:]*:/var/lib/lited:/usr/sbin/nologin$", passwd, re.M), passwd
    assert re.search(r"^render:x:\d+:", group, re.M), group


# --- sd_notify over a real socket -------------------------------------------

Message = Tuple[float, int, Dict[str, str]]  # (received at, sender pid, fields)


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket like systemd's: records the sender's pid (SO_PASSCRED)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:  # short: sun_path has 108 bytes
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(os.path.join(tmp, "notify"))
        yield sock
        sock.close()


def receive(sock: socket.socket, proc: subprocess.Popen, timeout: float = 30) -> List[Message]:
    """Every datagram until `proc` has exited and the socket is drained."""
    messages: List[Message] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            data, anc, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            if proc.poll() is not None:
                return messages
            continue
        pid = next((struct.unpack("3i", d)[0] for level, kind, d in anc
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), -1)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        messages.append((time.monotonic(), pid, fields))
    proc.kill()
    raise AssertionError(f"child still running after {timeout} s; got {messages}")


# The inference and bus loops beat for 1.2 s, then inference stops (the
# test-only fault) while bus goes on for 1.6 s: WatchdogSec is 0.4 s here.
WATCHDOG_CHILD = """
import time
from lited.service.sdnotify import Notifier, Watchdog

def run(seconds, *loops):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for loop in loops:
            watchdog.beat(loop)
        time.sleep(0.05)

notifier = Notifier()
watchdog = Watchdog(notifier)
notifier.status("loading")
watchdog.register("inference")
watchdog.register("bus")
notifier.ready("serving")
watchdog.start()
run(1.2, "inference", "bus")
notifier.status("fault")
run(1.6, "bus")
notifier.stopping()
watchdog.stop()
"""


def test_watchdog_pings_only_while_loops_beat(notify_socket: socket.socket) -> None:
    env = {**CHILD_ENV, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-c", WATCHDOG_CHILD], env=env, stderr=subprocess.PIPE, text=True)
    messages = receive(notify_socket, proc)
    assert proc.wait() == 0, proc.stderr.read()
    assert {pid for _, pid, _ in messages} == {proc.pid}, "NotifyAccess=main needs every message from the main pid"

    sequence = [fields for _, _, fields in messages]
    assert sequence[0] == {"STATUS": "loading"}
    assert sequence[1] == {"READY": "1", "STATUS": "serving"}
    assert sequence[-1] == {"STOPPING": "1"}
    fault_at = next(at for at, _, fields in messages if fields.get("STATUS") == "fault")
    pings = [at for at, _, fields in messages if fields == {"WATCHDOG": "1"}]
    # interval/2 = 0.2 s: about six pings in 1.2 s; a loaded machine may drop some.
    assert len([at for at in pings if at < fault_at]) >= 3, sequence
    # Stale after 0.4 s, checked every 0.2 s: no ping after that, with slack.
    late = [round(at - fault_at, 2) for at in pings if at > fault_at + 0.9]
    assert not late, f"pings {late} s after the inference loop stopped beating"
    assert {"STATUS": "stalled: inference"} in sequence


def test_reloading_carries_monotonic_usec(notify_socket: socket.socket, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.getsockname())
    notify_socket.settimeout(5)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier().reloading("reloading\nconfig")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in notify_socket.recv(4096).decode().splitlines())
    assert fields.keys() == {"RELOADING", "MONOTONIC_USEC", "STATUS"}
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "reloading config"  # a newline would have been a field of its own


def test_without_notify_socket_nothing_breaks(notify_socket: socket.socket, monkeypatch) -> None:
    env = {**CHILD_ENV, "WATCHDOG_USEC": "400000"}  # WatchdogSec= set but no socket
    proc = subprocess.Popen([sys.executable, "-c", WATCHDOG_CHILD], env=env, stderr=subprocess.PIPE, text=True)
    assert receive(notify_socket, proc) == []
    assert proc.wait() == 0
    # The stall is still reported (logging's last resort handler: stderr).
    assert proc.stderr.read().splitlines() == \
        ["watchdog: no beat from inference for over 0.4 s; letting systemd restart us"]
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")  # a socket that went away
    assert not Notifier().status("still fine")


@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 30.0),
    ("30000000", "self", 30.0),
    ("30000000", "1", None),  # the variables were meant for another process
    ("0", None, None),
    ("junk", None, None),
    (None, None, None),
])
def test_watchdog_interval_follows_sd_watchdog_enabled(monkeypatch, usec, pid, expected) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Notifier.watchdog_interval() == expected


# --- logging off systemd ----------------------------------------------------

LOG_CHILD = """
import logging
from lited.service.logs import setup_logging
handler = setup_logging("info")
print(type(handler).__name__)
log = logging.getLogger("lited.test")
log.debug("hidden")
log.info("frame source lost", extra={"stream": "cam0", "bundle": "face", "event": "source_lost"})
log.warning("plain")
"""


@pytest.mark.parametrize("extra_env", [{}, {"JOURNAL_STREAM": "8:12345"}], ids=["plain", "stale-journal-stream"])
def test_stderr_logging_is_one_compact_line(extra_env: Dict[str, str]) -> None:
    # A JOURNAL_STREAM that is not our stderr (inherited, then redirected) must not win.
    result = subprocess.run([sys.executable, "-c", LOG_CHILD], env={**CHILD_ENV, **extra_env},
                            capture_output=True, text=True, check=True)
    assert result.stdout == "StreamHandler\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} I lited\.test: frame source lost "
                        r"stream=cam0 bundle=face event=source_lost", lines[0]), lines[0]
    assert re.fullmatch(r"\S+ \S+ W lited\.test: plain", lines[1]), lines[1]


def test_a_failed_start_is_an_error_in_the_journal(tmp_path) -> None:
    """A unit's `lited serve` that cannot start ends with one line on stderr, which journald files
    at priority info: `journalctl -u lited -p err` showed nothing. With stderr the journal stream,
    the line carries journald's `<3>` prefix (SyslogLevelPrefix, on by default)."""
    config = tmp_path / "bad.conf"
    config.write_text("models: [\n")
    for is_journal in (True, False):
        err = tmp_path / f"stderr-{is_journal}"
        with open(err, "w") as fh:
            st = os.fstat(fh.fileno())
            env = {**CHILD_ENV, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if is_journal else "8:12345"}
            code = subprocess.run([sys.executable, "-m", "lited.cli", "serve", "--config", str(config)],
                                  stderr=fh, env=env, timeout=60).returncode
        assert code == 2
        line = err.read_text()
        assert line.startswith("<3>lited: config " if is_journal else "lited: config "), line
        assert line.count("\n") == 1, line


def test_a_failed_start_is_the_units_status(notify_socket: socket.socket, tmp_path) -> None:
    """`systemctl status` showed the last process's `Status: "stopping"` beside a failed start: the
    one line the start failed with is now the unit's STATUS=."""
    config = tmp_path / "bad.conf"
    config.write_text("models: [\n")
    env = {**CHILD_ENV, "NOTIFY_SOCKET": notify_socket.getsockname()}
    proc = subprocess.Popen([sys.executable, "-m", "lited.cli", "serve", "--config", str(config)], env=env,
                            stderr=subprocess.DEVNULL)
    messages = receive(notify_socket, proc)
    assert proc.returncode == 2
    statuses = [fields["STATUS"] for _, _, fields in messages if "STATUS" in fields]
    assert statuses and statuses[-1].startswith(f"lited: config {config}: "), messages


# --- in a booted systemd ----------------------------------------------------

def python_binds() -> List[str]:
    """Host paths the container needs for this Python, the checkout and the models."""
    paths = {ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
             Path(os.path.realpath(sys.executable)).parent.parent}
    shared = need_shared("models").parent
    paths.add(shared.resolve())
    ordered = sorted(paths, key=lambda p: len(p.parts))
    return [str(p) for i, p in enumerate(ordered) if not any(q in p.parents for q in ordered[:i])]


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    require_nspawn()
    with booted_container(binds=python_binds()) as booted:
        yield booted


def show(container: Container, unit: str, *props: str) -> Dict[str, str]:
    out = container.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def journal(container: Container, unit: str, *matches: str) -> List[Dict[str, str]]:
    out = container.run(["journalctl", "--unit", unit, "--output=json", "--no-pager", *matches], check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.systemd
def test_container_boots_fast(container: Container) -> None:
    print(f"container booted in {container.boot_seconds:.1f} s")
    assert container.boot_seconds < 20
    failed = container.run(["systemctl", "--failed", "--no-legend"]).stdout
    assert container.boot_state == "running", failed


NOTIFY_UNIT = """[Service]
Type=notify
ExecStart={python} {script}
Environment=PYTHONPATH={root}/runtime
"""

NOTIFY_SCRIPT = """
import logging, time
from lited.service.logs import setup_logging
from lited.service.sdnotify import Notifier
setup_logging("info")
notifier = Notifier()
notifier.status("warming up")
logging.getLogger("lited.test").info("hello from the unit", extra={"stream": "cam0", "event": "hello"})
notifier.ready("serving 0 streams")
time.sleep(600)
"""


@pytest.mark.systemd
def test_notify_unit_becomes_active_with_status_and_journal(container: Container) -> None:
    container.path("/run/lited-notify-test.py").write_text(NOTIFY_SCRIPT)
    container.path("/run/systemd/system/lited-notify-test.service").write_text(
        NOTIFY_UNIT.format(python=sys.executable, script="/run/lited-notify-test.py", root=ROOT))
    container.run(["systemctl", "daemon-reload"], check=True)
    container.run(["systemctl", "start", "lited-notify-test.service"], check=True, timeout=60)
    try:
        state = show(container, "lited-notify-test.service", "ActiveState", "StatusText")
        assert state == {"ActiveState": "active", "StatusText": "serving 0 streams"}
        entries = journal(container, "lited-notify-test.service", "EVENT=hello")
        assert [(e["MESSAGE"], e["STREAM"], e["PRIORITY"]) for e in entries] == \
            [("hello from the unit", "cam0", "6")]
    finally:
        container.run(["systemctl", "stop", "lited-notify-test.service"])


def install_lited(container: Container) -> None:
    """The real units via install.sh, plus a test drop-in that runs `lited serve`
    from this checkout's venv (not /opt/lited/venv) and makes this Python
    reachable under the sandbox; a config per unit with one synth:// stream."""
    subprocess.run([str(INSTALL), str(container.path("/"))], check=True)
    make_bundle("ultraface", container.path("/srv/bundles"))
    binds = " ".join(python_binds())
    for template, config in (("lited.service", "lited"), ("lited@.service", "%i")):
        container.path(f"/etc/systemd/system/{template}.d/90-test.conf").write_text(
            "[Service]\n"
            "ExecStart=\n"
            f"ExecStart={VENV_LITED} serve --config /etc/lited/{config}.conf\n"
            "ExecReload=\n"
            f"ExecReload={VENV_LITED} ctl --config /etc/lited/{config}.conf reload\n"
            # This Python lives under /root (pyenv): ProtectHome=yes would hide
            # it, tmpfs lets the bind below show through. tools/install_sdk.sh
            # writes the same for a venv on such a Python; one on /usr needs none.
            "ProtectHome=tmpfs\n"
            f"BindReadOnlyPaths={binds}\n")
    container.path("/etc/lited").mkdir(exist_ok=True)
    for config, stream in (("lited", "cam0"), ("cam1", "cam1")):
        container.path(f"/etc/lited/{config}.conf").write_text(json.dumps({
            "models": {"face": "/srv/bundles/ultraface"}, "status_interval": 1,
            "streams": [{"name": stream, "source": "synth://?size=320x240&fps=10", "model": "face"}]}))
    container.run(["systemd-sysusers"], check=True)
    container.run(["systemctl", "daemon-reload"], check=True)


def rings(container: Container, stream: str) -> List[str]:
    """The stream's shared-memory frame ring(s): /dev/shm/lited-<boot>-<pid>-<stream>."""
    return sorted(f"/dev/shm/{p.name}" for p in container.path("/dev/shm").glob(f"lited-*-{stream}"))


@pytest.mark.systemd
def test_lited_units_run_hardened(container: Container) -> None:
    install_lited(container)
    units = {"lited.service": "cam0", "lited@cam1.service": "cam1"}
    lited_uid = container.run(["id", "-u", "lited"], check=True).stdout.strip()
    device_gids = {container.run(["getent", "group", name], check=True).stdout.split(":")[2]
                   for name in ("video", "render")}
    try:
        for unit, stream in units.items():
            container.run(["systemctl", "start", unit], check=True, timeout=120)
            state = show(container, unit, "ActiveState", "StatusText", "MainPID")
            assert state["ActiveState"] == "active", state
            assert re.fullmatch(rf"{stream} \w+ [\d.]+ fps \| models: face 1\.0\.0", state["StatusText"]), state
            status = container.run(["cat", f"/proc/{state['MainPID']}/status"], check=True).stdout
            assert re.search(rf"^Uid:\s+{lited_uid}\s", status, re.M), status
            # Device access (/dev/video*, /dev/dri/renderD*) hangs on these groups,
            # and PrivateUsers=yes must not have cost them.
            groups = set(re.search(r"^Groups:(.*)$", status, re.M).group(1).split())
            assert device_gids <= groups, status
            wait_for(lambda s=stream: rings(container, s), 10, f"the frame ring of {stream}")
            ring = container.run(["stat", "-c", "%a %U %G", rings(container, stream)[0]], check=True).stdout
            assert ring.strip() == "440 lited lited"  # group lited may read the frame ring; not even lited writes it by name
        for state_dir in ("/var/lib/lited/state", "/var/lib/lited/cam1"):
            assert container.run(["stat", "-c", "%a %U", state_dir], check=True).stdout.strip() == "750 lited"
        # their parent stays root's: a StateDirectory=lited gave it (and the bundles in it) to lited
        assert container.run(["stat", "-c", "%U", "/var/lib/lited"], check=True).stdout.strip() == "root"

        # two instances: the second found the first's engine on its core (its claim in /dev/shm: the
        # units' ProtectProc=invisible hides each one's processes from the other) and kept its own off it
        first = [e["MESSAGE"] for e in journal(container, "lited.service", "EVENT=threads")][-1]
        second = [e["MESSAGE"] for e in journal(container, "lited@cam1.service", "EVENT=threads")][-1]
        engine = re.fullmatch(r"cores: engine of cam0 on cores ([\d,]+); lited's own threads on cores [\d,]+", first)
        assert engine, first
        assert second.endswith(f"(another lited's engines on cores {engine.group(1)})"), (first, second)

        [ready] = journal(container, "lited.service", "EVENT=ready")
        assert ready["SYSLOG_IDENTIFIER"] == "lited"
        assert "streaming" in {e["EVENT"] for e in journal(container, "lited.service", "STREAM=cam0")}

        # ExecReload is `lited ctl reload`: systemctl returns when the reload is done (it returned at
        # once, before, and 0 even for a reload that then failed) and fails when it failed
        container.run(["systemctl", "reload", "lited.service"], check=True)
        assert journal(container, "lited.service", "EVENT=reloaded"), "systemctl reload returned before the reload"
        assert show(container, "lited.service", "ActiveState")["ActiveState"] == "active"
        config = container.path("/etc/lited/lited.conf")
        good = config.read_text()
        config.write_text(good.replace('"streams"', '"streems"'))
        failed = container.run(["systemctl", "reload", "lited.service"], timeout=120)
        config.write_text(good)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        assert show(container, "lited.service", "ActiveState")["ActiveState"] == "active"
        assert journal(container, "lited.service", "EVENT=reload_failed")

        # The runtime directory is shared: stopping an instance must not take it away.
        container.run(["systemctl", "stop", "lited@cam1.service"], check=True)
        assert container.path("/run/lited").is_dir()
        container.run(["systemctl", "stop", "lited.service"], check=True)
        for unit in units:
            assert show(container, unit, "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
        assert not rings(container, "cam0") and not rings(container, "cam1")
    finally:
        container.run(["systemctl", "stop", *units])
