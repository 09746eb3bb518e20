"""tools/build_sdk.py: config import (fast, pure), rebuilds of real models and
broken inputs (slow: they run the converters in the tools venv).

The rebuilt `.nb` files are compared with the shared ones by running both
with paddlelite on the same real image: the same conversion never gives the
same bytes twice, but must give the same outputs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, need_shared, shared_onnx

from lited.sdk import BuildError
from lited.sdk.config_import import import_config, import_configs
from lited.sdk.inputs import merge_inputs
from lited.sdk.labels import resolve

DATA = ROOT / "tests" / "data"
BUILD_SDK = ROOT / "tools" / "build_sdk.py"
TOOLS_VENV = Path(os.environ.get("LITED_TOOLS_VENV", ROOT / ".venv-tools"))
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _skip_or_fail(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(autouse=True)
def _need_yaml() -> None:
    try:
        import yaml  # noqa: F401
    except ImportError:
        _skip_or_fail("pyyaml is not installed (the config importers read YAML)")


@pytest.fixture
def tools_python() -> Path:
    python = TOOLS_VENV / "bin" / "python"
    if not python.is_file():
        _skip_or_fail(f"{TOOLS_VENV} is absent (make tools-venv)")
    return python


def imported(path: Path) -> dict:
    fields = import_config(path)
    fields["labels"] = resolve(fields.get("labels"))
    return fields


# --- (a) config import -------------------------------------------------------

def test_paddledet_fixed_size_export() -> None:
    assert imported(DATA / "ppdet_yolo" / "infer_cfg.yml") == {
        "task": "detection",
        "inputs": [{"name": "image", "shape": [1, 3, 640, 640], "dtype": "float32"}],
        "preprocess": {"color": "RGB", "resize": {"mode": "stretch", "interpolation": "cubic"},
                       "scale": 1 / 255, **IMAGENET, "layout": "NCHW"},
        "decoder": {"type": "boxes", "score_threshold": 0.4, "top_k": 100},
        "labels": ["person", "bicycle", "car"],
    }


def test_paddledet_keep_ratio_with_pad_stride() -> None:
    assert imported(DATA / "ppdet_rcnn" / "infer_cfg.yml") == {
        "task": "detection",
        "inputs": [{"name": "image", "shape": [1, 3, -1, -1], "dtype": "float32"}],
        "preprocess": {"color": "RGB",
                       "resize": {"mode": "keep_ratio", "interpolation": "linear", "max_side": 1333,
                                  "min_side": 800, "multiple": 32},
                       "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "layout": "NCHW"},
        "decoder": {"type": "boxes", "score_threshold": 0.6, "top_k": 300},
        "labels": ["aeroplane", "bicycle"],
    }


def test_paddledet_letterbox(tmp_path: Path) -> None:
    cfg = tmp_path / "infer_cfg.yml"
    cfg.write_text("arch: YOLO\nPreprocess:\n- {type: LetterBoxResize, target_size: [608, 1088]}\n"
                   "- {type: NormalizeImage, mean: [0, 0, 0], std: [1, 1, 1], is_scale: true}\n"
                   "- {type: Permute}\n")
    fields = imported(cfg)
    assert fields["preprocess"]["resize"] == {"mode": "letterbox", "interpolation": "area", "pad_value": 127.5,
                                              "align": "center"}
    assert fields["inputs"][0]["shape"] == [1, 3, 608, 1088]
    assert fields["decoder"] == {"type": "boxes", "score_threshold": 0.5, "top_k": 100}
    assert fields["labels"] is None


def test_paddleclas_short_side_crop_with_class_id_map() -> None:
    assert imported(DATA / "ppcls" / "inference_cls.yaml") == {
        "task": "classification",
        "inputs": [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}],
        "preprocess": {"color": "RGB",
                       "resize": {"mode": "short_side_crop", "interpolation": "linear", "short_side": 256},
                       "scale": 1 / 255, **IMAGENET, "layout": "NCHW"},
        "decoder": {"type": "classification", "top_k": 3, "softmax": False},
        "labels": ["tench", "goldfish", "great white shark"],  # class_id_map.txt lists id 1 first
    }


def test_paddleclas_flat_postprocess_and_plain_resize(tmp_path: Path) -> None:
    cfg = tmp_path / "inference.yaml"
    cfg.write_text("PreProcess:\n  transform_ops:\n    - ResizeImage: {size: [320, 240], interpolation: area}\n"
                   "PostProcess: {name: Topk, topk: 1}\n")
    fields = imported(cfg)
    # PaddleClas sizes are (w, h); no ToCHWImage keeps HWC; no NormalizeImage feeds raw pixels
    assert fields["inputs"][0]["shape"] == [1, 240, 320, 3]
    assert fields["preprocess"] == {"color": "RGB", "resize": {"mode": "stretch", "interpolation": "area"},
                                    "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                                    "layout": "NHWC"}
    assert fields["decoder"] == {"type": "classification", "top_k": 1, "softmax": False}


def test_manifest_fragment_in_yaml() -> None:
    assert imported(DATA / "fragment.yaml") == {
        "task": "text_orientation",
        "inputs": [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}],
        "preprocess": {"color": "BGR", "resize": {"mode": "stretch", "interpolation": "linear"},
                       "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "decoder": {"type": "classification", "top_k": 2, "softmax": False},
        "labels": ["up", "down"],
    }


def test_later_config_wins(tmp_path: Path) -> None:
    override = tmp_path / "thresholds.json"
    override.write_text(json.dumps({"decoder": {"score_threshold": 0.25}, "version": "2.0.0"}))
    fields = import_configs([DATA / "ppdet_yolo" / "infer_cfg.yml", override])
    assert fields["decoder"] == {"type": "boxes", "score_threshold": 0.25, "top_k": 100}
    assert fields["version"] == "2.0.0" and fields["preprocess"]["resize"]["mode"] == "stretch"


@pytest.mark.parametrize("config", ["ppdet_yolo/infer_cfg.yml", "ppdet_rcnn/infer_cfg.yml",
                                    "ppcls/inference_cls.yaml", "fragment.yaml"])
def test_imported_fields_pass_lited_validation(config: str, tmp_path: Path) -> None:
    from lited.bundle import validate_manifest

    fields = imported(DATA / config)
    (tmp_path / "model_x86.nb").write_bytes(b"\0")
    (tmp_path / "labels.txt").write_text("\n".join(fields["labels"]) + "\n")
    manifest = {"schema": 1, "name": "t", "version": "1", "task": fields["task"],
                "models": {"x86": {"file": "model_x86.nb", "sha256": "0" * 64, "size": 1}},
                "inputs": fields["inputs"], "preprocess": fields["preprocess"], "decoder": fields["decoder"],
                "labels": "labels.txt"}
    assert validate_manifest(manifest, tmp_path) == []


def test_text_inputs_not_in_utf8_are_one_line_and_a_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    """A GBK labels file, fragment or infer_cfg.yml (PaddleClas and PaddleDetection files saved on
    Chinese Windows) was a UnicodeDecodeError traceback; a UTF-8 one with a byte-order mark kept it
    in the first label."""
    from lited.sdk.labels import LabelFile

    gbk = tmp_path / "标签 gbk.txt"
    gbk.write_bytes("人脸\n车辆\n".encode("gbk"))
    with pytest.raises(BuildError, match=r"^--labels: .*标签 gbk\.txt: not UTF-8 text \(byte 0: save it as UTF-8\)$"):
        LabelFile(gbk, origin="--labels").read()
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + "人脸\n车辆\n".encode())
    assert LabelFile(bom).read() == ["人脸", "车辆"]
    fragment = tmp_path / "fragment.json"
    fragment.write_bytes(b"\xef\xbb\xbf" + json.dumps({"decoder": {"type": "classification"}}).encode())
    assert import_configs([fragment])["decoder"] == {"type": "classification"}
    infer_cfg = tmp_path / "infer_cfg.yml"
    infer_cfg.write_bytes((DATA / "ppdet_yolo" / "infer_cfg.yml").read_bytes() + "# 说明\n".encode("gbk"))
    with pytest.raises(BuildError, match=r"^config: .*infer_cfg\.yml: not UTF-8 text \(byte \d+"):
        import_configs([infer_cfg])


@pytest.mark.slow
def test_build_sdk_under_a_latin1_locale_names_a_chinese_file_as_written(tools_python: Path, tmp_path: Path) -> None:
    """The re-check: under en_US.ISO-8859-1 build_sdk read `人脸.onnx` as Latin-1 and named it
    'äººè\x84¸'; it runs in Python's UTF-8 mode as lited does."""
    from conftest import locale_env

    env = locale_env(tmp_path, "en_US.ISO-8859-1")
    model = tmp_path / "人脸目录" / "人脸.onnx"
    model.parent.mkdir()
    shutil.copy(shared_onnx("fastestdet"), model)
    fragment = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    fragment.pop("name", None)  # named after the model's file, then
    (tmp_path / "frag.json").write_text(json.dumps(fragment))
    proc = subprocess.run([str(tools_python), str(BUILD_SDK), "--model", str(model), "--config",
                           str(tmp_path / "frag.json"), "--labels",
                           str(need_shared("models", "fastestdet") / "labels.txt"), "--targets", "x86", "--out",
                           str(tmp_path / "x.zip")], capture_output=True, timeout=300, env=env)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and err.startswith("build_sdk: --name: '人脸' has no letter or digit"), err


