"""Every refusal of a bad bundle, with the one-line message that names the
file or field, before anything is loaded."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO_BUNDLE, _load_tool, need_shared, reseal
from lited.bundle import BundleError, load_bundle, seal
from lited.model import Model


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A private copy of the committed demo bundle's detector (x86 model only, no stages) to break."""
    return _load_tool("demo").detector_bundle(tmp_path / "b")


def edit(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def refusal(root: Path) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_demo_bundle_is_valid():
    b = load_bundle(DEMO_BUNDLE)
    assert b.name == "demo_ppocrv4" and b.model_for().target == "x86"
    assert all(stage.manifest.get("labels_sha256") for stage in b.stages)  # its labels are sealed


def test_every_problem_is_reported_at_once_with_its_field_path(bundle):
    def break_it(m):
        m["preprocess"]["mean"] = [0.5, 0.5]
        m["preprocess"]["std"] = [0.5, 0, 0.5]
        m["preprocess"]["resize"]["mode"] = "squash"
        m["decoder"]["thresh"] = "high"
        m["decoder"]["box_thresh"] = 7  # was not said beside a parameter of the wrong type (the CLI audit)
        m["decoder"]["unclip"] = 2
        m["inputs"][0]["shape"] = [1, 3, 32]
        del m["version"]
    edit(bundle, break_it)
    message = refusal(bundle)
    for part in ["preprocess.mean: expected 3 numbers, got 2", "preprocess.std: must not contain 0",
                 "preprocess.resize.mode: unknown \"squash\"", "decoder.thresh: expected a number, got \"high\"",
                 "decoder.box_thresh: expected a number from 0 to 1, got 7",
                 "decoder.unclip: unknown parameter for 'db_text'", "inputs[0].shape: expected 4 sizes",
                 "version: missing"]:
        assert part in message, message
    assert message.startswith(f"bundle {bundle / 'manifest.json'}: ")


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.update(schema=3), "schema: version 3 is not supported (this lited reads 1, 2)"),
    # it said "expected 4 sizes" of 4 sizes (the black-box bundle audit)
    (lambda m: m["inputs"][0].update(shape=[1, 3, 0, 320]),
     "inputs[0].shape: expected each size an integer above 0, or -1 for dynamic, got [1, 3, 0, 320]"),
    (lambda m: m.update(name="../evil"), "name: '../evil' may hold only"),
    (lambda m: m["decoder"].update(type="yolo9"), "decoder.type: unknown \"yolo9\", expected one of boxes"),
    (lambda m: m["preprocess"].update(color="YUV"), "preprocess.color: unknown \"YUV\""),
    (lambda m: m["preprocess"]["resize"].update(pad_value=3), "preprocess.resize.pad_value: unknown field for mode "
                                                               "\"keep_ratio\" (known: interpolation, max_side, min_side"),
    (lambda m: m["models"]["x86"].pop("file"), "models.x86.file: missing"),
    (lambda m: m["models"]["x86"].update(sha256="abc"), "models.x86.sha256: expected 64 hex digits"),
    (lambda m: m["models"]["x86"].update(engine="tflite"), "models.x86.engine: unknown \"tflite\""),
    (lambda m: m["models"]["x86"].update(file="../../etc/passwd"), "models.x86.file: '../../etc/passwd' leaves the bundle"),
    (lambda m: m["models"]["x86"].update(file="/etc/passwd"), "models.x86.file: '/etc/passwd' leaves the bundle"),
    (lambda m: m.update(labels="labels.txt"), "labels: labels.txt: missing"),
    (lambda m: m.update(golden={"image": "g.jpg"}), "golden.image: g.jpg: missing"),
    (lambda m: m.update(models={}), "models: expected at least one target"),
    # schema 2: several files per target
    (lambda m: m["models"].update(x86=[m["models"]["x86"]]), "models.x86: several files per target, `engines`, "
                                                              "`precision` and `expected` need \"schema\": 2"),
    (lambda m: m.update(schema=2, models={"x86": []}), "models.x86: expected at least one model file"),
    (lambda m: m.update(schema=2, models={"x86": [m["models"]["x86"], {**m["models"]["x86"], "file": "m.onnx",
                                                                       "engines": ["paddle_lite"]}]}),
     "models.x86[1].engines: paddle_lite cannot run \"m.onnx\" (it runs .nb files)"),
    (lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "engines": ["tflite"]}]}),
     "models.x86[0].engines: unknown \"tflite\", expected any of onnxruntime, openvino"),
    (lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "engines": ["paddle_lite"],
                                                   "engine": "paddle_lite"}]}),
     "models.x86[0].engines: give either engine (one) or engines (a list), not both"),
    (lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "file": "m.onnx",
                                                   "engines": ["openvino", "onnxruntime"],
                                                   "options": {"paddle_lite": {"threads": 2}}}]}),
     "models.x86[0].options.paddle_lite: not one of this file's engines (openvino, onnxruntime)"),
    (lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "file": "m.xml", "engines": ["openvino"]}]}),
     "models.x86[0].params: missing: openvino needs its .bin beside it"),
    (lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "precision": "int4"}]}),
     "models.x86[0].precision: unknown \"int4\", expected one of fp32, fp16, int8"),
    # a typo is refused, never ignored
    (lambda m: m.update(label="labels.txt"), "label: unknown field (known: "),
    (lambda m: m.update(stage=[]), "stage: unknown field (known: "),
    (lambda m: m["inputs"][0].update(layout="NCHW"), "inputs[0].layout: unknown field"),
    (lambda m: m["models"]["x86"].update(sha="x"), "models.x86.sha: unknown field"),
    (lambda m: m["models"]["x86"].update(options={"thread": 4}), "models.x86.options.thread: unknown field "
                                                                  "(known: power_mode, predictors, threads)"),
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {}, "tolerence": {}}), "golden.tolerence: unknown field"),
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {}, "tolerance": {"box": 1}}),
     "golden.tolerance.box: unknown field"),
    (lambda m: m["decoder"].pop("type"), "decoder.type: missing, expected one of boxes"),
    # what selftest compares is checked at load: it was a traceback in selftest, so in the installer
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {"detections": [{"label": "a", "score": "x"}]}}),
     "golden.expected.detections[0].score: expected a number, got \"x\""),
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {"detections": [{"score": 0.5}]}}),
     "golden.expected.detections[0].label: missing"),
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {"detection": []}}),
     "golden.expected.detection: unknown field"),
    (lambda m: m.update(golden={"image": "g.jpg", "expected": {}, "tolerance": {"box_px": -1}}),
     "golden.tolerance.box_px: expected a number of at least 0, got -1"),
    # a share is a share: a threshold of -1 gave junk boxes; a count is 0 (all) or more
    (lambda m: m["decoder"].update(thresh=1.5), "decoder.thresh: expected a number from 0 to 1, got 1.5"),
    (lambda m: m["decoder"].update(max_candidates=0), "decoder.max_candidates: expected a number of at least 1"),
])
def test_manifest_field_refusals(bundle, change, expected):
    edit(bundle, change)
    assert expected in refusal(bundle)


