"""The engine in its own process: same outputs as in-process, the GIL free
during `run()`, and a crash that costs one frame, not the caller."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lited.bundle import load_bundle
from lited.engine_process import RING, SETS, EngineProcess
from lited.engines import EngineError, open_engine
from lited.model import Model

from conftest import shared_onnx


FASTESTDET_INPUT = (1, 3, 352, 352)


def _model_file(bundles_dir, name: str):
    return load_bundle(bundles_dir / name).model_for(None)


@pytest.fixture
def fastestdet_file(bundles_dir):
    return _model_file(bundles_dir, "fastestdet")


def _random_input(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_queued_runs_equal_the_in_process_engine_slot_by_slot(fastestdet_file):
    """Runs submitted back to back (one running, others queued in the
    child) come back in order, each from its own slot into its own set."""
    local = open_engine("paddle_lite", str(fastestdet_file.path), {})
    remote = EngineProcess("paddle_lite", str(fastestdet_file.path), {})
    try:
        assert remote.inputs == local.inputs and remote.output_names == local.output_names
        assert remote.version == local.version and remote.input_sets == 3
        expected = []
        for k in range(remote.input_sets):
            x = _random_input(FASTESTDET_INPUT, seed=k)
            local.set_input(0, x)
            expected.append([o.copy() for o in local.run()])
            remote.input_view(0, FASTESTDET_INPUT, input_set=k)[...] = x
        for round_ in range(2):
            for k in range(remote.input_sets):
                remote.submit(input_set=k, output_set=(k + round_) % remote.input_sets)
            got = [remote.collect() for _ in range(remote.input_sets)]
            for k, outputs in enumerate(got):
                assert all(np.array_equal(g, e) for g, e in zip(outputs, expected[k])), (round_, k)
        assert not all(np.array_equal(a, b) for a, b in zip(expected[0], expected[1]))  # the inputs differ
        with pytest.raises(EngineError, match="runs still to collect"):
            remote.submit()
            remote.output_shapes()
        remote.collect()
    finally:
        remote.close()


def test_a_dynamic_model_changes_input_shape_in_place(bundles_dir):
    """PP-OCRv4 det takes any size: each new shape gets a bigger arena or
    reuses the old one, and the results stay those of the in-process engine."""
    file = _model_file(bundles_dir, "ppocrv4_det")
    local = open_engine("paddle_lite", str(file.path), {})
    remote = EngineProcess("paddle_lite", str(file.path), {})
    try:
        for k, (h, w) in enumerate([(64, 96), (160, 224), (96, 64), (160, 224)]):
            x = _random_input((1, 3, h, w), seed=k)
            local.set_input(0, x)
            expected = local.run()[0].copy()
            remote.set_input(0, x)
            got = remote.run()[0]
            assert got.shape == expected.shape == (1, 1, h, w)
            np.testing.assert_allclose(got, expected, atol=1e-6)
        assert remote.input_shapes() == [(1, 3, 160, 224)]
    finally:
        remote.close()


def test_run_lets_other_threads_run(fastestdet_file):
    """In-process, paddlelite's run() holds the GIL: a thread ticking every
    millisecond gets nothing done during it. Isolated, it keeps ticking."""
    remote = EngineProcess("paddle_lite", str(fastestdet_file.path), {})
    ticks: list = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            time.sleep(0.001)
            ticks.append(time.perf_counter())

    try:
        remote.set_input(0, _random_input(FASTESTDET_INPUT))
        remote.run()
        thread = threading.Thread(target=ticker)
        thread.start()
        spans = []
        for _ in range(5):
            t0 = time.perf_counter()
            remote.run()
            spans.append((t0, time.perf_counter()))
        stop.set()
        thread.join()
    finally:
        remote.close()
    inside = [sum(t0 < t < t1 for t in ticks) for t0, t1 in spans]
    durations_ms = [round((t1 - t0) * 1e3, 1) for t0, t1 in spans]
    # in process: 0 (at most 1, landing between t0 and the call); out of process: ~1 a millisecond
    assert min(inside) >= 2, f"ticks during each run: {inside} (runs of {durations_ms} ms)"


def test_a_killed_engine_raises_a_named_error_and_restarts(fastestdet_file):
    remote = EngineProcess("paddle_lite", str(fastestdet_file.path), {})
    try:
        x = _random_input(FASTESTDET_INPUT)
        remote.set_input(0, x, input_set=1)
        started = time.perf_counter()
        before = [o.copy() for o in remote.run(input_set=1, output_set=1)]
        took = time.perf_counter() - started
        assert 0 < remote.busy_s < took  # the run's compute time, read from shared memory
        busy = remote.busy_s
        pid = remote.pid
        with open(f"/proc/{pid}/comm") as fh:
            assert fh.read().strip() == "lited-engine"  # what top and ps -o comm show
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineError, match=r"\.nb: engine process died \(SIGKILL\)"):
            remote.run(input_set=1, output_set=1)
        remote.restart()
        assert remote.pid != pid
        # the inputs live in the parent: the new child is handed them again
        after = remote.run(input_set=1, output_set=1)
        assert all(np.array_equal(a, b) for a, b in zip(after, before))
        assert remote.busy_s > busy  # the new child adds to the same meter
    finally:
        remote.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_signals_to_the_whole_unit_leave_the_engine_process_running(fastestdet_file):
    """The systemd audit: `systemctl kill -s HUP lited` (every process of the unit) killed the engine
    processes: the reload's signal dropped the streams' runs. SIGINT and SIGTERM are the parent's too."""
    remote = EngineProcess("paddle_lite", str(fastestdet_file.path), {})
    try:
        remote.set_input(0, _random_input(FASTESTDET_INPUT))
        before = [o.copy() for o in remote.run()]
        pid = remote.pid
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            os.kill(pid, sig)
        time.sleep(0.2)
        assert remote.pid == pid and all(np.array_equal(a, b) for a, b in zip(remote.run(), before))
    finally:
        remote.close()


