"""The SDK bundle: manifest schema, validation, checksums and target check.

A bad bundle must be refused before anything touches Paddle Lite: an arm
`.nb` loaded on x86 segfaults inside `run()`, and a truncated file can crash
the loader. So `load_bundle` checks everything it can from the files alone
and reports every problem at once, each with its field path or file name.
The format is documented in docs/bundle.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lited.errors import CONTROL, printable
from lited.files import MAX_MODEL_BYTES, FileRefused, open_regular, read_capped
from lited.validate import Checker, KeysGivenTwice, is_number, quoted, shown, type_name

SCHEMA = 2          # the newest manifest schema this lited reads
# 2 = 1 + `stages` (a cascade) + several files per target (`models.<target>` a list, in
# every stage too) with `engines`, `precision`, `expected`; a bundle that uses none of
# these is written as 1, so older lited run it
SCHEMAS = (1, 2)
SCHEMA_2_FIELDS = ("engines", "precision", "expected")  # file fields schema 1 does not have
MODEL_FILE_FIELDS = ("file", "sha256", "size", "engine", "engines", "options", "params", "precision", "expected")
# a typo ("label", "stage") is refused, not ignored
MANIFEST_FIELDS = ("schema", "name", "version", "task", "paddle_lite_version", "models", "inputs", "preprocess",
                   "decoder", "labels", "labels_sha256", "golden", "stages")
RESIZE_MODES = ("stretch", "letterbox", "short_side_crop", "keep_ratio", "fit_height")
# Caps on what a bundle may make the daemon read (a manifest that is /dev/zero,
# a 50 MB labels file): every read is bounded, regular files only (lited/files.py).
MAX_MANIFEST_BYTES = 1 << 20
MAX_LABELS_BYTES = 4 << 20
MAX_LABELS = 100_000
INTERPOLATIONS = ("nearest", "linear", "area", "cubic")
# Which targets run on which machines (`platform.machine()`).
TARGET_MACHINES = {
    "x86": ("x86_64", "AMD64", "i686", "i386"),
    "arm": ("aarch64", "arm64", "armv7l", "armv8l"),
    "opencl": ("aarch64", "arm64", "armv7l", "armv8l"),
    "jetson": ("aarch64",),
}


class BundleError(Exception):
    """A bundle was refused. `problems` lists each one; str() is one line."""

    def __init__(self, where: str, problems: list) -> None:
        self.where = where
        self.problems = list(problems)
        message = f"bundle {where}: " + "; ".join(self.problems)
        super().__init__(printable(message))  # a manifest key or file name may hold line breaks


PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ModelFile:
    """One model file of a target: `models.<target>` (one file, schema 1's
    form) or `models.<target>[i]` (several, in the bundle's order of preference)."""

    target: str
    path: Path
    sha256: str
    size: int | None
    engines: tuple = ("paddle_lite",)  # the engines that can run it, the bundle's first choice first
    options: dict = field(default_factory=dict)  # engine kind -> that engine's options
    params: "ModelFile | None" = None  # paddle_inference: the .pdiparams beside the .pdmodel
    field: str = ""                    # its field path in the manifest, for messages
    precision: str = "fp32"
    expected: dict | None = None       # its own golden result, where it differs from the bundle's (int8)

    @property
    def engine(self) -> str:
        """The bundle's first choice of engine for this file."""
        return self.engines[0]

    def options_for(self, kind: str) -> dict:
        return dict(self.options.get(kind, {}))


@dataclass
class Choice:
    """Which file of a target runs, on which engine, and why (for `lited inspect`)."""

    model: ModelFile
    engine: str
    why: str
    options: dict = field(default_factory=dict)


FIRST_STAGES_ENGINE = "the first stage's engine"  # why a later stage runs on an engine


@dataclass
class ModelSpec:
    """One model of a bundle and how to feed and read it: the bundle's own
    (the first stage) or a later stage's. `manifest` is that part of the
    manifest; `where` the field path prefix its problems are reported with."""

    root: Path
    manifest: dict
    labels: list
    where: str = ""

    preprocess = property(lambda self: self.manifest["preprocess"], doc="the manifest's fields, validated")
    decoder = property(lambda self: self.manifest["decoder"])
    inputs = property(lambda self: self.manifest["inputs"])

    @property
    def image_input(self) -> int:
        """Index of the image input (the one without `fill`)."""
        return next(i for i, spec in enumerate(self.inputs) if "fill" not in spec)

    @property
    def labels_file(self) -> Path | None:
        labels = self.manifest.get("labels")
        return self.root / labels if labels else None

    def models(self) -> dict:
        """target -> its model files ([ModelFile]), in the bundle's order of preference."""
        return {t: model_files(self.root, t, m, self.where) for t, m in self.manifest["models"].items()}

    def _target_files(self, target: str | None) -> list:
        """The files of `target` (default: this machine's), unchecked; refused if
        the bundle has none for it or it does not run here."""
        target = target or machine_target(self.manifest["models"])
        models = self.models()
        if target not in models:
            raise BundleError(str(self.root), [f"{self.where}models: no model for target '{target}' "
                                               f"(has {', '.join(models) or 'none'})"])
        check_target_runs_here(target, str(self.root / "manifest.json"))
        return models[target]

    def model_files(self, target: str | None = None) -> list:
        """The files of `target` (default: this machine's), each checked on disk."""
        files = self._target_files(target)
        problems = [p for model in files for p in check_model_file(model)]
        if problems:
            raise BundleError(str(self.root), problems)
        return files

    def choose(self, target: str | None = None, engine: str | None = None, precision: str | None = None,
               check_file: bool = True) -> Choice:
        """The file and engine to run (see `choose_engine`); that file checked on
        disk unless `check_file` is false (its bytes were checked already, or are
        not to be read)."""
        choice = choose_engine(self._target_files(target), engine, precision, str(self.root / "manifest.json"))
        problems = check_model_file(choice.model) if check_file else []
        if problems:
            raise BundleError(str(self.root), problems)
        return choice

    def engine_threads(self, target: str | None = None, engine: str | None = None,
                       precision: str | None = None) -> int:
        """The threads the bundle's options give the engine `choose` would pick
        (1 if none), without reading the model file."""
        return int(self.choose(target, engine, precision, check_file=False).options.get("threads") or 1)

    def choose_like(self, target: str | None, first: Choice, check_file: bool = True) -> Choice:
        """A later stage's file and engine: the engine `first` (the first stage's
        choice) runs on, at its precision where this stage lists a file of it, else
        at this stage's first for that engine; else this stage's own order."""
        for engine, precision in _like(first.engine, first.model.precision):
            if listed_files(self._target_files(target), engine, precision):
                return replace(self.choose(target, engine, precision, check_file), why=FIRST_STAGES_ENGINE)
        return self.choose(target, check_file=check_file)

    def listed_like(self, target: str, engine: str, precision: str) -> tuple | None:
        """`choose_like` for a target this machine does not run, where nothing is
        loaded and what is installed is not known: (file, engine, why) of the first
        file listed, None if there is none."""
        files = self.models().get(target, [])
        for asked in _like(engine, precision):
            pairs = listed_files(files, *asked)
            if pairs:
                return (*pairs[0], FIRST_STAGES_ENGINE)
        pairs = listed_files(files)
        return (*pairs[0], "the bundle's first choice") if pairs else None

    def choices(self, target: str | None = None) -> list:
        """Every file and engine the bundle lists for `target`, installed or not
        (`lited selftest` runs each installed one)."""
        return [Choice(f, kind, "listed", f.options_for(kind)) for f in self.model_files(target) for kind in f.engines]

    def model_for(self, target: str | None = None) -> ModelFile:
        """The model file that runs here by default for `target`, checked on disk."""
        return self.choose(target).model


@dataclass
class StageSpec(ModelSpec):
    """A later stage of a cascade: runs on crops of the first stage's
    detections and adds its decoder's result to each (docs/bundle.md)."""

    name = property(lambda self: self.manifest["name"])
    crop = property(lambda self: {"mode": "box", "margin": 0.0, **self.manifest.get("crop", {})})
    select = property(lambda self: {"labels": [], "min_score": 0.0, "max": STAGE_MAX_CROPS,
                                    **self.manifest.get("select", {})})
    rotate = property(lambda self: self.manifest.get("rotate"))
    batch = property(lambda self: int(self.manifest.get("batch", 1)))


@dataclass
class Bundle(ModelSpec):
    """A loaded, validated bundle: its first stage (the ModelSpec it is) and the later stages of
    its cascade; everything checked at load, so nothing fails later for a reason it could see."""
    stages: list = field(default_factory=list)  # StageSpec, in order

    def choose_all(self, engine: str | None = None, precision: str | None = None, check_file: bool = True) -> list:
        """What runs here: the first stage's choice, then each later stage's
        (`choose`, `choose_like`); BundleError when a stage has none (asked for
        an engine or precision it lists no file for, or none of its engines installed)."""
        first = self.choose(None, engine, precision, check_file)
        return [first] + [stage.choose_like(None, first, check_file) for stage in self.stages]

    name = property(lambda self: self.manifest["name"], doc="the manifest's fields, validated")
    version = property(lambda self: self.manifest["version"])
    task = property(lambda self: self.manifest["task"])

    @property
    def golden(self) -> dict | None:
        return self.manifest.get("golden")

    def all_model_files(self, target: str | None = None) -> list:
        """Every model file of every stage for `target`, first stage first, each checked on disk."""
        target = target or machine_target(self.manifest["models"])
        return [f for part in (self, *self.stages) for f in part.model_files(target)]


def machine_target(models: dict | None = None) -> str:
    """The bundle target this machine runs: of the targets in `models` that run on this machine,
    the first (in the bundle's order) with a file an engine installed here runs, else the first of
    them (its error then names it); without any, `x86` on x86_64, else `arm`. So one bundle serves
    a mixed fleet: `jetson` (Paddle Inference) listed before `arm` runs on a Jetson with Paddle
    Inference and is passed over on a Raspberry Pi, which took it and failed."""
    machine = platform.machine()
    here = [target for target in models or {} if machine in TARGET_MACHINES.get(target, ())]
    for target in here:
        if _runs_here(models[target]):
            return target
    if here:
        return here[0]
    return "x86" if machine in TARGET_MACHINES["x86"] else "arm"


def _runs_here(spec: Any) -> bool:
    """Does an engine installed here run one of a target's files (as the manifest lists them)?"""
    from lited.engines import ENGINES  # here: the registry imports every engine module (not their backends)

    try:
        kinds = {kind for entry in file_specs(spec) for kind in spec_engines(entry)}
    except (TypeError, AttributeError, KeyError):  # a malformed entry: the manifest's check names it
        return False
    return any(kind in ENGINES and ENGINES.get(kind).available() for kind in kinds)


def check_target_runs_here(target: str, where: str) -> None:
    machine = platform.machine()
    allowed = TARGET_MACHINES.get(target)
    if allowed is not None and machine not in allowed:
        raise BundleError(where, [f"models.{target}: built for {target}, this machine is {machine}; "
                                  "refusing to load it (an engine given another machine's model can crash: "
                                  "Paddle Lite does)"])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, MAX_MODEL_BYTES) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _like(engine: str, precision: str) -> tuple:
    """What a later stage is asked for, in turn: the first stage's engine at its
    precision, then that engine at any (`listed_files`: an int8 file only when asked)."""
    return (engine, precision), (engine, None)


