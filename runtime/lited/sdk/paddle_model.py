"""MODEL -> a Paddle inference model (model.pdmodel + model.pdiparams) and its inputs.

Accepts an ONNX file (converted with x2paddle, the chain known to work with
paddle_lite_opt 2.13: paddlepaddle 2.6.2 + x2paddle 1.6.0), a `.pdmodel`
with its `.pdiparams` beside it, or a directory holding one such pair (the
layout PaddleDetection and PaddleClas exports use). Problems that would only
show up as a C++ abort inside paddle_lite_opt are caught here by name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lited.sdk import BuildError, dynamic_shapes, proc
from lited.sdk.venv import tool


@dataclass(frozen=True)
class PaddleModel:
    model_file: Path
    params_file: Path
    source: Path  # what the user gave (the ONNX file for a converted model)


def _pair(model_file: Path, where: str) -> PaddleModel:
    params = model_file.with_suffix(".pdiparams")
    if not params.is_file():
        raise BuildError(f"{where}: params file {params.name} is missing beside {model_file.name} "
                         "(a Paddle inference model is NAME.pdmodel + NAME.pdiparams)")
    return PaddleModel(model_file, params, model_file)


def _from_dir(directory: Path) -> PaddleModel:
    found = sorted(directory.glob("*.pdmodel"))
    if len(found) == 1:
        return _pair(found[0], str(directory))
    if found:
        raise BuildError(f"{directory}: several models ({', '.join(p.name for p in found)}); pass the .pdmodel to use")
    if any(p.with_suffix(".pdiparams").is_file() for p in directory.glob("*.json")):
        raise BuildError(f"{directory}: a Paddle 3 (PIR, .json) model, which paddle_lite_opt 2.13 cannot read; "
                         "export it with paddlepaddle 2.x")
    if (directory / "__model__").is_file():
        raise BuildError(f"{directory}: a model with separate parameter files (__model__); re-save it with "
                         "paddle.static.save_inference_model as NAME.pdmodel + NAME.pdiparams")
    raise BuildError(f"{directory}: no .pdmodel file in it")


def _x2paddle(onnx_file: Path, workdir: Path, name: str, shapes: dict) -> Path:
    """Convert with x2paddle into workdir/NAME/inference_model/; the model.pdmodel path."""
    out = workdir / name
    cmd = [tool("x2paddle"), "--framework=onnx", f"--model={onnx_file}", f"--save_dir={out}",
           "--disable_feedback=True"]
    if shapes:
        cmd.append(f"--input_shape_dict={shapes!r}")
    log = workdir / f"{name}.log"
    output = proc.run(cmd, log, f"{onnx_file.name}: x2paddle")
    model_file = out / "inference_model" / "model.pdmodel"
    if not model_file.is_file():  # x2paddle caught its own error and exited 0: the log says what
        raise BuildError(f"{onnx_file.name}: x2paddle wrote no model: {proc.reason(output)} (log {log})")
    return model_file


def _check_onnx(onnx_file: Path) -> None:
    """What x2paddle reports as `IndexError: list index out of range` or, exiting 0, not at all."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except (DecodeError, ValueError, OSError) as exc:
        raise BuildError(f"{onnx_file.name}: not an ONNX model ({str(exc).strip().splitlines()[0][:200]})") from None
    if not graph.node:
        raise BuildError(f"{onnx_file.name}: an ONNX model with no graph ({onnx_file.stat().st_size} bytes: "
                         "empty or cut short?)")
    if not dynamic_shapes.graph_inputs(graph):
        raise BuildError(f"{onnx_file.name}: its graph has no inputs (lited feeds a model an image)")


