"""`--config` files -> the manifest fields a model file cannot tell.

Three kinds, told apart by their keys:
- PaddleDetection `infer_cfg.yml` (`Preprocess`)  -> sdk.paddledet_cfg;
- PaddleClas inference config (`PreProcess`)     -> sdk.paddleclas_cfg;
- a manifest fragment (JSON or YAML with manifest keys, even a whole
  manifest.json), for every other model.
Several configs merge in order, later keys winning (objects merge, anything
else is replaced), so a small fragment can adjust an imported config:
`--config infer_cfg.yml --config thresholds.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

from lited.sdk import BuildError, read_utf8
from lited.sdk.labels import LabelFile
from lited.sdk.paddleclas_cfg import import_inference_cfg
from lited.sdk.paddledet_cfg import import_infer_cfg

FRAGMENT_KEYS = ("name", "version", "task", "inputs", "preprocess", "decoder", "labels", "stages")
# Whatever the builder computes itself; a whole manifest given as a fragment keeps the rest.
BUILDER_KEYS = ("schema", "paddle_lite_version", "models", "golden")


def _read(path: Path) -> object:
    if not path.is_file():
        raise BuildError(f"{path}: config not found")
    text = read_utf8(path, "config")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path.name}: not valid JSON ({exc})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BuildError(f"{path.name}: not valid YAML ({' '.join(str(exc).split())})") from None


def _fragment(data: dict, path: Path) -> dict:
    """A manifest fragment as is, its labels path taken relative to the fragment."""
    unknown = sorted(set(data) - set(FRAGMENT_KEYS) - set(BUILDER_KEYS))
    if unknown:
        raise BuildError(f"{path.name}: unknown key '{unknown[0]}' "
                         f"(a manifest fragment holds {', '.join(FRAGMENT_KEYS)})")
    fields = {k: v for k, v in data.items() if k in FRAGMENT_KEYS}
    labels = fields.get("labels")
    if isinstance(labels, str):
        fields["labels"] = LabelFile(path.parent / labels, "lines", origin=f"{path.name}: labels")
    elif labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
        raise BuildError(f"{path.name}: labels: expected a file name or a list of names")
    for key in ("preprocess", "decoder"):
        if key in fields and not isinstance(fields[key], dict):
            raise BuildError(f"{path.name}: {key}: expected an object")
    if "inputs" in fields and not (isinstance(fields["inputs"], list)
                                   and all(isinstance(i, dict) for i in fields["inputs"])):
        raise BuildError(f"{path.name}: inputs: expected a list of objects")
    if "stages" in fields:
        fields["stages"] = _stages(fields["stages"], path)
    return fields


def _stages(stages: object, path: Path) -> list:
    """A cascade's later stages: each names a built bundle (directory or zip,
    relative to the fragment) and adds the stage fields (crop, select, ...)."""
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise BuildError(f"{path.name}: stages: expected a list of objects")
    out = []
    for i, stage in enumerate(stages):
        bundle = stage.get("bundle")
        if not isinstance(bundle, str) or not bundle:
            raise BuildError(f"{path.name}: stages[{i}].bundle: expected the path of a built bundle "
                             "(directory or zip) for this stage's model")
        out.append({**stage, "bundle": path.parent / bundle})
    return out


def import_config(path: Path) -> dict:
    """Manifest fields from one config file, whatever its kind."""
    data = _read(path)
    if not isinstance(data, dict):
        raise BuildError(f"{path.name}: expected a mapping at the top")
    if "Preprocess" in data:
        return import_infer_cfg(data, path)
    if "PreProcess" in data:
        return import_inference_cfg(data, path)
    if set(data) & set(FRAGMENT_KEYS + BUILDER_KEYS):
        return _fragment(data, path)
    raise BuildError(f"{path.name}: neither a PaddleDetection infer_cfg.yml (Preprocess), a PaddleClas "
                     f"config (PreProcess) nor a manifest fragment ({', '.join(FRAGMENT_KEYS)})")


def merge(base: dict, update: dict) -> dict:
    """`update` over `base`: objects merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def import_configs(paths: list) -> dict:
    """All `--config` files merged in order."""
    fields: dict = {}
    for path in paths:
        fields = merge(fields, import_config(Path(path)))
    return fields