def test_a_model_named_in_other_characters_only_asks_for_a_name() -> None:
    """`人脸检测 模型.onnx` (or `model.onnx` in `人脸检测/`) was named after a folder further up
    (`tmp`, `home`)."""
    from lited.sdk.builder import _default_name

    for model in ("/tmp/输入 文件/人脸检测 模型.onnx", "/srv/人脸检测/model.onnx"):
        with pytest.raises(BuildError, match=r"^--name: '人脸检测.*' has no letter or digit a bundle name may hold"):
            _default_name(Path(model))
    assert _default_name(Path("/srv/face_v2/model.onnx")) == "face_v2"


@pytest.mark.parametrize("prefix", ["", "x2paddle_"])
def test_paddledet_extra_inputs_are_filled(prefix: str) -> None:
    """im_shape and scale_factor are not images: lited fills them per frame."""
    feeds = [{"name": f"{prefix}{n}", "shape": shape, "dtype": "float32"}
             for n, shape in [("im_shape", [-1, 2]), ("image", [-1, 3, -1, -1]), ("scale_factor", [-1, 2])]]
    config = import_config(DATA / "ppdet_yolo" / "infer_cfg.yml")["inputs"]
    assert merge_inputs(feeds, config) == [
        {"name": f"{prefix}im_shape", "shape": [1, 2], "dtype": "float32", "fill": "im_shape"},
        {"name": f"{prefix}image", "shape": [1, 3, 640, 640], "dtype": "float32"},
        {"name": f"{prefix}scale_factor", "shape": [1, 2], "dtype": "float32", "fill": "scale_factor"}]


def test_a_config_that_leaves_a_fixed_size_dynamic_is_said() -> None:
    """The model's fixed size wins, as before, but it was taken in silence."""
    feeds = [{"name": "image", "shape": [1, 3, 320, 320], "dtype": "float32"}]
    notes: list = []
    assert merge_inputs(feeds, [{"name": "image", "shape": [-1, 3, -1, -1]}], notes)[0]["shape"] == [1, 3, 320, 320]
    assert notes == ["inputs.image.shape: the config leaves [-1, 3, -1, -1] dynamic (-1) where the model fixes "
                     "[1, 3, 320, 320]: the bundle takes the model's sizes (export the model with dynamic sizes "
                     "to keep them)"]
    merge_inputs(feeds, [{"name": "image", "shape": [-1, 3, 320, 320]}], notes)  # a dynamic batch is no news
    assert len(notes) == 1


def test_extra_input_of_another_shape_is_refused() -> None:
    feeds = [{"name": "image", "shape": [-1, 3, 64, 64], "dtype": "float32"},
             {"name": "scale_factor", "shape": [-1, 4], "dtype": "float32"}]
    with pytest.raises(BuildError, match=r"inputs\.scale_factor: shape \[-1, 4\], expected \[-1, 2\]"):
        merge_inputs(feeds, None)


def test_unknown_op_is_named() -> None:
    with pytest.raises(BuildError, match=r"^infer_cfg\.yml: Preprocess\[2\]: unknown op 'GridMask'"):
        import_config(DATA / "ppdet_gridmask" / "infer_cfg.yml")


@pytest.mark.parametrize("name, text, message", [
    ("inference.yaml", "PreProcess:\n  transform_ops:\n    - ResizeImage: {resize_short: 256}\n"
     "    - RandFlipImage: {flip_code: 1}\n",
     r"inference\.yaml: PreProcess\.transform_ops\[1\]: unknown op 'RandFlipImage'"),
    ("inference.yaml", "PreProcess:\n  transform_ops:\n    - ResizeImage: {size: 224, backend: pil}\n",
     r"ResizeImage: backend 'pil'"),
    ("inference.yaml", "PreProcess:\n  transform_ops:\n    - ResizeImage: {size: 224}\n"
     "PostProcess: {main_indicator: ThreshOutput, ThreshOutput: {threshold: 0.5}}\n",
     r"PostProcess: 'ThreshOutput' has no lited decoder"),
    ("infer_cfg.yml", "arch: YOLO\nPreprocess:\n- {type: Resize, target_size: 320, keep_ratio: false, max_size: 9}\n",
     r"Preprocess\[0\]: Resize: unknown parameter 'max_size'"),
    ("infer_cfg.yml", "arch: YOLO\nPreprocess:\n- {type: Resize, target_size: 320, keep_ratio: false, interp: 4}\n",
     r"interp 4 has no lited equivalent"),
    ("infer_cfg.yml", "arch: PicoDet\nNMS: {keep_top_k: 100}\nfpn_stride: 8\n"
     "Preprocess:\n- {type: Resize, target_size: 320, keep_ratio: false}\n",
     r"infer_cfg\.yml: fpn_stride: expected a list of positive strides, got 8"),
    ("infer_cfg.yml", "arch: HRNet\nPreprocess: []\n", r"keypoints"),
    ("infer_cfg.yml", "arch: YOLO\nPreprocess:\n- {type: Permute}\n", r"no Resize or LetterBoxResize"),
    ("frag.json", '{"decoder": {"type": "grid"}, "colour": "RGB"}', r"frag\.json: unknown key 'colour'"),
    ("notes.yaml", "hello: world\n", r"neither a PaddleDetection"),
])
def test_bad_config_is_refused_by_name(tmp_path: Path, name: str, text: str, message: str) -> None:
    cfg = tmp_path / name
    cfg.write_text(text)
    with pytest.raises(BuildError, match=message):
        import_config(cfg)


