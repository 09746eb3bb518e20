"""The Paddle Inference engine against Paddle Lite on the real models: same
inputs in, same outputs out; plus its refusals, its GPU path (where there is
a GPU), and the promise that nothing else in lited imports paddle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, need_shared
from lited.engines import EngineError, open_engine
from lited.preprocess import Preprocessor
from test_models import IMAGE_FOR, image

try:
    import lited.engines.paddle_inference  # noqa: F401  (imports paddle: seconds)
except ImportError as _exc:
    if os.environ.get("CI") == "true":
        raise  # CI installs the paddle_inference extra: its absence is a failure there
    pytest.skip(f"paddlepaddle is not installed, so no Paddle Inference engine ({_exc}); "
                "pip install -e '.[paddle_inference]'", allow_module_level=True)
import paddle  # noqa: E402

SHAPES = {"ultraface": (1, 3, 240, 320), "fastestdet": (1, 3, 352, 352), "mobilenetv2": (1, 3, 224, 224),
          "ppocrv4_det": (1, 3, 384, 640),  # dynamic in both engines: one fixed size here
          "ppocr_cls": (1, 3, 48, 192)}
ATOL = 1e-4


def _cuda_devices() -> int:
    return paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0


needs_gpu = pytest.mark.skipif(not _cuda_devices(), reason="no CUDA here: paddlepaddle is the CPU build or no GPU "
                               "is visible (runs on a Jetson or a CUDA host with paddlepaddle-gpu)")


@pytest.fixture(scope="module")
def lite():
    """One Paddle Lite engine per model, the reference."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = open_engine("paddle_lite", str(need_shared("models", name, "model_x86.nb")))
        return cache[name]
    return get


def paddle_model(name: str) -> str:
    return str(need_shared("models", name, "paddle", "model.pdmodel"))


def image_input(name: str, shape: tuple) -> np.ndarray:
    """The model's own image through its manifest's preprocessing (tests/bundles)."""
    manifest = json.loads((ROOT / "tests" / "bundles" / f"{name}.json").read_text())
    pre = Preprocessor(manifest["preprocess"], shape)
    pre(image(IMAGE_FOR[name]))
    return pre.tensor


def run(engine, x: np.ndarray) -> list:
    engine.set_input(0, x)
    return engine.run()


@pytest.mark.parametrize("options", [{}, {"mkldnn": True}], ids=["plain", "mkldnn"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_outputs_match_paddle_lite(lite, name, options):
    """Random, image, random again: the first run adopts its output arrays, the
    second checks that the predictor writes into them, the third trusts it
    (with oneDNN, FastestDet's last op swaps the buffer: the copy fallback)."""
    shape = SHAPES[name]
    engine = open_engine("paddle_inference", paddle_model(name), options)
    assert [s.name for s in engine.inputs] == [s.name for s in lite(name).inputs]
    rng = np.random.default_rng(7)
    inputs = {"random": rng.standard_normal(shape, dtype=np.float32), "image": image_input(name, shape),
              "random2": rng.standard_normal(shape, dtype=np.float32)}
    first = None
    for label, x in inputs.items():
        theirs = [o.copy() for o in run(lite(name), x)]
        ours = run(engine, x)
        first = first or list(ours)
        assert len(ours) == len(theirs)
        for a, b, kept in zip(ours, theirs, first):
            assert a is kept, "outputs are reused across runs"
            assert a.shape == b.shape and a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=f"{name} {label}")


def test_dynamic_input_follows_each_new_shape(lite):
    """PP-OCRv4 det sized per image: outputs grow and shrink with the input."""
    engine = open_engine("paddle_inference", paddle_model("ppocrv4_det"))
    assert engine.inputs[0].shape == (-1, 3, -1, -1)
    rng = np.random.default_rng(3)
    for h, w in [(192, 384), (192, 384), (192, 384), (320, 320), (96, 160), (96, 160), (96, 160)]:
        x = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        theirs = run(lite("ppocrv4_det"), x)[0].copy()
        ours = run(engine, x)[0]
        assert ours.shape == (1, 1, h, w)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=ATOL, err_msg=f"{h}x{w}")


def test_inputs_come_from_the_program():
    engine = open_engine("paddle_inference", paddle_model("ultraface"))
    assert [(s.shape, s.dtype) for s in engine.inputs] == [((1, 3, 240, 320), "float32")]
    assert engine.kind == "paddle_inference" and engine.version == paddle.__version__


