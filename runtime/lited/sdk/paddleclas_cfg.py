"""PaddleClas inference config (deploy/configs/inference_*.yaml) -> manifest
fields (decoder `classification`).

`PreProcess.transform_ops` is a list of `{OpName: {params}}` applied to an
RGB image (predict_cls.py flips cv2's BGR); `PostProcess` names `Topk` either
flat (`name: Topk`) or nested (`Topk: {...}`). PaddleClas exports end in a
softmax (Global.infer_add_softmax, on by default) and Topk applies none, so
the decoder gets `softmax: false`. See docs/build_sdk.md for the mapping.
"""
from __future__ import annotations

from pathlib import Path

from lited.sdk import BuildError
from lited.sdk.cfg_common import (IMAGENET_MEAN, IMAGENET_STD, ONE_OVER_255, check_params, image_input, number,
                            size_pair, triple)
from lited.sdk.labels import LabelFile

INTERP = {None: "linear", "nearest": "nearest", "bilinear": "linear", "area": "area", "bicubic": "cubic"}
IGNORED_POSTPROCESS = {"main_indicator", "name", "SavePreLabel"}
TOPK_PARAMS = {"topk", "class_id_map_file", "delimiter"}


class _Pre:
    def __init__(self) -> None:
        self.color = "RGB"
        self.layout = "NHWC"
        self.resize_short: int | None = None
        self.resize_to: tuple | None = None  # (height, width)
        self.interpolation = "linear"
        self.crop: tuple | None = None  # (height, width)
        self.scale = 1.0
        self.mean = [0.0, 0.0, 0.0]
        self.std = [1.0, 1.0, 1.0]


def _decode(params: dict, pre: _Pre, at: str) -> None:
    check_params(params, {"to_rgb", "to_np", "channel_first"}, at, "DecodeImage")
    if params.get("channel_first", False):
        raise BuildError(f"{at}: DecodeImage: channel_first before resizing is not supported")
    pre.color = "RGB" if params.get("to_rgb", True) else "BGR"


def _resize(params: dict, pre: _Pre, at: str) -> None:
    check_params(params, {"size", "resize_short", "interpolation", "backend", "return_numpy"}, at, "ResizeImage")
    if pre.resize_short or pre.resize_to:
        raise BuildError(f"{at}: a second ResizeImage (lited resizes once)")
    backend = str(params.get("backend", "cv2")).lower()
    if backend != "cv2":
        raise BuildError(f"{at}: ResizeImage: backend '{backend}': lited resizes with OpenCV; use backend cv2")
    interp = params.get("interpolation")
    key = interp.lower() if isinstance(interp, str) else interp
    if key not in INTERP:
        raise BuildError(f"{at}: ResizeImage: interpolation {interp!r} has no lited equivalent "
                         f"(known: {', '.join(k for k in INTERP if k)})")
    pre.interpolation = INTERP[key]
    short = params.get("resize_short")
    if short is not None and short > 0:
        pre.resize_short = int(short)
    elif params.get("size") is not None:
        width, height = size_pair(params["size"], f"{at}: ResizeImage: size")  # PaddleClas sizes are (w, h)
        pre.resize_to = (height, width)
    else:
        raise BuildError(f"{at}: ResizeImage: needs resize_short or size")


def _crop(params: dict, pre: _Pre, at: str) -> None:
    check_params(params, {"size"}, at, "CropImage")
    if not (pre.resize_short or pre.resize_to):
        raise BuildError(f"{at}: CropImage before any ResizeImage is not supported")
    width, height = size_pair(params.get("size"), f"{at}: CropImage: size")
    pre.crop = (height, width)


def _normalize(params: dict, pre: _Pre, at: str) -> None:
    check_params(params, {"scale", "mean", "std", "order", "channel_num", "output_fp16"}, at, "NormalizeImage")
    if params.get("channel_num", 3) != 3:
        raise BuildError(f"{at}: NormalizeImage: channel_num {params['channel_num']}: lited feeds 3 channels")
    if params.get("output_fp16", False):
        raise BuildError(f"{at}: NormalizeImage: output_fp16: lited feeds float32")
    # PaddleClas's own defaults when a field is left out
    pre.scale = number(params["scale"], f"{at}: NormalizeImage: scale") if params.get("scale") is not None \
        else ONE_OVER_255
    pre.mean = triple(params.get("mean") or IMAGENET_MEAN, f"{at}: NormalizeImage: mean")
    pre.std = triple(params.get("std") or IMAGENET_STD, f"{at}: NormalizeImage: std")


