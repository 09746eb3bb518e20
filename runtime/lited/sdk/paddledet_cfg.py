"""PaddleDetection `infer_cfg.yml` -> manifest fields (decoder `boxes` or `gfl`).

What `tools/export_model.py` writes next to model.pdmodel: `arch`,
`draw_threshold`, `Preprocess` (ops applied in order to an RGB image, see
deploy/python/preprocess.py), `label_list` and, for PicoDet, `NMS` and
`fpn_stride`. An export with NMS in the graph gives `[N, 6]` boxes (decoder
`boxes`; PicoDet's export then says `arch: GFL`); a PicoDet exported without
post-process keeps `arch: PicoDet` and gives the head's raw per-level maps
(decoder `gfl`, with the yml's `NMS` and `fpn_stride`). The mapping and its
approximations are listed in docs/build_sdk.md.
"""
from __future__ import annotations

from pathlib import Path

from lited.sdk import BuildError
from lited.sdk.cfg_common import ONE_OVER_255, check_params, image_input, number, size_pair, triple
from lited.sdk.paddle_model import static_shapes

# cv2 interpolation codes as PaddleDetection writes them (`interp`).
INTERP = {0: "nearest", 1: "linear", 2: "cubic", 3: "area"}
# Architectures whose outputs are not `[N, 6]` boxes.
NOT_BOXES = {
    "HRNet": "keypoints", "HigherHRNet": "keypoints", "METRO_Body": "body mesh",
    "JDE": "tracking", "FairMOT": "tracking", "DeepSORT": "tracking", "ByteTrack": "tracking",
    "CenterTrack": "tracking",
}


class _Pre:
    """The preprocess fields as the ops set them (PaddleDetection decodes to RGB)."""

    def __init__(self) -> None:
        self.color = "RGB"
        self.layout = "NHWC"
        self.resize: dict | None = None
        self.size = (-1, -1)  # input (height, width); -1 for dynamic
        self.stride = 0
        self.scale = 1.0
        self.mean = [0.0, 0.0, 0.0]
        self.std = [1.0, 1.0, 1.0]
        self.normalized = False  # a NormalizeImage op came (its mean/std are in the image's order then)

    def set_resize(self, resize: dict, size: tuple, at: str) -> None:
        if self.resize is not None:
            raise BuildError(f"{at}: a second resize op (lited resizes once)")
        self.resize, self.size = resize, size


def _interp(op: dict, at: str, default: int = 1) -> str:
    code = op.get("interp", default)
    if code not in INTERP:
        raise BuildError(f"{at}: Resize: interp {code!r} has no lited equivalent "
                         f"(known: {', '.join(f'{k}={v}' for k, v in INTERP.items())})")
    return INTERP[code]


def _resize(op: dict, pre: _Pre, at: str) -> None:
    check_params(op, {"type", "target_size", "keep_ratio", "interp"}, at, "Resize")
    height, width = size_pair(op.get("target_size"), f"{at}: Resize: target_size")
    interpolation = _interp(op, at)
    if op.get("keep_ratio", True):  # the default in deploy/python/preprocess.py
        pre.set_resize({"mode": "keep_ratio", "interpolation": interpolation,
                        "max_side": max(height, width), "min_side": min(height, width)}, (-1, -1), at)
    else:
        pre.set_resize({"mode": "stretch", "interpolation": interpolation}, (height, width), at)


def _letterbox(op: dict, pre: _Pre, at: str) -> None:
    check_params(op, {"type", "target_size"}, at, "LetterBoxResize")
    height, width = size_pair(op.get("target_size"), f"{at}: LetterBoxResize: target_size")
    # PaddleDetection pads with 127.5 around a centred INTER_AREA resize
    pre.set_resize({"mode": "letterbox", "interpolation": "area", "pad_value": 127.5, "align": "center"},
                   (height, width), at)


def _normalize(op: dict, pre: _Pre, at: str) -> None:
    check_params(op, {"type", "mean", "std", "is_scale", "norm_type"}, at, "NormalizeImage")
    pre.scale = ONE_OVER_255 if op.get("is_scale", True) else 1.0
    norm_type = op.get("norm_type", "mean_std")
    pre.normalized = True
    if norm_type == "mean_std":
        pre.mean = triple(op.get("mean"), f"{at}: NormalizeImage: mean")
        pre.std = triple(op.get("std"), f"{at}: NormalizeImage: std")
    elif norm_type != "none":
        raise BuildError(f"{at}: NormalizeImage: unknown norm_type {norm_type!r} (known: mean_std, none)")


def _permute(op: dict, pre: _Pre, at: str) -> None:
    check_params(op, {"type", "to_bgr", "channel_first"}, at, "Permute")
    if op.get("channel_first", True):
        pre.layout = "NCHW"
    if op.get("to_bgr", False):
        pre.color = "BGR"
        if pre.normalized:  # normalised in RGB order, then the channels swapped: mean[c] is per model channel
            pre.mean, pre.std = pre.mean[::-1], pre.std[::-1]


def _pad_stride(op: dict, pre: _Pre, at: str) -> None:
    check_params(op, {"type", "stride"}, at, "PadStride")
    pre.stride = int(number(op.get("stride", 0), f"{at}: PadStride: stride"))


OPS = {"Resize": _resize, "LetterBoxResize": _letterbox, "NormalizeImage": _normalize,
       "Permute": _permute, "PadStride": _pad_stride}


