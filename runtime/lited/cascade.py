"""The later stages of a cascade: crops of the first stage's detections,
each run through a second model whose result is added to its detection.

    crops = cascade.cut(frame, detections)   # every crop every stage needs, copied out of the frame
    cascade.run(crops, detections, timer)    # run the stages in order; each adds its fields

`cut` and `run` are apart so that a stream can check, between them, that the
frame it cut from was not overwritten meanwhile (the ring's seq): nothing
computed from a torn frame is ever attached. A stage (docs/bundle.md,
`stages`) says which detections it runs on (`select`), how to cut them
(`crop`: the detection's quad warped upright, as PaddleOCR does for text,
or its box with a margin), how many crops one engine run may take
(`batch`, when the model's batch dimension is -1), and, for an orientation
classifier, which class turns the crop 180 degrees for the stages after it
(`rotate`). Its decoder's `ADDS` keys (`classes`; `text`, `text_score`) are
copied into each detection it ran on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import cv2
import numpy as np

from lited.crops import crop_rect
from lited.engines.base import EngineError

if TYPE_CHECKING:
    from lited.stream.stats import StageTimer

# rapidocr/PaddleOCR turn a warped crop 90 degrees counter-clockwise when it is this much taller than wide
VERTICAL_RATIO = 1.5


def quad_crop(image: np.ndarray, points: np.ndarray) -> Optional[np.ndarray]:
    """The quad (top-left, top-right, bottom-right, bottom-left) warped to an
    upright rectangle of its longer side lengths (cubic, border replicated),
    turned 90 degrees counter-clockwise when it is tall (vertical text):
    PaddleOCR's `get_rotate_crop_image`. None when it has no area."""
    pts = np.asarray(points, dtype=np.float32).reshape(4, 2)
    w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    if w < 1 or h < 1:
        return None
    target = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    warp = cv2.getPerspectiveTransform(pts, target)
    crop = cv2.warpPerspective(image, warp, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if h / w >= VERTICAL_RATIO:
        crop = cv2.rotate(crop, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return crop


def box_crop(image: np.ndarray, box: list, margin: float) -> Optional[np.ndarray]:
    """The box grown by `margin` (crops.crop_rect: the pixels the uplink sends of it too),
    copied out. None when nothing is left."""
    rect = crop_rect(box, margin, image.shape[1], image.shape[0])
    if rect is None:
        return None
    left, top, right, bottom = rect
    return np.ascontiguousarray(image[top:bottom, left:right])


def _corners(det: dict) -> list:
    polygon = det.get("polygon")
    if polygon:
        return polygon
    x1, y1, x2, y2 = det["box"]
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


class StageError(EngineError):
    """A stage's engine failed; `stage` is the Stage, for its owner to restart."""

    def __init__(self, stage: "Stage", exc: EngineError) -> None:
        super().__init__(f"stage {stage.name}: {exc}")
        self.stage = stage


class Stage:
    """One later stage: which detections, how to crop them, the model that
    reads the crops (a `model.Part`), and what it adds."""

    def __init__(self, spec, part) -> None:
        """`spec`: the bundle's StageSpec; `part`: its loaded model."""
        self.name = spec.name
        self.part = part
        crop, select = spec.crop, spec.select
        self.crop_mode, self.margin = crop["mode"], float(crop.get("margin", 0.0))
        self.labels = set(select["labels"])
        self.min_score = float(select["min_score"])
        self.max = int(select["max"])
        self.rotate = spec.rotate
        self.batch = spec.batch
        self.adds = part.decoder.ADDS

    def pick(self, detections: List[dict]) -> List[int]:
        """Indices of the detections this stage runs on: the `max` best of
        those that pass `select`, in their original order."""
        chosen = [i for i, d in enumerate(detections)
                  if d["score"] >= self.min_score and (not self.labels or d["label"] in self.labels)]
        if len(chosen) > self.max:
            chosen = sorted(sorted(chosen, key=lambda i: -detections[i]["score"])[: self.max])
        return chosen

    def cut(self, image: np.ndarray, det: dict) -> Optional[np.ndarray]:
        if self.crop_mode == "quad":
            return quad_crop(image, _corners(det))
        return box_crop(image, det["box"], self.margin)

    def turns(self, result: dict) -> bool:
        """Does this result turn the crop 180 degrees for later stages?"""
        classes = result.get("classes") or []
        rotate = self.rotate
        return bool(rotate and classes and classes[0]["label"] == rotate["label"]
                    and classes[0]["score"] >= rotate.get("min_score", 0.0))

    def read(self, images: List[np.ndarray], progress: Optional[Callable[[], None]] = None) -> List[dict]:
        """The decoded result of each crop, in order. Crops are run grouped by
        their input shape (a text line's width bucket), so an engine that keeps
        one predictor per shape switches as rarely as it can; one engine run
        per crop, or per `batch` crops when the model batches."""
        part = self.part
        by_shape: Dict[tuple, List[int]] = {}
        for k, image in enumerate(images):
            by_shape.setdefault(part.preprocess.plan(image.shape), []).append(k)
        out: List[Optional[dict]] = [None] * len(images)
        for ks in by_shape.values():
            for start in range(0, len(ks), self.batch):
                chunk = ks[start:start + self.batch]
                if len(chunk) == 1:
                    out[chunk[0]] = part.decoder.decode(*part.forward(images[chunk[0]]))
                else:
                    for k, result in zip(chunk, part.decode_batch([images[k] for k in chunk])):
                        out[k] = result
                if progress:
                    progress()
        return out  # type: ignore[return-value]


class Cascade:
    """The later stages of a bundle, in order (empty for a one-model bundle)."""

    def __init__(self, stages: List[Stage]) -> None:
        self.stages = list(stages)

    def __bool__(self) -> bool:
        return bool(self.stages)

    def cut(self, image: np.ndarray, detections: List[dict]) -> List[list]:
        """Per stage, the (detection index, crop) pairs it will read. Each
        crop is a copy, so the frame may go once this returns; stages that
        crop alike share their crops."""
        made: dict = {}
        out = []
        for stage in self.stages:
            pairs = []
            for i in stage.pick(detections):
                key = (stage.crop_mode, stage.margin, i)
                if key not in made:
                    made[key] = stage.cut(image, detections[i])
                if made[key] is not None:
                    pairs.append((i, made[key]))
            out.append(pairs)
        return out

    def run(self, crops: List[list], detections: List[dict], timer: StageTimer,
            progress: Optional[Callable[[], None]] = None) -> None:
        """Run every stage on its crops and add its fields to the detections
        (in place); `timer.lap(stage name)` after each stage, `progress()`
        after each engine run. A failing engine raises StageError."""
        turned: set = set()
        for stage, pairs in zip(self.stages, crops):
            images = [cv2.rotate(crop, cv2.ROTATE_180) if i in turned else crop for i, crop in pairs]
            try:
                results = stage.read(images, progress)
            except EngineError as exc:
                raise StageError(stage, exc) from None
            for (i, _), result in zip(pairs, results):
                detections[i].update({key: result[key] for key in stage.adds})
                if stage.turns(result):
                    turned.add(i)
            timer.lap(stage.name)