def listed_files(files: list, engine: str | None = None, precision: str | None = None) -> list:
    """(file, engine) pairs of a target's `files` that fit `engine` and `precision` (None:
    any), in the bundle's order of preference. An int8 file only where int8 is asked for:
    its results may differ from the float model's more than the golden tolerance."""
    return [(f, kind) for f in files for kind in f.engines if engine in (None, kind)
            and (f.precision == precision if precision else f.precision != "int8")]


def choose_engine(files: list, engine: str | None = None, precision: str | None = None,
                  where: str = "bundle") -> Choice:
    """Which of a target's files runs, on which engine: the one asked for
    (`engine`, `precision`: the config's choice), else the bundle's order of
    preference (files in order, each file's engines in order), skipping
    engines not installed here. An engine the bundle does not list for the
    file is never used: its golden self-test did not cover it."""
    from lited.engines import ENGINES  # here: the registry imports every engine module (not their backends)

    target_field = re.sub(r"\[\d+\]$", "", files[0].field)  # "models.x86" or "stages[0].models.x86"
    listed = listed_files(files, engine, precision)
    if not listed:
        kinds = ", ".join(dict.fromkeys(f"{k} ({f.precision})" for f in files for k in f.engines))
        asked = " ".join(x for x in (engine, precision) if x)
        if not asked:  # every file is int8: none runs unless asked for
            raise BundleError(where, [f"{target_field}: only int8 files, which run only when asked for "
                                      f"(precision int8; the bundle lists {kinds})"])
        raise BundleError(where, [f"{target_field}: no file for {asked} (the bundle lists {kinds})"])
    missing = []
    for rank, (model, kind) in enumerate(listed):
        if kind in ENGINES and ENGINES.get(kind).available():
            if engine is not None or precision is not None:
                asked = " and ".join(f"--{k} {v}" for k, v in (("engine", engine), ("precision", precision)) if v)
                why = f"asked for (the config, or {asked})"
            elif rank == 0:
                why = "the bundle's first choice"
            else:
                why = f"the bundle's choice {rank + 1} ({', '.join(dict.fromkeys(missing))} not installed)"
            int8 = [] if precision else list(dict.fromkeys(f.path.name for f in files if f.precision == "int8"))
            if int8:  # listed, maybe first, and passed over: say so, or "first choice" reads wrong
                why += f"; {', '.join(int8)} passed over (int8: only with precision int8)"
            return Choice(model, kind, why, model.options_for(kind))
        missing.append(kind)
    packages = ", ".join(dict.fromkeys(ENGINES.get(k).package if k in ENGINES else k for k in missing))
    raise BundleError(where, [f"{target_field}: no engine installed here for "
                              f"{', '.join(dict.fromkeys(missing))} (install {packages})"])