def test_a_stage_from_a_bundle_that_lists_several_files_takes_its_nb(tmp_path: Path) -> None:
    """A bundle built from ONNX lists the ONNX (and an int8 file) beside the .nb (schema 2): as a
    cascade stage it gives its full-precision .nb, as the docs say (it crashed the builder with
    "'list' object has no attribute 'items'")."""
    from lited.sdk.stages import add_stages

    stage = tmp_path / "kind"
    stage.mkdir()
    for name in ("model.onnx", "model_x86.nb", "model_int8.onnx", "labels.txt"):
        (stage / name).write_bytes(name.encode())
    files = [{"file": "model_int8.onnx", "engines": ["openvino"], "precision": "int8", "expected": {}},
             {"file": "model.onnx", "engines": ["openvino", "onnxruntime"], "sha256": "0", "size": 10},
             {"file": "model_x86.nb", "engine": "paddle_lite", "sha256": "0", "size": 12}]
    (stage / "manifest.json").write_text(json.dumps({
        "schema": 2, "name": "kind", "version": "1.0.0", "task": "classification", "models": {"x86": files},
        "inputs": [{"name": "x", "shape": [-1, 3, 32, 32], "dtype": "float32"}], "preprocess": {},
        "decoder": {"type": "classification"}, "labels": "labels.txt"}))
    root = tmp_path / "bundle"
    root.mkdir()
    [made] = add_stages([{"name": "kind", "bundle": str(stage), "batch": 4}], ["x86"], root, tmp_path)
    assert made["models"] == {"x86": {"file": "kind_model_x86.nb", "engine": "paddle_lite"}}
    assert (root / "kind_model_x86.nb").read_bytes() == b"model_x86.nb" and made["labels"] == "kind_labels.txt"


def test_missing_tools_venv_tells_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "LITED_TOOLS_VENV": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, str(BUILD_SDK), "--model", "m.onnx", "--out", "x.zip"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "make tools-venv" in proc.stderr and "pip install -r" in proc.stderr


# --- (b) rebuilds of real models ---------------------------------------------

def run_build_sdk(python: Path, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), str(BUILD_SDK), *map(str, args)], capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL, cwd=cwd)


COPY_ONNX = """
import json, sys
from pathlib import Path
import onnx, onnxruntime
from lited.sdk.engine_files import copy_onnx
src, work = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
for shape in ([1, 3, -1, -1], [1, 3, 16, 16]):
    root = work / str(len(out)); root.mkdir()
    out[str(shape)] = copy_onnx(src, root, [{"name": "x", "shape": shape}])
external = work / "ext"; external.mkdir()
onnx.save_model(onnx.load(str(src)), str(external / "m.onnx"), save_as_external_data=True,
                location="m.data", size_threshold=0)
root = work / "from_external"; root.mkdir()
out["external"] = copy_onnx(external / "m.onnx", root, [{"name": "x", "shape": [1, 3, 16, 16]}])
out["files"] = sorted(p.name for p in root.iterdir())
out["runs"] = len(onnxruntime.InferenceSession(str(root / "model.onnx")).get_outputs())  # no m.data here
print(json.dumps(out))
"""


