"""OpenVINO and onnxruntime beside Paddle Lite: the same answers on the real
models, inputs and outputs in the engine process's shared memory with no
copy, threads as asked, and bundles that list several files per target,
picked per model and self-tested on every engine they list."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import DEMO_BUNDLE, make_bundle, need_shared, reseal, shared_onnx
from daemon_process import DaemonProcess
from lited.bundle import BundleError, load_bundle, seal
from lited.client import ClientError
from lited.engine_process import SETS, EngineProcess
from lited.engines import ENGINES, EngineError, open_engine
from lited.model import Model
from lited.preprocess import Preprocessor
from lited.selftest import compare

NEW_ENGINES = ("openvino", "onnxruntime")
IMAGE_FOR = {"ultraface": "astronaut", "fastestdet": "coffee", "mobilenetv2": "chelsea",
             "ppocrv4_det": "page", "ppocr_cls": "page", "nanodet_m": "coffee"}
NANODET_PREPROCESS = {"color": "BGR", "resize": {"mode": "stretch", "interpolation": "area"}, "scale": 1,
                      "mean": [103.53, 116.28, 123.675], "std": [57.375, 57.12, 58.395]}
LITED = [sys.executable, "-m", "lited.cli"]


@pytest.fixture(autouse=True, scope="module")
def _need_engines():
    missing = [k for k in NEW_ENGINES if not ENGINES.get(k).available()]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} not installed (make test installs the extras)")
        pytest.skip(f"{', '.join(missing)} not installed (pip install '.[openvino,onnxruntime]')")


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    """Bundles of the shared models with their ONNX listed for OpenVINO and onnxruntime."""
    out = tmp_path_factory.mktemp("multi")
    for name in ("ultraface", "fastestdet", "mobilenetv2", "ppocr_cls", "ppocrv4_det"):
        make_bundle(name, out, engines=NEW_ENGINES)
    return out


def image(name: str) -> np.ndarray:
    return cv2.imread(str(need_shared("images", f"{IMAGE_FOR[name]}.png")))




# --- the same answers ---------------------------------------------------------

@pytest.mark.parametrize("name", ["ultraface", "fastestdet", "mobilenetv2", "ppocr_cls", "ppocrv4_det", "nanodet_m"])
def test_raw_outputs_match_paddle_lite(name):
    """The ONNX on OpenVINO and onnxruntime computes what the .nb computes on
    Paddle Lite x86, from the same preprocessed real image (OpenVINO reading it
    as float32: its default float16 image is tested below)."""
    manifest = json.loads((Path(__file__).parent / "bundles" / f"{name}.json").read_text()) \
        if name != "nanodet_m" else {"preprocess": NANODET_PREPROCESS, "inputs": [{"shape": [1, 3, 416, 416]}]}
    pre = Preprocessor(manifest["preprocess"], manifest["inputs"][0]["shape"])
    pre(image(name))
    reference = open_engine("paddle_lite", str(need_shared("models", name, "model_x86.nb")), {})
    reference.set_input(0, pre.tensor)
    expected = [o.copy() for o in reference.run()]
    for kind in NEW_ENGINES:
        engine = open_engine(kind, str(shared_onnx(name)), {"f16_images": False} if kind == "openvino" else {})
        engine.set_input(0, pre.tensor)
        got = engine.run()
        assert [o.shape for o in got] == [o.shape for o in expected], kind
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=2e-4 * max(1.0, float(np.abs(e).max())), err_msg=kind)


def test_openvino_and_onnxruntime_work_in_a_process_that_opened_a_gstreamer_source():
    """GStreamer brings libunwind into the global symbol scope; OpenVINO's
    device enumeration throws and catches a C++ exception, which crashed such
    a process (a segfault in the unwinder) until the GStreamer source kept
    libgcc_s's unwinder first. And `import openvino` sends nothing: its
    telemetry module is hidden (no sender thread, even outside CI where
    openvino would otherwise send)."""
    script = f"""
import threading, numpy as np
from lited.sources import open_source
from lited.engines import open_engine
src = open_source("gst://videotestsrc num-buffers=3 ! video/x-raw,format=BGR,width=64,height=48 ! appsink")
frame = np.empty(src.open(), np.uint8)
src.read_into(frame)
src.close()
for kind in ("openvino", "onnxruntime"):
    engine = open_engine(kind, {str(shared_onnx("mobilenetv2"))!r}, {{}})
    engine.set_input(0, np.zeros((1, 3, 224, 224), np.float32))
    assert engine.run()[0].shape == (1, 1000), kind