def test_a_model_the_backend_refuses_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model.nb"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(EngineError) as info:
        EngineProcess("paddle_lite", str(bad), {})
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EngineError, match="unknown engine 'tensorflow'"):
        EngineProcess("tensorflow", str(bad), {})
    import gc

    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):  # a reload retried on a bad bundle: each failed open leaves no descriptor behind
        with pytest.raises(EngineError):
            EngineProcess("paddle_lite", str(bad), {})
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_the_engine_process_ends_with_its_parent(fastestdet_file):
    """No orphans: the child exits when its parent dies, even by SIGKILL."""
    code = ("import sys; from lited.engine_process import EngineProcess; "
            f"e = EngineProcess('paddle_lite', {str(fastestdet_file.path)!r}, {{}}); "
            "print(e.pid, flush=True); sys.stdin.read()")
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{child}/stat") as fh:
                    if fh.read().split(") ")[1].startswith("Z"):
                        break  # exited; a zombie until init reaps it
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"engine process {child} outlived its parent")
    finally:
        parent.kill()


def test_an_isolated_model_infers_like_an_in_process_one(bundles_dir):
    import cv2
    from conftest import need_shared
    image = cv2.imread(str(need_shared("images", "astronaut.png")))
    bundle = load_bundle(bundles_dir / "fastestdet")
    local, remote = Model(bundle), Model(bundle, isolated=True)
    try:
        a, b = local.infer(image), remote.infer(image)
    finally:
        remote.close()
    assert a["detections"] == b["detections"] and a["detections"]