def test_the_onnx_is_kept_only_as_one_file_that_takes_the_bundle_inputs(tools_python: Path, tmp_path: Path) -> None:
    """A config that makes a side dynamic which the ONNX fixes leaves the ONNX out (it would fail on
    the first other size); weights in an external data file are written into model.onnx."""
    proc = subprocess.run([str(tools_python), "-c", COPY_ONNX, str(ROOT / "tests/data/onnx/int_outputs.onnx"),
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["[1, 3, -1, -1]"] == [None, "it fixes input 'x' to [1, 3, 16, 16] (-1: any), the bundle's is "
                                           "[1, 3, -1, -1]"]
    assert out["[1, 3, 16, 16]"] == ["model.onnx", None]
    assert out["external"] == ["model.onnx", None] and out["files"] == ["model.onnx"] and out["runs"] == 3


def unzip_bundle(zip_path: Path, name: str, dest: Path) -> Path:
    """Extract, checking the zip holds only regular files under `name/`."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            assert info.filename.startswith(f"{name}/") and ".." not in info.filename.split("/")
            assert (info.external_attr >> 16) & 0o170000 == 0o100000, f"{info.filename} is not a regular file"
        zf.extractall(dest)
    return dest / name


def outputs(nb: Path, image: np.ndarray) -> list:
    from paddlelite import lite

    config = lite.MobileConfig()
    config.set_model_from_file(str(nb))
    predictor = lite.create_paddle_predictor(config)
    predictor.get_input(0).from_numpy(image)
    predictor.run()
    return [np.array(predictor.get_output(i).numpy(), copy=True)
            for i in range(len(predictor.get_output_names()))]


def model_input(image_path: Path, shape: list) -> np.ndarray:
    import cv2

    _, _, height, width = shape
    image = cv2.resize(cv2.imread(str(image_path)), (width, height)).astype(np.float32) / 255
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def check_rebuilt(zip_path: Path, name: str, shared: Path, image: Path, tmp_path: Path) -> dict:
    """The bundle is valid for lited and its x86 model computes what the shared one does."""
    from lited.bundle import file_specs, load_bundle, sha256_file

    root = unzip_bundle(zip_path, name, tmp_path / "unzipped")
    bundle = load_bundle(root)
    manifest = bundle.manifest
    assert manifest["paddle_lite_version"] == "v2.13-rc"
    for spec in manifest["models"].values():
        for entry in file_specs(spec):
            for part in (entry, entry.get("params")):
                if part:
                    path = root / part["file"]
                    assert part["size"] == path.stat().st_size and part["sha256"] == sha256_file(path)
    assert (root / "README.md").is_file() and (root / manifest["golden"]["image"]).is_file()
    names = (shared / "labels.txt").read_text().splitlines()
    assert bundle.labels == [line.strip() for line in names if line.strip()]
    x = model_input(image, manifest["inputs"][0]["shape"])
    rebuilt, reference = outputs(root / "model_x86.nb", x), outputs(shared / "model_x86.nb", x)
    assert [o.shape for o in rebuilt] == [o.shape for o in reference]
    for new, old in zip(rebuilt, reference):
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-4)
    return manifest


@pytest.mark.slow
def test_rebuild_ultraface_from_onnx(tools_python: Path, tmp_path: Path) -> None:
    """From ONNX: the .nb per target, the ONNX beside it (OpenVINO first on x86,
    Paddle Lite first on ARM), an OpenVINO IR and an int8 model when asked,
    the golden image self-tested on every engine listed, and the int8 model's
    accuracy against fp32 reported beside its speed."""
    shared = need_shared("models", "ultraface")
    image = need_shared("images", "astronaut.png")
    out = tmp_path / "ultraface_sdk.zip"
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "version-RFB-320.onnx",
                         "--config", ROOT / "tests" / "bundles" / "ultraface.json", "--labels", shared / "labels.txt",
                         "--golden", image, "--targets", "x86,arm", "--out", out, "--openvino-ir",
                         "--int8", need_shared("images"), "--int8-engine", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    manifest = check_rebuilt(out, "ultraface", shared, image, tmp_path)
    assert manifest["schema"] == 2 and set(manifest["models"]) == {"x86", "arm"}
    assert [(e["file"], e.get("engines", [e.get("engine")]), e.get("precision", "fp32"))
            for e in manifest["models"]["x86"]] == [
        ("model.xml", ["openvino"], "fp32"), ("model.onnx", ["onnxruntime"], "fp32"),
        ("model_x86.nb", ["paddle_lite"], "fp32"), ("model_int8.onnx", ["onnxruntime"], "int8")]
    assert [e["file"] for e in manifest["models"]["arm"]] == ["model_arm.nb", "model.onnx", "model.xml",
                                                              "model_int8.onnx"]
    assert manifest["inputs"] == [{"name": "x2paddle_input", "shape": [1, 3, 240, 320], "dtype": "float32"}]
    faces = manifest["golden"]["expected"]["detections"]
    assert [d["label"] for d in faces] == ["face"] and faces[0]["score"] > 0.9
    for kind, file in (("openvino", "model.xml"), ("onnxruntime", "model.onnx"), ("paddle_lite", "model_x86.nb"),
                       ("onnxruntime", "model_int8.onnx")):
        assert f"on {kind} ({file}, " in proc.stdout and f"on {kind} ({file}, fp32) FAILED" not in proc.stdout
    # onnxruntime's quantiser wrote 523 warning lines on stderr, which holds only an error line
    assert "appears in graph inputs" not in proc.stderr and "qdq_quantizer" not in proc.stderr, proc.stderr[-2000:]
    report = next(line for line in proc.stdout.splitlines() if line.startswith("build_sdk: int8 (onnxruntime, 4 "))
    assert "matched at IoU 0.7 (recall" in report and " ms a run (x" in report and " MB" in report, report
    assert "## Int8" in (tmp_path / "unzipped" / "ultraface" / "README.md").read_text()


@pytest.mark.slow
def test_rebuild_fastestdet_from_paddle_dir(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "fastestdet")
    image = need_shared("images", "chelsea.png")
    out = tmp_path / "fastestdet_sdk.zip"
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--golden", image, "--targets", "x86", "--name", "fastestdet", "--version", "0.3.1",
                         "--out", out)
    assert proc.returncode == 0, proc.stderr
    manifest = check_rebuilt(out, "fastestdet", shared, image, tmp_path)
    assert manifest["version"] == "0.3.1" and set(manifest["models"]) == {"x86"}
    assert "cat" in [d["label"] for d in manifest["golden"]["expected"]["detections"]]


# --- (c) broken inputs: one line, exit code 2 ----------------------------------

def assert_refused(proc: subprocess.CompletedProcess, *messages: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("build_sdk: "), proc.stderr
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_missing_params_file(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "fastestdet")
    shutil.copy(shared / "paddle" / "model.pdmodel", tmp_path / "model.pdmodel")
    proc = run_build_sdk(tools_python, "--model", tmp_path / "model.pdmodel", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, "params file model.pdiparams is missing beside model.pdmodel")
    assert not (tmp_path / "x.zip").exists()


def test_outputs_that_cannot_be_written_are_refused_before_conversion(tools_python: Path, tmp_path: Path) -> None:
    """An --out that is a directory failed after the whole build with a traceback (exit 1) and left a
    .part file; outputs under a file, or a --workdir that is one, failed with a traceback; a mistyped
    --lited-venv shipped a bundle nothing had checked, exit 0."""
    shared = need_shared("models", "ultraface")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {("--out", "dir"): "--out: {t}/dir: is a directory (give the zip's file name)",
             ("--out", "file/x.zip"): "--out: {t}/file/x.zip: {t}/file is not a directory",
             ("--workdir", "file"): "--workdir: {t}/file: exists and is not a directory",
             ("--keep-dir", "file"): "--keep-dir: {t}/file: exists and is not a directory",
             ("--lited-venv", "nonexistent"): "--lited-venv: {t}/nonexistent: no lited there "
                                               "({t}/nonexistent/bin/lited)"}
    for (flag, value), message in cases.items():
        extra = [] if flag == "--out" else ["--out", tmp_path / "ok.zip"]
        t0 = time.monotonic()
        proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "version-RFB-320.onnx", "--config",
                             ROOT / "tests" / "bundles" / "ultraface.json", "--targets", "x86", flag,
                             tmp_path / value, *extra)
        assert_refused(proc, message.format(t=tmp_path))
        assert time.monotonic() - t0 < 30, (flag, "refused only after the conversion")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]
    # a model that is not there is said first (without --config it was "no --config", the black-box audit)
    proc = run_build_sdk(tools_python, "--model", tmp_path / "nothere.onnx", "--out", tmp_path / "ok.zip")
    assert_refused(proc, f"--model: {tmp_path}/nothere.onnx: not found")


def test_x2paddle_keyerror_says_where_its_shape_inference_stopped() -> None:
    """x2paddle's `KeyError: 0` was the whole message (a quantized ONNX, a dynamic side): the line
    its log has before it names the op."""
    from lited.sdk.proc import reason

    log = "Shape inferencing ...\nStopping at incomplete shape inference at {op}: t_1\nTraceback:\nKeyError: 0\n"
    assert reason(log.format(op="QLinearAdd")).startswith(
        "a quantized ONNX model, which it cannot convert (shape inference stopped at QLinearAdd, t_1)")
    assert reason(log.format(op="Mul")).startswith(
        "shape inference stopped at Mul (t_1), KeyError: 0: give the input's sides in the config's `inputs`")


def test_onnxruntime_int8_of_an_opset_11_resize(tools_python: Path, tmp_path: Path) -> None:
    """NanoDet-m's opset-11 Resize, converted to opset 13 for per-channel QDQ, named both `scales` and
    `sizes`: onnxruntime refused the graph and build_sdk ended in a traceback, its work folder left behind."""
    onnx_file = need_shared("models", "nanodet_m", "onnx", "nanodet_m.onnx")
    script = f"""
import numpy as np, onnxruntime as ort
from pathlib import Path
from lited.sdk import int8
frames = [[np.random.default_rng(i).random((1, 3, 416, 416), dtype=np.float32)] for i in range(2)]
out = int8.quantize("onnxruntime", Path({str(onnx_file)!r}), frames, Path({str(tmp_path)!r}), Path({str(tmp_path)!r}))
session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
print([list(o.shape) for o in session.run(None, {{session.get_inputs()[0].name: frames[0][0]}})])
"""
    proc = subprocess.run([str(tools_python), "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "runtime")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[[1, 2704, 80], [1, 676, 80], [1, 169, 80], [1, 2704, 32], " \
                                                    "[1, 676, 32], [1, 169, 32]]", proc.stdout


@pytest.mark.slow
def test_int8_needs_the_onnx_model(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "fastestdet")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--int8", need_shared("images"), "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, "--int8 needs the ONNX model in the bundle (--model M.onnx, without --no-onnx)")


@pytest.mark.slow
def test_unknown_op_in_config(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "fastestdet")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         DATA / "ppdet_gridmask" / "infer_cfg.yml", "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, "infer_cfg.yml: Preprocess[2]: unknown op 'GridMask'")


@pytest.mark.slow
@pytest.mark.parametrize("name", [".hidden", "current", "x" * 65])
def test_a_name_the_installer_would_refuse_is_refused_before_conversion(tools_python: Path, tmp_path: Path,
                                                                         name: str) -> None:
    shared = need_shared("models", "fastestdet")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--name", name, "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, f"--name: '{name}' may hold only ASCII letters")


def test_a_golden_image_that_is_not_one_is_refused_before_conversion(tools_python: Path, tmp_path: Path) -> None:
    """It was refused after the conversion, naming the bundle's copy (out/golden.png)."""
    shared = need_shared("models", "fastestdet")
    bad = tmp_path / "photo.png"
    bad.write_text("not a picture")
    started = time.monotonic()
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--golden", bad, "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, f"build_sdk: --golden: {bad}: not a readable PNG image")
    assert time.monotonic() - started < 30


def test_int8_options_and_bad_usage_are_one_line_before_conversion(tools_python: Path, tmp_path: Path) -> None:
    """The build audit: argparse's refusals were the whole usage and then the error (8 lines);
    --int8-engine without --int8 was taken and ignored (and named in the README's command); a
    calibration folder with no image in it was found after the conversion."""
    shared = need_shared("models", "fastestdet")
    common = ("--model", shared / "paddle", "--config", ROOT / "tests" / "bundles" / "fastestdet.json", "--labels",
              shared / "labels.txt", "--targets", "x86", "--out", tmp_path / "x.zip", "--workdir", tmp_path / "work")
    proc = run_build_sdk(tools_python, *common, "--int8-engine", "tensorrt")
    assert_refused(proc, "build_sdk: argument --int8-engine: invalid choice: 'tensorrt' (choose from "
                         "'openvino', 'onnxruntime') (see build_sdk.py --help)")
    proc = run_build_sdk(tools_python, *common, "--int8-engine", "onnxruntime")
    assert_refused(proc, "build_sdk: --int8-engine needs --int8 DIR (the calibration images): it picks the int8 "
                         "model's quantiser")
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "notes.txt").write_text("no pictures here")
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "FastestDet.onnx", *common[2:], "--int8",
                         tmp_path / "calib")
    assert_refused(proc, f"build_sdk: --int8: {tmp_path / 'calib'}: no images in it (.jpg, .jpeg, .png, .bmp, .webp)")
    assert not (tmp_path / "work" / "opt_x86.log").exists(), "converted before refusing"


