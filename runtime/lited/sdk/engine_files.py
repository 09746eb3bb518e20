"""The model files beside the `.nb`: the ONNX the model came from (run by
OpenVINO and onnxruntime), an OpenVINO IR when asked, an int8 model when
asked, and each target's `models.<target>` list in its order of preference.

Why an order per target: measured here (docs/BENCHMARKS.md), on x86
OpenVINO and onnxruntime cost 3.5-11x less CPU per frame than Paddle Lite's
x86 kernels, while on ARM boards Paddle Lite's ARM kernels are the usual
choice. So x86 lists the ONNX first (OpenVINO, then onnxruntime) and the
`.nb` after it; ARM targets list the `.nb` first. The daemon takes the
first engine installed (docs/bundle.md). Int8 files come last: a config
asks for them (`precision: int8`), since their accuracy is reported, not
promised.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from lited.sdk import BuildError
from lited.sdk.dynamic_shapes import graph_inputs

ONNX_NAME = "model.onnx"
IR_NAME = "model.xml"
X2PADDLE_PREFIX = "x2paddle_"
ONNX_ENGINES = ("openvino", "onnxruntime")


def copy_onnx(onnx_file: Path, root: Path, inputs: list) -> tuple:
    """Copy the ONNX into the bundle when its inputs are the manifest's: the
    same order (engines feed inputs by position) and every dimension the ONNX
    fixes fixed alike (a config may make a side dynamic that only the
    converted Paddle model takes as such). Returns (file name, None), or
    (None, why not). Weights kept in external data files are written into
    the one file: a bundle's model is one file (or an IR's two)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    feeds = graph_inputs(model.graph)
    names = [re.sub(r"\W", "_", name) for name, _ in feeds]  # as x2paddle names them
    wanted = [spec["name"].removeprefix(X2PADDLE_PREFIX) for spec in inputs]
    if names != wanted:
        return None, "its inputs are not the Paddle model's, in the same order"
    for spec, (name, dims) in zip(inputs, feeds):
        if len(dims) != len(spec["shape"]) or any(d > 0 and d != s for d, s in zip(dims, spec["shape"])):
            return None, f"it fixes input '{name}' to {dims} (-1: any), the bundle's is {spec['shape']}"
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.save(onnx.load(str(onnx_file)), str(root / ONNX_NAME))
        except (OSError, ValueError) as exc:  # a data file missing; over protobuf's 2 GiB
            raise BuildError(f"{onnx_file.name}: its weights in external data could not be put in one file "
                             f"({str(exc).strip().splitlines()[0][:200]}); --no-onnx builds the .nb alone") from None
    else:
        shutil.copyfile(onnx_file, root / ONNX_NAME)
    return ONNX_NAME, None


def write_ir(root: Path) -> tuple:
    """The bundle's ONNX as an OpenVINO IR (weights kept fp32: `save_model`
    would compress them to fp16, which changes the outputs); (xml, bin) names."""
    from lited.engines.openvino import import_openvino

    try:
        ov = import_openvino()
    except ImportError:
        raise BuildError("--openvino-ir needs openvino in the tools venv (make tools-venv)") from None
    try:
        ov.save_model(ov.convert_model(str(root / ONNX_NAME)), str(root / IR_NAME), compress_to_fp16=False)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"--openvino-ir: OpenVINO could not convert {ONNX_NAME}: "
                         f"{str(exc).strip().splitlines()[0][:300]}") from None
    return IR_NAME, Path(IR_NAME).with_suffix(".bin").name


def entry(file: str, engines: tuple, precision: str = "fp32") -> dict:
    """A `models.<target>[i]` entry (sealed later); an IR gets its .bin as `params`."""
    out: dict = {"file": file, "engines": list(engines)}
    if file.endswith(".xml"):
        out["params"] = {"file": Path(file).with_suffix(".bin").name}
    if precision != "fp32":
        out["precision"] = precision
    return out


def target_files(target: str, nb: str, onnx: str | None, ir: str | None, int8: dict | None,
                 nb_precision: str = "fp32") -> dict | list:
    """`models.<target>`: the `.nb` alone (schema 1's object), or every file in
    this target's order of preference; `nb_precision`: the `.nb`'s (fp16 needs
    schema 2's list, which says it: a config can then ask for it)."""
    paddle = {"file": nb, "engine": "paddle_lite"}
    if nb_precision != "fp32":
        paddle["precision"] = nb_precision
    if onnx is None:
        return [paddle] if nb_precision != "fp32" else {"file": nb}
    ir_entry = entry(ir, ("openvino",)) if ir else None
    onnx_entry = entry(onnx, ("onnxruntime",) if ir else ONNX_ENGINES)
    if target == "x86":
        files = [e for e in (ir_entry, onnx_entry, paddle) if e]
    else:  # ARM boards: Paddle Lite's ARM kernels first, then onnxruntime (wheels for aarch64), then OpenVINO
        onnx_entry = entry(onnx, ("onnxruntime",) if ir else ONNX_ENGINES[::-1])
        files = [e for e in (paddle, onnx_entry, ir_entry) if e]
    return files + ([dict(int8)] if int8 else [])
