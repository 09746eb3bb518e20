"""The build, step by step: configs -> Paddle model -> one `.nb` per target
(and the ONNX, an OpenVINO IR, an int8 model beside it) -> bundle directory ->
checked by lited -> golden result, self-tested on every engine listed -> zip.

Cheap checks (targets, configs, labels, names) come before the slow ones
(x2paddle, paddle_lite_opt), so a typo fails in a second, not a minute.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from lited.bundle import config_problems, machine_target, stage_problems
from lited.decoders import DECODERS
from lited.imageheader import image_size
from lited.validate import image_input_problem, name_problem, version_problem

from lited.sdk import BuildError, bundle_writer, engine_files, int8, labels, paddle_model, readme
from lited.sdk.agreement import IMAGE_SUFFIXES, summary as int8_summary
from lited.sdk.config_import import import_configs
from lited.sdk.judge import LitedVenv
from lited.sdk.inputs import merge_inputs
from lited.sdk.lite_opt import LiteOpt
from lited.sdk.paddledet_cfg import complete_gfl
from lited.sdk.stages import add_stages
from lited.sdk.venv import DAEMON_VENV, daemon_lited

DEFAULT_TOLERANCE = {"box_px": 4, "score": 0.05}
GENERIC_NAMES = {"model", "inference", "inference_model", "paddle", "onnx", "output", "export"}


@dataclass
class Options:
    model: Path
    configs: list
    targets: list
    out: Path
    name: str | None = None
    version: str | None = None
    golden: Path | None = None
    labels: Path | None = None
    notice: Path | None = None
    fp16: bool = False
    quant: str | None = None
    opt: Path | None = None
    daemon_venv: Path = DAEMON_VENV
    daemon_venv_asked: bool = False    # --lited-venv or LITED_DAEMON_VENV: a venv without lited is an error
    daemon_venv_flag: bool = False     # ... and which of the two
    keep_dir: Path | None = None
    workdir: Path | None = None
    argv: list = field(default_factory=list)
    onnx: bool = True                  # keep an ONNX source beside the .nb (OpenVINO, onnxruntime)
    openvino_ir: bool = False
    int8: Path | None = None           # calibration images
    int8_engine: str = "openvino"
    int8_eval: Path | None = None      # images for the accuracy report (default: the calibration images)


def _say(message: str, warning: bool = False) -> None:
    """Progress on stdout; warnings on stderr, which otherwise holds only the error line."""
    print(f"build_sdk: {message}", file=sys.stderr if warning else sys.stdout, flush=True)


class _Step:
    """Times one step and reports it on stdout (`_say`)."""

    def __init__(self, what: str, timings: dict) -> None:
        self.what, self.timings = what, timings

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.what] = elapsed = time.monotonic() - self.start
        if exc[0] is None:
            _say(f"{self.what}: {elapsed:.1f} s")


def _default_name(model: Path) -> str:
    """The model's name from its path, skipping the generic names exports use."""
    path = Path(os.path.abspath(model))  # the name given, not a symlink's target's
    for part in [path, *path.parents]:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", part.stem).strip("-.")[:64]
        if name and name.lower() not in GENERIC_NAMES and name_problem(name) is None:
            return name
        if not name and part.stem.strip():  # 人脸检测.onnx: a folder further up named it (`home`, `tmp`)
            raise BuildError(f"--name: {part.stem!r} has no letter or digit a bundle name may hold "
                             "(A-Z, a-z, 0-9, '.', '_', '-'): give --name")
    return "model"


def _name(opts: Options, fields: dict) -> str:
    name = opts.name or fields.get("name") or _default_name(opts.model)
    problem = name_problem(name)
    if problem:
        raise BuildError(f"--name: {problem}")
    return name


def _check_fields(fields: dict, configs: list) -> None:
    kinds = "a PaddleDetection infer_cfg.yml, a PaddleClas inference config or a manifest fragment"
    if not configs:
        raise BuildError(f"no --config: give {kinds}")
    for key in ("preprocess", "decoder"):
        if key not in fields:
            given = ", ".join(Path(c).name for c in configs)
            raise BuildError(f"{key}: not set by {given}; add {kinds} that sets it")
    if not isinstance(fields["decoder"].get("type"), str):
        raise BuildError("decoder.type: missing")


