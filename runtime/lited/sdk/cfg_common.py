"""Helpers shared by the config importers: strict parameter and value checks.

An importer that silently ignored an op parameter would build an SDK whose
preprocessing differs from training, which shows up only as worse accuracy
on the board; so every parameter is either mapped or refused by name.
"""
from __future__ import annotations

import re
from typing import Any

from lited.sdk import BuildError

ONE_OVER_255 = 1 / 255
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*(?:/\s*([0-9.eE+-]+))?\s*$")


def check_params(params: dict, allowed: set, at: str, op: str) -> None:
    """Refuse a parameter this importer does not map."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BuildError(f"{at}: {op}: unknown parameter '{unknown[0]}' "
                         f"(known: {', '.join(sorted(allowed)) or 'none'})")


def number(value: Any, at: str) -> float:
    """A number, or a string like PaddleClas's '1./255.'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            try:
                top = float(match.group(1))
                bottom = float(match.group(2)) if match.group(2) else 1.0
                return top / bottom
            except (ValueError, ZeroDivisionError):
                pass
    raise BuildError(f"{at}: expected a number, got {value!r}")


def triple(value: Any, at: str) -> list:
    """Three numbers (a per-channel mean or std)."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise BuildError(f"{at}: expected 3 numbers, got {value!r}")
    return [number(v, at) for v in value]


def size_pair(value: Any, at: str) -> tuple:
    """An int or a 2-list as given by the config (order is the caller's business)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise BuildError(f"{at}: expected a positive size or a pair of them, got {value!r}")


def image_input(name: str, height: int, width: int, layout: str) -> dict:
    """The `inputs` entry for one image input, batch 1, -1 for a dynamic side."""
    shape = [1, 3, height, width] if layout == "NCHW" else [1, height, width, 3]
    return {"name": name, "shape": shape, "dtype": "float32"}