@pytest.mark.slow
def test_a_golden_self_test_names_every_engine_that_disagrees(tools_python: Path, tmp_path: Path) -> None:
    """The build audit: with weights quantised for Paddle Lite, whose result becomes the golden one,
    OpenVINO and onnxruntime on the float ONNX both disagreed; the refusal named onnxruntime only."""
    shared = need_shared("models", "fastestdet")
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "FastestDet.onnx", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--targets", "x86", "--quant-weights", "int8", "--golden", need_shared("images", "astronaut.png"),
                         "--out", tmp_path / "x.zip")
    line = assert_refused(proc, "build_sdk: lited selftest: ")
    for kind in ("openvino", "onnxruntime"):
        assert f"on {kind} (model.onnx, fp32) FAILED: " in line, line


def test_a_bad_stage_is_refused_before_conversion_naming_its_config(tools_python: Path, tmp_path: Path,
                                                                   bundles_dir: Path) -> None:
    """A stage's typo or missing bundle was found after the conversion, naming no config; so was a
    stage decoder that finds boxes or a batch the stage's model cannot take (the judge's check, after
    minutes of conversion)."""
    shared = need_shared("models", "fastestdet")
    fragment = tmp_path / "cascade.json"
    cls = str(bundles_dir / "ppocr_cls")
    for stage, why in (({"name": "cls", "bundle": "nowhere.zip"}, f"stages[0].bundle: {tmp_path}/nowhere.zip: not found"),
                       ({"name": "cls", "bundle": "x", "labels": "l.txt"}, "stages[0].labels: unknown field"),
                       ({"name": "cls", "bundle": cls, "decoder": {"type": "grid"}},
                        "stages[0].decoder.type: 'grid' finds boxes; a stage adds one result to each detection"),
                       ({"name": "cls", "bundle": cls, "inputs": [{"name": "x", "shape": [1, 3, 48, 192]}], "batch": 6},
                        "stages[0].batch: 6, but the model's batch is fixed at 1")):
        fragment.write_text(json.dumps({"stages": [stage]}))
        proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                             ROOT / "tests" / "bundles" / "fastestdet.json", "--config", fragment, "--labels",
                             shared / "labels.txt", "--targets", "x86", "--out", tmp_path / "x.zip",
                             "--workdir", tmp_path / "work")
        assert_refused(proc, f"build_sdk: fastestdet.json, cascade.json: {why}")
        assert not (tmp_path / "work" / "opt_x86.log").exists(), "converted before refusing"


@pytest.mark.slow
def test_a_bad_fragment_is_refused_before_conversion_naming_its_file(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "fastestdet")
    fragment = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    fragment["preprocess"]["colour"] = "RGB"
    fragment["preprocess"]["mean"] = [0.5, 0.5]
    fragment["decoder"]["score_treshold"] = 0.3  # a typo
    fragment["inputs"][0]["layout"] = "NCHW"  # preprocess's field, in the wrong place: it was dropped silently
    bad = tmp_path / "frag.json"
    bad.write_text(json.dumps(fragment))
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config", bad, "--labels",
                         shared / "labels.txt", "--targets", "x86", "--out", tmp_path / "x.zip",
                         "--workdir", tmp_path / "work")
    line = assert_refused(proc, "frag.json: ", "preprocess.colour: unknown field", "preprocess.mean: expected 3",
                          "decoder.score_treshold: unknown parameter", "inputs[0].layout: unknown field")
    assert "/tmp/" not in line.replace(str(tmp_path), "") and not (tmp_path / "work" / "bundle").exists(), line


@pytest.mark.slow
def test_config_of_another_model(tools_python: Path, tmp_path: Path) -> None:
    shared = need_shared("models", "ultraface")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", shared / "labels.txt",
                         "--targets", "x86", "--out", tmp_path / "x.zip")
    assert_refused(proc, "build_sdk: fastestdet.json: inputs.", "the config says [1, 3, 352, 352], the model's is [1, 3, 240, 320]")


@pytest.mark.slow
def test_fewer_labels_than_classes_are_refused_naming_where_they_came_from(tools_python: Path,
                                                                          tmp_path: Path) -> None:
    """Every board refuses such a bundle at load: the build runs it (no golden
    image given) and names the file to fix, not the bundle's labels.txt."""
    shared = need_shared("models", "fastestdet")
    two = tmp_path / "two.txt"
    two.write_text("cup\nspoon\n")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "fastestdet.json", "--labels", two, "--targets", "x86",
                         "--out", tmp_path / "x.zip", "--workdir", tmp_path / "work")
    line = assert_refused(proc, f"--labels {two}: 2 labels for 80 classes")
    assert "labels.txt" not in line and not (tmp_path / "x.zip").exists(), line
    fragment = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    fragment["labels"] = ["cup", "spoon", "fork"]
    listed = tmp_path / "frag.json"
    listed.write_text(json.dumps(fragment))
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config", listed, "--targets", "x86",
                         "--out", tmp_path / "y.zip", "--workdir", tmp_path / "work2")
    assert_refused(proc, "frag.json: labels: 3 labels for 80 classes")


