"""A cascade's later stages, from bundles built before (docs/build_sdk.md).

A manifest fragment's `stages` lists them in order; each names a built
bundle (a directory, or the zip build_sdk wrote) for its model, plus the
stage fields only a cascade has (`name`, `crop`, `select`, `rotate`,
`batch`), and may override the bundle's `inputs`, `preprocess` or
`decoder` (objects merge key by key). The stage bundle's model files for
the requested targets and its labels are copied in under the stage's name
(`rec_model_x86.nb`, `rec_labels.txt`), bytes unchanged; the judge then
validates the whole cascade as lited will read it.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from lited.validate import name_problem

from lited.sdk import BuildError
from lited.sdk.config_import import merge

STAGE_KEYS = ("name", "crop", "select", "rotate", "batch")
# `options`: engine options merged into every target's (e.g. {"predictors": 1} for a model whose
# per-shape predictors are large)
OVERRIDES = ("inputs", "preprocess", "decoder")


def _bundle_dir(source: Path, workdir: Path, index: int) -> Path:
    """The stage bundle as a directory (a zip is unpacked into the work directory)."""
    if source.is_dir():
        return source
    if not source.is_file():
        raise BuildError(f"stages[{index}].bundle: {source}: not found")
    if not zipfile.is_zipfile(source):
        raise BuildError(f"stages[{index}].bundle: {source}: neither a bundle directory nor a zip")
    out = workdir / f"stage{index}"
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.filename.startswith("/") or ".." in parts:
                raise BuildError(f"stages[{index}].bundle: {source.name}: entry {info.filename!r} leaves the zip")
        zf.extractall(out)
    found = [p.parent for p in out.rglob("manifest.json")]
    if len(found) != 1:
        raise BuildError(f"stages[{index}].bundle: {source.name}: expected one bundle (manifest.json) in it")
    return found[0]


def _paddle_lite_file(spec) -> dict:
    """A stage takes its bundle's `.nb` only (schema 2 lists the ONNX and others beside it): the
    target's Paddle Lite file, full precision first; a list without one gives its first file."""
    if not isinstance(spec, list):
        return spec
    files = [f for f in spec if isinstance(f, dict)]
    lite = [f for f in files if f.get("engine") == "paddle_lite" or "paddle_lite" in (f.get("engines") or ())]
    lite.sort(key=lambda f: f.get("precision", "fp32") != "fp32")
    return (lite or files)[0]


def _copy(src_root: Path, rel: str, root: Path, name: str, index: int) -> str:
    src = src_root / rel
    if not src.is_file():
        raise BuildError(f"stages[{index}].bundle: {rel}: missing in {src_root}")
    dst = f"{name}_{Path(rel).name}"
    shutil.copyfile(src, root / dst)
    return dst


def _merges(base, override) -> bool:
    """An override merges into the bundle's object key by key, unless it names another `type`
    (a decoder of another kind: the bundle's parameters are not its parameters)."""
    return isinstance(base, dict) and isinstance(override, dict) and override.get("type", base.get("type")) == base.get("type")


def add_stages(entries: list, targets: list, root: Path, workdir: Path) -> list:
    """The manifest's `stages`, with each stage's files copied into `root`."""
    stages, names = [], set()
    for i, entry in enumerate(entries):
        unknown = sorted(set(entry) - set(STAGE_KEYS) - set(OVERRIDES) - {"bundle", "options"})
        if unknown:
            raise BuildError(f"stages[{i}].{unknown[0]}: unknown field (known: "
                             f"{', '.join(sorted(('bundle', 'options') + STAGE_KEYS + OVERRIDES))})")
        name = entry.get("name")
        if name is None:
            raise BuildError(f"stages[{i}].name: missing (a new stage name, [a-z][a-z0-9_]*, up to 32)")
        if not isinstance(name, str) or name_problem(name) or name in names:
            raise BuildError(f"stages[{i}].name: expected a new stage name, got {name!r}")
        names.add(name)
        src = _bundle_dir(Path(entry["bundle"]), workdir, i)
        try:
            manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            raise BuildError(f"stages[{i}].bundle: {src / 'manifest.json'}: {exc}") from None
        if manifest.get("stages"):
            raise BuildError(f"stages[{i}].bundle: {src.name} is a cascade itself; a stage is one model")
        models = manifest.get("models") or {}
        missing = [t for t in targets if t not in models]
        if missing:
            raise BuildError(f"stages[{i}].bundle: {src.name} has no model for target {', '.join(missing)} "
                             f"(has {', '.join(sorted(models)) or 'none'}); build it with --targets "
                             f"{','.join(targets)}")
        stage_models = {}
        for target in targets:
            spec = {k: v for k, v in _paddle_lite_file(models[target]).items()
                    if k not in ("sha256", "size", "expected")}
            spec["file"] = _copy(src, spec["file"], root, name, i)
            if isinstance(spec.get("params"), dict):
                spec["params"] = {"file": _copy(src, spec["params"]["file"], root, name, i)}
            if entry.get("options"):
                if not isinstance(entry["options"], dict):
                    raise BuildError(f"stages[{i}].options: expected an object of engine options")
                spec["options"] = {**spec.get("options", {}), **entry["options"]}
            stage_models[target] = spec
        stage = {"name": name, "models": stage_models}
        for key in OVERRIDES:
            base = manifest.get(key)
            stage[key] = merge(base, entry[key]) if _merges(base, entry.get(key)) else entry.get(key, base)
        stage["labels"] = _copy(src, manifest["labels"], root, name, i) if manifest.get("labels") else None
        stage.update({key: entry[key] for key in STAGE_KEYS if key in entry and key != "name"})
        stages.append(stage)
    return stages