WHERE_FLAGS = ("--out", "--keep-dir", "--workdir")  # where a build writes, not what it builds


def _command(opts: Options) -> str:
    """The rebuild command for the README, with the user's file names only and
    without where it wrote (the same bundle built into another folder had
    another README, and the installer refused it as a changed release)."""
    args: list = []
    skip = False
    for a in opts.argv:
        if skip:
            skip = False
        elif a in WHERE_FLAGS:
            skip = True
        elif not a.startswith(tuple(f"{f}=" for f in WHERE_FLAGS)):
            args.append(Path(a).name if Path(a).is_absolute() or Path(a).exists() else a)  # a file: by its name
    return "python tools/build_sdk.py " + " ".join(shlex.quote(a) for a in args)


def build(opts: Options) -> dict:
    """Build the bundle and its zip; returns a summary (paths, timings, manifest)."""
    timings: dict = {}
    _check_outputs(opts)
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="build_sdk-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        summary = _build(opts, workdir, timings)
    except BaseException as exc:  # a failure of any kind: a temporary folder was left behind by all but BuildError
        if opts.workdir is None and str(workdir) not in str(exc):  # keep it only when the error names a log in it
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if opts.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def _check_outputs(opts: Options) -> None:
    """Where the build writes, before a minute of conversion: a zip over a directory, or any output
    under a file, failed with a traceback at the end; a --keep-dir holding other things was refused
    only then."""
    for flag, path, kind in (("--out", opts.out, "file"), ("--keep-dir", opts.keep_dir, "directory"),
                             ("--workdir", opts.workdir, "directory")):
        if path is None:
            continue
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise BuildError(f"{flag}: {path}: {parent} is not a directory")
        if kind == "file" and path.is_dir():
            raise BuildError(f"{flag}: {path}: is a directory (give the zip's file name)")
        if kind == "directory" and path.exists() and not path.is_dir():
            raise BuildError(f"{flag}: {path}: exists and is not a directory")
    if opts.keep_dir is not None:
        problem = bundle_writer.replace_problem(opts.keep_dir)
        if problem:
            raise BuildError(f"--keep-dir: {problem}")


def _preflight(opts: Options, opt: LiteOpt, judge: LitedVenv, host: str) -> None:
    """Checks that take a second, before the steps that take a minute."""
    if not opts.model.exists():  # first: it was said only once a --config was given
        raise BuildError(f"--model: {opts.model}: not found")
    for target in opts.targets:
        opt.check_target(target)
    if opts.golden is not None:
        if not opts.golden.is_file():
            raise BuildError(f"--golden: {opts.golden}: not found")
        with open(opts.golden, "rb") as fh:  # now, not after minutes of conversion, naming the user's file
            header = fh.read(1 << 16)
        if opts.golden.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") and image_size(header) is None:
            raise BuildError(f"--golden: {opts.golden}: not a readable {opts.golden.suffix[1:].upper()} image")
        if host not in opts.targets:
            raise BuildError(f"--golden needs the {host} target: the expected result comes from running it here")
        if not judge.present:
            raise BuildError(f"--golden needs lited in {opts.daemon_venv} to compute the expected result")
    if opts.daemon_venv_asked and not judge.present:  # a typo shipped a bundle nothing had checked, exit 0
        named = "--lited-venv" if opts.daemon_venv_flag else "LITED_DAEMON_VENV"
        raise BuildError(f"{named}: {opts.daemon_venv}: no lited there ({daemon_lited(opts.daemon_venv)})")
    if opts.notice is not None and not opts.notice.is_file():
        raise BuildError(f"--notice: {opts.notice}: not found")
    if opts.fp16 and "arm" not in opts.targets:
        _say("note: --fp16 applies to the arm target only; the other models stay fp32", warning=True)
    onnx_source = opts.model.suffix.lower() == ".onnx"
    for flag, asked in (("--openvino-ir", opts.openvino_ir), ("--int8", opts.int8)):
        if asked and not (onnx_source and opts.onnx):
            raise BuildError(f"{flag} needs the ONNX model in the bundle (--model M.onnx, without --no-onnx)")
    if opts.int8_eval is not None and opts.int8 is None:  # it was ignored: a build without the report asked for
        raise BuildError("--int8-eval needs --int8 DIR (the calibration images): it only feeds the int8 report")
    for flag, folder in (("--int8", opts.int8), ("--int8-eval", opts.int8_eval)):
        if folder is not None and not folder.is_dir():
            raise BuildError(f"{flag}: {folder}: not a directory of images")
        if folder is not None and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            raise BuildError(f"{flag}: {folder}: no images in it ({', '.join(IMAGE_SUFFIXES)})")
    if opts.int8 and opts.int8_engine not in int8.ENGINES:
        raise BuildError(f"--int8-engine: unknown '{opts.int8_engine}', expected one of {', '.join(int8.ENGINES)}")
    if opts.int8 and not judge.present:
        raise BuildError(f"--int8 needs lited in {opts.daemon_venv} to prepare the calibration inputs")
    if opts.int8 and host not in opts.targets:
        raise BuildError(f"--int8 needs the {host} target: the calibration inputs come from running it here")


