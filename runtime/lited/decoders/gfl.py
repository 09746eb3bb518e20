"""GFL-family heads (PP-PicoDet, NanoDet, NanoDet-Plus, GFL) without NMS in the graph.

Per level (FPN stride s) the model gives class scores `[n, C]` and box
distributions `[n, 4 * (reg_max + 1)]` (left, top, right, bottom, each a
distribution over the bins 0..reg_max). Decode, as the families do it:

    dist  = softmax over the bins, then the integral sum(p_i * i), times s
    centre = ((col + cell_offset) * s, (row + cell_offset) * s),  row-major anchors
    box   = [cx - l, cy - t, cx + r, cy + b]   (model-input pixels)

then score threshold, multi-class NMS, `top_k`.

Layouts, all found by shape (so output order and count do not matter):
- `[1, n, C]` + `[1, n, 4(R+1)]` per level: PaddleDetection PicoHead/PicoHeadV2
  exported without post-process (all class maps first, then all box maps;
  class scores already sigmoid), NanoDet (v0.x) ONNX (class maps sigmoid in
  the graph);
- `[1, C, H, W]` + `[1, 4(R+1), H, W]` per level (raw head convs);
- one `[1, n, C + 4(R+1)]` (or `[1, C + 4(R+1), H, W]`) per level, class
  channels first (PicoHead `share_cls_reg`, per-level heads);
- one `[1, N_total, C + 4(R+1)]` for all levels concatenated in stride order
  (NanoDet-Plus ONNX), split with the strides and the input size;
- `[1, K, n]` (channels first, flattened) is accepted when the input size
  makes the anchor axis unambiguous.

Strides come from `strides` or, when empty, from the anchor counts and the
input size (a level of n anchors has stride s when ceil(H/s) * ceil(W/s) == n).
`reg_max` < 0 means: from the box tensors' width (7 when only combined
tensors exist, the value of every PicoDet/NanoDet release).
`cls_activation`: "none" (scores already probabilities), "sigmoid" (logits),
"auto" (logits when any value lies outside [0, 1]; decided on each frame's
whole score array, which a sigmoid output can never trip).

Vectorised: the threshold runs over the whole score array once (in logit
space when the model gives logits, so the sigmoid is taken only for the
candidates), and softmax/integral runs only on the candidates' anchors.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..geometry import Geometry
from .base import Decoder
from .nms import ACTIVATIONS, candidates, nms, to_detections

CANDIDATE_STRIDES = (4, 8, 16, 32, 64, 128)
DEFAULT_REG_MAX = 7


class LayoutError(ValueError):
    """The outputs do not form a GFL head layout (message says why); `field`
    names the decoder parameter that contradicts them, when one does."""

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


class _Part:
    """One output tensor seen as `[n, k]` (a view when possible)."""

    def __init__(self, index: int, shape: Tuple[int, ...], n: int, k: int, channels_first: bool,
                 hw: Optional[Tuple[int, int]]) -> None:
        self.index, self.shape, self.n, self.k = index, shape, n, k
        self.channels_first, self.hw = channels_first, hw

    def matrix(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        a = outputs[self.index]
        a = a.reshape(self.k, self.n).T if self.channels_first else a.reshape(self.n, self.k)
        return a


class _Layout:
    """Where classes and boxes are, per level, and the anchor centres."""

    def __init__(self, levels: List[dict], num_classes: int, reg_max: int) -> None:
        self.levels = levels  # each: stride, n, h, w, cls (part, col0), box (part, col0)
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.total = sum(lv["n"] for lv in levels)
        self.centres: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None

    def make_centres(self, cell_offset: float) -> None:
        cx, cy, st = [], [], []
        for lv in self.levels:
            s, h, w = lv["stride"], lv["h"], lv["w"]
            xs = (np.arange(w, dtype=np.float32) + cell_offset) * s
            ys = (np.arange(h, dtype=np.float32) + cell_offset) * s
            cx.append(np.tile(xs, h))
            cy.append(np.repeat(ys, w))
            st.append(np.full(h * w, s, dtype=np.float32))
        self.centres = (np.concatenate(cx), np.concatenate(cy), np.concatenate(st))


def _parts(shapes: Sequence[Tuple[int, ...]], channels_first_3d: bool) -> List[_Part]:
    parts = []
    for i, shape in enumerate(shapes):
        dims = [d for d in shape]
        while len(dims) > 2 and dims[0] == 1 and len(dims) != 4:
            dims = dims[1:]
        if len(shape) == 4:
            if shape[0] != 1:
                raise LayoutError(f"output {i}: batch {shape[0]} (only batch 1 is decoded)")
            parts.append(_Part(i, tuple(shape), shape[2] * shape[3], shape[1], True, (shape[2], shape[3])))
        elif len(dims) == 2:
            a, b = dims
            if channels_first_3d:
                parts.append(_Part(i, tuple(shape), b, a, True, None))
            else:
                parts.append(_Part(i, tuple(shape), a, b, False, None))
        else:
            raise LayoutError(f"output {i}: shape {list(shape)} is not [1, n, k], [1, k, H, W] or [n, k]")
    return parts


def _stride_for(n: int, in_hw: Tuple[int, int], hw: Optional[Tuple[int, int]]) -> Optional[int]:
    in_h, in_w = in_hw
    if hw is not None:
        s = in_h / hw[0]
        for c in CANDIDATE_STRIDES:
            if math.ceil(in_h / c) == hw[0] and math.ceil(in_w / c) == hw[1]:
                return c
        return int(round(s)) if s > 0 else None
    for c in CANDIDATE_STRIDES:
        if math.ceil(in_h / c) * math.ceil(in_w / c) == n:
            return c
    return None


def resolve_layout(shapes: Sequence[Tuple[int, ...]], in_hw: Optional[Tuple[int, int]],
                   strides: Sequence[int] = (), reg_max: int = -1) -> _Layout:
    """Find classes and boxes in the outputs by shape (see the module doc)."""
    errors = []
    for channels_first_3d in (False, True):
        try:
            return _resolve(_parts(shapes, channels_first_3d), in_hw, list(strides), reg_max)
        except LayoutError as exc:
            errors.append(exc)
    first, outputs = errors[0], [list(s) for s in shapes]
    if first.field:
        raise LayoutError(f"decoder.{first.field}: {first} (outputs {outputs})", first.field)
    raise LayoutError(f"outputs {outputs} are not a GFL head: {first}")


def _resolve(parts: List[_Part], in_hw: Optional[Tuple[int, int]], strides: List[int],
             reg_max: int) -> _Layout:
    box_w = 4 * (reg_max + 1) if reg_max >= 0 else None
    # group by anchor count, keeping output order inside a group
    groups: Dict[int, List[_Part]] = {}
    for p in parts:
        groups.setdefault(p.n, []).append(p)
    sizes = {len(g) for g in groups.values()}
    if len(groups) == 1 and len(parts) == 1 and in_hw is not None:
        return _resolve_concatenated(parts[0], in_hw, strides, reg_max)
    if len(sizes) != 1 or sizes.pop() not in (1, 2):
        raise LayoutError("expected one or two tensors per level, grouped by anchor count "
                          f"(got {sorted((n, len(g)) for n, g in groups.items())})")
    levels = []
    num_classes = None
    box_k = box_w if box_w is not None else _box_width_guess(groups)
    for n, group in groups.items():
        if len(group) == 2:
            first, second = group
            if box_k is not None and first.k == box_k and second.k != box_k:
                cls_p, box_p = second, first
            else:  # same width, or by order: every known export puts the class maps first
                cls_p, box_p = first, second
            if box_w is None:
                if box_p.k % 4:
                    raise LayoutError(f"output {box_p.index}: {box_p.k} box channels, not 4 * (reg_max + 1)")
                rm = box_p.k // 4 - 1
            else:
                rm = reg_max
                if box_p.k != box_w:
                    raise LayoutError(f"output {box_p.index}: {box_p.k} box channels, expected "
                                      f"4 * (reg_max + 1) = {box_w}", "reg_max")
            c = cls_p.k
            lv = {"n": n, "cls": (cls_p, 0), "box": (box_p, 0), "hw": cls_p.hw or box_p.hw}
        else:
            (p,) = group
            rm = reg_max if reg_max >= 0 else DEFAULT_REG_MAX
            c = p.k - 4 * (rm + 1)
            if c <= 0:
                raise LayoutError(f"output {p.index}: {p.k} channels, too few for classes + 4 * ({rm} + 1)",
                                  "reg_max" if reg_max >= 0 else None)
            lv = {"n": n, "cls": (p, 0), "box": (p, c), "hw": p.hw}
        if num_classes is None:
            num_classes, reg_max_found = c, rm
        elif c != num_classes or rm != reg_max_found:
            raise LayoutError("levels disagree on the class count or reg_max")
        levels.append(lv)
    reg_max = reg_max_found
    if in_hw is not None:
        _assign_strides(levels, in_hw, strides)
    else:
        for lv in levels:
            lv.update(stride=0, h=0, w=0)
    return _Layout(levels, int(num_classes), int(reg_max))


KNOWN_BOX_WIDTHS = (32, 68)  # reg_max 7 (PicoDet, NanoDet), 16 (GFL R50)


def _box_width_guess(groups: Dict[int, List["_Part"]]) -> Optional[int]:
    """With reg_max not given and two widths in every level: which is the box width.
    Only one a multiple of 4; else only one a known width; else the width whose
    tensors come first in the outputs is the class width (every known export)."""
    pairs = [g for g in groups.values() if len(g) == 2]
    if not pairs:
        return None
    widths = {p.k for g in pairs for p in g}
    if len(widths) != 2:
        return None
    a, b = sorted(widths)
    for test in (lambda k: k % 4 == 0, lambda k: k in KNOWN_BOX_WIDTHS):
        hits = [k for k in (a, b) if test(k)]
        if len(hits) == 1:
            return hits[0]
    mean_index = {k: np.mean([p.index for g in pairs for p in g if p.k == k]) for k in (a, b)}
    return a if mean_index[a] > mean_index[b] else b


def _assign_strides(levels: List[dict], in_hw: Tuple[int, int], strides: List[int]) -> None:
    in_h, in_w = in_hw
    if strides:
        if len(strides) != len(levels):
            raise LayoutError(f"{len(levels)} levels in the outputs, {len(strides)} strides given", "strides")
        by_n = {math.ceil(in_h / s) * math.ceil(in_w / s): s for s in strides}
        for lv in levels:
            if lv["n"] not in by_n:
                raise LayoutError(f"a level of {lv['n']} anchors matches no stride in {strides} "
                                  f"for a {in_w}x{in_h} input", "strides")
            lv["stride"] = by_n[lv["n"]]
    else:
        for lv in levels:
            s = _stride_for(lv["n"], in_hw, lv["hw"])
            if s is None:
                raise LayoutError(f"a level of {lv['n']} anchors matches no stride in "
                                  f"{list(CANDIDATE_STRIDES)} for a {in_w}x{in_h} input")
            lv["stride"] = s
    for lv in levels:
        s = lv["stride"]
        h, w = lv["hw"] or (math.ceil(in_h / s), math.ceil(in_w / s))
        if h * w != lv["n"]:
            raise LayoutError(f"stride {s}: {lv['n']} anchors, but a {in_w}x{in_h} input gives {h}x{w}")
        lv["h"], lv["w"] = h, w
    levels.sort(key=lambda lv: lv["stride"])
    if len({lv["stride"] for lv in levels}) != len(levels):
        raise LayoutError("two levels with the same stride")


def _resolve_concatenated(p: _Part, in_hw: Tuple[int, int], strides: List[int], reg_max: int) -> _Layout:
    """One tensor for all levels (NanoDet-Plus): split by the strides."""
    in_h, in_w = in_hw
    count = lambda s: math.ceil(in_h / s) * math.ceil(in_w / s)  # noqa: E731
    if not strides:  # contiguous runs of the candidate strides whose counts add up
        for first in range(len(CANDIDATE_STRIDES)):
            for last in range(first, len(CANDIDATE_STRIDES)):
                run = list(CANDIDATE_STRIDES[first:last + 1])
                if sum(count(s) for s in run) == p.n:
                    strides = run
                    break
            if strides:
                break
        if not strides:
            raise LayoutError(f"{p.n} anchors: no run of strides {list(CANDIDATE_STRIDES)} adds up to it "
                              f"for a {in_w}x{in_h} input")
    elif sum(count(s) for s in strides) != p.n:
        raise LayoutError(f"{p.n} anchors, but strides {strides} on a {in_w}x{in_h} input give "
                          f"{sum(count(s) for s in strides)}", "strides")
    rm = reg_max if reg_max >= 0 else DEFAULT_REG_MAX
    c = p.k - 4 * (rm + 1)
    if c <= 0:
        raise LayoutError(f"output {p.index}: {p.k} channels, too few for classes + 4 * ({rm} + 1)",
                          "reg_max" if reg_max >= 0 else None)
    levels = [{"n": count(s), "stride": s, "h": math.ceil(in_h / s), "w": math.ceil(in_w / s),
               "cls": (p, 0), "box": (p, c), "hw": None, "concat": True} for s in sorted(strides)]
    return _Layout(levels, c, rm)


class GflDecoder(Decoder):
    kind = "gfl"
    PARAMS = {
        "score_threshold": (float, 0.4),
        "nms_iou": (float, 0.5),
        "top_k": (int, 100),            # kept after NMS (PaddleDetection keep_top_k)
        "nms_top_k": (int, 1000),       # best candidates entering NMS (PaddleDetection nms_top_k); 0: all
        "strides": (list, []),          # []: from the anchor counts and the input size
        "reg_max": (int, -1),           # < 0: from the box tensors' width
        "cell_offset": (float, 0.5),    # centre = (i + cell_offset) * stride; NanoDet-Plus: 0
        "cls_activation": (str, "auto"),  # auto | sigmoid | none
        "multi_label": (bool, True),    # an anchor may give one box per class over the threshold
        "class_agnostic": (bool, False),  # NMS across classes
    }
    CHOICES = {"cls_activation": ACTIVATIONS}

    @classmethod
    def problems(cls, params: dict) -> List[Tuple[str, str]]:
        out = super().problems(params)
        strides = params.get("strides", [])
        if isinstance(strides, list) and not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides):
            out.append(("strides", f"expected positive integers, got {strides!r}"))
        return out

    def __init__(self, params: dict, labels: List[str]) -> None:
        super().__init__(params, labels)  # sets each PARAMS name as a typed attribute, and self.labels
        self.strides = [int(s) for s in self.strides]
        self._layouts: Dict[tuple, _Layout] = {}
        self._unreadable: set = set()  # output shapes no layout fits at the input size decode saw

    # -- layout ---------------------------------------------------------------
    def layout(self, outputs: List[np.ndarray], geom: Optional[Geometry]) -> _Layout:
        shapes = tuple(tuple(o.shape) for o in outputs)
        in_hw = (int(geom.in_h), int(geom.in_w)) if geom is not None else None
        key = (shapes, in_hw)
        lay = self._layouts.get(key)
        if lay is None:
            try:
                lay = resolve_layout(shapes, in_hw, self.strides, self.reg_max)
            except LayoutError:
                if in_hw is not None:
                    self._unreadable.add(shapes)
                raise
            if in_hw is not None:
                lay.make_centres(self.cell_offset)
            if len(self._layouts) > 8:
                self._layouts.clear()
            self._layouts[key] = lay
        return lay

    def _read_at_size(self, outputs: List[np.ndarray]) -> Optional[_Layout]:
        """The layout decode read these outputs as, at the input size it saw (without one,
        `[1, 84, 484]` splits another way); None before a decode."""
        shapes = tuple(tuple(o.shape) for o in outputs)
        sized = [lay for (seen, in_hw), lay in self._layouts.items() if seen == shapes and in_hw is not None]
        return sized[-1] if sized else None

    def num_classes(self, outputs: List[np.ndarray]) -> Optional[int]:
        """The classes of the layout decode reads; None where it read none at its input size
        (a count from a split that decode does not make would blame the labels)."""
        lay = self._read_at_size(outputs)
        if lay is not None:
            return lay.num_classes
        if tuple(tuple(o.shape) for o in outputs) in self._unreadable:
            return None
        try:
            return self.layout(outputs, None).num_classes
        except LayoutError:
            return None

    def describe(self, outputs: List[np.ndarray]) -> Optional[str]:
        """Strides and reg_max as found (or given), per level: `lited inspect`'s `decoder reads`."""
        lay = self._read_at_size(outputs)
        if lay is None:
            return None
        levels = ", ".join(f"{lv['h']}x{lv['w']} at stride {lv['stride']}" for lv in lay.levels)
        tensors = sorted({p.index for lv in lay.levels for p in (lv["cls"][0], lv["box"][0])})
        return (f"{len(lay.levels)} levels ({levels}) in {len(tensors)} output{'s' if len(tensors) > 1 else ''}, "
                f"reg_max {lay.reg_max}, {lay.num_classes} classes")

    # -- decode ---------------------------------------------------------------
    def _score_parts(self, lay: _Layout, outputs: List[np.ndarray]) -> List[np.ndarray]:
        """The `[n, C]` class scores of each output that holds them, in anchor order (views:
        `candidates` reads them as one array without stacking them)."""
        mats, done = [], set()
        for lv in lay.levels:
            part, col = lv["cls"]
            if lv.get("concat"):
                if part.index in done:
                    continue
                done.add(part.index)
            mats.append(part.matrix(outputs)[:, col:col + lay.num_classes])
        return mats

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        lay = self.layout(outputs, geom)
        bins = lay.reg_max + 1
        anchor, cls, score = candidates(self._score_parts(lay, outputs), self.score_threshold, self.cls_activation,
                                        self.multi_label, self.nms_top_k)
        if anchor.size == 0:
            return {"detections": [], "classes": []}
        # distributions of the candidate anchors only: softmax over bins, integral
        box_rows = self._box_rows(lay, outputs, anchor, bins)          # [M, 4, bins]
        box_rows = box_rows - box_rows.max(axis=2, keepdims=True)
        np.exp(box_rows, out=box_rows)
        dist = (box_rows @ np.arange(bins, dtype=np.float32)) / box_rows.sum(axis=2)  # [M, 4]
        cx, cy, st = (a[anchor] for a in lay.centres)  # type: ignore[union-attr]
        dist *= st[:, None]
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1)
        np.clip(boxes[:, 0::2], 0, geom.in_w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, geom.in_h, out=boxes[:, 1::2])
        keep = nms(boxes, score, self.nms_iou, self.top_k,
                   classes=None if self.class_agnostic else cls)
        return {"detections": to_detections(boxes[keep], score[keep], cls[keep], self.labels, geom),
                "classes": []}

    def _box_rows(self, lay: _Layout, outputs: List[np.ndarray], anchor: np.ndarray, bins: int) -> np.ndarray:
        """`[M, 4, bins]` float32 rows of the box distributions for global anchor ids."""
        out = np.empty((anchor.size, 4 * bins), dtype=np.float32)
        start = 0
        for lv in lay.levels:
            n = lv["n"]
            sel = (anchor >= start) & (anchor < start + n)
            if sel.any():
                part, col = lv["box"]
                m = part.matrix(outputs)
                if lv.get("concat"):
                    out[sel] = m[anchor[sel], col:col + 4 * bins]
                else:
                    out[sel] = m[anchor[sel] - start, col:col + 4 * bins]
            start += n
        return out.reshape(-1, 4, bins)