def check_model_file(model: ModelFile) -> list:
    """Problems with a model file on disk: missing, truncated, wrong checksum."""
    path = model.path
    name = path.name
    if not path.is_file():  # a FIFO or a directory there is named as such, not "missing"
        return [f"{name}: {_not_a_file(path)} ({model.field}.file)"]
    size = path.stat().st_size
    if model.size is not None and size != model.size:
        return [f"{name}: {size} bytes, manifest says {model.size} "
                f"({'truncated or wrong file' if size < model.size else 'wrong file, or bytes added to it'})"]
    try:
        digest = sha256_file(path)
    except FileRefused as exc:  # replaced by a FIFO or a device meanwhile, or over MAX_MODEL_BYTES
        return [f"{name}: {exc.reason}"]
    except OSError as exc:
        return [f"{name}: cannot be read ({exc.strerror or exc})"]
    if digest != model.sha256.lower():
        return [f"{name}: sha256 mismatch ({model.field}.sha256)"]
    if model.params is not None:
        return check_model_file(model.params)
    from lited.engines import ENGINES  # here: the registry imports every engine module (not their backends)

    for kind in model.engines:  # what the file says of itself against its target (Paddle Lite's kernels)
        problem = ENGINES.get(kind).file_problem(path, model.target, model.field) if kind in ENGINES else None
        if problem:
            return [f"{name}: {problem}"]
    return []


def file_specs(spec: dict | list) -> list:
    """A target's file entries as a list: schema 1's one object, or the list."""
    return list(spec) if isinstance(spec, list) else [spec]


def spec_engines(spec: dict) -> tuple:
    """The engines a file entry names: `engines`, or the one `engine` (default paddle_lite)."""
    return tuple(spec["engines"]) if "engines" in spec else (spec.get("engine", "paddle_lite"),)


def model_files(root: Path, target: str, spec: dict | list, prefix: str = "") -> list:
    """The validated `models.<target>` entry as ModelFiles, in order
    (`prefix`: its stage's field path, "" or "stages[0].")."""
    out = []
    entries = file_specs(spec)
    for i, entry in enumerate(entries):
        where = f"{prefix}models.{target}" + (f"[{i}]" if isinstance(spec, list) else "")
        engines = spec_engines(entry)
        options = dict(entry.get("options", {}))
        options = options if "engines" in entry else {engines[0]: options}
        params = entry.get("params")
        out.append(ModelFile(target, root / entry["file"], entry["sha256"], entry.get("size"), engines, options,
                             ModelFile(target, root / params["file"], params["sha256"], params.get("size"), (),
                                       field=where + ".params") if params else None,
                             where, entry.get("precision", "fp32"), entry.get("expected")))
    return out


class BundleChecker(Checker):
    """The shared checker, plus what only bundles have: files that must stay inside them."""

    def safe_path(self, root: Path, rel: Any, path: str) -> Path | None:
        """A file inside the bundle: no absolute paths, no `..`, no links out."""
        if rel is None:  # absent, as every other required field says it
            self.add(path, "missing")
            return None
        if not isinstance(rel, str) or not rel:
            self.add(path, f"expected a file name, got {shown(rel)}")
            return None
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            self.add(path, f"'{rel}' leaves the bundle")
            return None
        full = root / rel
        try:
            if not full.resolve().is_relative_to(root.resolve()):
                self.add(path, f"'{rel}' links out of the bundle")
                return None
            full.lstat()  # a name the file system refuses (too long): is_file() and stat() would raise
        except (FileNotFoundError, NotADirectoryError):
            return full  # missing: the caller says so
        except (OSError, RuntimeError, ValueError):  # ValueError: a NUL in the name
            self.add(path, f"'{rel}' cannot be resolved")
            return None
        return full