def _check_decoder_layout(decoder: dict, output_shapes: list, names: list, configs: str) -> None:
    """The decoder against the converted model's output shapes, before anything is made from
    them (where they are all known): one that cannot read them is refused naming the configs,
    and the decoders of its task whose layout they fit (a PP-YOLOE exported without NMS, whose
    yml maps to `boxes`, fits `yolo`)."""
    import numpy as np

    from lited.decoders import Decoder, make_decoder

    shapes = paddle_model.static_shapes(output_shapes)
    if not shapes:
        return  # sizes known only at run time: the golden run checks them
    outputs = [np.zeros(s, np.float32) for s in shapes]
    problem = make_decoder(decoder, names).layout_problem(outputs)
    if problem is None:
        return
    task = DECODERS.get(decoder["type"]).TASK
    fits = [kind for kind in DECODERS.kinds() if kind != decoder["type"] and DECODERS.get(kind).TASK == task
            and DECODERS.get(kind).layout_problem is not Decoder.layout_problem  # one that checks a layout
            and make_decoder({"type": kind}, names).layout_problem(outputs) is None]
    hint = f"; they fit the {' or '.join(fits)} decoder (docs/bundle.md)" if fits else ""
    raise BuildError(f"{configs}: decoder: {decoder['type']}: {problem}{hint}")