def _check_arch(cfg: dict, where: str) -> str:
    arch = cfg.get("arch")
    if not isinstance(arch, str):
        raise BuildError(f"{where}: arch: missing (not a PaddleDetection infer_cfg.yml?)")
    if arch in NOT_BOXES:
        raise BuildError(f"{where}: arch '{arch}': a {NOT_BOXES[arch]} model, which no lited decoder reads")
    return arch


def _gfl_decoder(cfg: dict, where: str) -> dict:
    """A PicoDet exported without post-process: the head's maps, decoded by
    `gfl` with the yml's NMS and strides. `reg_max` is not in the yml: the
    builder reads it from the model's output shapes (complete_gfl)."""
    nms = cfg["NMS"]
    if not isinstance(nms, dict):
        raise BuildError(f"{where}: NMS: expected a mapping (nms_threshold, keep_top_k, nms_top_k, ...)")
    strides = cfg.get("fpn_stride")
    if not (isinstance(strides, list) and strides and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in strides)):
        raise BuildError(f"{where}: fpn_stride: expected a list of positive strides, got {strides!r}")
    decoder = {"type": "gfl", "score_threshold": number(cfg.get("draw_threshold", 0.5), f"{where}: draw_threshold"),
               "nms_iou": number(nms.get("nms_threshold", 0.5), f"{where}: NMS: nms_threshold"),
               "top_k": 100, "nms_top_k": 1000, "strides": list(strides), "reg_max": -1,
               "cell_offset": 0.5, "cls_activation": "none", "multi_label": True, "class_agnostic": False}
    for key, field in (("keep_top_k", "top_k"), ("nms_top_k", "nms_top_k")):
        value = nms.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise BuildError(f"{where}: NMS: {key}: expected an integer, got {value!r}")
            decoder[field] = value if value > 0 else 0
    return decoder


def complete_gfl(decoder: dict, output_shapes: list, input_hw: tuple | None, where: str) -> dict:
    """The `gfl` decoder checked against the model's output shapes, right
    after conversion (a `strides` or `reg_max` they contradict is named, with
    `where`, the configs), and with `reg_max` and `strides`, if missing, read
    from them, so the manifest states every value."""
    if decoder.get("type") != "gfl":
        return decoder
    from lited.decoders.gfl import LayoutError, resolve_layout

    shapes = static_shapes(output_shapes)
    if input_hw is None or shapes is None:
        return decoder  # sizes only known at run time: the decoder finds reg_max from the outputs
    try:
        layout = resolve_layout(shapes, input_hw, decoder.get("strides") or (), decoder.get("reg_max", -1))
    except LayoutError as exc:
        said = str(exc) if exc.field else f"decoder: {exc}"
        raise BuildError(f"{where}: {said}") from None
    return {**decoder, "reg_max": layout.reg_max, "strides": sorted(lv["stride"] for lv in layout.levels)}


def _apply_stride(pre: _Pre, at: str) -> None:
    """PadStride: lited rounds a dynamic input to the stride instead of padding."""
    if not pre.stride or pre.resize is None:
        return
    if pre.resize["mode"] == "keep_ratio":
        pre.resize["multiple"] = pre.stride
    elif pre.size[0] % pre.stride or pre.size[1] % pre.stride:
        raise BuildError(f"{at}: PadStride: stride {pre.stride} does not divide the "
                         f"{pre.size[0]}x{pre.size[1]} input, which lited cannot pad")


def import_infer_cfg(cfg: dict, path: Path) -> dict:
    """Manifest fields (task, inputs, preprocess, decoder, labels) from an infer_cfg.yml."""
    where = path.name
    _check_arch(cfg, where)
    ops = cfg.get("Preprocess")
    if not isinstance(ops, list):
        raise BuildError(f"{where}: Preprocess: expected a list of ops")
    pre = _Pre()
    for i, op in enumerate(ops):
        at = f"{where}: Preprocess[{i}]"
        if not isinstance(op, dict) or not isinstance(op.get("type"), str):
            raise BuildError(f"{at}: expected an op with a 'type'")
        if op["type"] not in OPS:
            raise BuildError(f"{at}: unknown op '{op['type']}' (known: {', '.join(sorted(OPS))})")
        OPS[op["type"]](op, pre, at)
    if pre.resize is None:
        raise BuildError(f"{where}: Preprocess: no Resize or LetterBoxResize op (lited needs one)")
    _apply_stride(pre, f"{where}: Preprocess")
    if pre.resize["mode"] == "keep_ratio" and "multiple" not in pre.resize:
        pre.resize["multiple"] = 1  # no PadStride: PaddleDetection does not round the size
    if _check_arch(cfg, where) == "PicoDet" and "NMS" in cfg:  # arch GFL: a PicoDet export with NMS
        decoder = _gfl_decoder(cfg, where)
    else:
        decoder = {"type": "boxes", "score_threshold": number(cfg.get("draw_threshold", 0.5),
                                                              f"{where}: draw_threshold")}
        keep = (cfg.get("NMS") or {}).get("keep_top_k")
        decoder["top_k"] = int(keep) if isinstance(keep, int) and keep > 0 else 100
    labels = cfg.get("label_list")
    if labels is not None and not isinstance(labels, list):
        raise BuildError(f"{where}: label_list: expected a list of names")
    return {
        "task": "detection",
        "inputs": [image_input("image", *pre.size, pre.layout)],
        "preprocess": {"color": pre.color, "resize": pre.resize, "scale": pre.scale,
                       "mean": pre.mean, "std": pre.std, "layout": pre.layout},
        "decoder": decoder,
        "labels": labels,
    }