import sys
assert "openvino_telemetry" in sys.modules and sys.modules["openvino_telemetry"] is None, "telemetry imported"
threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
assert not threads, threads
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("name", ["ultraface", "fastestdet", "mobilenetv2", "ppocr_cls", "ppocrv4_det"])
def test_decoded_results_match_paddle_lite_within_the_golden_tolerance(multi, name):
    bundle = load_bundle(multi / name)
    reference = Model(bundle, engine="paddle_lite").infer(image(name))
    assert reference["detections"] or reference["classes"]
    for kind in NEW_ENGINES:
        model = Model(bundle, engine=kind)
        assert (model.choice.engine, model.model_file.path.name) == (kind, "model.onnx")
        assert compare(model.infer(image(name)), reference) == [], kind


def test_a_manifest_input_shape_the_model_contradicts_is_refused_before_a_run(multi, tmp_path):
    """OpenVINO and onnxruntime declare their input shapes: a manifest that says
    otherwise is refused in one line naming the field and the file, for the
    engine in this process and in an engine process, and by `lited infer`."""
    root = tmp_path / "ultraface"
    shutil.copytree(multi / "ultraface", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [1, 3, 320, 240]  # the model takes 240x320
    (root / "manifest.json").write_text(json.dumps(manifest))
    said = "inputs[0].shape: [1, 3, 320, 240], but model.onnx (models.x86[0]) takes [1, 3, 240, 320]"
    for kind in NEW_ENGINES:
        for isolated in (False, True):
            with pytest.raises(BundleError) as refusal:
                Model(load_bundle(root), engine=kind, isolated=isolated)
            assert said in str(refusal.value), (kind, isolated)
        proc = subprocess.run([*LITED, "infer", "--engine", kind, "--bundle", str(root),
                               str(need_shared("images", "astronaut.png"))], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and said in proc.stderr, proc.stderr
    # A side the manifest leaves dynamic (a keep-ratio resize) where the model fixes it: the first
    # image of another shape would fail inside the engine. The batch may stay dynamic.
    manifest["inputs"][0]["shape"] = [-1, 3, -1, -1]
    manifest["preprocess"]["resize"] = {"mode": "keep_ratio", "max_side": 320}
    (root / "manifest.json").write_text(json.dumps(manifest))
    for kind in NEW_ENGINES:
        with pytest.raises(BundleError, match=r"inputs\[0\]\.shape: \[-1, 3, -1, -1\], but model.onnx "
                                              r"\(models.x86\[0\]\) takes \[1, 3, 240, 320\]"):
            Model(load_bundle(root), engine=kind)
    manifest["inputs"][0]["shape"] = [-1, 3, 240, 320]
    manifest["preprocess"]["resize"] = {"mode": "stretch"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    Model(load_bundle(root), engine="onnxruntime").close()


def test_an_empty_labels_file_is_refused_like_a_short_one(multi, tmp_path):
    root = tmp_path / "mobilenetv2"
    shutil.copytree(multi / "mobilenetv2", root)
    (root / "labels.txt").write_text("")
    reseal(root)
    with pytest.raises(BundleError, match="labels.txt: 0 labels for 1000 classes"):
        Model(load_bundle(root), engine="onnxruntime")


# --- zero copy in the engine process -----------------------------------------

@pytest.mark.parametrize("kind", NEW_ENGINES)
def test_the_engine_process_binds_shared_memory_without_copies(kind):
    """Inputs are read where preprocessing wrote them, outputs written where the
    parent reads them: after the first run into each output set, no copy."""
    path = str(shared_onnx("nanodet_m"))  # six outputs
    local = open_engine(kind, path, {})
    remote = EngineProcess(kind, path, {})
    shape = (1, 3, 416, 416)
    try:
        xs = [np.random.default_rng(k).standard_normal(shape).astype(np.float32) for k in range(SETS)]
        for k, x in enumerate(xs):
            remote.input_view(0, shape, input_set=k)[...] = x
        for round_ in range(3):
            for k in range(SETS):
                remote.submit(input_set=k, output_set=(k + round_) % SETS)
            for k in range(SETS):
                local.set_input(0, xs[k])
                got = remote.collect()
                assert all(np.array_equal(g, e) for g, e in zip(got, local.run())), (round_, k)
        counts = remote.stats()
        outputs = len(remote.output_names)
        counts.pop("binds")
        assert counts == {"runs": 3 * SETS, "in_copies": 0, "out_copies": outputs * SETS}, counts
        # Every pair of sets, twice more (the first runs into a set used the engine's own
        # outputs): the second time nothing is bound anew. OpenVINO bound its one request
        # anew every run (6 % of a 1 ms model's time).
        for repeat in range(2):
            binds = remote.stats()["binds"]
            for round_ in range(3):
                for k in range(SETS):
                    remote.submit(input_set=k, output_set=(k + round_) % SETS)
                for k in range(SETS):
                    remote.collect()
        assert remote.stats()["binds"] == binds
        view = remote.input_view(0, shape, input_set=0)
        view[...] *= 0.5  # read in place: the next run sees it
        remote.submit(0, 0)
        local.set_input(0, view)
        assert all(np.array_equal(g, e) for g, e in zip(remote.collect(), local.run()))
        assert remote.stats()["out_copies"] == outputs * SETS
    finally:
        remote.close()


def test_paddle_lite_through_the_engine_process_copies_in_and_out():
    path = str(need_shared("models", "fastestdet", "model_x86.nb"))
    remote = EngineProcess("paddle_lite", path, {})
    try:
        remote.input_view(0, (1, 3, 352, 352), input_set=0)[...] = 0.5
        for _ in range(4):
            remote.run(0, 0)
        assert remote.stats() == {"runs": 4, "in_copies": 4, "out_copies": 4, "binds": 0}
    finally:
        remote.close()


@pytest.mark.parametrize("static_shapes", [True, False])
def test_openvino_survives_input_shapes_changing_between_runs(static_shapes):
    """Binding an output of a dynamic-shape model corrupts OpenVINO's heap;
    the engine binds only static outputs (one compile per shape), so PP-OCR
    det on changing shapes gives onnxruntime's answers and lives."""
    path = str(shared_onnx("ppocrv4_det"))
    reference = open_engine("onnxruntime", path, {})
    remote = EngineProcess("openvino", path, {"static_shapes": static_shapes})
    try:
        for i, (h, w) in enumerate([(192, 384), (256, 384), (224, 320), (192, 384), (320, 320)]):
            x = np.random.default_rng(i).random((1, 3, h, w), np.float32)
            remote.input_view(0, x.shape, input_set=i % SETS)[...] = x
            got = remote.run(input_set=i % SETS, output_set=i % 2)
            reference.set_input(0, x)
            np.testing.assert_allclose(got[0], reference.run()[0], atol=2e-4)
    finally:
        remote.close()


# --- threads ------------------------------------------------------------------

def test_openvino_prepares_a_run_on_the_same_arrays_as_one_call_valid_until_it_binds_again():
    """The engine process's steady runs and `run()` go through `prepare`'s call: it reads
    the inputs and writes the outputs in place like run_into, and any binding that could
    reuse its request moves `binds` on (the caller then prepares again)."""
    from lited.engines.openvino import BINDINGS

    engine = open_engine("openvino", str(shared_onnx("ppocr_cls")), {})
    reference = open_engine("onnxruntime", str(shared_onnx("ppocr_cls")), {})
    # arrays of the input's own dtype (float16: `f16_images`), which are bound, not converted
    xs = [np.random.default_rng(i).random((1, 3, 48, 192)).astype(engine.inputs[0].dtype)
          for i in range(BINDINGS + 1)]
    outs = [[np.full((1, 2), np.nan, np.float32)] for _ in xs]
    assert engine.prepare([xs[0]], outs[0]) is None  # never run on these arrays
    assert engine.run_into([xs[0]], outs[0])[0] is outs[0][0]
    call, binds = engine.prepare([xs[0]], outs[0]), engine.binds
    assert call is not None and engine.prepare([xs[0]], [np.empty((1, 2), np.float32)]) is None
    for scale in (1.0, 0.25, -3.0):
        xs[0][...] = xs[1] * scale  # in place, as preprocessing writes
        outs[0][0][...] = np.nan
        assert call() is None
        reference.set_input(0, xs[0])
        np.testing.assert_allclose(outs[0][0], reference.run()[0], atol=1e-5)
    assert engine.input_shapes() == [(1, 3, 48, 192)] and engine.output_shapes() == [(1, 2)]
    for x, out in zip(xs[1:], outs[1:]):  # one binding more than the engine keeps: the oldest is rebound
        engine.run_into([x], out)
    assert engine.binds > binds
    assert engine.prepare([xs[0]], outs[0]) is None  # its request runs other arrays now
    # run() on the engine's own buffers: prepared after its first run, reading what set_input writes
    engine.set_input(0, xs[2])
    first = engine.run()[0].copy()
    engine.set_input(0, xs[3])
    reference.set_input(0, xs[3])
    np.testing.assert_allclose(engine.run()[0], reference.run()[0], atol=1e-5)
    assert not np.array_equal(first, engine.run()[0])
    assert not np.array_equal(first, engine.run()[0])


def test_openvino_takes_images_as_float16_and_finds_what_float32_finds(multi, tmp_path):
    """`f16_images` (default on): a 4-D float input is float16 in the engine process's
    input sets (half the bytes for the engine's core to read), converted inside the model;
    other inputs (PaddleDetection's im_shape, scale_factor) stay float32. The decoded
    results match those of the float32 input within the golden tolerance."""
    from lited.engines.openvino import import_openvino

    ov = import_openvino()
    ops = ov.opset13
    image_in = ops.parameter([1, 3, 8, 8], ov.Type.f32, name="image")
    scale_in = ops.parameter([1, 3], ov.Type.f32, name="scale_factor")
    mean = ops.reduce_mean(image_in, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)  # (1, 3)
    path = str(tmp_path / "two_inputs.xml")
    ov.save_model(ov.Model([ops.multiply(mean, scale_in)], [image_in, scale_in]), path)
    engine = open_engine("openvino", path, {})
    assert [s.dtype for s in engine.inputs] == ["float16", "float32"]
    assert [s.dtype for s in open_engine("openvino", path, {"f16_images": False}).inputs] == ["float32", "float32"]
    engine.set_input(0, np.full((1, 3, 8, 8), 0.5, np.float32))
    engine.set_input(1, np.array([[1.0, 2.0, 1e-3]], np.float32))  # float16 would round 1e-3
    np.testing.assert_array_equal(engine.run()[0], np.array([[0.5, 1.0, np.float32(0.5) * np.float32(1e-3)]]))
    for name in ("ultraface", "fastestdet", "mobilenetv2", "ppocr_cls", "ppocrv4_det"):
        bundle = load_bundle(multi / name)
        half = Model(bundle, engine="openvino", isolated=True)
        full = Model(bundle, engine="openvino", options={"f16_images": False}, isolated=True)
        try:
            assert half.engine.inputs[0].dtype == "float16" and full.engine.inputs[0].dtype == "float32"
            got, expected = half.infer(image(name)), full.infer(image(name))
            assert got.get("detections") or got.get("classes"), name
            assert compare(got, expected) == [], name
        finally:
            half.close()
            full.close()


def test_a_prepared_call_that_fails_leaves_the_run_to_run_into(monkeypatch):
    """The native infer is a private openvino call: if a release changed it, `run()`
    (and the engine process's steady runs, the same way) still answer, through run_into."""
    import lited.engines.openvino as ov_engine

    def changed(*args):
        raise TypeError("infer(): incompatible function arguments")

    engine = open_engine("openvino", str(shared_onnx("ppocr_cls")), {})
    reference = open_engine("onnxruntime", str(shared_onnx("ppocr_cls")), {})
    monkeypatch.setattr(ov_engine, "_native_infer", lambda: changed)
    for i in range(3):
        x = np.random.default_rng(i).random((1, 3, 48, 192)).astype(engine.inputs[0].dtype)
        engine.set_input(0, x)
        reference.set_input(0, x)
        np.testing.assert_allclose(engine.run()[0], reference.run()[0], atol=1e-5)


def _threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("kind, path", [("paddle_lite", "fastestdet/model_x86.nb"),
                                        ("onnxruntime", "fastestdet/onnx/FastestDet.onnx"),
                                        ("openvino", "fastestdet/onnx/FastestDet.onnx")])
def test_each_engine_honours_threads(kind, path):
    """Paddle Lite x86 through OMP_NUM_THREADS in its engine process, the
    others through their own options: 2 threads make more threads than 1."""
    counts = {}
    for threads in (1, 2):
        remote = EngineProcess(kind, str(need_shared("models", path)), {"threads": threads})
        try:
            remote.input_view(0, (1, 3, 352, 352), input_set=0)[...] = 0.5
            remote.run(0, 0)
            assert remote.device.endswith(f"{threads} thread{'s' if threads > 1 else ''}"), remote.device
            if kind == "paddle_lite":
                environ = open(f"/proc/{remote.pid}/environ", "rb").read().split(b"\0")
                assert f"OMP_NUM_THREADS={threads}".encode() in environ
            counts[threads] = _threads_of(remote.pid)
        finally:
            remote.close()
    assert counts[2] > counts[1], counts


def test_two_streams_on_one_model_share_the_cores(tmp_path, multi):
    """Two streams each asking for every core get half of them each: one
    engine process per stream, together no more threads than cores."""
    cores = len(os.sched_getaffinity(0))
    config = {"models": {"det": {"bundle": str(multi / "fastestdet"), "engine": "onnxruntime", "threads": cores}},
              "streams": [{"name": n, "source": "synth://?size=320x240&fps=5", "model": "det"} for n in ("a", "b")]}
    daemon = DaemonProcess(tmp_path, config).start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the request socket answers before the streams are warm
            streams = daemon.client().status()["streams"]
            if len(streams) == 2 and all(s["model"] for s in streams):
                break
            time.sleep(0.2)
        each = max(1, cores // 2)
        assert len(streams) == 2
        for stream in streams:
            assert stream["model"]["engine"] == "onnxruntime"
            assert stream["model"]["device"] == f"cpu, {each} thread{'s' if each > 1 else ''}", stream["model"]
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert "exceed the" in daemon.output()  # said in the log, with what it runs instead


def test_a_reload_runs_the_engine_and_threads_of_the_config_it_reads(tmp_path, multi):
    """A reload made its models with the previous config's engine and threads: a switch came one
    reload late, a config naming an engine the bundle has no file for was taken, and the next good
    one refused with the old one's error."""
    threads = min(2, len(os.sched_getaffinity(0)))
    config = {"models": {"det": {"bundle": str(multi / "fastestdet"), "engine": "onnxruntime", "threads": 1}},
              "streams": [{"name": "cam", "source": "synth://?size=320x240&fps=5", "model": "det"}]}
    daemon = DaemonProcess(tmp_path, config).start()

    def reload_to(engine: str, n: int = 1) -> dict:
        daemon.write_config({**config, "models": {"det": {**config["models"]["det"], "engine": engine,
                                                          "threads": n}}})
        with daemon.client(timeout=120) as client:
            client.reload(timeout=120)
            return client.status()["streams"][0]["model"]

    try:
        daemon.wait_ready()
        model = reload_to("openvino", threads)
        assert (model["engine"], model["device"]) == ("openvino", f"cpu, {threads} thread{'s' * (threads > 1)}"), model
        with pytest.raises(ClientError, match="no file for paddle_inference"):
            reload_to("paddle_inference")
        with daemon.client() as client:
            assert client.status()["streams"][0]["model"]["engine"] == "openvino"  # the old one keeps serving
        assert reload_to("paddle_lite")["engine"] == "paddle_lite"
        # the threads a new bundle's own options ask for apply at the reload that loads it (they came one late)
        bundle = tmp_path / "threaded"
        shutil.copytree(multi / "fastestdet", bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["models"]["x86"][0]["options"] = {"openvino": {"threads": threads}}
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        daemon.write_config({**config, "models": {"det": {"bundle": str(bundle), "engine": "openvino"}}})
        with daemon.client(timeout=120) as client:
            client.reload(timeout=120)
            model = client.status()["streams"][0]["model"]
        assert model["device"] == f"cpu, {threads} thread{'s' * (threads > 1)}", model
    finally:
        assert daemon.stop() == 0, daemon.output()


# --- bundles with several files per target -------------------------------------

def test_the_bundle_order_picks_the_engine_and_inspect_says_why(multi):
    proc = subprocess.run([*LITED, "inspect", "--bundle", str(multi / "fastestdet"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["engine"]["kind"], info["engine"]["file"]) == ("openvino", "model.onnx")
    assert info["engine"]["why"] == "the bundle's first choice"
    assert [(f["file"], f["engines"]) for f in info["models"]["x86"]] == [
        ("model.onnx", ["openvino", "onnxruntime"]), ("model_x86.nb", ["paddle_lite"])]
    proc = subprocess.run([*LITED, "inspect", "--bundle", str(multi / "fastestdet"), "--engine", "paddle_lite"],
                          capture_output=True, text=True, timeout=120)
    assert "model_x86.nb on paddle_lite" in proc.stdout and "asked for" in proc.stdout, proc.stdout


def test_an_engine_not_installed_falls_to_the_next_one_listed(multi, tmp_path):
    """As on a board without OpenVINO: onnxruntime runs the ONNX, says why,
    and the self-test names what it skipped."""
    root = _with_golden(multi / "ultraface", tmp_path / "ultraface")
    code = f"""
import sys
sys.modules["openvino"] = None  # as if the openvino extra were not installed
from lited.bundle import load_bundle
from lited.model import Model
model = Model(load_bundle({str(root)!r}))
print(model.choice.engine, "|", model.choice.why)
from lited.cli import main
sys.exit(main(["selftest", "--bundle", {str(root)!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "onnxruntime | the bundle's choice 2 (openvino not installed)", proc.stdout
    assert "on openvino (model.onnx, fp32): skipped, not installed here (openvino)" in proc.stdout
    assert lines[-1] == "selftest ultraface 1.0.0: ok on onnxruntime, paddle_lite (2 file/engine pairs)"


def test_asking_for_an_engine_the_bundle_does_not_list_is_refused(multi, bundles_dir):
    with pytest.raises(BundleError, match=r"models\.x86: no file for openvino \(the bundle lists paddle_lite"):
        Model(load_bundle(bundles_dir / "fastestdet"), engine="openvino")


def _with_golden(src: Path, dst: Path) -> Path:
    """A copy of the bundle with a golden image whose expectation Paddle Lite gave."""
    shutil.copytree(src, dst)
    shutil.copy(need_shared("images", "astronaut.png"), dst / "golden.png")
    bundle = load_bundle(dst)
    expected = Model(bundle, engine="paddle_lite").infer(cv2.imread(str(dst / "golden.png")))
    manifest = dict(bundle.manifest, golden={"image": "golden.png", "expected": {
        k: expected[k] for k in ("detections", "classes")}})
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_selftest_runs_every_engine_listed_and_catches_the_one_that_disagrees(multi, tmp_path):
    root = _with_golden(multi / "ultraface", tmp_path / "ultraface")
    proc = subprocess.run([*LITED, "selftest", "--bundle", str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for kind, file in (("openvino", "model.onnx"), ("onnxruntime", "model.onnx"), ("paddle_lite", "model_x86.nb")):
        assert f"on {kind} ({file}, fp32): ok (1 detections" in proc.stdout, proc.stdout
    # the ONNX's engines must now find no face: both fail, each named, and Paddle Lite still passes
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"]["x86"][0]["expected"] = {"detections": [], "classes": []}
    (root / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([*LITED, "selftest", "--bundle", str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for kind in ("openvino", "onnxruntime"):
        assert f"on {kind} (model.onnx, fp32) FAILED: detections: 1 found, 0 expected" in proc.stderr, proc.stderr
    assert "on paddle_lite (model_x86.nb, fp32): ok" in proc.stdout
    # an ONNX its engines cannot read (sealed again after the damage): each fails with the reason
    data = bytearray((root / "model.onnx").read_bytes())
    data[len(data) // 2:len(data) // 2 + 4096] = b"\x07" * 4096
    (root / "model.onnx").write_bytes(bytes(data))
    (root / "manifest.json").write_text(json.dumps(seal(manifest, root)))
    proc = subprocess.run([*LITED, "selftest", "--bundle", str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # (from memory, OpenVINO words it "Error during import of ONNX model ...", from a path "FrontEnd API failed")
    assert "on openvino (model.onnx, fp32) FAILED: " in proc.stderr and "OpenVINO refused the model: " \
        in proc.stderr, proc.stderr
    assert "on onnxruntime (model.onnx, fp32) FAILED: " in proc.stderr and "onnxruntime refused the model" \
        in proc.stderr
    assert "on paddle_lite (model_x86.nb, fp32): ok" in proc.stdout


def test_a_corrupt_second_file_refuses_the_bundle(multi, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(multi / "fastestdet", root)
    with open(root / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 8)
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch \(models\.x86\[0\]\.sha256\)"):
        load_bundle(root)


def test_every_listed_engine_s_options_are_checked_at_load(multi, tmp_path):
    """Only the engine that ran here had its option values checked: a bundle whose fallback engine's
    threads were 0 loaded here and failed on the board that falls back to it; Paddle Lite's took
    'abc' (an int() traceback) and 0, and no engine's had a ceiling (1000 threads ran)."""
    cases = [({"onnxruntime": {"threads": 0}}, "options.onnxruntime: option 'threads': expected an integer "
                                               "from 1 to 256, got 0"),
             ({"openvino": {"threads": 1000}}, "options.openvino: option 'threads': expected an integer from 1 "
                                               "to 256, got 1000"),
             ({"openvino": {"pin": "yes"}}, "options.openvino: option 'pin': expected true or false, got 'yes'"),
             ({"onnxruntime": {"device": "tpu"}}, "options.onnxruntime: option 'device': unknown 'tpu'"),
             ({"openvino": {"precision": "xx"}}, "options.openvino: option 'precision': unknown 'xx', expected one "
                                                 "of f32, f16, bf16")]
    for i, (options, said) in enumerate(cases):
        root = tmp_path / f"b{i}"
        shutil.copytree(multi / "fastestdet", root)
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["models"]["x86"][0]["options"] = options
        (root / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=re.escape("models.x86[0]." + said)):
            load_bundle(root)
    root = tmp_path / "lite"
    shutil.copytree(multi / "fastestdet", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"]["x86"][1]["options"] = {"threads": "abc"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape("models.x86[1].options: option 'threads': expected an integer "
                                                    "from 1 to 256, got 'abc'")):
        load_bundle(root)


def test_config_picks_engine_precision_and_threads_per_model(tmp_path, multi):
    from lited.config import ConfigError, parse_config

    cfg = parse_config({"models": {"a": str(multi / "fastestdet"),
                                   "b": {"bundle": str(multi / "ultraface"), "engine": "onnxruntime", "threads": 2}}})
    assert cfg.models["b"] == str(multi / "ultraface")
    assert (cfg.model_settings["b"].engine, cfg.model_settings["b"].threads) == ("onnxruntime", 2)
    assert cfg.model_settings["a"].engine is None
    with pytest.raises(ConfigError) as info:
        parse_config({"models": {"a": {"bundle": "x", "engine": "tflite", "threads": 0, "precision": "int4",
                                       "speed": 1}}})
    for part in ("models.a.engine: unknown \"tflite\"", "models.a.threads: expected an integer from 1",
                 "models.a.precision: unknown \"int4\"", "models.a.speed: unknown field"):
        assert part in str(info.value), str(info.value)


# --- cascades: every stage picks its file and engine --------------------------

def _demo_with_onnx(root: Path) -> Path:
    """The demo cascade with the ONNX originals of its detector and its
    classifier stage listed after their `.nb` (schema 2 in a stage too)."""
    shutil.copytree(DEMO_BUNDLE, root)
    shutil.copy(shared_onnx("ppocrv4_det"), root / "model.onnx")
    shutil.copy(need_shared("models", "ppocr_cls", "onnx", "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                root / "cls_model.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    first, cls = manifest["models"], manifest["stages"][0]["models"]
    first["x86"] = [{**first["x86"], "engines": ["paddle_lite"]}, {"file": "model.onnx", "engines": ["onnxruntime"]}]
    cls["x86"] = [{**cls["x86"], "engines": ["paddle_lite"]},
                  {"file": "cls_model.onnx", "engines": ["onnxruntime", "openvino"]}]
    (root / "manifest.json").write_text(json.dumps(seal({**manifest, "schema": 2}, root)))
    return root


def test_a_stage_lists_several_files_and_runs_on_the_first_stage_engine(tmp_path):
    from lited.bundle import Choice

    bundle = load_bundle(_demo_with_onnx(tmp_path / "demo"))
    cls, rec = bundle.stages
    assert [f.field for f in cls.model_files()] == ["stages[0].models.x86[0]", "stages[0].models.x86[1]"]
    first = bundle.choose()
    assert (first.engine, cls.choose_like(None, first).engine) == ("paddle_lite", "paddle_lite")
    for kind in ("onnxruntime", "openvino"):
        picked = cls.choose_like(None, Choice(first.model, kind, "test"))
        assert (picked.model.path.name, picked.engine, picked.why) == ("cls_model.onnx", kind,
                                                                         "the first stage's engine")
    # a stage that does not list the engine runs on its own first choice
    assert rec.choose_like(None, Choice(first.model, "onnxruntime", "test")).engine == "paddle_lite"

    golden = bundle.golden
    model = Model(bundle, engine="onnxruntime")
    try:
        assert [model.choice.engine] + [s.part.choice.engine for s in model.cascade.stages] == \
            ["onnxruntime", "onnxruntime", "paddle_lite"]
        result = model.infer(cv2.imread(str(bundle.root / golden["image"])))
    finally:
        model.close()
    assert compare(result, golden["expected"], golden.get("tolerance", {})) == []


def test_a_stage_file_is_refused_with_its_field_path(tmp_path):
    root = _demo_with_onnx(tmp_path / "demo")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["stages"][0]["models"]["x86"][1]["engines"] = ["paddle_lite"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"stages\[0\]\.models\.x86\[1\]\.engines: paddle_lite cannot run "
                                          r"\"cls_model\.onnx\""):
        load_bundle(root)
    manifest["stages"][0]["models"]["x86"][1]["engines"] = ["onnxruntime"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "cls_model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"cls_model\.onnx: .* \(truncated or wrong file\)"):
        load_bundle(root)


def _with_int8_listed_first(src: Path, root: Path, only_int8: bool = False) -> Path:
    """A copy of the bundle whose x86 list starts with an int8 file (the ONNX again,
    as an int8 model: selection looks at the manifest only)."""
    shutil.copytree(src, root)
    shutil.copy(root / "model.onnx", root / "model_int8.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    int8 = {"file": "model_int8.onnx", "engines": ["openvino", "onnxruntime"], "precision": "int8"}
    manifest["models"]["x86"] = [int8] + ([] if only_int8 else manifest["models"]["x86"])
    (root / "manifest.json").write_text(json.dumps(seal(manifest, root)))
    return root


def test_an_int8_file_runs_only_when_asked_for_wherever_it_is_listed(multi, tmp_path):
    """A hand-written manifest listing its int8 file first ran it by default (and for
    --engine openvino), where the docs say an int8 model is used only when asked for."""
    bundle = load_bundle(_with_int8_listed_first(multi / "fastestdet", tmp_path / "first"))
    assert (bundle.choose().model.path.name, bundle.choose().why) == \
        ("model.onnx", "the bundle's first choice; model_int8.onnx passed over (int8: only with precision int8)")
    assert bundle.choose(engine="openvino").model.path.name == "model.onnx"
    assert bundle.choose(precision="fp32").why == "asked for (the config, or --precision fp32)"
    assert bundle.choose(precision="int8").model.path.name == "model_int8.onnx"
    only = load_bundle(_with_int8_listed_first(multi / "fastestdet", tmp_path / "only", only_int8=True))
    with pytest.raises(BundleError, match=re.escape("models.x86: only int8 files, which run only when asked for "
                                                    "(precision int8; the bundle lists openvino (int8), "
                                                    "onnxruntime (int8))")):
        only.choose()
    assert only.choose(engine="onnxruntime", precision="int8").engine == "onnxruntime"


def test_a_stage_follows_the_first_stage_engine_at_its_precision_where_it_has_it(tmp_path):
    from lited.bundle import Choice, ModelFile

    bundle = load_bundle(_demo_with_onnx(tmp_path / "demo"))
    cls = bundle.stages[0]
    int8_first = Choice(ModelFile("x86", bundle.root / "x", "", None, ("openvino",), precision="int8"), "openvino",
                        "test")
    picked = cls.choose_like(None, int8_first)  # the stage has no int8 file: that engine's first file
    assert (picked.model.path.name, picked.engine, picked.model.precision, picked.why) == \
        ("cls_model.onnx", "openvino", "fp32", "the first stage's engine")


def _int_outputs_bundle(root: Path) -> Path:
    """A classifier whose second and third outputs are int64 and int32 (tests/data/onnx)."""
    root.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "onnx" / "int_outputs.onnx", root / "model.onnx")
    (root / "labels.txt").write_text("a\nb\nc\nd\ne\n")
    manifest = {"schema": 2, "name": "int_outputs", "version": "1.0.0", "task": "classification",
                "models": {"x86": [{"file": "model.onnx", "engines": ["onnxruntime", "openvino"]}]},
                "inputs": [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}],
                "preprocess": {"color": "RGB", "resize": {"mode": "stretch"}, "scale": 1 / 255, "mean": [0.5] * 3,
                               "std": [0.5] * 3},
                "decoder": {"type": "classification", "top_k": 5, "softmax": False}, "labels": "labels.txt"}
    (root / "manifest.json").write_text(json.dumps(seal(manifest, root)))
    return root


def test_outputs_that_are_not_float32_run_on_every_engine(tmp_path):
    """A PaddleDetection export's row count is int32: onnxruntime bound every output as float32
    from the second run on ("Unexpected output data type"), in the daemon's engine process too."""
    bundle = _int_outputs_bundle(tmp_path / "b")
    pictures = [cv2.imread(str(need_shared("images", f"{n}.png"))) for n in ("chelsea", "coffee", "astronaut")]
    reference = None
    for kind in NEW_ENGINES:
        model = Model(load_bundle(bundle), engine=kind)
        try:
            got = [[(c["label"], round(c["score"], 4)) for c in model.infer(p)["classes"]] for p in pictures + pictures]
        finally:
            model.close()
        reference = reference or got
        assert got == reference, kind
    run = subprocess.run([*LITED, "run", "--bundle", str(bundle), "--engine", "onnxruntime", "--json", "--frames", "6",
                          "--source", f"images://{need_shared('images', 'chelsea.png').parent}?fps=30&loop=1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 6 and all(json.loads(line)["classes"] for line in run.stdout.splitlines())


def test_a_decoder_of_another_layout_is_refused_at_load(multi, tmp_path):
    """A model whose outputs are not its decoder's layout is refused in one line naming decoder.type
    (it failed at its first frame with numpy's words, or decoded garbage)."""
    root = tmp_path / "ultraface"
    shutil.copytree(multi / "ultraface", root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["decoder"] = {"type": "grid"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([*LITED, "infer", "--bundle", str(root), str(need_shared("images", "astronaut.png"))],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "manifest.json: decoder: grid: outputs [[1, 4420, 2], [1, 4420, 4]]: the first is not [1, 5+C, H, W]" \
        in proc.stderr, proc.stderr


def test_an_onnxruntime_error_keeps_the_facts_it_gives_after_its_first_line():
    """ORT says which index and sizes on its second line; the first alone was cut off mid-sentence
    ('... for the following indices')."""
    engine = open_engine("onnxruntime", str(Path(__file__).parent / "data" / "onnx" / "int_outputs.onnx"), {})
    try:
        with pytest.raises(EngineError, match=r"for the following indices; index: 2 Got: 17 Expected: 16$"):
            engine.run_into([np.zeros((1, 3, 17, 16), np.float32)])
    finally:
        engine.close()
