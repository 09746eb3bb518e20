"""`lited infer` and `lited inspect` as a user runs them: real processes."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import DEMO_BUNDLE, need_shared


def lited(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lited.cli", *args], capture_output=True, text=True, timeout=120)


def test_infer_json_one_object_per_image_with_the_agreed_keys(bundles_dir):
    chelsea, coffee = need_shared("images", "chelsea.png"), need_shared("images", "coffee.png")
    proc = lited("infer", "--bundle", str(bundles_dir / "fastestdet"), "--json", str(chelsea), str(coffee))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in lines] == [str(chelsea), str(coffee)]
    for r in lines:
        assert set(r) == {"image", "task", "detections", "classes", "timings_ms"}
        assert set(r["timings_ms"]) == {"preprocess", "infer", "postprocess"}
        for d in r["detections"]:
            assert set(d) == {"label", "score", "box"} and len(d["box"]) == 4
    assert lines[0]["detections"][0]["label"] == "cat"


def test_infer_human_table(bundles_dir):
    proc = lited("infer", "--bundle", str(bundles_dir / "mobilenetv2"), str(need_shared("images", "chelsea.png")))
    assert proc.returncode == 0, proc.stderr
    assert "[classification]" in proc.stdout and "cat" in proc.stdout and "infer" in proc.stdout


def test_inspect_shows_manifest_model_and_paddle_lite_version():
    proc = lited("inspect", "--bundle", str(DEMO_BUNDLE))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "demo_ppocrv4 1.0.0" in out and "paddle_lite v2.13-rc" in out
    assert "input  " in out and "output save_infer_model" in out and "kernels host,x86" in out
    info = json.loads(lited("inspect", "--bundle", str(DEMO_BUNDLE), "--json").stdout)
    assert info["engine"]["outputs"][0]["shape"][:2] == [1, 1]
    assert set(info["models"]) == {"x86", "arm"} and info["models"]["arm"][0]["targets"] == ["arm", "host"]


def test_a_bad_image_is_one_line_exit_2_and_no_output(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    proc = lited("infer", "--bundle", str(DEMO_BUNDLE), str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"lited: {bad}: not a readable image"
    proc = lited("--debug", "infer", "--bundle", str(tmp_path / "no-bundle"), str(bad))
    assert "Traceback" in proc.stderr
