"""ONNX models with input sides left dynamic, through x2paddle.

x2paddle 1.6.0 needs `--input_shape_dict` where an ONNX model's sizes are
unknown (PP-OCRv4 rec: "Given normalized_shape is [120], expected input with
shape [*, 120], but got input shape [-1, -1, -1]"), and uses it to make a
fixed ONNX batch dynamic (a classifier batching crops). But it folds the
`shape` of some reshape2 ops to the values of a size-1 dynamic side: the
PP-OCRv4 rec then converts "fine" and fails in Paddle Lite at run time
(`reshape_op.cc ... Check failed: (capacity == input_size): 120!==8400`).

So after converting with the dynamic shape, the program is run at two probe
sizes of each dynamic side (Paddle's static executor, zeros). If that fails,
the model is converted again with the dynamic sides pinned to a probe size,
and every reshape2 whose `shape` differs between the two programs gets -1
on the axis that differs (one axis per op, else the repair is refused).
The repaired program must then run at both probe sizes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lited.sdk import BuildError

if TYPE_CHECKING:
    import onnx

# probe sizes for a dynamic side: the batch, and a spatial side (multiples of 32,
# so strided backbones divide them)
PROBES = {"batch": (1, 2), "side": (64, 96)}


def onnx_inputs(onnx_file: Path) -> list:
    """[(name, shape)] of the ONNX graph's real inputs; -1 for a symbolic or unknown size."""
    import onnx

    return graph_inputs(onnx.load(str(onnx_file), load_external_data=False).graph)


def graph_inputs(graph: "onnx.GraphProto") -> list:
    """`onnx_inputs` of a graph loaded already."""
    initializers = {i.name for i in graph.initializer}
    out = []
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out.append((value.name, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]))
    return out


def shapes_to_ask(onnx_file: Path, wanted: list | None) -> dict:
    """{onnx input name: shape} for `--input_shape_dict`: the config's shape
    for an input where it asks for a dynamic side the ONNX fixes, or fixes a
    side (other than the batch) the ONNX leaves dynamic. Empty: convert as is."""
    if not wanted:
        return {}
    inputs = onnx_inputs(onnx_file)
    names = {name: shape for name, shape in inputs}
    asked = {}
    for j, spec in enumerate(wanted):
        shape = spec.get("shape")
        if not isinstance(shape, list):
            continue
        name = str(spec.get("name", ""))
        if name not in names and name.removeprefix("x2paddle_") in names:
            name = name.removeprefix("x2paddle_")
        if name not in names:
            if len(inputs) == 1 and len(wanted) == 1:
                name = inputs[0][0]
            else:
                continue
        model_shape = names[name]
        if len(model_shape) != len(shape):
            continue
        more_dynamic = any(c == -1 and m != -1 for c, m in zip(shape, model_shape))
        pins = any(c != -1 and m == -1 for axis, (c, m) in enumerate(zip(shape, model_shape)) if axis > 0)
        if more_dynamic or pins:
            asked[name] = [int(c) for c in shape]
    return asked


def _probe_feeds(program, feed_names: list, which: int) -> dict:
    """Zeros for every feed, each dynamic side at its probe size `which` (0 or 1);
    ones for the [N, 2] size inputs (im_shape, scale_factor)."""
    import numpy as np

    block = program.global_block()
    feeds = {}
    for name in feed_names:
        var = block.var(name)
        shape = [int(d) for d in var.shape]
        dims = [(PROBES["batch"] if axis == 0 else PROBES["side"])[which] if d == -1 else d
                for axis, d in enumerate(shape)]
        dtype = str(var.dtype).replace("paddle.", "")
        feeds[name] = (np.ones if len(shape) == 2 and shape[-1] == 2 else np.zeros)(dims, dtype)
    return feeds


def _load(prefix: str):
    import paddle

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    program, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
    return exe, program, feeds, fetches


def check_runs(prefix: str) -> str | None:
    """None if the program runs at both probe sizes of its dynamic sides, else why not (one line)."""
    from lited.sdk import proc

    os.environ.setdefault("GLOG_minloglevel", "2")
    exe, program, feeds, fetches = _load(prefix)
    for which in (0, 1):
        try:
            exe.run(program, feed=_probe_feeds(program, feeds, which), fetch_list=fetches)
        except Exception as exc:  # paddle raises many kinds, with C++ pages
            return proc.reason(str(exc))
    return None


def needs_probe(asked: dict) -> bool:
    return any(-1 in shape for shape in asked.values())


def pinned(asked: dict) -> dict:
    """The asked shapes with every dynamic side at its second probe size."""
    return {name: [(PROBES["batch"] if axis == 0 else PROBES["side"])[1] if d == -1 else d
                   for axis, d in enumerate(shape)] for name, shape in asked.items()}


def repair(dynamic_prefix: str, pinned_prefix: str, out_prefix: str) -> list:
    """Give the folded reshape2 ops of the dynamic program their -1 back, from
    where the pinned program's differ; save to `out_prefix`. Returns what changed."""
    import paddle

    exe, program, feeds, fetches = _load(dynamic_prefix)
    _, reference, _, _ = _load(pinned_prefix)
    ops = [op for op in program.global_block().ops if op.type == "reshape2"]
    refs = [op for op in reference.global_block().ops if op.type == "reshape2"]
    if len(ops) != len(refs):
        raise BuildError(f"x2paddle wrote {len(ops)} reshape ops for the dynamic shape and {len(refs)} for a "
                         "fixed one: cannot repair the folded shapes")
    changed = []
    for op, ref in zip(ops, refs):
        if op.input("Shape") or op.input("ShapeTensor"):
            continue
        shape, other = list(op.attr("shape")), list(ref.attr("shape"))
        if shape == other:
            continue
        axes = [i for i, (a, b) in enumerate(zip(shape, other)) if a != b]
        if len(shape) != len(other) or len(axes) != 1 or -1 in shape:
            raise BuildError(f"reshape to {shape} (at the fixed size {other}): cannot tell its dynamic axis")
        fixed = list(shape)
        fixed[axes[0]] = -1
        op._set_attr("shape", fixed)
        changed.append((shape, fixed))
    block = program.global_block()
    paddle.static.save_inference_model(out_prefix, [block.var(n) for n in feeds], fetches, exe, program=program)
    return changed