def test_not_json_and_missing_manifest(bundle, tmp_path):
    text = (bundle / "manifest.json").read_text()
    # the last one was taken; the other problems come with it
    (bundle / "manifest.json").write_text(text.replace("{", '{"version": "9.9.9", "bogus": 1, ', 1))
    said = refusal(bundle)
    assert said.startswith(f"bundle {bundle / 'manifest.json'}: 'version' is given twice; ") \
        and "bogus: unknown field" in said, said
    (bundle / "manifest.json").write_text("{ nope")
    assert "manifest.json: not valid JSON" in refusal(bundle)
    (bundle / "manifest.json").unlink()
    assert refusal(bundle).endswith("manifest.json: missing")
    assert "not a directory" in refusal(tmp_path / "absent")


def test_manifest_and_model_file_problems_come_together(bundle):
    (bundle / "model_x86.nb").unlink()
    edit(bundle, lambda m: m.update(labels="nolabels.txt"))
    message = refusal(bundle)
    assert "labels: nolabels.txt: missing" in message and "model_x86.nb: missing (models.x86.file)" in message, message


def test_labels_problems_come_with_the_manifests_and_the_model_files(bundle):
    """A labels file changed after sealing hid a damaged model, and a manifest
    error hid the labels file's problem: a builder fixed one, then met the next."""
    (bundle / "labels.txt").write_text("text\n")
    edit(bundle, lambda m: m.update(labels="labels.txt", labels_sha256="0" * 64))
    path = bundle / "model_x86.nb"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    message = refusal(bundle)
    assert "labels.txt: sha256 mismatch (labels_sha256)" in message and "model_x86.nb: sha256 mismatch" in message, \
        message
    edit(bundle, lambda m: m["preprocess"].update(mean=[1, 2]))
    message = refusal(bundle)
    assert "preprocess.mean: expected 3 numbers" in message and "labels.txt: sha256 mismatch" in message, message