@pytest.mark.slow
def test_a_layout_the_input_does_not_have_is_refused_naming_the_config_and_the_fix(tools_python: Path,
                                                                                    tmp_path: Path) -> None:
    """FastestDet's [1, 3, 352, 352] read as NHWC has 352 channels: refused before optimising,
    naming the fragment (not the manifest the builder writes) and the layout that fits."""
    fragment = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    fragment["preprocess"]["layout"] = "NHWC"
    frag = tmp_path / "frag.json"
    frag.write_text(json.dumps(fragment))
    shared = need_shared("models", "fastestdet")
    proc = run_build_sdk(tools_python, "--model", shared / "paddle", "--config", frag, "--labels",
                         shared / "labels.txt", "--targets", "x86", "--out", tmp_path / "x.zip",
                         "--workdir", tmp_path / "work")
    assert_refused(proc, "build_sdk: frag.json: inputs[0].shape: expected 3 colour channels, got 352 "
                         "(preprocess.layout is NHWC; as NCHW it has 3: set layout: NCHW)")
    assert "paddle_lite_opt" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_unknown_target_from_another_python(tools_python: Path, tmp_path: Path) -> None:
    """Started with the daemon's Python, it re-executes itself in the tools venv."""
    shared = need_shared("models", "ultraface")
    proc = run_build_sdk(Path(sys.executable), "--model", shared / "paddle", "--config",
                         ROOT / "tests" / "bundles" / "ultraface.json", "--targets", "x86,npu",
                         "--out", tmp_path / "x.zip")
    assert_refused(proc, "unknown target 'npu'")


# --- (d) GFL heads, NMS in the graph, a missing kernel, a dynamic width ------

def test_picodet_without_post_process_becomes_a_gfl_decoder() -> None:
    """arch PicoDet with NMS (exported without post-process): the head's maps, decoded by `gfl`
    with the yml's NMS and strides; the mean and std given for RGB follow Permute's swap to BGR."""
    fields = imported(DATA / "ppdet_picodet_nanodet" / "infer_cfg.yml")
    assert fields["decoder"] == {"type": "gfl", "score_threshold": 0.25, "nms_iou": 0.3, "top_k": 100,
                                 "nms_top_k": 1000, "strides": [8, 16, 32], "reg_max": -1, "cell_offset": 0.5,
                                 "cls_activation": "none", "multi_label": True, "class_agnostic": False}
    pre = fields["preprocess"]
    assert pre["color"] == "BGR" and pre["mean"] == [103.53, 116.28, 123.675] and pre["std"] == [57.375, 57.12, 58.395]
    with_nms = imported(DATA / "ppdet_gfl_nms" / "infer_cfg.yml")  # arch GFL: NMS in the graph
    assert with_nms["decoder"] == {"type": "boxes", "score_threshold": 0.25, "top_k": 100}


def lited_infer_json(bundle: Path, images: list) -> list:
    lited = Path(sys.executable).with_name("lited")
    proc = subprocess.run([str(lited), "infer", "--bundle", str(bundle), "--json", *map(str, images)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


IMAGES = ("astronaut", "chelsea", "coffee", "page")


@pytest.mark.slow
def test_nanodet_from_onnx_with_an_infer_cfg_agrees_with_the_reference(tools_python: Path, tmp_path: Path) -> None:
    """NanoDet-m ONNX + a PaddleDetection-style infer_cfg.yml -> bundle -> `lited infer`, against
    the independent reference decode on onnxruntime outputs (tests/nanodet_reference.py)."""
    import cv2

    import nanodet_reference as ref

    shared = need_shared("models", "nanodet_m")
    images = [need_shared("images", f"{n}.png") for n in IMAGES]
    out = tmp_path / "nanodet.zip"
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "nanodet_m.onnx", "--config",
                         DATA / "ppdet_picodet_nanodet" / "infer_cfg.yml", "--labels", shared / "labels.txt",
                         "--targets", "x86", "--out", out)
    assert proc.returncode == 0, proc.stderr
    root = unzip_bundle(out, "nanodet_m", tmp_path / "unzipped")
    decoder = json.loads((root / "manifest.json").read_text())["decoder"]
    assert decoder["type"] == "gfl" and decoder["reg_max"] == 7 and decoder["strides"] == [8, 16, 32]
    labels = (shared / "labels.txt").read_text().splitlines()
    sess = ref.session(str(shared / "onnx" / "nanodet_m.onnx"))
    tp = n_got = n_want = 0
    ious: list = []
    for path, result in zip(images, lited_infer_json(root, images)):
        img = cv2.imread(str(path))
        want = [(labels[c], box) for c, _, *box in
                ref.reference_decode(ref.run_onnx(sess, ref.preprocess(img)), img.shape[1], img.shape[0], 0.25, 0.3)]
        got = [(d["label"], d["box"]) for d in result["detections"]]
        hits, matched = ref.match(got, want, min_iou=0.7)
        tp, n_got, n_want, ious = tp + hits, n_got + len(got), n_want + len(want), ious + matched
    assert n_want >= 15  # enough boxes to mean something
    assert ref.f1(tp, n_got, n_want) >= 0.95, (tp, n_got, n_want)
    assert min(ious) >= 0.7


@pytest.fixture(scope="module")
def nms3_program(tmp_path_factory) -> Path:
    """NanoDet-m's Paddle program with its post-process and multiclass_nms3 appended (paddle 2.6)."""
    python = TOOLS_VENV / "bin" / "python"
    if not python.is_file():
        _skip_or_fail(f"{TOOLS_VENV} is absent (make tools-venv)")
    src = need_shared("models", "nanodet_m", "paddle", "model.pdmodel").with_suffix("")
    out = tmp_path_factory.mktemp("nms3")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "build_nms3_program.py"), "--src", str(src),
                           "--out", str(out), "--score", "0.25", "--nms", "0.3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "inference_model"


@pytest.mark.slow
def test_multiclass_nms3_bundle_agrees_with_paddle_inference(tools_python: Path, nms3_program: Path,
                                                             tmp_path: Path) -> None:
    """A real graph ending in multiclass_nms3 runs in Paddle Lite x86 (built by build_sdk for x86
    and arm, decoded by `boxes`) and finds what Paddle Inference finds with the same program."""
    from paddle import inference

    from lited.bundle import load_bundle
    from lited.preprocess import Preprocessor

    shared = need_shared("models", "nanodet_m")
    out = tmp_path / "nms3.zip"
    proc = run_build_sdk(tools_python, "--model", nms3_program, "--config", DATA / "ppdet_gfl_nms" / "infer_cfg.yml",
                         "--labels", shared / "labels.txt", "--targets", "x86,arm", "--name", "nanodet_nms3",
                         "--out", out)
    assert proc.returncode == 0, proc.stderr
    root = unzip_bundle(out, "nanodet_nms3", tmp_path / "unzipped")
    bundle = load_bundle(root)
    assert bundle.decoder["type"] == "boxes" and [s.get("fill") for s in bundle.inputs] == [None, "scale_factor"]
    assert set(bundle.manifest["models"]) == {"x86", "arm"}
    config = inference.Config(str(nms3_program / "model.pdmodel"), str(nms3_program / "model.pdiparams"))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    labels = bundle.labels
    images = [need_shared("images", f"{n}.png") for n in IMAGES]
    total = 0
    import cv2

    for path, result in zip(images, lited_infer_json(root, images)):
        pre = Preprocessor(bundle.preprocess, bundle.inputs[0]["shape"])
        geom = pre(cv2.imread(str(path)))
        names = predictor.get_input_names()
        predictor.get_input_handle(names[0]).copy_from_cpu(pre.tensor)
        predictor.get_input_handle(names[1]).copy_from_cpu(np.ones((1, 2), np.float32))
        predictor.run()
        rows, count = (predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names())
        rows = rows.reshape(-1, 6)[: int(count.reshape(-1)[0])]
        rows = rows[rows[:, 1] >= 0.25]
        rows = rows[np.argsort(-rows[:, 1], kind="stable")]
        want = geom.boxes_to_source(rows[:, 2:6].copy())
        got = result["detections"]
        assert len(got) == len(rows), path.name
        for det, row, box in zip(got, rows, want):
            assert det["label"] == labels[int(row[0])] and det["score"] == pytest.approx(float(row[1]), abs=2e-4)
            np.testing.assert_allclose(det["box"], box, atol=0.15)
        total += len(rows)
    assert total >= 15


