"""Decoders turn raw model outputs into detections or classes.

One file per output format. Each module defines a `Decoder` class:

    class Decoder:
        PARAMS = {"score_threshold": (float, 0.5), ...}   # name -> (type, default)
        def __init__(self, params: dict, labels: list[str]): ...
        def decode(self, outputs: list[np.ndarray], geom: Geometry) -> dict:
            # {"detections": [{"label", "score", "box": [x1, y1, x2, y2]}],
            #  "classes": [{"label", "score"}]}   boxes in source pixels

`PARAMS` is what `bundle.py` validates the manifest's `decoder` object
against, so a typo in a parameter name is caught before anything loads.
"""
from __future__ import annotations

import importlib
from typing import Any

DECODER_TYPES = ("boxes", "classification", "db_text", "grid", "priorbox")


def decoder_class(kind: str) -> Any:
    """The `Decoder` class for a manifest's `decoder.type`."""
    if kind not in DECODER_TYPES:
        raise KeyError(kind)
    return importlib.import_module(f"lited.decoders.{kind}").Decoder


def make_decoder(spec: dict, labels: list) -> Any:
    """Build the decoder a manifest's `decoder` object describes."""
    cls = decoder_class(spec["type"])
    params = {name: spec.get(name, default) for name, (_, default) in cls.PARAMS.items()}
    return cls(params, labels)