@pytest.mark.parametrize("size", ["123", True, -1])
def test_a_wrong_size_field_is_said_once(bundle, size):
    edit(bundle, lambda m: m["models"]["x86"].update(size=size))
    message = refusal(bundle)
    assert "models.x86.size: expected" in message and "manifest says" not in message, message


def test_a_labels_file_that_is_a_fifo_is_not_called_missing(bundle):
    os.mkfifo(bundle / "fifo.txt")
    edit(bundle, lambda m: m.update(labels="fifo.txt"))
    assert "labels: fifo.txt: not a regular file" in refusal(bundle)


def test_missing_model_file_is_named(bundle):
    (bundle / "model_x86.nb").unlink()
    assert "model_x86.nb: missing (models.x86.file)" in refusal(bundle)
    os.mkfifo(bundle / "model_x86.nb")  # something there that is not a file is not called missing
    assert "model_x86.nb: not a regular file (models.x86.file)" in refusal(bundle)


def test_checksum_mismatch_is_named(bundle):
    path = bundle / "model_x86.nb"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
    path.write_bytes(bytes(data))
    assert "model_x86.nb: sha256 mismatch (models.x86.sha256)" in refusal(bundle)


def test_truncated_model_is_named(bundle):
    path = bundle / "model_x86.nb"
    path.write_bytes(path.read_bytes()[:100_000])
    assert "model_x86.nb: 100000 bytes, manifest says 5208614 (truncated or wrong file)" in refusal(bundle)
    path.write_bytes(bytes(5208615))  # longer: "truncated" sent an operator looking for the wrong thing
    assert "model_x86.nb: 5208615 bytes, manifest says 5208614 (wrong file, or bytes added to it)" in refusal(bundle)


def test_truncated_model_without_size_is_caught_by_its_header(bundle):
    path = bundle / "model_x86.nb"
    path.write_bytes(path.read_bytes()[:100_000])
    edit(bundle, lambda m: m.update(seal({**m, "models": {"x86": {"file": "model_x86.nb"}}}, bundle)))
    edit(bundle, lambda m: m["models"]["x86"].pop("size"))
    assert "model_x86.nb: 100000 bytes, shorter than its own header says (truncated)" in refusal(bundle)


def test_a_file_that_is_not_a_paddle_lite_model(bundle):
    (bundle / "model_x86.nb").write_bytes(b"PK\x03\x04" + b"\0" * 500)
    edit(bundle, lambda m: m.update(seal(m, bundle)))
    assert "model_x86.nb: not a Paddle Lite naive-buffer model (bad header)" in refusal(bundle)


def test_an_arm_only_bundle_is_refused_on_x86_before_loading(tmp_path):
    arm = need_shared("models", "ultraface", "model_arm.nb")
    dst = tmp_path / "arm"
    shutil.copytree(DEMO_BUNDLE, dst, ignore=shutil.ignore_patterns("model_x86.nb"))
    edit(dst, lambda m: m["models"].pop("x86"))
    message = refusal(dst)
    assert "models: no model for target 'x86' (has arm)" in message
    # and an explicit request for the arm model is refused by target, not loaded
    b = load_bundle(dst, check_models=False)
    with pytest.raises(BundleError, match="built for arm, this machine is x86_64; refusing to load it"):
        b.model_for("arm")
    assert arm.exists()
    # inspect shows it for its target without loading it
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "inspect", "--bundle", str(dst), "--target", "arm"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "model arm     model_arm.nb" in proc.stdout \
        and "warning: target arm does not run on this machine: the model was not loaded" in proc.stdout, proc
    assert "runs on arm as: model_arm.nb on paddle_lite (fp32): the bundle's first choice, if" in proc.stdout


