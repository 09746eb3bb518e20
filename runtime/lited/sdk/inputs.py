"""The manifest's `inputs`: the model's feeds, with sizes the config knows.

Names, order and dtype come from the model itself (what Paddle Lite will
see; x2paddle renames ONNX inputs to `x2paddle_<name>`). A config may fill
in sizes the model leaves dynamic (a PaddleDetection export is
`[-1, 3, -1, -1]`, its infer_cfg.yml knows 640x640) but never contradict a
fixed one: that would be a config for another model. The batch is 1, unless
the config asks for -1 (a cascade stage that batches its crops).
A PaddleDetection export's `im_shape` and `scale_factor` feeds are marked
with `fill`: lited feeds them per frame, so they are not images.
"""
from __future__ import annotations

from lited.bundle import INPUT_FILLS

from lited.sdk import BuildError

X2PADDLE_PREFIX = "x2paddle_"


def _match(feeds: list, wanted: list) -> dict:
    """Config input index -> feed index: by name first, then in order among same-rank feeds."""
    pairs: dict = {}
    names = {feed["name"]: i for i, feed in enumerate(feeds)}
    for j, spec in enumerate(wanted):
        if spec.get("name") in names:
            pairs[j] = names[spec["name"]]
    free = [i for i in range(len(feeds)) if i not in pairs.values()]
    for j, spec in enumerate(wanted):
        if j in pairs:
            continue
        rank = len(spec.get("shape", [])) or 4
        candidates = [i for i in free if len(feeds[i]["shape"]) == rank]
        if not candidates:
            raise BuildError(f"inputs[{j}] ({spec.get('name', '?')}): the model has no such input "
                             f"(it has {', '.join(f['name'] for f in feeds)})")
        pairs[j] = candidates[0]
        free.remove(candidates[0])
    return pairs


def _shape(model_shape: list, config_shape: list | None, name: str, notes: list) -> list:
    if config_shape is None:
        config_shape = [-1] * len(model_shape)
    elif any(c == -1 and m != -1 for c, m in zip(config_shape[1:], model_shape[1:])):
        notes.append(f"inputs.{name}.shape: the config leaves {config_shape} dynamic (-1) where the model fixes "
                     f"{model_shape}: the bundle takes the model's sizes (export the model with dynamic sizes "
                     "to keep them)")
    if len(config_shape) != len(model_shape):
        raise BuildError(f"inputs.{name}.shape: the config says {config_shape}, the model's is {model_shape}")
    shape = []
    for axis, (m, c) in enumerate(zip(model_shape, config_shape)):
        if m != -1 and c != -1 and m != c and axis > 0:
            raise BuildError(f"inputs.{name}.shape: the config says {config_shape}, the model's is "
                             f"{model_shape} (a config for another model?)")
        shape.append(m if m != -1 else c)
    return shape


def _fill(feed: dict) -> str | None:
    """The `fill` for a feed named like a PaddleDetection extra input, checked to be [N, 2]."""
    name = feed["name"]
    fill = name.removeprefix(X2PADDLE_PREFIX)
    if fill not in INPUT_FILLS:
        return None
    if len(feed["shape"]) != 2 or feed["shape"][1] not in (2, -1):
        raise BuildError(f"inputs.{name}: shape {feed['shape']}, expected [-1, 2] for the '{fill}' "
                         "input lited fills")
    return fill


def merge_inputs(feeds: list, wanted: list | None, notes: list | None = None) -> list:
    """The manifest `inputs` from the model's feeds and the config's `inputs`;
    what the config asked that the model cannot give is added to `notes`."""
    notes = [] if notes is None else notes
    out = [dict(feed) for feed in feeds]
    batched = set()
    for j, i in _match(feeds, wanted or []).items():
        config_shape = (wanted or [])[j].get("shape")
        out[i]["shape"] = _shape(feeds[i]["shape"], config_shape, feeds[i]["name"], notes)
        if config_shape and config_shape[0] == -1 and feeds[i]["shape"] and feeds[i]["shape"][0] == -1:
            batched.add(i)
    for i, spec in enumerate(out):
        fill = _fill(spec)
        if fill:
            spec["shape"], spec["fill"] = [1, 2], fill
        elif spec["shape"] and i not in batched:
            spec["shape"][0] = 1  # lited feeds one image at a time
    return out