def test_a_backend_abort_ends_only_the_engine_process(fastestdet_file):
    """Paddle Lite aborts the process (a failed CHECK) when run before its
    input is set; isolated, that is an error here, and this process lives."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # as the command line and the daemon have it (quiet.py): native output goes nowhere
    try:
        remote = EngineProcess("paddle_lite", str(fastestdet_file.path), {})
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    try:
        # with Paddle Lite's fatal line, kept from the child's stderr, which went nowhere
        with pytest.raises(EngineError, match=r"engine process died \(SIGABRT\): Check failed: op_->CheckShape\(\)"):
            remote.run()
    finally:
        remote.close()


def test_no_restart_onto_a_model_that_changed_on_disk(tmp_path, fastestdet_file):
    """An upgrade may replace the file under a running engine: a restart
    would load a model the loaded manifest does not describe, so it refuses."""
    import shutil
    path = tmp_path / "model.nb"
    shutil.copy(fastestdet_file.path, path)
    remote = EngineProcess("paddle_lite", str(path), {})
    try:
        shutil.copy(fastestdet_file.path, tmp_path / "new.nb")
        os.replace(tmp_path / "new.nb", path)
        os.kill(remote.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="changed on disk since it was loaded"):
            remote.restart()
    finally:
        remote.close()


def test_no_engine_process_of_another_lited_than_its_daemon_s(tmp_path, fastestdet_file):
    """An upgrade rewrites the package under a running daemon: an engine process it starts then
    (a reload, a restart after a crash) would import the new files, whose page, codes and messages
    its parent may not share. The child refuses, in one line its parent reports."""
    import shutil
    shutil.copytree(os.path.dirname(os.path.dirname(__import__("lited").__file__)) + "/lited", tmp_path / "lited",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = f"""
import os, shutil, signal, sys
from lited.engine_process import EngineProcess
from lited.engines import EngineError
e = EngineProcess('paddle_lite', {str(fastestdet_file.path)!r}, {{}})
os.kill(e.pid, signal.SIGKILL)
e.restart()  # the same files: it starts
src = os.path.join(os.path.dirname(sys.modules['lited.engine_process'].__file__), 'engine_process.py')
shutil.copy(src, src + '.new')
os.replace(src + '.new', src)  # as pip writes a file anew
os.kill(e.pid, signal.SIGKILL)
try:
    e.restart()
    print('restarted')
except EngineError as exc:
    print(exc)
e.close()
"""
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        f"{fastestdet_file.path}: engine process exited: lited's engine_process.py and "
        "shared_semaphore.py changed since the daemon started (lited upgraded under it?): an engine process runs "
        "only with the lited of its daemon; restart the daemon (systemctl restart lited)"), out.stdout


def test_a_restart_without_descriptors_is_an_engine_error_and_the_next_one_runs(fastestdet_file):
    """With the open-files limit reached (a connection flood), a restart raised OSError past the
    stream's restart loop, whose thread then died: the stream stayed without an engine for good."""
    code = f"""
import os, resource, signal
from lited.engine_process import EngineProcess
from lited.engines import EngineError
e = EngineProcess('paddle_lite', {str(fastestdet_file.path)!r}, {{}})
os.kill(e.pid, signal.SIGKILL)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')), hard))
try:
    e.restart()
    print('restarted')
except EngineError as exc:
    print(exc)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
e.restart()
e.input_view(0, (1, 3, 352, 352))[...] = 0
print(len(e.run()))
e.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    said, ran = out.stdout.splitlines()
    assert said.startswith(f"{fastestdet_file.path}: cannot start an engine process: Too many open files (the "
                           "open-files limit, ") and said.endswith(": ulimit -n, LimitNOFILE=)") and ran == "1", out.stdout


def test_a_bare_memory_error_says_what_ran_out():
    """An engine restart under an address-space limit logged `MemoryError` and nothing else; at a
    start it read as the manifest's fault (`models.x86[0] on openvino: MemoryError`)."""
    from lited.errors import first_line

    assert first_line(MemoryError()) == ("out of memory (MemoryError): the process's address-space limit "
                                         "(ulimit -v, prlimit --as) or the board's RAM")
    assert first_line(MemoryError("std::bad_alloc")) == "std::bad_alloc"


# --- short runs queued: collected by the clock -------------------------------

SHORT_INPUT = (1, 3, 48, 192)  # the PP-OCR classifier: about a millisecond a run in onnxruntime


@pytest.fixture
def short_onnx():
    return str(shared_onnx("ppocr_cls"))