def validate_manifest(manifest: Any, root: Path) -> list:
    """Every problem with a manifest, each prefixed with its field path.
    Checks files exist (not their checksums: that is `check_model_file`)."""
    c = BundleChecker()
    if not isinstance(manifest, dict):
        return ["manifest: expected a JSON object"]
    schema = c.get(manifest, "schema", "", int)
    if schema is not None and schema not in SCHEMAS:
        c.add("schema", f"version {schema} is not supported (this lited reads "
                        f"{', '.join(map(str, SCHEMAS))})")
    c.unknown(manifest, MANIFEST_FIELDS, "")
    c.name(manifest, "name", "")
    c.version(manifest, "version", "")
    task = c.get(manifest, "task", "", str)
    if task is not None and CONTROL.search(task):  # shown raw by inspect and status: a line break forged lines
        c.add("task", f"{shown(task)}: control characters (a line break, ESC) are not a task")
    c.get(manifest, "paddle_lite_version", "", str, required=False)
    _check_part(c, manifest, root, "")
    if "stages" in manifest:
        if schema == 1:
            c.add("stages", "needs \"schema\": 2 (a lited that reads only schema 1 would ignore the stages)")
        _check_stages(c, manifest["stages"], manifest, root)
    golden = manifest.get("golden")
    if golden is not None:
        if not isinstance(golden, dict):
            c.add("golden", "expected an object")
        else:
            c.unknown(golden, ("image", "expected", "tolerance"), "golden.")
            image = c.safe_path(root, golden.get("image"), "golden.image")
            if image is not None and not image.is_file():
                c.add("golden.image", f"{golden['image']}: {_not_a_file(image)}")
            expected = c.get(golden, "expected", "golden.", dict)
            if expected is not None:
                check_expected(c, expected, "golden.expected.")
            tolerance = c.get(golden, "tolerance", "golden.", dict, required=False)
            if tolerance is not None:
                c.unknown(tolerance, ("box_px", "score"), "golden.tolerance.")
                c.number(tolerance, "box_px", "golden.tolerance.", minimum=0)
                c.number(tolerance, "score", "golden.tolerance.", minimum=0, maximum=1)
    return c.problems


EXPECTED_KEYS = ("detections", "classes", "text", "text_score")  # of a golden result (`lited infer --json`'s)
# what else `lited infer --json` prints: a result pasted whole (as sdk_template/README.md says) is taken, these unread
INFER_ONLY_KEYS = ("image", "task", "timings_ms")
EXPECTED_ITEM_KEYS = ("label", "class_id", "score", "box", "polygon", "classes", "text", "text_score")


def check_expected(c: BundleChecker, expected: dict, p: str) -> None:
    """A golden result as `lited infer --json` writes it: what selftest compares is checked here,
    so a typo is named at load, not met as a traceback in selftest (or the installer)."""
    c.unknown(expected, EXPECTED_KEYS + INFER_ONLY_KEYS, p)
    for key in ("detections", "classes"):
        items = c.get(expected, key, p, list, required=False) or []
        for i, item in enumerate(items):
            q = f"{p}{key}[{i}]."
            if not isinstance(item, dict):
                c.add(q[:-1], f"expected an object, got {shown(item)}")
                continue
            c.unknown(item, EXPECTED_ITEM_KEYS, q)
            c.get(item, "label", q, str)
            c.number(item, "class_id", q, integer=True, minimum=0)
            c.number(item, "score", q, required=True)
            c.numbers(item, "box", q, 4)
            c.get(item, "text", q, str, required=False)
    c.get(expected, "text", p, str, required=False)
    c.number(expected, "text_score", p)


def _not_a_file(path: Path) -> str:
    """Why `path`, not a regular file, cannot be read: missing, or something else there."""
    return "not a regular file" if path.exists() or path.is_symlink() else "missing"


INPUT_KEYS = ("name", "shape", "dtype", "fill")  # of an `inputs[]` entry


def config_problems(fields: dict) -> list:
    """The problems of a config's `preprocess` and `decoder` as a manifest
    would have them, before a model exists to complete the manifest: what a
    builder can refuse at once, naming the field, instead of after conversion."""
    c = BundleChecker()
    inputs = fields.get("inputs")
    for i, spec in enumerate(inputs if isinstance(inputs, list) else []):
        if isinstance(spec, dict):  # a config's inputs may be partial (a shape): only a typo is sure
            c.unknown(spec, INPUT_KEYS, f"inputs[{i}].")
    _check_preprocess(c, fields)
    _check_decoder(c, fields)
    return c.problems


def stage_problems(stages: list, targets: list, root: Path) -> list:
    """The problems of a cascade's `stages` (their files in `root`) as the
    manifest will have them, before the first stage's model exists: a builder
    refuses a stage's bad decoder or batch at once, not after conversion."""
    c = BundleChecker()
    _check_stages(c, [_sealed_models(stage, root) for stage in stages], {"models": dict.fromkeys(targets)}, root)
    return c.problems


def _check_part(c: BundleChecker, spec: dict, root: Path, where: str) -> None:
    """What the first stage and every later stage have: models, inputs,
    preprocessing, decoder, labels (`where`: the field path prefix)."""
    _check_models(c, spec, root, where)
    _check_inputs(c, spec, where)
    _check_preprocess(c, spec, where)
    _check_decoder(c, spec, where)
    labels = spec.get("labels")
    if labels is not None:
        full = c.safe_path(root, labels, where + "labels")
        if full is not None and not full.is_file():
            c.add(where + "labels", f"{labels}: {_not_a_file(full)}")
        elif full is not None and full.stat().st_size > MAX_LABELS_BYTES:
            c.add(where + "labels", f"{labels}: {full.stat().st_size} bytes, over the limit of "
                                    f"{MAX_LABELS_BYTES >> 20} MiB")
    if _check_sha(c, spec, where, "labels_sha256", required=False) and labels is None:
        c.add(where + "labels_sha256", "given without labels (the file it seals)")