def _x2paddle_names(onnx_file: Path, workdir: Path) -> Path:
    """paddle2onnx names tensors like `Add@0` (PaddleOCR's published ONNX models): x2paddle writes
    them into Python code as they are (`x2paddle_Add@0 = ...`: a SyntaxError). Such names are
    renamed in a copy for x2paddle, `@` to `_` (unique); other models go as they are."""
    import onnx

    model = onnx.load(str(onnx_file))  # its weights too (an external data file): the copy is one file
    graph = model.graph
    names = {n for node in graph.node for n in (*node.input, *node.output)} | \
        {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    bad = sorted(n for n in names if "@" in n)
    if not bad:
        return onnx_file
    taken, renamed = set(names), {}
    for name in bad:
        new = name.replace("@", "_")
        while new in taken:
            new += "_"
        taken.add(new)
        renamed[name] = new
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = renamed.get(value.name, value.name)
    out = workdir / "x2paddle_input.onnx"
    onnx.save(model, str(out))
    return out


def onnx_to_paddle(onnx_file: Path, workdir: Path, inputs: list | None = None) -> PaddleModel:
    """Convert with x2paddle into workdir/x2paddle/inference_model/. Sides the
    config's `inputs` leave dynamic (-1) are asked for and checked to run at
    two sizes, with x2paddle's folded reshapes repaired (dynamic_shapes.py)."""
    _check_onnx(onnx_file)
    onnx_file = _x2paddle_names(onnx_file, workdir)
    asked = dynamic_shapes.shapes_to_ask(onnx_file, inputs)
    model_file = _x2paddle(onnx_file, workdir, "x2paddle", asked)
    if dynamic_shapes.needs_probe(asked):
        prefix = str(model_file.with_suffix(""))
        failure = dynamic_shapes.check_runs(prefix)
        if failure:
            pinned = _x2paddle(onnx_file, workdir, "x2paddle_pinned", dynamic_shapes.pinned(asked))
            repaired = workdir / "repaired" / "model"
            changed = dynamic_shapes.repair(prefix, str(pinned.with_suffix("")), str(repaired))
            again = dynamic_shapes.check_runs(str(repaired))
            if again or not changed:
                raise BuildError(f"{onnx_file.name}: x2paddle's program does not run at other sizes of the "
                                 f"dynamic input sides {asked} ({again or failure}); give fixed sizes in the "
                                 "config's inputs")
            model_file = repaired.with_suffix(".pdmodel")
    _without_callstacks(model_file)
    return PaddleModel(model_file, model_file.with_suffix(".pdiparams"), onnx_file)


def quiet_paddle() -> ModuleType:
    """paddle, imported with its glog INFO lines off (stderr's `New Executor is Running.`)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    import paddle

    return paddle


def _without_callstacks(model_file: Path) -> None:
    """x2paddle's program says where each op was made: in its own code, under the work
    directory. paddle_lite_opt numbered tensors after that, so the same model converted
    in another folder (a --workdir, a --model typed another way) gave another `.nb`,
    which the installer takes for another release. Stripped, a rebuild has the same bytes."""
    quiet_paddle()
    from paddle.base.proto import framework_pb2

    program = framework_pb2.ProgramDesc()
    program.ParseFromString(model_file.read_bytes())
    for block in program.blocks:
        for op in block.ops:
            kept = [a for a in op.attrs if a.name != "op_callstack"]
            if len(kept) < len(op.attrs):
                del op.attrs[:]
                op.attrs.extend(kept)
    model_file.write_bytes(program.SerializeToString(deterministic=True))


def resolve(model: Path, workdir: Path, inputs: list | None = None) -> PaddleModel:
    """The Paddle model for MODEL, converting an ONNX file on the way (with
    the config's `inputs`, whose dynamic sides the conversion keeps)."""
    if not model.exists():
        raise BuildError(f"{model}: not found")
    if model.is_dir():
        return _from_dir(model)
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        return onnx_to_paddle(model, workdir, inputs)
    if suffix == ".pdmodel":
        return _pair(model, str(model))
    raise BuildError(f"{model}: expected an .onnx file, a .pdmodel or a directory holding one")


def read_inputs(model: PaddleModel) -> list:
    """The model's feeds in order: [{"name", "shape", "dtype"}], -1 for dynamic sizes.

    Loading the program also proves the params file belongs to the model,
    which paddle_lite_opt would otherwise report with an abort.
    """
    paddle = quiet_paddle()
    paddle.enable_static()
    try:
        program, feeds, _ = paddle.static.load_inference_model(  # NAME.pdmodel + NAME.pdiparams
            str(model.model_file.with_suffix("")), paddle.static.Executor(paddle.CPUPlace()))
    except Exception as exc:  # paddle raises many kinds, all with C++ pages
        raise BuildError(f"{model.model_file.name}: paddle cannot load it with {model.params_file.name}: "
                         f"{proc.reason(str(exc))} (params of another model?)") from None
    block = program.global_block()
    inputs = []
    for name in feeds:
        var = block.var(name)
        inputs.append({"name": name, "shape": [int(d) for d in var.shape],
                       "dtype": str(var.dtype).replace("paddle.", "")})
    return inputs


def static_shapes(output_shapes: list) -> list | None:
    """`read_output_shapes`' shapes with an unknown batch taken as 1; None where any other
    size is known only at run time (a decoder's layout cannot be checked before then)."""
    shapes = [tuple(1 if d == -1 and axis == 0 else d for axis, d in enumerate(s)) for s in output_shapes]
    return None if any(d < 0 for s in shapes for d in s) else shapes


def read_output_shapes(model: PaddleModel) -> list:
    """The shapes of the model's outputs in order, -1 where unknown (what a
    decoder's layout can be read from at build time)."""
    paddle = quiet_paddle()
    paddle.enable_static()
    _, _, fetches = paddle.static.load_inference_model(str(model.model_file.with_suffix("")),
                                                       paddle.static.Executor(paddle.CPUPlace()))
    return [[int(d) for d in var.shape] for var in fetches]