def test_an_arm_model_listed_as_x86_is_caught_by_its_kernels(bundle):
    arm = need_shared("models", "ppocrv4_det", "model_arm.nb")
    shutil.copy(arm, bundle / "model_x86.nb")
    edit(bundle, lambda m: m.update(seal(m, bundle)))
    assert "model_x86.nb: holds arm kernels but is listed as models.x86" in refusal(bundle)


def test_a_link_out_of_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "labels.txt"
    outside.write_text("a\nb\n")
    os.symlink(outside, bundle / "labels.txt")
    edit(bundle, lambda m: m.update(labels="labels.txt"))
    assert "labels: 'labels.txt' links out of the bundle" in refusal(bundle)


def test_a_labels_file_changed_after_sealing_is_refused_by_its_checksum(tmp_path):
    """Labels were not sealed: a labels file edited or damaged on the board, with its line count
    intact, named every result wrongly in silence (the self-test only looks at the golden image's)."""
    from conftest import make_bundle

    root = make_bundle("mobilenetv2", tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["labels_sha256"] and list(manifest)[list(manifest).index("labels") + 1] == "labels_sha256"
    text = (root / "labels.txt").read_text()
    (root / "labels.txt").write_text(text.replace("goldfish", "goldfisk", 1))
    assert refusal(root).endswith("manifest.json: labels: labels.txt: sha256 mismatch (labels_sha256)")
    # a cascade's stage names its own field
    ocr = tmp_path / "ocr"
    shutil.copytree(DEMO_BUNDLE, ocr)
    keys = (ocr / "rec_labels.txt").read_bytes()
    (ocr / "rec_labels.txt").write_bytes(keys.replace(b"\xe7\x96\x97", b"\xe7\x96\x98", 1))  # one character
    assert "stages[1].labels: rec_labels.txt: sha256 mismatch (stages[1].labels_sha256)" in refusal(ocr)


def test_inspect_warns_of_labels_that_are_not_sealed(tmp_path):
    """A bundle from before labels_sha256 (or assembled by hand) still loads: inspect says what it lacks."""
    from conftest import make_bundle

    root = make_bundle("ultraface", tmp_path)

    def warnings() -> list:
        proc = subprocess.run([sys.executable, "-m", "lited.cli", "inspect", "--bundle", str(root), "--json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["warnings"]

    assert not [w for w in warnings() if "sealed" in w]
    edit(root, lambda m: m.pop("labels_sha256"))
    assert ("labels: labels.txt is not sealed (no labels_sha256): a change to it after the build would go "
            "unnoticed; seal the bundle again (tools/build_sdk.py, or lited.bundle.seal)") in warnings()


@pytest.mark.parametrize("sha, labels, said", [
    ("abc", "labels.txt", "labels_sha256: expected 64 hex digits"),
    ("0" * 64, None, "labels_sha256: given without labels (the file it seals)"),
])
def test_a_wrong_labels_sha256_field_is_said(bundle, sha, labels, said):
    (bundle / "labels.txt").write_text("a\n")
    edit(bundle, lambda m: m.update(labels=labels, labels_sha256=sha))
    assert said in refusal(bundle)


def test_fewer_labels_than_classes_is_refused_at_load(tmp_path):
    from conftest import make_bundle

    root = make_bundle("mobilenetv2", tmp_path)
    (root / "labels.txt").write_text("tench\ngoldfish\n")
    reseal(root)
    with pytest.raises(BundleError, match=r"labels.txt: 2 labels for 1000 classes"):
        Model(load_bundle(root))


@pytest.mark.parametrize("model, decoder, expected", [
    # a detector's [1, 4420, 2] read as 8840 classes named by number past the 2 labels
    ("ultraface", {"type": "classification"}, "decoder: classification: outputs [[1, 4420, 2], [1, 4420, 4]]: "
                                              "the first is not [1, C] (one score per class)"),
    # found by the first frame's decode: the stream's post thread died of it, status still said streaming
    ("ultraface", {"type": "gfl"}, "decoder: gfl: outputs [[1, 4420, 2], [1, 4420, 4]] are not a GFL head"),
    ("ultraface", {"type": "priorbox", "background_class": 5}, "background_class 5, but the scores have 2 classes"),
])
def test_a_decoder_that_cannot_read_its_outputs_is_refused_at_load(tmp_path, model, decoder, expected):
    from conftest import make_bundle

    root = make_bundle(model, tmp_path)
    edit(root, lambda m: m.update(decoder=decoder))
    with pytest.raises(BundleError, match=f"{root}/manifest.json: ") as info:
        Model(load_bundle(root))
    assert expected in str(info.value)


def test_an_engine_option_refused_names_its_bundle_and_file(tmp_path):
    """`device: TPU` said only `option 'device': 'TPU' asked, but OpenVINO sees only CPU`."""
    from conftest import make_bundle
    from lited.engines import ENGINES, EngineError

    if not ENGINES.get("openvino").available():
        pytest.skip("openvino is not installed")
    root = make_bundle("ultraface", tmp_path, engines=("openvino",))
    edit(root, lambda m: [f.update(options={"openvino": {"device": "TPU"}}) for f in m["models"]["x86"]
                          if f["file"].endswith(".onnx")])
    with pytest.raises(EngineError) as info:
        Model(load_bundle(root), engine="openvino")
    assert str(info.value).startswith(f"bundle {root}/manifest.json: models.x86[") and \
        "on openvino: option 'device': 'TPU'" in str(info.value), str(info.value)


def test_a_keys_file_with_a_line_too_many_is_refused_at_load(tmp_path):
    """A CTC recognizer's keys are exactly its classes: one line more shifts every character it reads
    (the demo's recognizer read '渤袱nwCy8...' for 'Region-based segmentation'), so more is refused
    too, not only fewer. A classifier's spare labels are never read: still accepted."""
    import shutil

    from conftest import DEMO_BUNDLE, make_bundle

    demo = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, demo)
    keys = demo / "rec_labels.txt"
    keys.write_text("#\n" + keys.read_text(encoding="utf-8"), encoding="utf-8")
    reseal(demo)
    with pytest.raises(BundleError, match=r"rec_labels.txt: 6624 labels for 6623 classes \(a keys file needs "
                                          r"exactly one line a class: one more shifts every character\)"):
        Model(load_bundle(demo))
    # a line short: the count and how the decoder counts, naming the keys file (the decode, which
    # fails too on such a file, said "class 6623 but only 6623 characters" of the manifest)
    keys.write_text("".join(keys.read_text(encoding="utf-8").splitlines(keepends=True)[2:]), encoding="utf-8")
    reseal(demo)
    with pytest.raises(BundleError, match=r"rec_labels.txt: 6622 labels for 6623 classes, as the ctc decoder reads "
                                          r"the outputs \[\[1, \d+, 6625\]\] \(K = the blank, one class a key, "
                                          r"and the space when use_space_char is true\)$"):
        Model(load_bundle(demo))
    root = make_bundle("mobilenetv2", tmp_path / "cls")
    with open(root / "labels.txt", "a") as fh:
        fh.write("one more\n")
    Model(load_bundle(reseal(root))).close()


def test_cli_refuses_with_one_line_and_exit_code_2(bundle):
    edit(bundle, lambda m: m["preprocess"].update(mean=[1, 2]))
    image = bundle / "img.png"
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "infer", "--bundle", str(bundle), str(image)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"lited: bundle {bundle / 'manifest.json'}: preprocess.mean: expected 3 numbers, got 2"]


def test_the_template_manifest_follows_the_schema():
    """sdk_template/manifest.template.json: only its placeholders are refused."""
    from conftest import ROOT
    from lited.bundle import validate_manifest

    template = ROOT / "sdk_template"
    problems = validate_manifest(json.loads((template / "manifest.template.json").read_text()), template)
    assert sorted(problems) == ["golden.image: golden.jpg: missing", "labels: labels.txt: missing",
                                "labels_sha256: expected 64 hex digits", "models.arm.sha256: expected 64 hex digits",
                                "models.x86.sha256: expected 64 hex digits"]


def test_extra_inputs_need_a_fill_and_exactly_one_image(bundle):
    edit(bundle, lambda m: m["inputs"].append({"name": "scale_factor", "shape": [1, 2], "fill": "scale"}))
    assert "inputs[1].fill: unknown \"scale\", expected one of im_shape, scale_factor" in refusal(bundle)
    edit(bundle, lambda m: m["inputs"][1].update(fill="scale_factor", shape=[1, 3]))
    assert "inputs[1].shape: expected [1, 2] for a 'scale_factor' input" in refusal(bundle)
    edit(bundle, lambda m: m["inputs"][1].pop("fill"))
    assert "inputs: expected exactly one image input" in refusal(bundle)


def test_a_schema_2_target_lists_its_files_in_order(bundle):
    """The demo's .nb as a one-file list (schema 2) loads as the schema 1 object does."""
    edit(bundle, lambda m: m.update(schema=2, models={"x86": [{**m["models"]["x86"], "engines": ["paddle_lite"]}]}))
    b = load_bundle(bundle)
    files = b.model_files()
    assert [(f.path.name, f.engines, f.field) for f in files] == [("model_x86.nb", ("paddle_lite",), "models.x86[0]")]
    choice = b.choose()
    assert (choice.model.path.name, choice.engine, choice.why) == ("model_x86.nb", "paddle_lite",
                                                                  "the bundle's first choice")


def test_a_file_name_too_long_for_the_file_system_is_refused_in_one_line(bundle):
    """stat() of a 400-character name raises ENAMETOOLONG, which is_file() passes on: the
    hypothesis fuzzer drew one for `labels` and load_bundle raised OSError."""
    edit(bundle, lambda m: m.update(labels="1" * 400))
    assert refusal(bundle).endswith(f"labels: '{'1' * 400}' cannot be resolved")


def test_files_are_read_only_from_inside_the_bundle_when_they_are_read(tmp_path):
    """The manifest and labels are checked where they are read, not only by name before: a
    labels file swapped for a link out between the check and the read served a root-only file
    as labels (a race a bus client with `reload --bundle --force` won 20 times in 30); a
    manifest that links out echoed another JSON file's keys in its refusal."""
    from lited.bundle import read_labels
    from lited.files import FileRefused

    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$hash\n")
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "labels.txt").symlink_to(secret)
    with pytest.raises(FileRefused, match="labels.txt: links out of the bundle"):
        read_labels(root / "labels.txt", bundle_root=root)
    (root / "inside.txt").write_text("cat\n")
    (root / "alias.txt").symlink_to(root / "inside.txt")  # a link inside is a file inside
    assert read_labels(root / "alias.txt", bundle_root=root) == ["cat"]
    (root / "sub").mkdir()
    (root / "sub" / "up.txt").symlink_to("../inside.txt")
    assert read_labels(root / "sub" / "up.txt", bundle_root=root) == ["cat"]
    via = Path(f"/proc/{os.getpid()}/root{root}")  # a root reached by a path that resolves elsewhere
    assert read_labels(via / "alias.txt", bundle_root=via) == ["cat"]  # (the systemd test reads a container's so)
    (root / "escape.txt").symlink_to("sub/../../secret.txt")
    with pytest.raises(FileRefused, match="escape.txt: links out of the bundle"):
        read_labels(root / "escape.txt", bundle_root=root)
    (tmp_path / "other.json").write_text('{"api_key": "TOPSECRET"}')
    (root / "manifest.json").symlink_to(tmp_path / "other.json")
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    assert str(err.value).endswith("manifest.json: links out of the bundle"), str(err.value)
    assert "TOPSECRET" not in str(err.value) and "api_key" not in str(err.value)


def test_a_byte_order_mark_is_no_part_of_the_first_label(tmp_path):
    """Windows Notepad saves UTF-8 with a byte-order mark: it became part of label 0 (`\\ufeffperson`),
    and uplink rules, a cascade's `select.labels` and apps comparing `== "person"` matched nothing."""
    from conftest import make_bundle

    root = make_bundle("fastestdet", tmp_path)
    labels = (root / "labels.txt").read_bytes()
    (root / "labels.txt").write_bytes(b"\xef\xbb\xbf" + labels)
    assert load_bundle(reseal(root)).labels[0] == "person"