def _check_models(c: BundleChecker, manifest: dict, root: Path, where: str = "") -> None:
    models = c.get(manifest, "models", where, dict)
    if models is None:
        return
    if not models:
        c.add(where + "models", "expected at least one target")
    for target, spec in models.items():
        p = f"{where}models.{target}"
        if manifest.get("schema") == 1 and (isinstance(spec, list) or isinstance(spec, dict) and any(
                k in spec for k in SCHEMA_2_FIELDS)):
            c.add(p, "several files per target, `engines`, `precision` and `expected` need \"schema\": 2")
        if isinstance(spec, list):
            if not spec:
                c.add(p, "expected at least one model file")
            for i, entry in enumerate(spec):
                _check_model_entry(c, entry, f"{p}[{i}]", root)
        else:
            _check_model_entry(c, spec, p, root)


def _check_model_entry(c: BundleChecker, spec: Any, where: str, root: Path) -> None:
    """One model file: `file`, `sha256`, `size`, `engine` or `engines`, `options`, `params`,
    `precision`, `expected`."""
    p = where + "."
    if not isinstance(spec, dict):
        c.add(where, "expected an object (a model file)")
        return
    c.unknown(spec, MODEL_FILE_FIELDS, p)
    rel = spec.get("file")
    c.safe_path(root, rel, p + "file")
    _check_sha(c, spec, p)
    size = c.get(spec, "size", p, int, required=False)
    if size is not None and size < 0:
        c.add(p + "size", "expected a positive integer")
    from lited.engines import ENGINES  # here: the registry imports every engine module

    if "engine" in spec and "engines" in spec:
        c.add(p + "engines", "give either engine (one) or engines (a list), not both")
        return
    if "engines" in spec:
        engines = spec["engines"]
        if not isinstance(engines, list) or not engines or not all(isinstance(e, str) for e in engines) \
                or len(set(engines)) != len(engines):
            c.add(p + "engines", f"expected a list of distinct engine names, got {shown(engines)}")
            return
        unknown = [e for e in engines if e not in ENGINES]
        if unknown:
            c.add(p + "engines", f"unknown {shown(unknown[0])}, expected any of {', '.join(ENGINES.kinds())}")
            return
        options = c.get(spec, "options", p, dict, required=False) or {}
        for kind, value in options.items():
            if kind not in engines:
                c.add(p + f"options.{kind}", f"not one of this file's engines ({', '.join(engines)})")
            elif not isinstance(value, dict):
                c.add(p + f"options.{kind}", f"expected an object (that engine's options), got {shown(value)}")
            else:
                _check_engine_options(c, ENGINES.get(kind), value, p + f"options.{kind}")
    else:
        engine = c.choice(spec, "engine", p, ENGINES.kinds(), "paddle_lite")
        engines = [engine] if engine else []
        options = c.get(spec, "options", p, dict, required=False)
        if engine and options:
            _check_engine_options(c, ENGINES.get(engine), options, p + "options")
    if isinstance(rel, str):
        for kind in engines:
            cls = ENGINES.get(kind)
            if not cls.can_run(rel):
                c.add(p + ("engines" if "engines" in spec else "engine"),
                      f"{kind} cannot run {shown(rel)} (it runs {', '.join(cls.formats)} files)")
    c.choice(spec, "precision", p, PRECISIONS, "fp32")
    expected = c.get(spec, "expected", p, dict, required=False)
    if expected is not None:
        check_expected(c, expected, p + "expected.")
    params = spec.get("params")
    needs = ", ".join(f"{kind} needs its {suffix} beside it" for kind in engines if kind in ENGINES
                      for suffix in [ENGINES.get(kind).weights_suffix(str(rel))] if suffix)
    if needs and not isinstance(params, dict):
        c.add(p + "params", f"missing: {needs} ({{\"file\", \"sha256\", \"size\"}})")
    elif isinstance(params, dict):
        c.safe_path(root, params.get("file"), p + "params.file")
        _check_sha(c, params, p + "params.")
    elif params is not None:
        c.add(p + "params", "expected an object")


def _check_sha(c: BundleChecker, spec: dict, p: str, key: str = "sha256", required: bool = True) -> bool:
    """`spec[key]` is 64 hex digits; True when it is (False when absent or wrong, said)."""
    sha = c.get(spec, key, p, str, required=required)
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        c.add(p + key, "expected 64 hex digits")
        return False
    return sha is not None


INPUT_FILLS = ("im_shape", "scale_factor")  # extra inputs lited fills per frame (PaddleDetection exports)


def _check_inputs(c: BundleChecker, manifest: dict, where: str = "") -> None:
    inputs = c.get(manifest, "inputs", where, list)
    if inputs is None:
        return
    images = 0
    for i, spec in enumerate(inputs):
        p = f"{where}inputs[{i}]."
        if not isinstance(spec, dict):
            c.add(p[:-1], "expected an object")
            continue
        c.unknown(spec, INPUT_KEYS, p)
        c.get(spec, "name", p, str)
        shape = c.get(spec, "shape", p, list)
        fill = spec.get("fill")
        if fill is not None:
            c.choice(spec, "fill", p, INPUT_FILLS)
            if shape is not None and shape not in ([1, 2], [-1, 2]):
                c.add(p + "shape", f"expected [1, 2] for a '{fill}' input, got {json.dumps(shape)}")
        else:
            images += 1
            if shape is not None and len(shape) != 4:
                c.add(p + "shape", f"expected 4 sizes (N, C, H, W or N, H, W, C; -1 for dynamic), "
                                   f"got {json.dumps(shape)}")
            elif shape is not None and not all(
                    isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in shape):
                c.add(p + "shape", f"expected each size an integer above 0, or -1 for dynamic, got {json.dumps(shape)}")
        c.choice(spec, "dtype", p, ("float32",), "float32")
    if images != 1:
        c.add(where + "inputs", f"expected exactly one image input (the others with \"fill\": "
                        f"{' or '.join(INPUT_FILLS)}), got {images}")