def _pipelined(remote: EngineProcess, local, runs: int) -> None:
    """`runs` runs, one always queued behind the one running, each checked against `local`."""
    expected = []
    for k in range(SETS):
        x = _random_input(SHORT_INPUT, seed=k)
        remote.input_view(0, SHORT_INPUT, input_set=k)[...] = x
        local.set_input(0, x)
        expected.append([o.copy() for o in local.run()])
    remote.submit(0, 0)
    for i in range(1, runs + 1):
        if i < runs:
            remote.submit(i % SETS, i % SETS)
        got = remote.collect()
        assert all(np.array_equal(g, e) for g, e in zip(got, expected[(i - 1) % SETS])), i


def test_steady_runs_cost_the_engine_process_no_system_call(short_onnx, tmp_path):
    """A run whose inputs the child has, one queued behind another, goes through
    the page's queues: strace counts the child's system calls over 300 such runs.
    A socket for each request and reply made two a run (sendto and recvmsg);
    the semaphores make none, but for a wait when the parent was late to queue
    the next run (a futex call, rare: onnxruntime itself makes none a run here)."""
    local = open_engine("onnxruntime", short_onnx, {})
    remote = EngineProcess("onnxruntime", short_onnx, {})
    try:
        _pipelined(remote, local, 12)  # the steady state: every pair of sets has run twice
        counts = tmp_path / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(counts), "-p", str(remote.pid)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert "attached" in tracer.stderr.readline()
            _pipelined(remote, local, 300)
        finally:
            tracer.terminate()
            tracer.wait()
        rows = [line.split() for line in counts.read_text().splitlines()]  # % time, seconds, usecs/call, calls, [errors,] name
        calls = {row[-1]: int(row[3]) for row in rows if len(row) >= 5 and row[0][0].isdigit() and row[-1] != "total"}
        assert not {"sendmsg", "recvmsg", "sendto", "recvfrom", "read", "write"} & set(calls), calls
        assert sum(calls.values()) < 300, calls
    finally:
        remote.close()


def test_short_queued_runs_are_collected_by_the_clock_also_after_a_restart(short_onnx):
    """A run as long as QUIET_RUNS_S, collected while another waits behind it,
    is awaited by the clock (the child's count of replies, in shared memory),
    not blocked on its reply: a reply to a blocked reader makes the child's
    core wake the parent's, which costs a 1 ms model's next run on a VM. A
    restarted child goes on counting in the same page, here after one killed
    with replies the parent never read."""
    local = open_engine("onnxruntime", short_onnx, {})
    remote = EngineProcess("onnxruntime", short_onnx, {})
    try:
        _pipelined(remote, local, 200)
        # Quiet, nearly all of them (190 and more); on a loaded machine (two test jobs, or three
        # spinning processes beside, 68-169 seen) runs grow past QUIET_RUNS_S or a reply comes
        # too late, and those collects block, as they should: only none at all is wrong.
        assert remote.clock_collects >= 20, remote.clock_collects
        remote.submit(0, 0)
        remote.submit(1, 1)
        time.sleep(0.2)  # both replied, neither read
        os.kill(remote.pid, signal.SIGKILL)
        remote.restart()
        before = remote.clock_collects
        _pipelined(remote, local, 200)
        # the last of the 200 had nothing queued behind it: it blocked, as every run of `latest` does
        assert 20 <= remote.clock_collects - before <= 199, remote.clock_collects - before
    finally:
        remote.close()


def test_a_stopped_child_with_runs_queued_times_out_by_name(short_onnx):
    """The clock gives up after a few runs' time; the blocking receive then
    keeps `run_timeout` and kills the stuck child, as for one run."""
    local = open_engine("onnxruntime", short_onnx, {})
    remote = EngineProcess("onnxruntime", short_onnx, {}, run_timeout=1.0)
    try:
        _pipelined(remote, local, 40)
        remote.submit(0, 0)
        remote.submit(1, 1)
        time.sleep(0.2)  # both done: their replies wait in the queue
        pid = remote.pid
        os.kill(pid, signal.SIGSTOP)
        remote.collect()
        remote.collect()
        remote.submit(2, 2)
        remote.submit(0, 0)
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"did not answer in 1 s \(stopped or stuck\); killed it"):
            remote.collect()
        assert 1.0 <= time.monotonic() - started < 3.0
        assert remote.pid is None
    finally:
        remote.close()


