"""tools/install_sdk.sh: a bundle onto a board, upgraded and rolled back,
never leaving the board without a complete version to serve.

On this host, under `--prefix TMP --no-systemctl` (no container): the first
install builds the runtime venv from a copy of this checkout (a copy: the
installer reinstalls when the source changes, and the tree may be edited
while tests run), once a session; each test's prefix links to that venv, so
the installer finds the runtime installed and skips pip; unsafe zips and directories are refused naming the
entry and change nothing; a bundle that fails its self-test or does not load
is refused; a second run is harmless; an upgrade flips `current` and
`previous`; `--rollback`; SIGKILL in the middle of an install and a full disk
leave `current` on the previous complete version.

In a booted systemd (marked `systemd`, tests/nspawn.py, one container for all
of them): the real script builds /opt/lited/venv offline from a wheelhouse,
installs the units and starts the real `lited serve` on a synth:// stream; a
subscriber keeps getting results while the bundle is upgraded (a SIGHUP swap:
the new model_version, no gap over 2 s); a reload that fails is rolled back;
a hung inference loop (tests/fault_serve.py installs the runner's fault hook) gets the service killed and restarted by
systemd's watchdog.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import cv2
import pytest

from conftest import ROOT, make_bundle, need_shared, reseal, shared_onnx
from lited.bundle import load_bundle
from lited.config import read_config_file
from lited.model import Model
from nspawn import Container, booted_container, require_nspawn
from test_systemd import journal, show, wait_for

INSTALLER = ROOT / "tools" / "install_sdk.sh"
NAME = "ultraface"
BUNDLES = Path("var/lib/lited/bundles") / NAME   # under a prefix
CONFIG_PATH = f"/var/lib/lited/bundles/{NAME}/current"  # what the config names, prefix or not
REGULAR = 0o100644
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
       "HOME": os.environ.get("HOME", "/root")}
_serial = itertools.count()


# --- bundles and zips ---------------------------------------------------------

@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> dict:
    """What ultraface finds on the golden image: computed here, as tools/build_sdk.py does."""
    bundle = make_bundle(NAME, tmp_path_factory.mktemp("golden"))
    result = Model(load_bundle(bundle)).infer(cv2.imread(str(need_shared("images", "astronaut.png"))))
    assert result["detections"], "the golden image must have a face in it"
    return {"detections": result["detections"], "classes": result["classes"]}


def write_zip(path: Path, entries: list) -> Path:
    """entries: (name, data, st_mode) as a Unix zip tool would record them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


class Sdk:
    """ultraface bundles at any version, with a golden image, as directories or SDK zips."""

    def __init__(self, root: Path, golden: dict) -> None:
        self.root = root
        self.golden = golden

    def dir(self, version: str, expected: Optional[dict] = None, extra: Optional[Dict[str, bytes]] = None,
            golden: bool = True, tolerance: Optional[dict] = None) -> Path:
        bundle = make_bundle(NAME, self.root / f"{version}-{next(_serial)}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["version"] = version
        made = manifest.pop("golden", None)  # make_bundle's own: this test sets its own
        if made:
            (bundle / made["image"]).unlink()
        if golden:
            shutil.copyfile(need_shared("images", "astronaut.png"), bundle / "golden.png")
            manifest["golden"] = {"image": "golden.png", "expected": expected or self.golden,
                                  **({"tolerance": tolerance} if tolerance else {})}
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for name, data in (extra or {}).items():
            (bundle / name).write_bytes(data)
        return bundle

    def entries(self, version: str, **kwargs) -> list:
        """A bundle's files as zip entries under the top folder `ultraface/`, as build_sdk.py zips them."""
        bundle = self.dir(version, **kwargs)
        return [(f"{NAME}/{p.relative_to(bundle).as_posix()}", p.read_bytes(), REGULAR)
                for p in sorted(bundle.rglob("*")) if p.is_file()]

    def zip(self, version: str, extra_entries: tuple = (), **kwargs) -> Path:
        path = self.root / f"{NAME}-{version}-{next(_serial)}.zip"
        return write_zip(path, self.entries(version, **kwargs) + list(extra_entries))


@pytest.fixture
def sdk(tmp_path, golden) -> Sdk:
    (tmp_path / "sdk").mkdir()
    return Sdk(tmp_path / "sdk", golden)


# --- running the installer under a prefix ---------------------------------------

@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """What the installer needs of this checkout, copied: frozen for the session."""
    root = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for tree in ("runtime", "systemd"):
        shutil.copytree(ROOT / tree, root / tree, ignore=ignore)
    (root / "tools").mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "tools/install_sdk.sh", "tools/sdk_unpack.py",
                 "tools/find_python.sh"):
        shutil.copy2(ROOT / name, root / name)
    return root


def installer_argv(prefix: Prefix, *args) -> List[str]:
    return [str(prefix.installer), "--prefix", str(prefix), "--no-systemctl", *map(str, args)]


def run_install(prefix: Prefix, *args) -> subprocess.CompletedProcess:
    return subprocess.run(installer_argv(prefix, *args), capture_output=True, text=True, env=ENV, timeout=300)