def _check_preprocess(c: BundleChecker, manifest: dict, where: str = "") -> None:
    pre = c.get(manifest, "preprocess", where, dict)
    if pre is None:
        return
    p = where + "preprocess."
    known = {"color", "resize", "scale", "mean", "std", "layout"}
    for key in sorted(set(pre) - known):
        c.add(p + key, f"unknown field (known: {', '.join(sorted(known))})")
    c.choice(pre, "color", p, ("BGR", "RGB"), "BGR")
    c.choice(pre, "layout", p, ("NCHW", "NHWC"), "NCHW")
    scale = c.get(pre, "scale", p, float, required=False)
    if scale is not None and not (is_number(scale) and scale > 0):
        c.add(p + "scale", "expected a positive number")
    c.numbers(pre, "mean", p, 3)
    c.numbers(pre, "std", p, 3)
    if isinstance(pre.get("std"), list) and any(is_number(v) and v == 0 for v in pre["std"]):
        c.add(p + "std", "must not contain 0")
    resize = c.get(pre, "resize", p, dict)
    if resize is None:
        return
    p = where + "preprocess.resize."
    mode = c.choice(resize, "mode", p, RESIZE_MODES)
    c.choice(resize, "interpolation", p, INTERPOLATIONS, "linear")
    allowed = {"mode", "interpolation"} | {
        "letterbox": {"pad_value", "align"}, "short_side_crop": {"short_side"},
        "keep_ratio": {"max_side", "min_side", "multiple"}, "fit_height": {"pad_value", "widths"}}.get(mode, set())
    for key in sorted(set(resize) - allowed):
        c.add(p + key, f"unknown field for mode {json.dumps(mode)} (known: {', '.join(sorted(allowed))})")
    if mode in ("letterbox", "fit_height"):
        pad = c.get(resize, "pad_value", p, float, required=False)
        if pad is not None and not is_number(pad):
            c.add(p + "pad_value", "expected a finite number")
    if mode == "letterbox":
        c.choice(resize, "align", p, ("center", "top_left"), "center")
    elif mode == "fit_height":
        _check_fit_height(c, resize, manifest, where)
    elif mode == "short_side_crop":
        side = c.get(resize, "short_side", p, int)
        if side is not None and side <= 0:
            c.add(p + "short_side", "expected a positive integer")
    elif mode == "keep_ratio":
        for key, required in (("max_side", True), ("min_side", False), ("multiple", False)):
            value = c.get(resize, key, p, int, required=required)
            if value is not None and value <= 0:
                c.add(p + key, "expected a positive integer")