def _build(opts: Options, workdir: Path, timings: dict) -> dict:
    opt, judge, host = LiteOpt(opts.opt, workdir), LitedVenv(opts.daemon_venv), machine_target()
    lite_version = opt.version()
    _preflight(opts, opt, judge, host)
    fields = import_configs(opts.configs)
    _check_fields(fields, opts.configs)
    configs = ", ".join(Path(c).name for c in opts.configs)  # how messages name the configs
    problems = config_problems(fields)  # before minutes of conversion
    if problems:
        raise BuildError(f"{configs}: {'; '.join(problems)}")
    names = labels.LabelFile(opts.labels, origin="--labels").read() if opts.labels \
        else labels.resolve(fields.get("labels"))
    names_from = f"--labels {opts.labels}" if opts.labels else labels.origin(fields.get("labels"), configs)
    name = _name(opts, fields)
    version = str(opts.version or fields.get("version") or "1.0.0")
    problem = version_problem(version)
    if problem:
        raise BuildError(f"--version: {problem}")

    stages = None
    if fields.get("stages"):  # checked and copied aside before minutes of conversion, naming the configs
        staged = workdir / "stage_files"
        staged.mkdir(exist_ok=True)
        try:
            stages = add_stages(fields["stages"], opts.targets, staged, workdir)
        except BuildError as exc:
            raise BuildError(f"{configs}: {exc}") from None
        problems = stage_problems(stages, opts.targets, staged)
        if problems:
            raise BuildError(f"{configs}: {'; '.join(problems)}")

    with _Step("paddle model" if opts.model.suffix.lower() != ".onnx" else "x2paddle", timings):
        model = paddle_model.resolve(opts.model, workdir, fields.get("inputs"))
        feeds = paddle_model.read_inputs(model)
    try:
        notes: list = []
        inputs = merge_inputs(feeds, fields.get("inputs"), notes)
        for note in notes:
            _say(f"warning: {note}", warning=True)
    except BuildError as exc:  # the config contradicts the model: name the config, as its other errors do
        raise BuildError(f"{configs}: {exc}") from None
    problem = image_input_problem(fields["preprocess"], next(spec for spec in inputs if "fill" not in spec)["shape"])
    if problem:  # now, naming the configs, not at the golden run after optimising, naming a generated manifest
        sides = problem.startswith("preprocess.resize.mode:")  # a dynamic input another mode cannot fill
        raise BuildError(f"{configs}: {problem}"
                         + ("; or give the image input fixed sides in the config's inputs" if sides else ""))
    decoder = fields["decoder"]
    output_shapes = paddle_model.read_output_shapes(model)
    if decoder["type"] == "gfl":  # write what the outputs say, so the manifest states every value
        image = next(spec for spec in inputs if "fill" not in spec)["shape"]
        size = tuple(image[2:4]) if fields["preprocess"].get("layout", "NCHW") == "NCHW" else tuple(image[1:3])
        decoder = complete_gfl(decoder, output_shapes, None if -1 in size else size, configs)
    else:
        _check_decoder_layout(decoder, output_shapes, names or [], configs)

    root = bundle_writer.prepare_dir(opts.keep_dir or workdir / "bundle" / name)
    nbs = {}
    for target in opts.targets:
        with _Step(f"paddle_lite_opt {target}", timings):
            nbs[target] = opt.optimize(model, target, root, fp16=opts.fp16, quant=opts.quant).name
    onnx = ir = None
    if opts.onnx and opts.model.suffix.lower() == ".onnx":
        onnx, why_not = engine_files.copy_onnx(opts.model, root, inputs)
        if onnx is None and (opts.int8 or opts.openvino_ir):
            raise BuildError(f"{opts.model.name}: {why_not}, so it cannot go in the bundle, nor an IR or int8 "
                             f"model made from it")
        if onnx is None:
            _say(f"warning: {opts.model.name}: {why_not}: not kept in the bundle (only Paddle Lite will run it)",
                 warning=True)
    if opts.openvino_ir and onnx:
        with _Step("OpenVINO IR", timings):
            ir = engine_files.write_ir(root)[0]
    models = _target_models(opts, nbs, onnx, ir, None)
    manifest = {
        "schema": 2 if any(isinstance(files, list) for files in models.values()) else 1,  # several files, or fp16
        "name": name, "version": version,
        "task": fields.get("task") or DECODERS.get(decoder["type"]).TASK,
        "paddle_lite_version": lite_version, "models": models, "inputs": inputs,
        "preprocess": fields["preprocess"], "decoder": decoder,
        "labels": bundle_writer.write_labels(root, names) if names else None,
    }
    if fields.get("stages"):
        manifest["schema"] = 2  # a lited that reads only schema 1 refuses it rather than ignore the stages
        manifest["stages"] = stages
        for staged_file in sorted((workdir / "stage_files").iterdir()):
            shutil.move(str(staged_file), root / staged_file.name)
    if opts.notice:
        bundle_writer.copy_in(root, opts.notice, "NOTICE")
    manifest = bundle_writer.write_manifest(root, manifest)
    with labels.named_as(root / "labels.txt", names_from):
        manifest, report = _judge(opts, root, manifest, nbs, onnx, ir, judge, host, workdir, timings)
    build_info = {"source": opts.model.name, "command": _command(opts), "fp16": opts.fp16, "quant": opts.quant,
                  "notice": opts.notice is not None, "labels_count": len(names or []),
                  "int8": int8_summary(report) if report else None, "int8_engine": opts.int8_engine,
                  "int8_calibration": report["calibration_images"] if report else None,
                  "int8_eval": opts.int8_eval is not None}
    (root / "README.md").write_text(readme.render(manifest, build_info), encoding="utf-8")
    with _Step("zip", timings):
        bundle_writer.write_zip(root, opts.out, name)
    return {"zip": opts.out, "dir": root if opts.keep_dir else None, "manifest": manifest, "timings": timings,
            "int8": report}