@pytest.mark.slow
def test_an_op_a_target_lacks_is_named_at_build_time(tools_python: Path, tmp_path: Path) -> None:
    """`sign` has an arm kernel in Paddle Lite 2.13 but no x86 one: build_sdk says so, naming op and target."""
    script = ("import paddle, sys\n"
              "paddle.enable_static()\n"
              "main, startup = paddle.static.Program(), paddle.static.Program()\n"
              "with paddle.static.program_guard(main, startup):\n"
              "    x = paddle.static.data('x', [1, 3, 8, 8], 'float32')\n"
              "    y = paddle.sign(paddle.static.nn.conv2d(x, 1, 3))\n"  # [1, 1, 6, 6]: a db_text map
              "exe = paddle.static.Executor(paddle.CPUPlace())\n"
              "exe.run(startup)\n"
              "paddle.static.save_inference_model(sys.argv[1], [x], [y], exe, program=main)\n")
    proc = subprocess.run([str(tools_python), "-c", script, str(tmp_path / "sign" / "model")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fragment = tmp_path / "sign.json"
    fragment.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 8, 8]}],
                                    "preprocess": {"resize": {"mode": "stretch"}},
                                    "decoder": {"type": "db_text"}}))
    proc = run_build_sdk(tools_python, "--model", tmp_path / "sign", "--config", fragment, "--targets", "arm,x86",
                         "--out", tmp_path / "x.zip")
    assert_refused(proc, "paddle_lite_opt --valid_targets=x86: Error: This model is not supported, because 1 ops "
                         "are not supported on 'x86'. These unsupported ops are: 'sign'.")
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.slow
def test_a_dynamic_width_survives_x2paddle(tools_python: Path, tmp_path: Path) -> None:
    """PP-OCRv4 rec with a dynamic width: x2paddle folds six reshapes to width 1; build_sdk finds it
    (the program fails at other widths), repairs them and the .nb reads at any width as onnxruntime does."""
    import cv2
    import onnxruntime as ort

    shared = need_shared("models", "ppocrv4_rec")
    out = tmp_path / "rec.zip"
    line = tmp_path / "line.png"  # page.png's first line: "Region-based segmentation"
    cv2.imwrite(str(line), cv2.imread(str(need_shared("images", "page.png")))[0:40, 0:300])
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "ch_PP-OCRv4_rec_infer.onnx", "--config",
                         ROOT / "tools" / "demo_bundle" / "rec.json", "--labels", shared / "keys.txt",
                         "--targets", "x86", "--workdir", tmp_path / "work", "--out", out, "--golden", line)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "work" / "x2paddle_pinned").is_dir()  # the repair ran
    root = unzip_bundle(out, "ppocrv4_rec", tmp_path / "unzipped")
    # a text recognizer's golden result is its reading, and the self-test compares it
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["golden"]["expected"]["text"] == "Region-based segmentation", manifest["golden"]
    cv2.imwrite(str(root / manifest["golden"]["image"]), cv2.imread(str(need_shared("images", "chelsea.png"))))
    selftest = subprocess.run([sys.executable, "-m", "lited.cli", "selftest", "--bundle", str(root), "--engine",
                               "paddle_lite"], capture_output=True, text=True, timeout=300)
    assert selftest.returncode == 1 and "text: '" in selftest.stderr and \
        "'Region-based segmentation' expected" in selftest.stderr, selftest.stderr
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(shared / "onnx" / "ch_PP-OCRv4_rec_infer.onnx"), options,
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for width in (320, 640):  # one predictor per width: a predictor must never change its width
        x = rng.uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
        lite, = outputs(root / "model_x86.nb", x)
        np.testing.assert_allclose(lite, sess.run(None, {"x": x})[0], atol=2e-3)


@pytest.mark.slow
def test_the_same_model_builds_the_same_bytes(tools_python: Path, tmp_path: Path) -> None:
    """paddle_lite_opt leaves stack bytes after its version string in the `.nb` header, so every
    build of one model had other checksums, and the installer refused a rebuild of an installed
    version as "the same version with a different model_x86.nb". The builder zeroes them. The
    README's rebuild command named --out and --keep-dir: built elsewhere, another README.md."""
    fragment = tmp_path / "frag.json"
    fragment.write_text(json.dumps({"task": "classification", "preprocess": {"color": "RGB", "resize": {"mode": "stretch"}},
                                    "decoder": {"type": "classification"}}))
    built = []
    for run in ("a", "b"):
        proc = run_build_sdk(tools_python, "--model", ROOT / "tests/data/onnx/reduce_l2.onnx", "--config", fragment,
                             "--targets", "x86", "--out", tmp_path / f"{run}.zip", "--keep-dir", tmp_path / run)
        assert proc.returncode == 0, proc.stderr
        built.append((tmp_path / run / "model_x86.nb").read_bytes())
    assert built[0] == built[1]
    readmes = [(tmp_path / run / "README.md").read_text() for run in "ab"]
    assert readmes[0] == readmes[1] and "--out" not in readmes[0], readmes[0]
    version = built[0][2:18]  # after the uint16 meta version: opt's version, a C string in 16 bytes
    assert version.startswith(b"v2.") and version == version.split(b"\0")[0].ljust(16, b"\0"), version


