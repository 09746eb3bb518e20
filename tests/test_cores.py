"""Engines on cores of their own, lited's own threads on the rest (lited/cores.py):
the plan, and a real daemon's processes and threads as the kernel has them."""
from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

from daemon_process import DaemonProcess
from test_daemon import wait_until
from lited.client import Subscriber
from lited.cores import CLAIMS_DIR, CoreClaim, apply, cores_of_other_engines, pin_threads, plan_cores, share_threads
from lited.engine_process import child_pids

CPUS = sorted(os.sched_getaffinity(0))


def cores_of(pid: object) -> set:
    """The distinct sets of cores the threads of `pid` may run on."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out.add(frozenset(os.sched_getaffinity(int(tid))))
        except OSError:  # ended meanwhile
            pass
    assert out, pid
    return out


def planned(output: str, threads: dict, pin: bool = True):
    """The plan a daemon (or `lited run -v`) said it made, its last `cores:` line, made again here
    with the cores it found another lited's engines on (the suite runs daemons in parallel)."""
    line = [line for line in output.splitlines() if "cores: " in line][-1]
    said = re.search(r"another lited's engines on cores ([\d,]+)", line)
    plan = plan_cores(threads, CPUS, pin, [int(c) for c in said.group(1).split(",")] if said else ())
    assert line.endswith(plan.describe()) or plan.describe() + " " in line, (line, plan.describe())
    return plan


def test_each_engine_gets_cores_of_its_own_when_the_threads_leave_some():
    plan = plan_cores({"a": 2, "b": 1}, range(8))
    assert plan.pinned and plan.engines == {"a": (6, 7), "b": (5,)}
    assert plan.own == (0, 1, 2, 3, 4) and plan.opencv_threads == 5
    assert "engine of a on cores 6,7" in plan.describe()
    plan = plan_cores({"cam": 1}, [0, 1])
    assert plan.engines == {"cam": (1,)} and plan.own == (0,) and plan.opencv_threads == 1
    # engines that need every core: nothing is pinned, OpenCV still gets a thread
    plan = plan_cores({"a": 1, "b": 1}, [0, 1])
    assert not plan.pinned and plan.engines == {"a": (0, 1), "b": (0, 1)} and plan.own == (0, 1)
    assert plan.opencv_threads == 1
    plan = plan_cores({"cam": 1}, [0, 1, 2, 3], pin=False)
    assert not plan.pinned and plan.engines["cam"] == (0, 1, 2, 3) and plan.opencv_threads == 3
    assert share_threads({"a": 2, "b": 2}, 2) == {"a": 1, "b": 1}
    assert share_threads({"a": 1, "b": 1}, 4) == {"a": 1, "b": 1}
    # another lited's engine on core 3 (two lited@ instances): ours goes below it, our threads on the rest
    plan = plan_cores({"cam": 1}, [0, 1, 2, 3], taken=[3])
    assert plan.pinned and plan.engines == {"cam": (2,)} and plan.own == (0, 1) and plan.opencv_threads == 2
    assert plan.describe() == "engine of cam on cores 2; lited's own threads on cores 0,1 (another lited's engines on cores 3)"
    # no core left for our own threads beside the others' engines: nothing pinned, rather than on theirs
    plan = plan_cores({"cam": 1}, [0, 1], taken=[1, 7])
    assert not plan.pinned and plan.engines == {"cam": (0, 1)} and plan.taken == (1,)
    assert plan.describe() == "engines and lited's own threads share cores 0,1 (another lited's engines on cores 1)"