def _target_models(opts: Options, nbs: dict, onnx: str | None, ir: str | None, int8: dict | None) -> dict:
    """`models`: each target's files; its .nb is fp16 where --fp16 made it so (lite_opt: arm only)."""
    return {t: engine_files.target_files(t, nb, onnx, ir, int8, "fp16" if opts.fp16 and t == "arm" else "fp32")
            for t, nb in nbs.items()}


def _judge(opts: Options, root: Path, manifest: dict, nbs: dict, onnx: str | None, ir: str | None,
           judge: LitedVenv, host: str, workdir: Path, timings: dict) -> tuple:
    """The daemon's lited checks the bundle, loads and runs this machine's
    model (a labels file shorter than the model's classes is refused at load,
    on every board: so here, golden image or not), adds the int8 file and the
    golden result: (manifest, int8 report or None)."""
    if judge.present:
        judge.validate(root, check_model=host in opts.targets)
    else:
        _say(f"warning: no lited in {opts.daemon_venv}: the bundle was not checked by the runtime", warning=True)
    if judge.present and host in opts.targets and opts.golden is None:
        blank = workdir / "blank.bmp"
        bundle_writer.write_blank_image(blank)
        judge.infer(root, blank)
    if judge.present and host in opts.targets:
        _say_reading(judge.inspect(root))
    report = None
    if opts.int8 is not None and onnx:
        manifest, report = _int8(opts, root, manifest, nbs, onnx, ir, judge, workdir, timings)
    if opts.golden is not None:
        image = bundle_writer.copy_in(root, opts.golden, "golden" + opts.golden.suffix.lower())
        with _Step("golden", timings):
            # Paddle Lite's result is the reference; every other engine listed must agree with it
            expected = judge.infer(root, root / image, engine="paddle_lite")
            manifest["golden"] = {"image": image, "expected": expected, "tolerance": dict(DEFAULT_TOLERANCE)}
            if not any(expected.values()):
                _say(f"warning: {opts.golden.name}: the model finds nothing in it: the self-test on every engine "
                     "and board passes whatever they compute; give a golden image with something to find",
                     warning=True)
            if report is not None:  # the int8 file's own result: its self-test checks the engine, not int8's accuracy
                own = judge.infer(root, root / image, engine=opts.int8_engine, precision="int8")
                for files in manifest["models"].values():
                    for spec in files:
                        if spec.get("precision") == "int8":
                            spec["expected"] = own
            manifest = bundle_writer.write_manifest(root, manifest)
        judge.validate(root, check_model=True)
        with _Step("selftest on every engine", timings):
            for line in judge.selftest(root):
                _say(line)
    return manifest, report


def _say_reading(info: dict) -> None:
    """What the runtime read in the model's outputs (where its decoder decided something itself)
    and its warnings: a labels file one line off can make a decoder read another layout."""
    if info.get("decoder_reads"):
        _say(f"decoder reads: {info['decoder_reads']}")
    for warning in info.get("warnings", []):
        _say(f"warning: {warning}", warning=True)


def _int8(opts: Options, root: Path, manifest: dict, nbs: dict, onnx: str, ir: str | None, judge: LitedVenv,
          workdir: Path, timings: dict) -> tuple:
    """Quantise the ONNX on the calibration images (prepared by the daemon's
    lited), list the int8 file last in every target, and measure it against
    fp32 on the same engine: accuracy beside speed (printed, in the README)."""
    with _Step(f"int8 ({opts.int8_engine})", timings):
        npz = workdir / "calibration.npz"
        judge.agreement("tensors", root, opts.int8, npz)
        frames = int8.calibration_data(npz)
        made = int8.quantize(opts.int8_engine, root / onnx, frames, root, workdir)
        entry = engine_files.entry(made.name, (opts.int8_engine,), "int8")
        manifest["models"] = _target_models(opts, nbs, onnx, ir, entry)
        manifest = bundle_writer.write_manifest(root, manifest)
        judge.validate(root, check_model=True)
    with _Step("int8 against fp32", timings):
        report = judge.agreement("compare", root, opts.int8_engine, opts.int8_eval or opts.int8)
    report["calibration_images"] = len(frames)
    (workdir / "int8_report.json").write_text(json.dumps(report))
    _say(f"int8 ({opts.int8_engine}, {len(frames)} calibration images): {int8_summary(report)}")
    return manifest, report