def install_ok(prefix: Prefix, *args) -> List[str]:
    result = run_install(prefix, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


class Prefix(type(Path())):  # type: ignore[misc]
    """A prefix directory that knows which copy of the installer installs into it."""
    installer: Path


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a refused install, holding `words`."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("install_sdk: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def links(prefix: Prefix) -> Dict[str, str]:
    bdir = prefix / BUNDLES
    return {link: os.readlink(bdir / link) for link in ("current", "previous") if (bdir / link).is_symlink()}


def snapshot(prefix: Prefix) -> Dict[str, str]:
    """Everything the installer may change (bundles, config), for a before/after comparison."""
    out = {}
    for top in ("var/lib/lited", "etc/lited"):
        for path in sorted((prefix / top).rglob("*")):
            if path.name == ".lock":
                continue
            st = path.lstat()
            out[str(path.relative_to(prefix))] = (os.readlink(path) if path.is_symlink() else
                                                 "dir" if path.is_dir() else f"{st.st_size} {st.st_mode:o}")
    return out


def selftest_current(prefix: Prefix) -> str:
    """`lited selftest` of what `current` points to: it must be a complete, working version."""
    result = subprocess.run([str(prefix / "opt/lited/venv/bin/lited"), "selftest", "--bundle",
                             str(prefix / BUNDLES / "current")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def steps(lines: List[str]) -> List[str]:
    """The step names of the installer's output (`install_sdk: bundle: ...` -> `bundle`)."""
    return [line.split(": ")[1].split(" ")[0] for line in lines]


@dataclass
class FirstInstall:
    prefix: Prefix
    zip: Path
    result: subprocess.CompletedProcess
    seconds: float


def make_prefix(path: Path, checkout: Path) -> Prefix:
    prefix = Prefix(path)
    prefix.installer = checkout / "tools" / "install_sdk.sh"
    return prefix


_first_install: List[FirstInstall] = []  # test_readme imports the fixture: pytest would run it twice


@pytest.fixture(scope="session")
def first_install(tmp_path_factory, golden, checkout: Path) -> FirstInstall:
    """The installer on an empty prefix, runtime and all (pip from the checkout): once a session,
    also for the modules that import this fixture."""
    if not _first_install:
        work = tmp_path_factory.mktemp("first-install")
        (work / "sdk").mkdir()
        bundle_zip = Sdk(work / "sdk", golden).zip("1.0.0")
        prefix = make_prefix(work / "root", checkout)
        started = time.monotonic()
        result = run_install(prefix, bundle_zip)
        _first_install.append(FirstInstall(prefix, bundle_zip, result, time.monotonic() - started))
    return _first_install[0]


@pytest.fixture
def prefix(tmp_path, first_install: FirstInstall, checkout: Path) -> Prefix:
    """An empty prefix whose venv is the session's: the installer sees it installed."""
    assert first_install.result.returncode == 0, first_install.result.stdout + first_install.result.stderr
    root = make_prefix(tmp_path / "root", checkout)
    (root / "opt/lited").mkdir(parents=True)
    (root / "opt/lited/venv").symlink_to(first_install.prefix / "opt/lited/venv")
    return root


# --- under a prefix --------------------------------------------------------------

def test_first_install_lays_out_runtime_units_config_and_bundle(first_install: FirstInstall) -> None:
    result, root = first_install.result, first_install.prefix
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    print(f"first install: {first_install.seconds:.1f} s\n" + result.stdout)
    # the bundle is checked first; a line says so before each step that takes a while
    assert steps(lines) == ["bundle", "runtime", "runtime", "units", "bundle", "bundle", "bundle", "bundle",
                            "current", "config", "service", "done", "next"], result.stdout
    assert lines[1].startswith(f"install_sdk: runtime: installing lited 0.1.0 into {root}/opt/lited/venv")
    assert lines[2].startswith(f"install_sdk: runtime: lited 0.1.0 installed in {root}/opt/lited/venv")
    assert f"bundle: selftest {NAME} 1.0.0: ok" in lines[6]
    assert lines[8] == "install_sdk: current -> 1.0.0"
    assert lines[10] == "install_sdk: service: not touched (--no-systemctl)"
    assert lines[12].startswith(f"install_sdk: next: no stream uses {NAME} yet: add one to {root}/etc/lited/lited.conf")
    assert result.stderr == ""

    # A real install of lited, not a link to this checkout.
    venv = root / "opt/lited/venv"
    where = subprocess.run([str(venv / "bin/python"), "-c", "import lited; print(lited.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(f"{venv}/lib/"), where
    units = root / "etc/systemd/system"
    for unit in ("lited.service", "lited@.service"):
        assert (units / unit).read_text() == (root.installer.parent.parent / "systemd" / unit).read_text()
        assert (units / f"{unit}.d/10-lited.conf").is_file()
    # This Python is pyenv's, under /root: the units get the drop-in that lets them see it.
    if Path(sys.base_prefix).resolve().parts[1] in ("root", "home"):
        assert "ProtectHome=tmpfs" in (units / "lited.service.d/30-python.conf").read_text()
    config_text = (root / "etc/lited/lited.conf").read_text()
    assert config_text.startswith("# lited's config") and "#   - name: cam0" in config_text  # YAML, commented
    assert read_config_file(root / "etc/lited/lited.conf") == {"runtime_dir": "/run/lited",
                                                                "models": {NAME: CONFIG_PATH}, "streams": []}
    assert os.readlink(root / "usr/local/bin/lited") == "/opt/lited/venv/bin/lited"
    assert links(root) == {"current": "1.0.0"}
    version_dir = root / BUNDLES / "1.0.0"
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o755  # the daemon's user reads it
    assert {stat.S_IMODE(p.stat().st_mode) for p in version_dir.iterdir()} == {0o644}
    assert not list((root / BUNDLES).glob(".*"))  # no temp dirs or links left
    assert "ok" in selftest_current(root)


def test_second_run_is_harmless_and_fast(first_install: FirstInstall) -> None:
    assert first_install.result.returncode == 0, first_install.result.stderr
    before = snapshot(first_install.prefix)
    started = time.monotonic()
    lines = install_ok(first_install.prefix, first_install.zip)
    took = time.monotonic() - started
    print(f"second run: {took:.1f} s (first: {first_install.seconds:.1f} s)")
    assert f"install_sdk: runtime: lited 0.1.0 already installed in {first_install.prefix}/opt/lited/venv" in lines
    assert f"install_sdk: bundle: {NAME} 1.0.0 already installed ({first_install.prefix}/{BUNDLES}/current)" in lines
    assert any("already has model" in line for line in lines)
    assert snapshot(first_install.prefix) == before
    assert took < 5


def test_upgrade_flips_current_and_previous_and_rollback_returns(prefix: Prefix, sdk: Sdk) -> None:
    config = prefix / "etc/lited/lited.conf"
    config.parent.mkdir(parents=True)
    user_config = {"models": {"det": "/srv/det"}, "status_interval": 2,
                   "streams": [{"name": "gate", "source": "synth://?size=320x240&fps=5", "model": "det"}]}
    config.write_text(json.dumps(user_config))
    install_ok(prefix, sdk.zip("1.0.0"))
    # The model is added; the user's streams and settings stay as they were.
    assert json.loads(config.read_text()) == {**user_config, "models": {"det": "/srv/det", NAME: CONFIG_PATH}}

    lines = install_ok(prefix, sdk.dir("1.1.0"))  # a bundle directory works as a zip does
    assert "install_sdk: current -> 1.1.0 (previous -> 1.0.0)" in lines
    assert links(prefix) == {"current": "1.1.0", "previous": "1.0.0"}
    lines = install_ok(prefix, sdk.zip("1.2.0"))
    assert links(prefix) == {"current": "1.2.0", "previous": "1.1.0"}
    assert f"install_sdk: pruned: {NAME} 1.0.0" in lines  # only current and previous are kept
    assert sorted(p.name for p in (prefix / BUNDLES).iterdir() if not p.name.startswith(".")) == \
        ["1.1.0", "1.2.0", "current", "previous"]

    lines = install_ok(prefix, "--rollback", NAME)
    assert lines == ["install_sdk: current -> 1.1.0 (previous -> 1.2.0)", "install_sdk: service: not touched (--no-systemctl)",
                     f"install_sdk: done: {NAME} 1.1.0"]
    assert "1.1.0: ok" in selftest_current(prefix)
    install_ok(prefix, "--rollback", NAME)  # and back again
    assert links(prefix) == {"current": "1.2.0", "previous": "1.1.0"}

    # The same version with other content is refused: versions must mean something.
    before = snapshot(prefix)
    other = sdk.zip("1.2.0", tolerance={"box_px": 8, "score": 0.05})
    refused(run_install(prefix, other), "1.2.0 is installed (current) with a different manifest.json")
    # labels change what every result says: sealed, one changed under the same manifest fails its checksum
    labels = (prefix / BUNDLES / "1.2.0/labels.txt").read_bytes()
    other = sdk.zip("1.2.0", extra={"labels.txt": labels.replace(b"face", b"head")})
    assert b"face" in labels
    refused(run_install(prefix, other), "1.2.0 is installed (current) with a different labels.txt, whose sha256 is "
                                        "not its manifest's (this bundle's copy is damaged, or was changed after "
                                        "sealing): nothing changed")
    refused(run_install(prefix, sdk.zip("1.2.0", extra={"NOTES.txt": b"x"})), "with a file more (NOTES.txt)")
    # a sealed file changed under the same manifest: said as the checksum it fails (the examples audit)
    model = sorted((prefix / BUNDLES / "1.2.0").glob("*.nb"))[0]
    flipped = bytearray(model.read_bytes())
    flipped[-1] ^= 1
    refused(run_install(prefix, sdk.zip("1.2.0", extra={model.name: bytes(flipped)})),
            f"with a different {model.name}, whose sha256 is not its manifest's (this bundle's copy is damaged, or "
            "was changed after sealing): nothing changed")
    # previous too: a rollback must land on what was installed under that version
    other = sdk.zip("1.1.0", tolerance={"box_px": 8, "score": 0.05})
    refused(run_install(prefix, other), "1.1.0 is installed (previous) with a different manifest")
    refused(run_install(prefix, "--rollback", "nothing"), "nothing is not installed")
    assert snapshot(prefix) == before
    # the board's copy damaged, the bundle good: the board's copy is named, not the bundle
    installed = prefix / BUNDLES / "1.2.0" / model.name
    good = installed.read_bytes()
    installed.write_bytes(bytes(flipped))
    refused(run_install(prefix, sdk.zip("1.2.0")), f"with a {model.name} whose installed copy fails its manifest's "
                                                   "sha256 (damaged on this board: install the bundle as a new version")
    installed.write_bytes(good)

    # Older versions install too, and say so; previous given again is unpacked anew.
    lines = install_ok(prefix, sdk.zip("1.1.0"))
    assert "install_sdk: bundle: 1.1.0 is the previous version: it becomes current again " \
           f"(--rollback {NAME} does that without unpacking)" in lines
    lines = install_ok(prefix, sdk.zip("1.0.10"))
    assert "install_sdk: bundle: 1.0.10 is older than current 1.1.0: a downgrade" in lines
    assert links(prefix) == {"current": "1.0.10", "previous": "1.1.0"}
    lines = install_ok(prefix, sdk.zip("1.2.0"))
    assert not any("downgrade" in line for line in lines), lines
    assert links(prefix) == {"current": "1.2.0", "previous": "1.0.10"}

    # lited@cam9.service: its own config; the bundle (shared by name) is there already.
    lines = install_ok(prefix, "--instance", "cam9", sdk.zip("1.2.0"))
    assert f"install_sdk: bundle: {NAME} 1.2.0 already installed ({prefix}/{BUNDLES}/current)" in lines
    # its runtime_dir is the unit's RuntimeDirectory: `lited ctl --config` asked lited.service instead
    assert read_config_file(prefix / "etc/lited/cam9.conf") == {"runtime_dir": "/run/lited/cam9",
                                                                "models": {NAME: CONFIG_PATH}, "streams": []}
    assert lines[-1].endswith("`lited ctl --config /etc/lited/cam9.conf status` shows what is served"), lines[-1]


def test_unsafe_sources_are_refused_and_change_nothing(prefix: Prefix, sdk: Sdk, tmp_path: Path) -> None:
    install_ok(prefix, sdk.zip("1.0.0"))
    before = snapshot(prefix)
    good = sdk.entries("1.1.0")
    evil = {
        "dotdot": ([*good, (f"{NAME}/../evil", b"x", REGULAR)], f"'{NAME}/../evil': '..' leaves the bundle"),
        "absolute": ([*good, (str(tmp_path / "evil"), b"x", REGULAR)], f"'{tmp_path}/evil': absolute path"),
        "symlink": ([*good, (f"{NAME}/passwd", b"/etc/passwd", 0o120777)], f"'{NAME}/passwd': symlink"),
        "device": ([*good, (f"{NAME}/sda", b"", 0o060600)], f"'{NAME}/sda': not a regular file"),
        "backslash": ([*good, (f"{NAME}\\..\\evil", b"x", REGULAR)], "backslash in name"),
        "entries": ([*good, *((f"{NAME}/f{i}", b"", REGULAR) for i in range(10000))], "more than 10000 entries"),
        "two tops": ([*good, ("other/manifest.json", b"{}", REGULAR)], "no manifest.json at the top"),
    }
    for case, (entries, message) in evil.items():
        bad = write_zip(tmp_path / f"{case}.zip", entries)
        line = refused(run_install(prefix, bad), "refused", message)
        print(f"{case}: {line}")
        assert snapshot(prefix) == before, case

    # A zip whose header claims 3 GiB (a zip bomb lies the other way; both are bounded).
    big = write_zip(tmp_path / "big.zip", [*good, (f"{NAME}/huge.bin", b"x", REGULAR)])
    data = bytearray(big.read_bytes())
    size_at = data.rfind(b"PK\x01\x02") + 24  # uncompressed size in the last central directory entry
    data[size_at:size_at + 4] = (3 << 30).to_bytes(4, "little")
    big.write_bytes(data)
    refused(run_install(prefix, big), "refused", f"'{NAME}/huge.bin': uncompressed size passes 2048 MiB")
    (tmp_path / "junk.zip").write_text("not a zip")
    refused(run_install(prefix, tmp_path / "junk.zip"), "refused", "not a zip file")
    # An entry damaged inside the zip (a byte flipped on the way): named, not zlib's words alone.
    damaged = write_zip(tmp_path / "damaged.zip", [*good, (f"{NAME}/filler.bin", os.urandom(1 << 16), REGULAR)])
    with zipfile.ZipFile(damaged) as zf:
        info = zf.getinfo(f"{NAME}/filler.bin")
    data = bytearray(damaged.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    damaged.write_bytes(data)
    refused(run_install(prefix, damaged), "refused", "damaged.zip: entry 'filler.bin': damaged in the zip")
    assert snapshot(prefix) == before

    # A directory is checked the same way: no links, hard links or special files.
    for case, make in {"symlink": lambda d: (d / "passwd").symlink_to("/etc/passwd"),
                       "hard link": lambda d: os.link(d / "labels.txt", tmp_path / "labels-link"),
                       "not a regular file": lambda d: os.mkfifo(d / "fifo")}.items():
        bundle = sdk.dir("1.1.0")
        make(bundle)
        refused(run_install(prefix, bundle), "refused", case)
        assert snapshot(prefix) == before, case
    assert not (tmp_path / "evil").exists() and not (prefix / "var/lib/lited/evil").exists()
    assert links(prefix) == {"current": "1.0.0"}


def test_no_python_310_is_said_in_one_line(checkout: Path, tmp_path: Path) -> None:
    """With no CPython 3.10 to be found, the installer exited 1 and said nothing: the message went
    to a file of the bundle check's, deleted on exit."""
    path = "/usr/bin:/bin"
    if any(subprocess.run([f"{d}/{exe}", "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 10))"],
                          capture_output=True).returncode == 0
           for d in path.split(":") for exe in ("python3.10", "python3") if os.path.exists(f"{d}/{exe}")):
        pytest.skip("this machine has a CPython 3.10 in /usr/bin")
    result = subprocess.run(["bash", str(checkout / "tools" / "install_sdk.sh"), "--prefix", str(tmp_path / "root"),
                             str(checkout / "sdk_template" / "demo_ppocrv4")], capture_output=True, text=True,
                            env={"PATH": path, "HOME": str(tmp_path)}, timeout=60)
    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
    assert result.stderr == ("install_sdk: error: CPython 3.10 not found (Paddle Lite wheels exist only for CPython "
                             "<= 3.10 on x86_64): install python3.10, give --python FILE, or run the bundle's ONNX "
                             "with --engines openvino (or onnxruntime) on python3\n")


def test_p09_help_is_usage_on_stdout_and_bad_usage_exits_2(checkout: Path) -> None:
    installer = checkout / "tools" / "install_sdk.sh"
    result = subprocess.run([str(installer), "--help"], capture_output=True, text=True, env=ENV, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("Install an SDK bundle on a board") and "--board NAME" in result.stdout
    result = subprocess.run([str(installer), "--bogus"], capture_output=True, text=True, env=ENV, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("install_sdk: unknown option --bogus\nInstall an SDK bundle")
    for args, message in ((["--python", "/nonexistent", "x.zip"], "--python /nonexistent: no such program"),
                          (["--instance", "../x", "x.zip"], "--instance ../x: letters, digits"),
                          (["--instance", "", "x.zip"], "--instance: empty"),
                          (["--wheels", "/nonexistent", "x.zip"], "--wheels /nonexistent: no such directory"),
                          (["--paddlelite-wheel", "/no.whl", "x.zip"], "--paddlelite-wheel /no.whl: no such file"),
                          (["--timeout", "abc", "x.zip"], "--timeout abc: whole seconds above 0"),
                          (["--timeout", "-5", "x.zip"], "--timeout -5: whole seconds above 0"),
                          (["--rollback", "../b"], "--rollback ../b: not a bundle name"),
                          (["x.zip", "--prefix"], "--prefix: needs a value")):
        result = subprocess.run([str(installer), *args], capture_output=True, text=True, env=ENV, timeout=30)
        assert result.returncode == 2 and result.stderr == f"install_sdk: error: {message}" + \
            result.stderr.split(message, 1)[-1] and result.stderr.count("\n") == 1, (args, result.stderr)


def test_p09_a_bad_zip_is_refused_before_the_runtime_and_units_are_touched(tmp_path: Path, checkout: Path) -> None:
    root = make_prefix(tmp_path / "root", checkout)  # empty: no runtime yet, which would take minutes
    (tmp_path / "junk.zip").write_text("not a zip")
    started = time.monotonic()
    result = run_install(root, tmp_path / "junk.zip")
    refused(result, "refused", "not a zip file")
    assert result.stdout == "" and time.monotonic() - started < 30
    assert not (root / "opt").exists() and not (root / "etc").exists()
    assert not (root / "var" / "lib" / "lited").exists()  # its lock file was made before the check (an audit)


def test_a_venv_of_another_python_is_made_anew(tmp_path: Path, checkout: Path, sdk: Sdk) -> None:
    """A run with --python of a version Paddle Lite has no wheel for fails at pip and leaves that
    venv; the next run, with the right interpreter, makes the venv anew instead of failing on it."""
    other = shutil.which("python3.11") or "/usr/bin/python3"
    right = f"{Path(sys.base_prefix).resolve()}/bin/python3.10"
    version = "import sys; print(sys.version_info[:2])"
    versions = [subprocess.run([p, "-c", version], capture_output=True, text=True).stdout for p in (other, right)]
    if versions[0] == versions[1]:
        pytest.skip(f"{other} is Python 3.10 too: no other version here")
    root = make_prefix(tmp_path / "root", checkout)
    venv = root / "opt/lited/venv"
    subprocess.run([other, "-m", "venv", str(venv)], check=True)  # the failed run's leftover
    wheels = tmp_path / "wheels"  # offline, and a lited wheel pip refuses: the run stops right after the venv
    wheels.mkdir()
    (wheels / "lited-0.0.0-py3-none-any.whl").write_bytes(b"not a wheel")
    result = run_install(root, "--wheels", wheels, "--python", right, sdk.zip("1.0.0"))
    assert result.returncode == 1 and "pip install from" in result.stderr, result.stdout + result.stderr
    made = subprocess.run([str(venv / "bin/python"), "-c", version], capture_output=True, text=True).stdout
    assert made == versions[1], (made, versions)


def test_a_rerun_prunes_what_a_killed_run_left_and_says_what_it_leaves(prefix: Prefix, sdk: Sdk) -> None:
    """A run killed between its flip and its prune leaves an older version: the next run, though
    the bundle is already installed, prunes it. A `lited` on PATH that is not ours, and a --python
    the installed runtime is not made with, are left, each with a line."""
    install_ok(prefix, sdk.zip("1.0.0"))
    install_ok(prefix, sdk.zip("1.1.0"))
    shutil.copytree(prefix / BUNDLES / "1.0.0", prefix / BUNDLES / "0.9.0")  # what the killed run left
    command = prefix / "usr/local/bin/lited"
    command.unlink()
    command.write_text("#!/bin/sh\necho another lited\n")
    other = shutil.which("python3.11") or "/usr/bin/python3"
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    other_version = subprocess.run([other, "-c", version], capture_output=True, text=True).stdout.strip()
    lines = install_ok(prefix, "--python", other, sdk.zip("1.1.0"))
    assert f"install_sdk: bundle: {NAME} 1.1.0 already installed ({prefix}/{BUNDLES}/current)" in lines
    assert f"install_sdk: pruned: {NAME} 0.9.0" in lines
    assert sorted(p.name for p in (prefix / BUNDLES).iterdir() if not p.name.startswith(".")) == \
        ["1.0.0", "1.1.0", "current", "previous"]
    assert f"install_sdk: runtime: {prefix}/usr/local/bin/lited is not lited's link (left as it is): " \
           "run /opt/lited/venv/bin/lited for lited" in lines
    assert command.read_text() == "#!/bin/sh\necho another lited\n"
    if other_version != "3.10":
        assert f"install_sdk: runtime: lited 0.1.0 already installed in {prefix}/opt/lited/venv (Python 3.10; " \
               f"--python {other} not used: remove {prefix}/opt/lited/venv to change it)" in lines, lines


CONFIG_EDITS = [  # (the user's config, what the installer leaves): only the model is added
    ("# mine\nstreams: []  # none yet\n", "# mine\nstreams: []  # none yet\nmodels:\n  m: /var/m\n"),
    ("models:\nstreams: []\n", "models:\n  m: /var/m\nstreams: []\n"),
    ("models:  # the bundles\n    det: /srv/det  # mine\n", "models:  # the bundles\n    m: /var/m\n    det: /srv/det  # mine\n"),
    ('{"models": {"det": "/srv/det"}, "streams": []}\n', '{"models": {"det": "/srv/det", "m": "/var/m"}, "streams": []}\n'),
    ('{\n    "streams": []\n}\n', '{\n    "streams": [],\n    "models": {\n        "m": "/var/m"\n    }\n}\n'),
]


@pytest.mark.parametrize("before,after", CONFIG_EDITS)
def test_the_config_gets_the_model_and_keeps_its_layout(tmp_path: Path, before: str, after: str) -> None:
    """What install_sdk.sh runs on an existing config (tools/sdk_unpack.py config)."""
    conf = tmp_path / ("lited.conf")
    conf.write_text(before)
    out = subprocess.run([sys.executable, str(ROOT / "tools/sdk_unpack.py"), "config", str(conf), "m", "/var/m"],
                         capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(ROOT / "runtime")}, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, f"added 0 added model m to {conf}\n", "")
    assert conf.read_text() == after


def test_a_config_the_model_cannot_be_added_to_is_named_once(tmp_path: Path) -> None:
    conf = tmp_path / "lited.conf"
    for text, why in (("models: [det]\n", "'models' is not a mapping; fix it or move it away"),
                      ("models: {det: /srv/det}\n", "add `m: /var/m` under models: by hand")):
        conf.write_text(text)
        out = subprocess.run([sys.executable, str(ROOT / "tools/sdk_unpack.py"), "config", str(conf), "m", "/var/m"],
                             capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(ROOT / "runtime")}, timeout=60)
        assert out.returncode == 1 and out.stderr.startswith(f"{conf}: ") and out.stderr.count(str(conf)) == 1, out.stderr
        assert why in out.stderr and conf.read_text() == text


def test_p09_after_an_install_it_says_what_to_do_next(first_install: FirstInstall) -> None:
    root = first_install.prefix
    last = first_install.result.stdout.splitlines()[-1]
    # Under --prefix the config names the board's paths: the check it names is the board's, and the
    # service was not started (--no-systemctl), so a reload alone would not start it.
    assert last == (f"install_sdk: next: no stream uses {NAME} yet: add one to {root}/etc/lited/lited.conf "
                    "(docs/config.md), on the board, check it with `lited config check --config "
                    "/etc/lited/lited.conf`, then `systemctl enable lited.service` and "
                    "`systemctl reload-or-restart lited.service`; `lited ctl status` shows what is served")
    # and the config it points to says how, in comments, naming its path on the board
    text = (root / "etc/lited/lited.conf").read_text()
    assert "# streams:\n#   - name: cam0\n" in text
    assert "#   lited config check --config /etc/lited/lited.conf\n" in text, text
    check = subprocess.run([str(root / "opt/lited/venv/bin/lited"), "config", "check", "--config",
                            str(root / "etc/lited/lited.conf")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 2  # its bundle path is /var/lib/..., as on the board, not under the prefix
    assert f"models.{NAME}: bundle /var/lib/lited/bundles/{NAME}/current" in check.stderr, check.stderr


def test_bundle_failing_its_selftest_or_not_loading_is_refused(prefix: Prefix, sdk: Sdk) -> None:
    install_ok(prefix, sdk.zip("1.0.0"))
    before = snapshot(prefix)
    moved = [{**d, "box": [v + 50 for v in d["box"]]} for d in sdk.golden["detections"]]
    result = run_install(prefix, sdk.zip("1.1.0", expected={**sdk.golden, "detections": moved}))
    line = refused(result, f"{NAME} 1.1.0 failed its self-test, 1.0.0 stays current", "FAILED", "not found")
    print(line)
    assert "current ->" not in result.stdout
    assert snapshot(prefix) == before

    # Without a golden image it is refused, before anything else is done...
    bundle = sdk.dir("1.1.0", golden=False)
    result = run_install(prefix, bundle)
    refused(result, f"{NAME} 1.1.0 has no golden image to self-test", "--no-selftest")
    assert result.stdout == ""
    # ... and with --no-selftest it must at least load, which is checked first: a truncated
    # model, a golden image or a model file missing, all at once, before anything is done.
    model = bundle / "model_x86.nb"
    model.write_bytes(model.read_bytes()[:1000])
    result = run_install(prefix, "--no-selftest", bundle)
    refused(result, "model_x86.nb", "truncated")
    assert "bundle:" not in result.stdout.replace("bundle: " + NAME + " 1.1.0 checked", "")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["golden"] = {"image": "golden.png", "expected": {"detections": [], "classes": []}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    refused(run_install(prefix, "--no-selftest", bundle), "golden.image: golden.png: missing")
    assert snapshot(prefix) == before
    assert "1.0.0: ok" in selftest_current(prefix)


def onnx_only(sdk: Sdk, version: str) -> Path:
    """An ultraface bundle listing only its ONNX, for OpenVINO and onnxruntime."""
    bundle = sdk.dir(version)
    (bundle / "model_x86.nb").unlink()
    shutil.copy(shared_onnx(NAME), bundle / "model.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"]["x86"] = [{"file": "model.onnx", "engines": ["openvino", "onnxruntime"]}]
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "schema": 2}))
    reseal(bundle)
    return bundle


def test_a_bundle_no_engine_here_runs_is_refused_before_the_units_are_touched(prefix: Prefix, sdk: Sdk) -> None:
    """The build audit: a bundle listing only its ONNX, for engines this runtime lacks (it has
    Paddle Lite alone), passed the check; the command and the units were written and the bundle
    unpacked before its self-test said none of its engines was installed."""
    bundle = onnx_only(sdk, "1.0.0")
    result = run_install(prefix, bundle)
    refused(result, "models.x86: no engine installed here for openvino, onnxruntime (install openvino, onnxruntime)")
    assert not (prefix / "etc").exists() and not (prefix / "usr").exists() and not (prefix / BUNDLES).exists()


def test_a_new_runtime_without_an_engine_the_bundle_lists_is_refused_before_pip(tmp_path: Path, checkout: Path,
                                                                                 sdk: Sdk) -> None:
    """A first install of an ONNX-only bundle without --engines made a Paddle Lite runtime (a minute of
    pip) before the bundle's check said none of its engines was installed."""
    root = make_prefix(tmp_path / "root", checkout)
    result = subprocess.run(installer_argv(root, onnx_only(sdk, "1.0.0")), capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert refused(result) == f"install_sdk: error: {NAME} lists files for openvino, onnxruntime only: install one " \
                              "of those with it (--engines openvino or onnxruntime)"
    assert not (root / "opt").exists() and not (root / "etc").exists()


def test_a_python_newer_than_paddle_lites_wheels_installs_with_another_engine(tmp_path: Path, checkout: Path,
                                                                               sdk: Sdk) -> None:
    """On x86_64 under CPython 3.11+ (Ubuntu 24.04, Debian 12) pip failed on `paddlelite==2.13rc0`,
    for which PyPI has no wheel there, and the installer, finding no 3.10, stopped: an Intel board
    could not install lited for OpenVINO. Now the system's python3 with --engines, Paddle Lite left
    out; without --engines, one line before pip."""
    python3 = shutil.which("python3", path="/usr/bin:/bin")
    version = "import sys; print('%d.%d' % sys.version_info[:2])"
    found = subprocess.run([python3, "-c", version], capture_output=True, text=True).stdout.strip() if python3 else ""
    if found in ("", "3.9", "3.10") or subprocess.run([python3, "-c", "import ensurepip, venv"]).returncode:
        pytest.skip(f"no python3 newer than Paddle Lite's wheels, with venv, in /usr/bin (found {found or 'none'})")
    bundle = onnx_only(sdk, "1.0.0")
    root = make_prefix(tmp_path / "root", checkout)
    # no 3.10 to be found: pyenv's hidden, PATH without it
    env = {**ENV, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYENV_ROOT": str(tmp_path / "no-pyenv")}
    run = subprocess.run(installer_argv(root, "--python", python3, bundle), capture_output=True, text=True,
                         env=env, timeout=300)
    no_lite = f"install_sdk: error: PyPI has no Paddle Lite wheel for x86_64, CPython {found}"
    assert (run.returncode, run.stderr) == (1, f"{no_lite}: give --paddlelite-wheel FILE (built for it: "
                                               f"docs/install.md), or install another engine {NAME} lists "
                                               "(--engines openvino or onnxruntime)\n"), run.stdout + run.stderr
    assert not (root / "opt").exists() and not (root / "etc").exists()
    # a bundle of .nb files only was told of its ONNX (it has none), and with --engines refused after pip
    for engines in ((), ("--engines", "openvino")):
        run = subprocess.run(installer_argv(root, "--python", python3, *engines, sdk.dir("0.9.0")),
                             capture_output=True, text=True, env=env, timeout=300)
        assert (run.returncode, run.stderr) == (1, f"{no_lite}, and {NAME} lists Paddle Lite files only: give "
                                                   "--paddlelite-wheel FILE (built for it: docs/install.md), or build "
                                                   "the bundle with its ONNX too, for --engines openvino or "
                                                   "onnxruntime (docs/build_sdk.md)\n"), run.stdout + run.stderr
        assert not (root / "opt").exists() and not (root / "etc").exists()
    run = subprocess.run(installer_argv(root, "--engines", "openvino", bundle), capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"install_sdk: bundle: selftest {NAME} 1.0.0: ok on openvino (1 file/engine pair)" in run.stdout, run.stdout
    venv_python = root / "opt/lited/venv/bin/python"
    assert subprocess.run([venv_python, "-c", version], capture_output=True, text=True).stdout.strip() == found
    assert subprocess.run([venv_python, "-c", "import paddlelite"], capture_output=True).returncode == 1
    inspect = subprocess.run([root / "opt/lited/venv/bin/lited", "inspect", "--bundle", root / BUNDLES / "current"],
                             capture_output=True, text=True, timeout=60)
    assert "on openvino" in inspect.stdout and "paddle_lite" not in inspect.stdout, inspect.stdout + inspect.stderr
    # an upgrade, as docs/install.md writes it: no options (they were refused, the runtime counted as another)
    run = subprocess.run(installer_argv(root, onnx_only(sdk, "1.1.0")), capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"install_sdk: runtime: lited 0.1.0 [openvino] already installed in {root}/opt/lited/venv" in run.stdout, \
        run.stdout
    assert f"install_sdk: current -> 1.1.0 (previous -> 1.0.0)" in run.stdout, run.stdout


@pytest.fixture(scope="module")
def big_zip(tmp_path_factory, golden) -> Path:
    """Version 1.1.0 with 160 MB of padding: unpacking it takes long enough to be caught in the act."""
    work = tmp_path_factory.mktemp("big")
    return Sdk(work, golden).zip("1.1.0", extra_entries=[(f"{NAME}/padding.bin", bytes(160 << 20), REGULAR)])


def test_sigkill_midway_leaves_the_previous_version_current(prefix: Prefix, sdk: Sdk, big_zip: Path) -> None:
    install_ok(prefix, sdk.zip("1.0.0"))
    bdir = prefix / BUNDLES

    def caught_unpacking(proc: subprocess.Popen) -> bool:
        return any(p.stat().st_size > 0 for p in bdir.glob(".unpack-*/padding.bin"))

    def caught_selftesting(proc: subprocess.Popen) -> bool:  # the line before the self-test starts
        return proc.stdout.readline().startswith("install_sdk: bundle: unpacked into")

    for point, caught in (("unpacking", caught_unpacking), ("self-testing", caught_selftesting)):
        proc = subprocess.Popen(installer_argv(prefix, big_zip), stdout=subprocess.PIPE, text=True, env=ENV,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not caught(proc):
                assert proc.poll() is None and time.monotonic() < deadline, f"never caught it {point}"
                time.sleep(0.002)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the installer and its children, like a power cut
            proc.wait()
            proc.stdout.close()
        assert links(prefix) == {"current": "1.0.0"}, point
        assert not (bdir / "1.1.0").exists(), point
        assert "1.0.0: ok" in selftest_current(prefix)
        assert list(bdir.glob(".unpack-*")), f"killed {point}, but the temp dir is gone: not killed midway?"

    lines = install_ok(prefix, big_zip)  # the next run clears what the killed ones left
    assert "install_sdk: current -> 1.1.0 (previous -> 1.0.0)" in lines
    assert not list(bdir.glob(".unpack-*"))


def test_disk_full_while_unpacking_leaves_the_previous_version_current(prefix: Prefix, sdk: Sdk,
                                                                       big_zip: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    state = prefix / "var/lib/lited"
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "lited-test-full", str(state)], check=True)
    try:
        install_ok(prefix, sdk.zip("1.0.0"))
        free = shutil.disk_usage(state).free
        result = run_install(prefix, big_zip)
        refused(result, "unpacking failed, 1.0.0 stays current", "No space left on device")
        assert links(prefix) == {"current": "1.0.0"}
        assert not list((state / "bundles" / NAME).glob(".unpack-*"))
        assert shutil.disk_usage(state).free == free  # the partial copy is gone
        assert "1.0.0: ok" in selftest_current(prefix)
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=True)


# --- on a booted systemd -------------------------------------------------------

BOARD_CONFIG = {"models": {NAME: CONFIG_PATH}, "status_interval": 1,
                "streams": [{"name": "cam0", "source": "synth://?size=320x240&fps=10", "model": NAME}]}
VENV = "/opt/lited/venv"
UNIT = "lited.service"

# Run as root inside the container (outside the unit's sandbox): one JSON line per result.
SUBSCRIBER = """
import json, sys, time
from lited.client import Subscriber
with Subscriber("ipc:///run/lited/pub.sock", streams=["cam0"]) as sub, open(sys.argv[1], "w", buffering=1) as out:
    while True:
        msg = sub.recv(timeout=10)
        if msg is not None and msg["type"] == "result":
            out.write(json.dumps({"t": time.monotonic(), "seq": msg["seq"], "version": msg["model_version"]}) + "\\n")
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """lited and its dependencies as wheels: the container has no network."""
    work = tmp_path_factory.mktemp("wheelhouse")
    src = work / "src"
    shutil.copytree(ROOT / "runtime", src / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                             "-w", str(work / "wheels"), str(src)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return work / "wheels"


@dataclass
class Board:
    container: Container
    zips: Dict[str, str]                 # version -> path inside the container
    first: subprocess.CompletedProcess   # the first install

    def install(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The real installer in the container, offline, as root (not under a prefix)."""
        python = f"{Path(sys.base_prefix).resolve()}/bin/python3.10"
        return self.container.run([str(INSTALLER), "--wheels", "/srv/wheels", "--python", python, *args],
                                  timeout=timeout)

    def current(self) -> str:
        return os.readlink(self.container.path(f"/{BUNDLES}/current"))

    def served(self) -> str:
        """The version the daemon says it serves (`lited ctl status`)."""
        out = self.container.run([f"{VENV}/bin/lited", "ctl", "status", "--endpoint", "ipc:///run/lited/req.sock",
                                  "--timeout", "10", "--json"], check=True).stdout
        return json.loads(out)["models"][NAME]["version"]


@pytest.fixture(scope="module")
def board(tmp_path_factory, wheelhouse: Path, golden: dict) -> Iterator[Board]:
    """A booted container with lited installed from scratch by the real script, on a synth:// stream."""
    require_nspawn()
    work = tmp_path_factory.mktemp("board-sdk")
    made = Sdk(work, golden)
    zips = {v: f"/srv/sdk/{made.zip(v).name}" for v in ("1.0.0", "1.1.0", "1.2.0")}
    binds = [str(ROOT), str(Path(sys.base_prefix).resolve()), f"{wheelhouse}:/srv/wheels", f"{work}:/srv/sdk"]
    with booted_container(binds=binds) as container:
        container.path("/etc/lited").mkdir(parents=True, exist_ok=True)
        container.path("/etc/lited/lited.conf").write_text(json.dumps(BOARD_CONFIG))
        board = Board(container, zips, subprocess.CompletedProcess([], 0))
        started = time.monotonic()
        board.first = board.install(zips["1.0.0"])
        print(f"first install in the container: {time.monotonic() - started:.1f} s")
        yield board


@pytest.mark.systemd
def test_board_install_starts_the_real_daemon(board: Board) -> None:
    first = board.first
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert any(line.startswith(f"install_sdk: runtime: lited 0.1.0 installed in {VENV}") for line in lines), first.stdout
    assert any(line.startswith(f"install_sdk: units: {UNIT} in /etc/systemd/system, board profile x86 (20-board.conf)")
               for line in lines), first.stdout
    assert lines[-2] == f"install_sdk: service: started (and enabled) {UNIT}, serving {NAME} 1.0.0", first.stdout
    c = board.container
    state = show(c, UNIT, "ActiveState", "UnitFileState", "MainPID", "NRestarts")
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled", state
    cmdline = c.run(["cat", f"/proc/{state['MainPID']}/cmdline"], check=True).stdout.split("\0")
    assert cmdline[1:4] == [f"{VENV}/bin/lited", "serve", "--config"], cmdline
    uid = c.run(["id", "-u", "lited"], check=True).stdout.strip()
    assert f"Uid:\t{uid}\t" in c.run(["cat", f"/proc/{state['MainPID']}/status"], check=True).stdout
    # the service reads its bundles and cannot change them: systemd chowned a StateDirectory=lited
    # (bundles included) to the service user at its first start
    owners = c.run(["stat", "-c", "%U", "/var/lib/lited", f"/var/lib/lited/bundles/{NAME}",
                    f"/var/lib/lited/bundles/{NAME}/1.0.0"], check=True).stdout.split()
    assert owners == ["root"] * 3, owners

    # STATUS= comes every second (status_interval): the stream, its state and fps, the model.
    samples = [show(c, UNIT, "StatusText")["StatusText"]]
    wait_for(lambda: samples.append(show(c, UNIT, "StatusText")["StatusText"]) or
             samples[-1].startswith("cam0 streaming 10.0 fps"), 10, "the stream at 10 fps in the status")
    print(samples)
    assert all(re.fullmatch(r"cam0 \w+ \d+\.\d fps \| models: ultraface 1\.0\.0", t) for t in samples), samples

    # Structured journal fields: an operator filters on STREAM= and EVENT=.
    events = {e.get("EVENT") for e in journal(c, UNIT, "STREAM=cam0")}
    assert {"connecting", "streaming"} <= events, events
    assert journal(c, UNIT, "EVENT=ready")


@pytest.mark.systemd
def test_board_upgrade_keeps_results_flowing(board: Board) -> None:
    c = board.container
    assert board.current() == "1.0.0"
    pid_before = show(c, UNIT, "MainPID")["MainPID"]
    status_before = show(c, UNIT, "StatusText")["StatusText"]
    c.path("/run/lited-test-sub.py").write_text(SUBSCRIBER)
    out = c.path("/run/lited-test-sub.jsonl")
    c.run(["systemd-run", "--unit=lited-test-sub", f"{VENV}/bin/python", "/run/lited-test-sub.py", str("/run/lited-test-sub.jsonl")],
          check=True)
    results = lambda: [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []  # noqa: E731
    try:
        wait_for(lambda: len(results()) >= 10, 20, "results before the upgrade")
        upgrade = board.install(board.zips["1.1.0"])
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        print(upgrade.stdout)
        assert f"install_sdk: runtime: lited 0.1.0 already installed in {VENV}" in upgrade.stdout
        assert f"install_sdk: service: reloaded {UNIT}, serving {NAME} 1.1.0" in upgrade.stdout
        wait_for(lambda: sum(r["version"] == "1.1.0" for r in results()) >= 10, 20, "results after the upgrade")
    finally:
        c.run(["systemctl", "stop", "lited-test-sub.service"])
    got = results()
    versions = [r["version"] for r in got]
    swap = versions.index("1.1.0")
    assert versions == ["1.0.0"] * swap + ["1.1.0"] * (len(versions) - swap), versions
    gaps = [b["t"] - a["t"] for a, b in zip(got, got[1:])]
    print(f"{len(got)} results, swap after {swap}, largest gap {max(gaps):.2f} s")
    assert max(gaps) <= 2.0, gaps
    assert all(b["seq"] > a["seq"] for a, b in zip(got, got[1:]))
    # A reload, not a restart; and the status line moved on with it.
    assert show(c, UNIT, "MainPID", "NRestarts") == {"MainPID": pid_before, "NRestarts": "0"}
    status_after = show(c, UNIT, "StatusText")["StatusText"]
    assert status_after.startswith("cam0 streaming") and status_after.endswith("models: ultraface 1.1.0")
    assert status_before.endswith("models: ultraface 1.0.0")

    back = board.install("--rollback", NAME)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"install_sdk: service: reloaded {UNIT}, serving {NAME} 1.0.0" in back.stdout
    assert (board.current(), board.served()) == ("1.0.0", "1.0.0")


@pytest.mark.systemd
def test_board_rerun_after_a_kill_past_the_flip_reloads_and_a_rollback_needs_the_model(board: Board) -> None:
    """A run killed between its flip and its reload left `current` on the new version and the daemon
    on the old: the rerun said "already installed", "done", and served the old one. And `--rollback`
    for an instance whose config has not the model waited out --timeout twice, the link flipped."""
    c = board.container
    served = board.served()
    other = next(v for v in ("1.0.0", "1.1.0") if v != served and c.path(f"/{BUNDLES}/{v}").is_dir())
    c.run(["ln", "-sfn", other, f"/{BUNDLES}/current"], check=True)  # as a killed run leaves it
    c.run(["ln", "-sfn", served, f"/{BUNDLES}/previous"], check=True)
    rerun = board.install(board.zips[other])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"install_sdk: service: {UNIT} does not serve {NAME} {other}, which is current: reloading it" \
        in rerun.stdout, rerun.stdout
    assert f"install_sdk: service: reloaded {UNIT}, serving {NAME} {other}" in rerun.stdout, rerun.stdout
    assert board.served() == other
    refused = board.install("--instance", "cam9", "--rollback", NAME, timeout=60)
    assert refused.returncode == 1 and refused.stderr == (
        f"install_sdk: error: /etc/lited/cam9.conf does not serve {NAME} from /{BUNDLES}/current: "
        "roll back with the --instance whose config does\n"), refused.stdout + refused.stderr
    assert board.current() == other
    back = board.install("--rollback", NAME)
    assert back.returncode == 0 and (board.current(), board.served()) == (served, served), back.stdout + back.stderr


@pytest.mark.systemd
def test_board_failed_reload_rolls_back(board: Board) -> None:
    c = board.container
    before = board.current()
    pid = show(c, UNIT, "MainPID")["MainPID"]
    # A config the daemon will not take (valid JSON: the installer itself does not mind it).
    broken = {**BOARD_CONFIG, "streams": [{**BOARD_CONFIG["streams"][0], "source": "synth://?fps=10&bogus=1"}]}
    c.path("/etc/lited/lited.conf").write_text(json.dumps(broken))
    try:
        result = board.install(board.zips["1.2.0"])
        print(result.stdout + result.stderr)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "install_sdk: current -> 1.2.0" in result.stdout
        assert f"install_sdk: rollback: current -> {before}" in result.stdout
        assert "install_sdk: rollback: the daemon did not take it either" in result.stdout  # the config is bad
        assert "reload failed" in result.stderr and "bogus" in result.stderr, result.stderr
        assert board.current() == before and not c.path(f"/{BUNDLES}/1.2.0").exists()
        assert board.served() == before
        assert show(c, UNIT, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}
    finally:
        c.path("/etc/lited/lited.conf").write_text(json.dumps(BOARD_CONFIG))
        c.run(["systemctl", "reload", UNIT], check=True)


@contextlib.contextmanager
def faulty_service(c: Container, fault: str, settings: str = "") -> Iterator[None]:
    """The unit's daemon run by tests/fault_serve.py with `fault` (a drop-in, `settings` added to
    it) for the block, restarted; then the drop-in removed and the unit restarted, active."""
    dropin = c.path(f"/etc/systemd/system/{UNIT}.d/95-fault.conf")
    shutil.copy2(ROOT / "tests" / "fault_serve.py", c.path("/opt/lited/fault_serve.py"))
    dropin.write_text(f"[Service]\nExecStart=\nExecStart=/opt/lited/venv/bin/python /opt/lited/fault_serve.py {fault} "
                      f"serve --config /etc/lited/lited.conf\n{settings}")
    c.run(["systemctl", "daemon-reload"], check=True)
    try:
        c.run(["systemctl", "reset-failed", UNIT])  # StartLimitBurst= counts every start, ours too
        c.run(["systemctl", "restart", UNIT], check=True, timeout=120)
        yield
    finally:
        dropin.unlink()
        c.run(["systemctl", "daemon-reload"], check=True)
        c.run(["systemctl", "reset-failed", UNIT])
        c.run(["systemctl", "restart", UNIT], timeout=120)
    assert show(c, UNIT, "ActiveState")["ActiveState"] == "active"


@pytest.mark.systemd
def test_board_daemon_killed_mid_reload_and_restarted_serving_the_new_version_is_an_install(board: Board) -> None:
    """The daemon SIGKILLed as the installer's reload began (the OOM killer, say): systemd started it
    again on the new config, serving the new version, but `systemctl reload` had failed, so the
    installer rolled back after waiting 15 s for a reload record that never came."""
    c = board.container
    marker = "/var/lib/lited/state/fault-done"
    c.run(["rm", "-f", marker], check=True)
    with faulty_service(c, f"reload-dies-once:{marker}"):
        wait_for(lambda: c.run([f"{VENV}/bin/lited", "ctl", "ping", "--endpoint", "ipc:///run/lited/req.sock",
                                "--timeout", "2"]).returncode == 0, 60, "the daemon under the fault")
        served = board.served()
        other = next(v for v in ("1.0.0", "1.1.0", "1.2.0") if v != served)
        pid = show(c, UNIT, "MainPID")["MainPID"]
        started = time.monotonic()
        result = board.install(board.zips[other])
        took = time.monotonic() - started
        print(result.stdout + result.stderr + f"\n(took {took:.1f} s)")
        assert c.path(marker).exists(), "the fault must have killed the daemon"
        assert result.returncode == 0, result.stdout + result.stderr
        now = show(c, UNIT, "MainPID")["MainPID"]
        assert now != pid
        assert (f"install_sdk: service: {UNIT} died during its reload and systemd started it again (pid {pid}, "
                f"now {now}: journalctl -u {UNIT} says why), serving {NAME} {other}") in result.stdout, result.stdout
        assert "install_sdk: rollback:" not in result.stdout and (board.current(), board.served()) == (other, other)
        assert took < 60, "no settle wait"


@pytest.mark.systemd
def test_board_watchdog_restarts_a_hung_daemon(board: Board) -> None:
    c = board.container
    with faulty_service(c, "20", "WatchdogSec=3\n"):
        restarts = int(show(c, UNIT, "NRestarts")["NRestarts"])
        since = c.run(["date", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()
        # 20 frames at 10 fps, then the inference loop hangs; 3 s later the pings stop, 3 s after that systemd acts.
        wait_for(lambda: int(show(c, UNIT, "NRestarts")["NRestarts"]) > restarts, 30, "a watchdog restart")
        messages = [e["MESSAGE"] for e in journal(c, UNIT, f"--since={since}")]
        assert any("Watchdog timeout" in m for m in messages), messages
        assert journal(c, UNIT, f"--since={since}", "EVENT=watchdog_stale")


@pytest.mark.systemd
def test_board_runtime_upgrade_restarts_the_daemon(board: Board, wheelhouse: Path, tmp_path: Path) -> None:
    """A new runtime under a running daemon: a reload left the old code serving, and started engine
    processes on the new files. The installer restarts it instead, and results come from the new one."""
    c = board.container
    src = tmp_path / "src"
    shutil.copytree(ROOT / "runtime", src / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    with open(src / "runtime" / "lited" / "__init__.py", "a") as fh:
        fh.write("# rebuilt: another wheel of the same version\n")
    wheels = c.path("/srv/wheels2")
    wheels.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("lited-"):
            shutil.copy2(wheel, wheels / wheel.name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    for wheel in (tmp_path / "wheel").glob("lited-*.whl"):  # pip's -w resolves /proc/PID/root to the host's /
        shutil.copy2(wheel, wheels / wheel.name)
    pid = show(c, UNIT, "MainPID")["MainPID"]
    served = board.served()
    result = board.install("--wheels", "/srv/wheels2", board.zips[served])
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    assert f"install_sdk: runtime: lited 0.1.0 installed in {VENV}" in result.stdout
    assert f"install_sdk: service: restarted (its runtime changed) {UNIT}, serving {NAME} {served}" in result.stdout
    state = show(c, UNIT, "ActiveState", "MainPID")
    assert state["ActiveState"] == "active" and state["MainPID"] != pid, state
    wait_for(lambda: show(c, UNIT, "StatusText")["StatusText"].startswith("cam0 streaming"), 20, "the stream again")
    again = board.install("--wheels", "/srv/wheels2", board.zips[served])  # nothing new: not even a reload
    assert again.returncode == 0 and f"install_sdk: service: {UNIT} active" in again.stdout, again.stdout
    assert show(c, UNIT, "MainPID")["MainPID"] == state["MainPID"]


def test_an_unknown_engine_is_a_usage_error(prefix: Prefix) -> None:
    """`--engines` installs lited's extras by name; a name it has not is refused before anything runs."""
    result = run_install(prefix, "--engines", "onnxruntime,tflite", "x.zip")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "install_sdk: error: --engines: unknown engine 'tflite' (onnxruntime, openvino, " \
                            "paddle_inference)\n"  # the documented form of bad usage (it had no `error:`)
    result = run_install(prefix, "--with", "http,ftp", "x.zip")  # the optional parts: the same
    assert result.returncode == 2 and "--with: unknown part 'ftp' (http, mqtt, gst)" in result.stderr, result.stderr
    result = run_install(prefix, "--instance", "state", "x.zip")  # /var/lib/lited/state is lited.service's
    assert result.returncode == 2 and "--instance state: taken" in result.stderr, result.stderr
    result = run_install(prefix, "--instance", "lited", "x.zip")  # a second daemon on lited.service's config
    assert result.returncode == 2 and "--instance lited: taken (/etc/lited/lited.conf is lited.service's config" \
        in result.stderr, result.stderr
    assert not (prefix / BUNDLES).exists()