def test_a_claim_tells_other_processes_where_the_engines_run_while_its_process_lives(tmp_path):
    """What one lited pins is read by another (a process apart, the file in /dev/shm locked while
    its maker runs): not its own, not one whose maker died (removed once over 5 s old), nor
    another user's."""
    import subprocess
    import sys

    read = [sys.executable, "-c", "from lited.cores import cores_of_other_engines as c; print(sorted(c()))"]
    before = set(eval(subprocess.run(read, capture_output=True, text=True, check=True).stdout))  # other tests'
    claim = CoreClaim()
    claim.publish(plan_cores({"cam": 1}, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], taken=[11]))
    try:
        assert os.path.dirname(claim.path) == CLAIMS_DIR and open(claim.path).read() == "10"
        assert 10 in eval(subprocess.run(read, capture_output=True, text=True, check=True).stdout)
        assert 10 not in cores_of_other_engines() - before  # its own
        claim.publish(plan_cores({"cam": 1}, [0, 1]))  # a reload planned again: the same file says so
        assert open(claim.path).read() == "1"
        os.chown(claim.path, 65534, -1)  # another user's claim is not read
        assert 1 not in set(eval(subprocess.run(read, capture_output=True, text=True, check=True).stdout)) - before
        os.chown(claim.path, os.geteuid(), -1)
    finally:
        claim.close()
    assert not os.path.exists(claim.path)
    # a lited that died without closing: its lock went with it, so its claim is skipped, then removed
    died = subprocess.run([sys.executable, "-c", "import os; from lited.cores import CoreClaim, plan_cores; "
                           "c = CoreClaim(); c.publish(plan_cores({'cam': 2}, range(12))); print(c.path); "
                           "os._exit(0)"], capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.exists(died) and 10 not in set(eval(subprocess.run(read, capture_output=True, text=True,
                                                                        check=True).stdout)) - before
    os.utime(died, (0, 0))
    cores_of_other_engines()
    assert not os.path.exists(died)


def test_applying_a_plan_pins_every_thread_and_sizes_opencv():
    """lited's own threads (those running already too) go on the cores the
    engines leave; OpenCV gets as many threads (its default, every core,
    contended with the engines)."""
    import threading

    import cv2

    before = cv2.getNumThreads()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    try:
        plan = plan_cores({"cam": 1}, CPUS)
        apply(plan)
        assert cv2.getNumThreads() == plan.opencv_threads
        assert cores_of("self") == {frozenset(plan.own)}
    finally:
        pin_threads(CPUS)
        cv2.setNumThreads(before)
        stop.set()
    assert cores_of("self") == {frozenset(CPUS)}


def test_the_daemon_gives_its_engines_cores_of_their_own(tmp_path, bundles_dir):
    """A real daemon on UltraFace, one engine thread: the engine process's
    threads on the last core, the daemon's on the others; a second stream
    (reload) re-plans and moves the running engine too; `pin_engines: false`
    leaves everything on every core."""
    if len(CPUS) < 2:
        pytest.skip("one core: there is no core to give an engine of its own")
    model = {"bundle": str(bundles_dir / "ultraface"), "threads": 1}
    stream = {"name": "a", "source": "synth://?size=320x240&fps=20", "model": "face"}
    d = DaemonProcess(tmp_path / "d", {"models": {"face": model}, "streams": [stream]})
    (tmp_path / "d").mkdir()
    with d, d.client() as client, Subscriber(d.pub, streams=["a"]) as sub:
        d.wait_ready()
        plan = planned(d.output(), {"a": 1})
        status = client.status()["streams"][0]
        assert status["model"]["cpus"] == list(plan.engines["a"])
        assert not plan.pinned or plan.engines["a"] == (max(set(CPUS) - set(plan.taken)),)
        assert cores_of(status["model"]["engine_pid"]) == {frozenset(plan.engines["a"])}
        assert cores_of(d.proc.pid) == {frozenset(plan.own)}
        assert wait_until(lambda: sub.recv(1)).get("stream") == "a"  # results flow
        # a request worker's engine process is not in the plan: it may use every core
        client.infer(image=np.zeros((240, 320, 3), np.uint8), model="face")
        (worker,) = set(child_pids(d.proc.pid)) - {status["model"]["engine_pid"]}
        assert cores_of(worker) == {frozenset(CPUS)}

        d.config["streams"].append({**stream, "name": "b"})
        d.write_config()
        d.signal(signal.SIGHUP)
        streams = wait_until(lambda: (lambda s: s if len(s) == 2 and all(x["model"] for x in s) else None)(
            client.status()["streams"]))
        plan = planned(d.output(), {"a": 1, "b": 1})
        for status in streams:
            cores = plan.engines[status["stream"]]
            assert status["model"]["cpus"] == list(cores)
            assert cores_of(status["model"]["engine_pid"]) == {frozenset(cores)}, status["stream"]
        assert cores_of(d.proc.pid) == {frozenset(plan.own)}

    shared = DaemonProcess(tmp_path / "s", {"models": {"face": model}, "streams": [stream], "pin_engines": False})
    (tmp_path / "s").mkdir()
    with shared, shared.client() as client:
        shared.wait_ready()
        status = client.status()["streams"][0]
        assert status["model"]["cpus"] == CPUS
        assert cores_of(status["model"]["engine_pid"]) == {frozenset(CPUS)}
        assert cores_of(shared.proc.pid) == {frozenset(CPUS)}


def test_lited_run_places_its_engine_and_says_where(tmp_path, bundles_dir):
    """`lited run -v` says where its engine and its own threads run;
    `--no-pin-engines` leaves both on every core."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "lited.cli", "run", "--json", "--bundle", str(bundles_dir / "ultraface"),
            "--threads", "1", "--source", "synth://?size=320x240&fps=30", "--frames", "3", "-v"]
    for extra, pin in (([], True), (["--no-pin-engines"], False)):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        expected = planned(proc.stderr, {"cam0": 1}, pin)
        assert f"lited: cores: {expected.describe()}" in proc.stderr.splitlines(), proc.stderr
        assert pin or not expected.taken  # --no-pin-engines does not look
        assert len(proc.stdout.splitlines()) == 3


def test_a_second_lited_keeps_its_engine_off_the_first_ones_core(tmp_path, bundles_dir):
    """Two daemons (two `lited@` instances) on one machine: each pinned its engine to the last core,
    both at half speed beside idle cores. The second finds the first's engine, says so, and keeps
    its engine and its own threads off that core (here, 2 cores: nothing pinned); `lited run` too.
    (Other tests' daemons run meanwhile: what each found is read from the line it logs.)"""
    import subprocess
    import sys

    if len(CPUS) < 2:
        pytest.skip("one core: there is no core to give an engine of its own")
    model = {"bundle": str(bundles_dir / "ultraface"), "threads": 1}
    daemons = [DaemonProcess(tmp_path / name, {"models": {"face": model}, "streams": [
        {"name": name, "source": "synth://?size=320x240&fps=20", "model": "face"}]}) for name in ("a", "b")]
    for d in daemons:
        d.tmp.mkdir()
    with daemons[0] as first, first.client() as client:
        first.wait_ready()
        engine = set(client.status()["streams"][0]["model"]["cpus"])
        pinned = engine != set(CPUS)  # else another test's daemon held a core as it started
        assert not pinned or engine <= cores_of_other_engines()  # not the test's child: another lited's
        with daemons[1] as second, second.client() as client2:
            second.wait_ready()
            plan = planned(second.output(), {"b": 1})
            status = client2.status()["streams"][0]
            assert not pinned or engine <= set(plan.taken), plan.describe()
            assert cores_of(status["model"]["engine_pid"]) == {frozenset(plan.engines["b"])}
            assert cores_of(second.proc.pid) == {frozenset(plan.own)}
            if plan.pinned:
                assert not set(plan.taken) & (set(plan.engines["b"]) | set(plan.own)), plan.describe()
            else:
                assert status["model"]["cpus"] == CPUS
        proc = subprocess.run([sys.executable, "-m", "lited.cli", "run", "--json", "--bundle",
                               str(bundles_dir / "ultraface"), "--threads", "1", "--source",
                               "synth://?size=320x240&fps=30", "--frames", "2", "-v"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not pinned or engine <= set(planned(proc.stderr, {"cam0": 1}).taken), proc.stderr
