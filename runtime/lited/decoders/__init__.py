"""Decoders turn raw model outputs into detections or classes: one file per
output layout, each a subclass of `base.Decoder` that sets `kind` (see
registry.py), with NMS and result building shared in `nms.py`.
"""
from __future__ import annotations

from lited.decoders.base import Decoder
from lited.registry import Registry

__all__ = ["DECODERS", "Decoder", "make_decoder"]

DECODERS: Registry[Decoder] = Registry("lited.decoders", Decoder)


def make_decoder(spec: dict, labels: list) -> Decoder:
    """Build the decoder a manifest's `decoder` object describes."""
    cls = DECODERS.get(spec["type"])
    params = {name: spec.get(name, default) for name, (_, default) in cls.PARAMS.items()}
    return cls(params, labels)
