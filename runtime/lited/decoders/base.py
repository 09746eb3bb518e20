"""The decoder interface: raw model outputs -> detections, classes or text.

    class MyDecoder(Decoder):
        kind = "my_layout"                                  # the manifest's decoder.type
        PARAMS = {"score_threshold": (float, 0.5), ...}    # name -> (type, default)
        def decode(self, outputs, geom) -> dict:
            # {"detections": [{"label", "score", "box": [x1, y1, x2, y2]}],
            #  "classes": [{"label", "score"}]}   boxes in source pixels

`PARAMS` is what `bundle.py` validates the manifest's `decoder` object
against, so a typo in a parameter name is caught before anything loads;
`problems()` adds the checks a type cannot say (a choice, a range).

A decoder whose result describes its whole input (a class, a line of text)
names those result keys in `ADDS`: such a decoder can be a later stage of a
cascade, whose result is added to each detection of the first stage
(docs/bundle.md, `stages`).
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np

from lited.geometry import Geometry


class Decoder:
    """One output layout. Subclasses set `kind` and `PARAMS`."""

    kind: ClassVar[str] = ""
    PARAMS: ClassVar[Dict[str, Tuple[type, object]]] = {}
    CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {}  # a text parameter's allowed values (problems() checks them)
    TASK: ClassVar[str] = "detection"  # the manifest's `task` for a model this decoder reads, when a fragment omits it
    ADDS: ClassVar[Tuple[str, ...]] = ()  # result keys a cascade stage adds to each detection
    OWN_LABELS: ClassVar[Tuple[str, ...]] = ()  # the labels it gives whatever the labels file (db_text: "text")
    # The labels must be exactly as many as the classes, not at least: a keys file with a line too many
    # shifts every character a CTC decoder reads (a classifier's spare labels are never read).
    EXACT_LABELS: ClassVar[bool] = False
    CLASSES_ARE: ClassVar[str] = ""  # how it counts classes, where that is not one a label: said when they differ
    # What a parameter of that name can be, whichever decoder has it (checked at load before `problems()`):
    # a score or an overlap is a share (a threshold of -1 gave junk boxes, an nms_iou of 2 turned NMS off);
    # a count is 0 (all) or more. A decoder with a parameter of another meaning under one of these names
    # overrides RANGES.
    RANGES: ClassVar[Dict[str, Tuple[float, Optional[float]]]] = {
        "score_threshold": (0, 1), "nms_iou": (0, 1), "min_score": (0, 1), "thresh": (0, 1), "box_thresh": (0, 1),
        "top_k": (0, None), "nms_top_k": (0, None), "background_class": (0, None), "max_candidates": (1, None),
        "min_size": (0, None), "unclip_ratio": (0, None)}

    def __init__(self, params: dict, labels: List[str]) -> None:
        """`params` holds every name in PARAMS (defaults filled in); each
        becomes an attribute of its declared type (`self.score_threshold`)."""
        for name, (kind, _) in self.PARAMS.items():
            setattr(self, name, kind(params[name]))
        for name, choices in self.CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: {getattr(self, name)!r} (expected {', '.join(choices)})")
        self.labels = list(labels or [])

    @classmethod
    def problems(cls, params: dict) -> List[Tuple[str, str]]:
        """(parameter, message) for values of the right type that still
        cannot work; `params` holds only what the manifest gives. Here: a value
        not among its CHOICES (a subclass adds its own to these)."""
        return [(name, f"expected one of {', '.join(choices)}, got {params[name]!r}")
                for name, choices in cls.CHOICES.items() if name in params and params[name] not in choices]

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        raise NotImplementedError

    def num_classes(self, outputs: List[np.ndarray]) -> Optional[int]:
        """How many classes the outputs hold (checked against the labels at
        load), or None when the layout does not say."""
        return None

    def describe(self, outputs: List[np.ndarray]) -> Optional[str]:
        """What it reads in these outputs, where it decided that itself (a layout found by
        shape: `lited inspect` shows it beside the manifest's parameters), or None."""
        return None

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        """Why these outputs (of the warm-up run, at load) are not this
        decoder's layout, or None: a model of another layout is refused in
        one line naming `decoder.type` instead of failing at its first frame
        (or, worse, decoding garbage)."""
        return None


def shapes(outputs: List[np.ndarray]) -> list:
    """The outputs' shapes, as a message shows them."""
    return [list(o.shape) for o in outputs]
