"""A bundle whose model runs on Paddle Inference (the Jetson/CUDA path),
on this machine's CPU: validated, inspected, inferred and streamed like a
Paddle Lite bundle, with the same results."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import cv2
import pytest

from conftest import need_shared
from lited.bundle import BundleError, load_bundle, seal
from lited.model import Model
from lited.stream import Stream


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory, bundles_dir):
    try:
        import paddle  # noqa: F401
    except ImportError:
        if __import__("os").environ.get("CI") == "true":
            pytest.fail("paddlepaddle is not installed (make test installs the paddle_inference extra)")
        pytest.skip("paddlepaddle is not installed (pip install '.[paddle_inference]')")
    src = need_shared("models", "fastestdet", "paddle")
    root = tmp_path_factory.mktemp("pi") / "fastestdet_pi"
    shutil.copytree(bundles_dir / "fastestdet", root)
    (root / "model_x86.nb").unlink()
    shutil.copy(src / "model.pdmodel", root / "model.pdmodel")
    shutil.copy(src / "model.pdiparams", root / "model.pdiparams")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["models"] = {"x86": {"file": "model.pdmodel", "engine": "paddle_inference",
                                  "params": {"file": "model.pdiparams"}, "options": {"threads": 1}}}
    (root / "manifest.json").write_text(json.dumps(seal(manifest, root)))
    return root


def test_same_results_as_paddle_lite(pi_bundle, bundles_dir):
    lite, inference = Model(load_bundle(bundles_dir / "fastestdet")), Model(load_bundle(pi_bundle))
    assert inference.engine.kind == "paddle_inference" and inference.engine.device == "cpu, 1 thread"
    for name in ("chelsea", "coffee"):
        image = cv2.imread(str(need_shared("images", f"{name}.png")))
        a, b = lite.infer(image)["detections"], inference.infer(image)["detections"]
        assert [d["label"] for d in a] == [d["label"] for d in b]
        for x, y in zip(a, b):
            assert abs(x["score"] - y["score"]) < 1e-4
            assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) < 0.05


def test_a_pipeline_runs_on_it_end_to_end(pi_bundle):
    bundle = load_bundle(pi_bundle)
    results = []
    stream = Stream("pi", "synth://?size=320x240&fps=0&frames=20", lambda: Model(bundle, isolated=True), results.append)
    stream.start()
    deadline = time.monotonic() + 60
    while stream.state != "ended" and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.stop()
    assert [r["seq"] for r in results] == list(range(20))
    assert all(r["model"] == "fastestdet" for r in results)


def test_inspect_shows_engine_and_device(pi_bundle):
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "inspect", "--bundle", str(pi_bundle)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "on paddle_inference 2.6.2 (cpu, 1 thread)" in proc.stdout


def test_params_file_is_checked_like_the_model(pi_bundle, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(pi_bundle, broken)
    data = bytearray((broken / "model.pdiparams").read_bytes())
    data[100] ^= 0xFF
    (broken / "model.pdiparams").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.pdiparams: sha256 mismatch \(models.x86.params.sha256\)"):
        load_bundle(broken)
    (broken / "model.pdiparams").unlink()
    with pytest.raises(BundleError, match=r"model.pdiparams: missing"):
        load_bundle(broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["models"]["x86"]["params"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"models.x86.params: missing: paddle_inference needs its .pdiparams beside it"):
        load_bundle(broken)