def _check_fit_height(c: BundleChecker, resize: dict, manifest: dict, where: str) -> None:
    """`fit_height` needs a fixed height; a dynamic width needs its buckets."""
    p = where + "preprocess.resize."
    widths = c.get(resize, "widths", p, list, required=False)
    if widths is not None and (not widths or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        c.add(p + "widths", f"expected a list of positive integers, got {shown(widths)}")
        widths = None
    inputs = manifest.get("inputs")
    images = [s for s in inputs if isinstance(s, dict) and "fill" not in s] if isinstance(inputs, list) else []
    shape = images[0].get("shape") if len(images) == 1 else None
    if not (isinstance(shape, list) and len(shape) == 4):
        return
    layout = manifest["preprocess"].get("layout", "NCHW")
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if height == -1:
        c.add(p + "mode", "'fit_height' needs a fixed input height")
    if width == -1 and widths is None and "widths" not in resize:
        c.add(p + "widths", "missing: a dynamic input width is rounded up to one of these (one "
                            "predictor each), e.g. [320, 640, 960]")
    elif width != -1 and widths is not None:
        c.add(p + "widths", f"only for a dynamic input width (this one is {width})")


def _check_engine_options(c: BundleChecker, engine: Any, options: dict, p: str) -> None:
    """The options of one engine a file lists: names, then values, whichever engine runs here (a value
    only the engine a board falls back to reads was found only on that board)."""
    from lited.engines import EngineError

    c.unknown(options, engine.options, p + ".")
    try:
        engine.check_options({k: v for k, v in options.items() if k in engine.options})
    except EngineError as exc:
        c.add(p, str(exc))


def _check_decoder(c: BundleChecker, manifest: dict, where: str = "") -> None:
    dec = c.get(manifest, "decoder", where, dict)
    if dec is None:
        return
    from lited.decoders import DECODERS  # here: the registry imports every decoder module

    p = where + "decoder."
    kind = c.choice(dec, "type", p, DECODERS.kinds())
    if kind is None:
        return
    cls = DECODERS.get(kind)
    params = cls.PARAMS
    mistyped = set()
    for key, value in dec.items():
        if key == "type":
            continue
        if key not in params:
            c.add(p + key, f"unknown parameter for '{kind}' (known: {', '.join(sorted(params)) or 'none'})")
            continue
        ptype = params[key][0]
        ok = is_number(value) if ptype in (int, float) else isinstance(value, ptype)
        if ptype is int and ok and not float(value).is_integer():
            ok = False
        if not ok:
            c.add(p + key, f"expected {type_name(ptype)}, got {shown(value)}")
            mistyped.add(key)
    for key, (low, high) in cls.RANGES.items():  # every problem at once: the others' ranges too
        if key in params and key not in mistyped:
            c.number(dec, key, p, minimum=low, maximum=high)
    if not mistyped:  # checks across parameters need them all of the right type
        for key, message in cls.problems({k: v for k, v in dec.items() if k != "type"}):
            c.add(p + key, message)


STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# result timing keys a stage name must not take (its time is reported under its name)
TIMING_KEYS = ("capture", "wait", "preprocess", "queue", "infer", "post_wait", "postprocess", "crop", "total")
STAGE_FIELDS = ("name", "models", "inputs", "preprocess", "decoder", "labels", "labels_sha256", "crop", "select",
                "rotate", "batch")
CROP_MODES = ("quad", "box")
STAGE_MAX_CROPS = 32  # crops per frame a stage runs on by default (the best-scoring detections)


def _check_stages(c: BundleChecker, stages: Any, manifest: dict, root: Path) -> None:
    """`stages`: later models that run on crops of the first stage's detections."""
    if not isinstance(stages, list) or not stages:
        c.add("stages", f"expected a list of at least one stage, got {shown(stages)}")
        return
    from lited.decoders import DECODERS

    names: set = set()
    added: dict = {}  # result key -> the stage that adds it
    first_targets = set(manifest.get("models") or {}) if isinstance(manifest.get("models"), dict) else set()
    for i, stage in enumerate(stages):
        p = f"stages[{i}]."
        if not isinstance(stage, dict):
            c.add(p[:-1], "expected an object")
            continue
        c.unknown(stage, STAGE_FIELDS, p)
        name = c.get(stage, "name", p, str)
        if name is not None:
            if not STAGE_NAME.fullmatch(name) or name in TIMING_KEYS:
                c.add(p + "name", f"'{name}': expected [a-z][a-z0-9_]* (up to 32), not one of "
                                  f"{', '.join(TIMING_KEYS)}")
            elif name in names:
                c.add(p + "name", f"'{name}' is used by an earlier stage")
            names.add(name)
        _check_part(c, stage, root, p)
        models = stage.get("models")
        if isinstance(models, dict) and first_targets - set(models):
            c.add(p + "models", f"no model for target {', '.join(sorted(first_targets - set(models)))} "
                                "(every stage runs on every target the bundle has)")
        dec = stage.get("decoder")
        kind = dec.get("type") if isinstance(dec, dict) else None
        adds: tuple = ()
        if kind in DECODERS:
            adds = DECODERS.get(kind).ADDS
            if not adds:
                c.add(p + "decoder.type", f"'{kind}' finds boxes; a stage adds one result to each detection "
                                          f"(decoders that do: {', '.join(k for k in DECODERS.kinds() if DECODERS.get(k).ADDS)})")
            for key in adds:
                if key in added:
                    c.add(p + "decoder.type", f"'{kind}' adds '{key}', which {added[key]} adds already")
                added.setdefault(key, f"stages[{i}]")
        _check_crop(c, stage, p)
        _check_select(c, stage, p)
        rotate = c.get(stage, "rotate", p, dict, required=False)
        if rotate is not None:
            c.unknown(rotate, ("label", "min_score"), p + "rotate.")
            c.get(rotate, "label", p + "rotate.", str)
            c.number(rotate, "min_score", p + "rotate.", 0.0, minimum=0, maximum=1)
            if adds and "classes" not in adds:
                c.add(p + "rotate", f"needs a classifying stage (decoder '{kind}' gives no classes)")
            if i == len(stages) - 1 and i > 0:  # stages read the crop before it turns it: the wrong order
                c.add(p + "rotate", "no stage after it to turn the crop for, and stages before it read it "
                                    "unturned (the classifier that rotates goes before the stages that read "
                                    "the crop)")
        batch = c.number(stage, "batch", p, 1, integer=True, minimum=1, maximum=64)
        if batch and batch > 1:
            shape = _image_shape(stage)
            if shape is not None and shape[0] != -1:
                c.add(p + "batch", f"{batch}, but the model's batch is fixed at {shape[0]} "
                                   f"(inputs shape {json.dumps(shape)}; -1 batches)")


def _image_shape(part: dict) -> list | None:
    inputs = part.get("inputs")
    images = [s for s in inputs if isinstance(s, dict) and "fill" not in s] if isinstance(inputs, list) else []
    shape = images[0].get("shape") if len(images) == 1 else None
    return shape if isinstance(shape, list) and len(shape) == 4 else None


def _check_crop(c: BundleChecker, stage: dict, p: str) -> None:
    crop = c.get(stage, "crop", p, dict, required=False)
    if crop is None:
        return
    p += "crop."
    mode = c.choice(crop, "mode", p, CROP_MODES, "box")
    c.unknown(crop, ("mode", "margin") if mode == "box" else ("mode",), p)
    if mode == "box":
        c.number(crop, "margin", p, 0.0, minimum=0, maximum=10)


def _check_select(c: BundleChecker, stage: dict, p: str) -> None:
    select = c.get(stage, "select", p, dict, required=False)
    if select is None:
        return
    p += "select."
    c.unknown(select, ("labels", "min_score", "max"), p)
    labels = c.get(select, "labels", p, list, required=False)
    if labels is not None and not all(isinstance(v, str) for v in labels):
        c.add(p + "labels", f"expected a list of label names, got {shown(labels)}")
    c.number(select, "min_score", p, 0.0, minimum=0, maximum=1)
    c.number(select, "max", p, STAGE_MAX_CROPS, integer=True, minimum=1, maximum=1024)


def split_labels(text: str) -> list:
    """Labels from a labels file's text: one a line, each kept exactly as
    written (a key file may hold " " or U+3000, the ideographic space, as a
    label), without the line end; only empty lines at the end are dropped."""
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def read_labels(path: Path, sha256: str | None = None, field: str = "labels_sha256",
                bundle_root: Path | None = None) -> list:
    """The labels (split_labels); FileRefused over MAX_LABELS_BYTES or
    MAX_LABELS labels, or when the bytes read do not hash to `sha256` (the
    manifest's `field`); UnicodeDecodeError if not UTF-8. The bytes checked
    are the bytes used: a file replaced in between cannot slip through."""
    data = read_capped(path, MAX_LABELS_BYTES, bundle_root)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise FileRefused(path, f"sha256 mismatch ({field})")
    labels = split_labels(data.decode("utf-8-sig"))  # a byte-order mark is no part of the first label
    if len(labels) > MAX_LABELS:
        raise FileRefused(path, f"{len(labels)} labels, over the limit of {MAX_LABELS}")
    return labels


def load_bundle(path: str | os.PathLike, check_models: bool = True) -> Bundle:
    """Read and validate a bundle directory; raises BundleError naming every problem.

    With `check_models`, this machine's model file is also checked on disk
    (present, size, sha256) and a bundle with no model for this machine is
    refused, so nothing is loaded from a bundle that could crash the loader.
    """
    root = Path(path)
    where = str(root / "manifest.json")
    if not root.is_dir():
        raise BundleError(str(root), ["not a directory"])
    twice = KeysGivenTwice()  # the last of two was taken in silence
    try:
        manifest = json.loads(read_capped(root / "manifest.json", MAX_MANIFEST_BYTES, root).decode("utf-8"),
                              object_pairs_hook=twice)
    except FileNotFoundError:
        raise BundleError(where, ["missing"]) from None
    except FileRefused as exc:  # a FIFO, a device, a directory, or too big: never read (or waited on) whole
        raise BundleError(where, [exc.reason]) from None
    except OSError as exc:
        raise BundleError(where, [f"cannot be read ({exc.strerror or exc})"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise BundleError(where, [f"not valid JSON ({exc})"]) from None
    problems = [f"{quoted(key)} is given twice" for key in dict.fromkeys(twice.keys)] + validate_manifest(manifest, root)
    labels = _all_labels(root, manifest, where, problems)  # every problem at once: the labels files' too
    if problems:
        if check_models:  # and the model files', as far as the manifest can be read
            problems += [p for p in _model_file_problems(manifest, root, problems) if p not in problems]
        raise BundleError(where, problems)
    bundle = Bundle(root, manifest, labels[""],
                    stages=[StageSpec(root, spec, labels[f"stages[{i}]."], f"stages[{i}].")
                            for i, spec in enumerate(manifest.get("stages", []))])
    problems = _stage_label_problems(bundle)
    if check_models:
        try:
            bundle.all_model_files()
        except BundleError as exc:
            if not problems:
                raise
            problems += exc.problems
    if problems:
        raise BundleError(where, problems)
    return bundle


def _all_labels(root: Path, manifest: dict, where: str, problems: list) -> dict:
    """{stage prefix: its labels} of every part whose `labels` field is sound,
    each file's problem added to `problems` (one labels file's did not hide
    another's, or the manifest's, or a damaged model file's)."""
    if not isinstance(manifest, dict):
        return {}
    parts = [("", manifest)]
    stages = manifest.get("stages")
    if isinstance(stages, list):
        parts += [(f"stages[{i}].", spec) for i, spec in enumerate(stages) if isinstance(spec, dict)]
    labels: dict = {}
    for prefix, part in parts:
        labels[prefix] = []
        if not isinstance(part.get("labels"), str) or any(p.startswith(f"{prefix}labels") for p in problems):
            continue
        try:
            labels[prefix] = _labels_of(root, part, prefix, where)
        except BundleError as exc:
            problems += exc.problems
    return labels


def _stage_label_problems(bundle: Bundle) -> list:
    """Labels a stage names that the labels files do not have: a typo in
    `select.labels` switched the stage off, one in `rotate.label` the
    rotation, in silence (the files are read only once the manifest is valid)."""
    from lited.decoders import DECODERS

    problems = []
    own = DECODERS.get(bundle.decoder["type"]).OWN_LABELS
    first, named = (own, f"'{bundle.decoder['type']}' labels every detection {', '.join(own)}") if own else \
        (bundle.labels, bundle.manifest.get("labels"))
    for i, stage in enumerate(bundle.stages):
        p = f"stages[{i}]."
        unknown = [x for x in stage.select["labels"] if first and x not in first]
        if unknown:
            problems.append(f"{p}select.labels: {', '.join(map(repr, unknown))} not among the first stage's labels "
                            f"({named}): the stage would never run")
        rotate = stage.rotate
        if rotate and stage.labels and rotate.get("label") not in stage.labels:
            problems.append(f"{p}rotate.label: {rotate.get('label')!r} not among the stage's labels "
                            f"({stage.manifest['labels']}): no crop would ever be turned")
    return problems


def _model_file_problems(manifest: dict, root: Path, said: list) -> list:
    """The on-disk problems of this machine's model files (first stage), for a
    manifest already found wrong elsewhere (`said`); none if its models cannot
    be read, nor for a file whose own fields were found wrong (its size or
    sha256 would be read as they are)."""
    try:
        models = manifest["models"]
        target = machine_target(models)
        files = [m for m in model_files(root, target, models[target])
                 if not any(p.startswith(m.field + ".") for p in said)]
        return [p for model in files for p in check_model_file(model)]
    except Exception:  # noqa: BLE001 - that part of the manifest is itself wrong: already said
        return []


def _labels_of(root: Path, part: dict, prefix: str, where: str) -> list:
    if not part.get("labels"):
        return []
    try:
        return read_labels(root / part["labels"], part.get("labels_sha256"), f"{prefix}labels_sha256", root)
    except FileRefused as exc:
        raise BundleError(where, [f"{prefix}labels: {part['labels']}: {exc.reason}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(where, [f"{prefix}labels: {part['labels']}: not readable as UTF-8 text "
                                  f"({type(exc).__name__})"]) from None


def seal(manifest: dict, root: Path) -> dict:
    """Fill `sha256` and `size` of each model file present under `root`, and
    `labels_sha256` where a labels file is; drop model files that are absent,
    and targets left with none (in every stage). For tools that assemble
    bundles."""
    sealed = _sealed_part(manifest, root)
    if "stages" in manifest:
        sealed["stages"] = [_sealed_part(stage, root) for stage in manifest["stages"]]
    return sealed


def _sealed_part(part: dict, root: Path) -> dict:
    """One stage's models and labels sealed."""
    sealed = _sealed_models(part, root)
    labels = part.get("labels")
    if not labels or not (Path(root) / labels).is_file():
        return sealed
    digest = sha256_file(Path(root) / labels)
    out = {}
    for key, value in sealed.items():  # right after `labels`, where a reader looks for it
        if key != "labels_sha256":
            out[key] = value
        if key == "labels":
            out["labels_sha256"] = digest
    return out


def _sealed_models(manifest: dict, root: Path) -> dict:
    models = {}
    for target, spec in manifest["models"].items():
        sealed = []
        for entry in file_specs(spec):
            path = Path(root) / entry["file"]
            if path.is_file():
                entry = {**entry, **_sealed(path)}
                params = entry.get("params")
                if params and (Path(root) / params["file"]).is_file():
                    entry["params"] = {**params, **_sealed(Path(root) / params["file"])}
                sealed.append(entry)
        if sealed:
            models[target] = sealed if isinstance(spec, list) else sealed[0]
    return {**manifest, "models": models}


def _sealed(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}