@pytest.mark.parametrize("options, named", [
    ({"thread": 2}, "'thread'"),
    ({"threads": 0}, "'threads'"),
    ({"mkldnn": "yes"}, "'mkldnn'"),
    ({"device": "tpu"}, "'device'"),
    ({"gpu_mem_mb": 512}, "'gpu_mem_mb'"),  # a GPU option without the GPU
    ({"device": "gpu", "trt": {"precison": "fp16"}}, "'trt.precison'"),
    ({"device": "gpu", "trt": {"precision": "fp8"}}, "'trt.precision'"),
    ({"device": "gpu", "trt": {"shapes": {"x": {"min": [1, 3, 64, 64], "opt": [1, 3, 32, 32],
                                                "max": [1, 3, 96, 96]}}}}, "'trt.shapes.x'"),
])
def test_bad_options_are_refused_by_name_in_one_line(options, named):
    with pytest.raises(EngineError) as err:
        open_engine("paddle_inference", paddle_model("ultraface"), options)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_missing_params_and_broken_program_are_refused_in_one_line(tmp_path):
    src = need_shared("models", "ultraface", "paddle", "model.pdmodel")
    model = tmp_path / "model.pdmodel"
    model.write_bytes(src.read_bytes())
    with pytest.raises(EngineError) as err:
        open_engine("paddle_inference", str(model))
    assert "model.pdiparams: missing" in str(err.value) and "\n" not in str(err.value)
    model.write_bytes(src.read_bytes()[:5000])
    (tmp_path / "model.pdiparams").write_bytes(src.with_suffix(".pdiparams").read_bytes())
    with pytest.raises(EngineError) as err:
        open_engine("paddle_inference", str(model))
    assert "refused the model" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(bool(_cuda_devices()), reason="this machine has CUDA: the GPU tests below cover it")
def test_gpu_without_cuda_is_refused():
    with pytest.raises(EngineError, match="no CUDA"):
        open_engine("paddle_inference", paddle_model("ultraface"), {"device": "gpu"})


@needs_gpu
def test_gpu_and_tensorrt_match_paddle_lite(lite, tmp_path):
    """GPU, then TensorRT fp32 with a serialized-engine cache. Tolerance is
    looser: cuDNN and TensorRT may use TF32 on Ampere (Orin)."""
    cache = tmp_path / "trt"
    for name, trt in [("ultraface", {}),
                      ("ppocrv4_det", {"shapes": {"x2paddle_x": {"min": [1, 3, 32, 32], "opt": [1, 3, 384, 640],
                                                                 "max": [1, 3, 960, 960]}}})]:
        x = image_input(name, SHAPES[name])
        theirs = [o.copy() for o in run(lite(name), x)]
        for options in ({"device": "gpu"}, {"device": "gpu", "trt": {"precision": "fp32", "workspace_mb": 256,
                                                                      "cache_dir": str(cache / name), **trt}}):
            ours = run(open_engine("paddle_inference", paddle_model(name), options), x)
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2, err_msg=f"{name} {options}")
        assert any((cache / name).iterdir()), "TensorRT engines serialized into trt.cache_dir"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_lited_does_not_import_paddle():
    done = _python("""
        import sys, lited, lited.engines, lited.engines.paddle_lite, lited.model
        print(sorted(m for m in sys.modules if m == "paddle" or m.startswith("paddle.")))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_paddle_the_engine_is_reported_not_installed():
    done = _python("""
        import sys
        sys.modules["paddle"] = None  # as if the paddle_inference extra were not installed
        from lited.engines import EngineError, open_engine
        try:
            open_engine("paddle_inference", "model.pdmodel")
        except EngineError as exc:
            print(exc)
    """)
    assert done.stdout.strip() == "engine 'paddle_inference' is not installed here (paddlepaddle)", done.stderr


def test_the_process_keeps_its_sigterm_handler():
    """`import paddle` takes over SIGTERM (and SIGSEGV, ...): the engine gives it back."""
    done = _python(f"""
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *_: (print("handled"), sys.exit(0)))
        import numpy as np
        from lited.engines import open_engine
        engine = open_engine("paddle_inference", {paddle_model("ppocr_cls")!r})
        engine.set_input(0, np.zeros((1, 3, 48, 192), np.float32))
        engine.run()
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    """)
    assert (done.returncode, done.stdout.strip()) == (0, "handled"), done.stderr[-2000:]