@pytest.mark.slow
def test_a_rebuild_in_another_folder_or_from_another_path_is_the_same_bundle(tools_python: Path,
                                                                           tmp_path: Path) -> None:
    """The build audit: FastestDet built with a --workdir, or from its ONNX named by a relative
    path, had another `.nb` (paddle_lite_opt ordered ops by where the paths on its command line and
    x2paddle's record of its own code's place left them in memory) and another README (the relative
    path as typed), so the installer took a rebuild for another release."""
    (tmp_path / "ext").mkdir()
    onnx = shutil.copy(shared_onnx("fastestdet"), tmp_path / "ext" / "FastestDet.onnx")
    common = ("--config", ROOT / "tests/bundles/fastestdet.json", "--labels",
              need_shared("models", "fastestdet", "labels.txt"), "--targets", "x86")
    proc = run_build_sdk(tools_python, "--model", "ext/FastestDet.onnx", *common, "--out", "a.zip", "--keep-dir", "a",
                         "--workdir", "w", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_build_sdk(tools_python, "--model", onnx, *common, "--out", tmp_path / "b.zip", "--keep-dir",
                         tmp_path / "b", "--workdir", tmp_path / ("a-work-directory-of-another-length-" * 4))
    assert proc.returncode == 0, proc.stderr
    for name in ("model_x86.nb", "manifest.json", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "--model FastestDet.onnx " in (tmp_path / "a" / "README.md").read_text()
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


@pytest.mark.slow
def test_fp16_is_listed_the_name_is_the_one_given_and_nncf_keeps_off_the_terminal(tools_python: Path,
                                                                                  tmp_path: Path) -> None:
    """Found by a build_sdk audit from the docs: an `--fp16` arm model was listed (and inspected) as
    fp32, so a config could not ask for it; a model given through a symlink was named after the
    symlink's target; NNCF drew its progress bars on stdout, leaving int8.log empty."""
    fragment = tmp_path / "frag.json"
    fragment.write_text(json.dumps({"task": "classification", "preprocess": {"color": "RGB", "resize": {"mode": "stretch"}},
                                    "decoder": {"type": "classification"}}))
    model = tmp_path / "my net+v1.onnx"
    model.symlink_to(ROOT / "tests/data/onnx/reduce_l2.onnx")
    proc = run_build_sdk(tools_python, "--model", model, "--config", fragment, "--targets", "x86,arm", "--fp16",
                         "--int8", need_shared("images"), "--out", tmp_path / "b.zip", "--keep-dir", tmp_path / "b",
                         "--workdir", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("build_sdk: ") for line in lines[:-1]), lines
    assert lines[-2].startswith("build_sdk: zip: ") and lines[-2].endswith(" s"), lines  # timed, as the docs say
    assert lines[-1].startswith(f"{tmp_path / 'b.zip'}: my-net-v1 1.0.0 (classification; x86, arm;"), lines
    assert "Statistics collection" in (tmp_path / "work" / "int8.log").read_text()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [(e["file"], e.get("precision", "fp32")) for e in manifest["models"]["arm"]][0] == ("model_arm.nb", "fp16")
    assert all(e.get("precision", "fp32") != "fp16" for e in manifest["models"]["x86"])
    inspected = subprocess.run([str(Path(sys.executable).with_name("lited")), "inspect", "--bundle", str(tmp_path / "b"), "--target", "arm",
                                "--precision", "fp16"], capture_output=True, text=True, timeout=120)
    assert "runs on arm as: model_arm.nb on paddle_lite (fp16)" in inspected.stdout, inspected.stdout + inspected.stderr
    # the README's int8 line says what the printed one does (the build audit: no count, the wrong images)
    calibration = int(re.search(r"int8 \(openvino, (\d+) calibration images\)", proc.stdout).group(1))
    assert f"Quantised by openvino on {calibration} calibration images; against fp32 on the same engine, on the " \
           "calibration images: " in (tmp_path / "b" / "README.md").read_text()


@pytest.mark.slow
def test_a_kernel_paddle_lite_lacks_is_named_by_the_build_and_by_the_engine_process(tools_python: Path,
                                                                                     tmp_path: Path) -> None:
    """tests/data/onnx/reduce_l2.onnx converts and passes paddle_lite_opt, then aborts inside Paddle
    Lite at its first run (x86 has no `abs` activation kernel). The build said 'exit -6', `lited infer`
    nothing at all (exit 134) and a stream 'engine process died (SIGABRT)': all now give Paddle Lite's words."""
    fragment = tmp_path / "frag.json"
    fragment.write_text(json.dumps({"task": "classification", "preprocess": {"color": "RGB", "resize": {"mode": "stretch"}, "scale": 1 / 255},
                                    "decoder": {"type": "classification", "softmax": False}}))
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\ne\n")
    golden = need_shared("images", "chelsea.png")
    proc = run_build_sdk(tools_python, "--model", ROOT / "tests/data/onnx/reduce_l2.onnx", "--config", fragment,
                         "--labels", labels, "--targets", "x86", "--golden", golden, "--out", tmp_path / "x.zip",
                         "--keep-dir", tmp_path / "keep")
    assert_refused(proc, "lited infer on golden.png with paddle_lite: lited: died (SIGABRT): unsupported active type:abs")
    infer = subprocess.run([sys.executable, "-m", "lited.cli", "infer", "--engine", "paddle_lite", "--bundle",
                            str(tmp_path / "keep"), str(golden)], capture_output=True, text=True, timeout=120)
    assert (infer.returncode, infer.stderr) == (134, "lited: died (SIGABRT): unsupported active type:abs\n")
    # selftest runs each engine in a process of its own: the abort fails paddle_lite, the ONNX engines are tested
    manifest = json.loads((tmp_path / "keep" / "manifest.json").read_text())
    onnx = subprocess.run([sys.executable, "-m", "lited.cli", "infer", "--engine", "onnxruntime", "--json", "--bundle",
                           str(tmp_path / "keep"), str(golden)], capture_output=True, text=True, timeout=120)
    expected = json.loads(onnx.stdout)
    manifest["golden"] = {"image": "golden.png", "expected": {k: expected[k] for k in ("detections", "classes")}}
    (tmp_path / "keep" / "manifest.json").write_text(json.dumps(manifest))
    selftest = subprocess.run([sys.executable, "-m", "lited.cli", "selftest", "--bundle", str(tmp_path / "keep")],
                              capture_output=True, text=True, timeout=300)
    assert selftest.returncode == 1, selftest.stdout
    assert "on paddle_lite (model_x86.nb, fp32) FAILED: " in selftest.stderr, selftest.stderr
    assert "engine process died (SIGABRT): unsupported active type:abs" in selftest.stderr, selftest.stderr
    assert "on onnxruntime (model.onnx, fp32): ok" in selftest.stdout, selftest.stdout
    run = subprocess.run([sys.executable, "-m", "lited.cli", "run", "--engine", "paddle_lite", "--bundle",
                          str(tmp_path / "keep"), "--source", f"images://{golden.parent}?fps=5&loop=1", "--frames", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout
    assert "engine process died (SIGABRT): unsupported active type:abs" in run.stderr, run.stderr


@pytest.mark.slow
def test_paddleocr_published_onnx_with_at_in_its_tensor_names_converts(tools_python: Path, tmp_path: Path) -> None:
    """PaddleOCR's own cls ONNX (paddle2onnx) names tensors `Add@0`: x2paddle wrote them into Python
    ('SyntaxError: cannot assign to expression here'). The builder renames them in its copy."""
    shared = need_shared("models", "ppocr_cls")
    proc = run_build_sdk(tools_python, "--model", shared / "onnx" / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
                         "--config", ROOT / "tools" / "demo_bundle" / "cls.json", "--labels", shared / "labels.txt",
                         "--golden", need_shared("images", "page.png"), "--targets", "x86",
                         "--out", tmp_path / "cls.zip", "--workdir", tmp_path / "work")
    assert proc.returncode == 0, proc.stderr
    names = subprocess.run([str(tools_python), "-c", "import onnx, sys; g = onnx.load(sys.argv[1]).graph; "
                            "print(sum('@' in n for node in g.node for n in (*node.input, *node.output)))",
                            str(tmp_path / "work" / "x2paddle_input.onnx")], capture_output=True, text=True)
    assert names.stdout.strip() == "0", names.stderr