def test_runs_queue_up_to_the_ring_and_come_back_in_order(short_onnx):
    """The request queue holds RING codes: a stopped child gets that many runs
    queued, in order, and the next submit is refused by name rather than
    written over a code the child has not read."""
    local = open_engine("onnxruntime", short_onnx, {})
    remote = EngineProcess("onnxruntime", short_onnx, {})
    try:
        _pipelined(remote, local, 6)
        expected = []
        for k in range(SETS):
            local.set_input(0, np.asarray(remote.input_view(0, SHORT_INPUT, input_set=k)))
            expected.append([o.copy() for o in local.run()])
        os.kill(remote.pid, signal.SIGSTOP)
        for i in range(RING):  # input set k into output set k: a later run into a set writes the same outputs
            remote.submit(i % SETS, i % SETS)
        with pytest.raises(EngineError, match=f"{RING} runs queued and not collected"):
            remote.submit(0, 0)
        os.kill(remote.pid, signal.SIGCONT)
        for i in range(RING):
            got = remote.collect()
            assert all(np.array_equal(g, e) for g, e in zip(got, expected[i % SETS])), i
    finally:
        remote.close()


def test_a_wait_for_a_reply_ends_when_another_thread_closes_the_engine(short_onnx):
    """A stream stopped while its infer thread waits for a run (here, of a stopped
    child): the wait ends with a named error within its liveness check, not when
    close() is done with the child (5 s, then a kill, for a stopped one)."""
    remote = EngineProcess("onnxruntime", short_onnx, {})
    try:
        remote.input_view(0, SHORT_INPUT)[...] = 0.5
        remote.run()
        os.kill(remote.pid, signal.SIGSTOP)
        remote.submit()
        ended: list = []

        def collect() -> None:
            try:
                remote.collect()
            except EngineError as exc:
                ended.append((time.monotonic(), str(exc)))

        waiter = threading.Thread(target=collect)
        waiter.start()
        time.sleep(0.3)
        assert not ended  # still waiting
        closing = time.monotonic()
        remote.close()
        waiter.join(10)
        assert ended and ended[0][1].endswith("engine process is closed"), ended
        assert ended[0][0] - closing < 1.0, ended[0][0] - closing
    finally:
        remote.close()


def test_the_short_way_between_runs_follows_an_output_set_to_its_new_shape():
    """A run that can go again as it is takes a short way in the child (nothing
    checked but its outputs: 30-40 us saved a run on a 1-ms model). When another
    input set's run gives that output set another shape, the short way of the
    first set must not write into the views it had: PP-OCRv4 det on OpenVINO,
    which compiles one static model per input shape and writes its outputs in place."""
    det = str(shared_onnx("ppocrv4_det"))
    local = open_engine("openvino", det, {})
    remote = EngineProcess("openvino", det, {})
    small, big = (1, 3, 64, 96), (1, 3, 96, 128)
    try:
        x = {small: _random_input(small, 1), big: _random_input(big, 2)}
        expected = {}
        for shape, array in x.items():
            local.set_input(0, array)
            expected[shape] = local.run()[0].copy()
        remote.input_view(0, small, input_set=0)[...] = x[small]
        remote.input_view(0, big, input_set=1)[...] = x[big]
        for input_set, shape in [(0, small)] * 3 + [(1, big), (0, small), (0, small), (1, big), (1, big)]:
            got = remote.run(input_set=input_set, output_set=0)[0]
            assert got.shape == expected[shape].shape, (input_set, got.shape)
            np.testing.assert_allclose(got, expected[shape], atol=1e-5)
        assert remote.stats()["in_copies"] == 0
    finally:
        remote.close()
        local.close()