def _to_chw(params: dict, pre: _Pre, at: str) -> None:
    check_params(params, set(), at, "ToCHWImage")
    pre.layout = "NCHW"


OPS = {"DecodeImage": _decode, "ResizeImage": _resize, "CropImage": _crop, "NormalizeImage": _normalize,
       "ToCHWImage": _to_chw}


def _resize_spec(pre: _Pre, where: str) -> tuple:
    """(resize, (height, width)) for the supported ResizeImage/CropImage pairs."""
    if pre.resize_short and pre.crop:
        return {"mode": "short_side_crop", "interpolation": pre.interpolation,
                "short_side": pre.resize_short}, pre.crop
    if pre.resize_to and not pre.crop:
        return {"mode": "stretch", "interpolation": pre.interpolation}, pre.resize_to
    if pre.resize_short:
        raise BuildError(f"{where}: PreProcess: ResizeImage resize_short without CropImage gives a "
                         "size that varies with the image; add CropImage")
    if pre.resize_to:
        raise BuildError(f"{where}: PreProcess: ResizeImage size followed by CropImage has no lited "
                         "resize mode; use resize_short + CropImage or size alone")
    raise BuildError(f"{where}: PreProcess: no ResizeImage op (lited needs one)")


def _decoder(post: object, path: Path) -> tuple:
    """(decoder, labels) from PostProcess."""
    where = path.name
    decoder = {"type": "classification", "top_k": 5, "softmax": False}
    if post is None:
        return decoder, None
    if not isinstance(post, dict):
        raise BuildError(f"{where}: PostProcess: expected a mapping")
    if post.get("name", "Topk") != "Topk":
        raise BuildError(f"{where}: PostProcess: '{post['name']}' has no lited decoder (supported: Topk)")
    for key in post:
        if key not in IGNORED_POSTPROCESS | {"Topk"} | TOPK_PARAMS:
            raise BuildError(f"{where}: PostProcess: '{key}' has no lited decoder (supported: Topk)")
    # nested `Topk: {topk: 5}` or flat `name: Topk, topk: 5`
    topk = post.get("Topk") or {k: v for k, v in post.items() if k in TOPK_PARAMS}
    check_params(topk, TOPK_PARAMS, f"{where}: PostProcess", "Topk")
    decoder["top_k"] = int(number(topk.get("topk", 1), f"{where}: PostProcess: Topk: topk"))
    labels = None
    if topk.get("class_id_map_file"):
        rel = Path(topk["class_id_map_file"])
        # PaddleClas resolves it from the working directory (deploy/); try beside the config first
        candidates = [rel] if rel.is_absolute() else [path.parent / rel, Path.cwd() / rel]
        found = next((c for c in candidates if c.is_file()), candidates[0])
        labels = LabelFile(found, "class_id_map", topk.get("delimiter") or " ",
                           f"{where}: PostProcess: Topk: class_id_map_file")
    return decoder, labels


def import_inference_cfg(cfg: dict, path: Path) -> dict:
    """Manifest fields (task, inputs, preprocess, decoder, labels) from a PaddleClas config."""
    where = path.name
    ops = (cfg.get("PreProcess") or {}).get("transform_ops")
    if not isinstance(ops, list):
        raise BuildError(f"{where}: PreProcess.transform_ops: expected a list of ops")
    pre = _Pre()
    for i, op in enumerate(ops):
        at = f"{where}: PreProcess.transform_ops[{i}]"
        if not isinstance(op, dict) or len(op) != 1:
            raise BuildError(f"{at}: expected one '{{OpName: params}}' entry")
        (name, params), = op.items()
        if name not in OPS:
            raise BuildError(f"{at}: unknown op '{name}' (known: {', '.join(sorted(OPS))})")
        if params is not None and not isinstance(params, dict):
            raise BuildError(f"{at}: {name}: expected parameters as a mapping")
        OPS[name](params or {}, pre, at)
    resize, (height, width) = _resize_spec(pre, where)
    decoder, labels = _decoder(cfg.get("PostProcess"), path)
    return {
        "task": "classification",
        "inputs": [image_input("x", height, width, pre.layout)],
        "preprocess": {"color": pre.color, "resize": resize, "scale": pre.scale,
                       "mean": pre.mean, "std": pre.std, "layout": pre.layout},
        "decoder": decoder,
        "labels": labels,
    }
