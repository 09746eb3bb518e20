"""Int8 post-training quantisation of the bundle's ONNX model, on calibration
inputs lited itself made from a folder of images (judge.py: exactly what
the board will feed). Runs in the tools venv (nncf, onnxruntime's quantiser).

- `openvino`: NNCF (`nncf.quantize`, its default PERFORMANCE preset with fast
  bias correction) on the ONNX read by OpenVINO, saved as an IR (`.xml` +
  `.bin`) without fp16 compression. Measured (docs/BENCHMARKS.md) the more
  accurate of the two, on an AVX2 CPU without VNNI and on one with VNNI and
  AMX (there onnxruntime's int8 FastestDet kept 1 of its 23 boxes).
- `onnxruntime`: `quantize_static`, QDQ, per-channel int8 weights with
  `reduce_range` (7 bits: without it, u8 x s8 products saturate on AVX2/AVX-512
  without VNNI and most top-1 agreement was lost), uint8 activations, MinMax.
  Per-channel QDQ needs opset 13, so older models are converted first.

Neither promises speed: without VNNI or ARM dot-product instructions int8
GEMMs are not much faster than fp32 FMA. The builder always reports the
accuracy change beside the speed change (agreement.py).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from lited.sdk import BuildError

ENGINES = ("openvino", "onnxruntime")
PER_CHANNEL_OPSET = 13


def calibration_data(npz: Path) -> list:
    """[[input 0, input 1, ...] per image] from the .npz agreement.py wrote."""
    import numpy as np

    data = np.load(npz)
    frames: dict = {}
    for key in data.files:
        i, k = (int(x) for x in key.split("_"))
        frames.setdefault(i, {})[k] = data[key]
    return [[inputs[k] for k in sorted(inputs)] for _, inputs in sorted(frames.items())]


def quantize(engine: str, onnx_file: Path, frames: list, out_dir: Path, workdir: Path) -> Path:
    """The int8 model (`model_int8.xml` or `model_int8.onnx` in `out_dir`)."""
    if engine not in ENGINES:
        raise BuildError(f"--int8-engine: unknown '{engine}', expected one of {', '.join(ENGINES)}")
    try:
        with _output_into(workdir / "int8.log"):
            return (_nncf if engine == "openvino" else _onnxruntime)(onnx_file, frames, out_dir, workdir)
    except ImportError as exc:
        raise BuildError(f"--int8 with {engine} needs {exc.name} in the tools venv (make tools-venv)") from None


@contextlib.contextmanager
def _output_into(log: Path) -> Iterator[None]:
    """The quantisers' output into `log` (the work directory's), not on the user's terminal, which
    holds only build_sdk's own lines: onnxruntime's warnings wrote 523 lines on a build that
    succeeded, NNCF draws progress bars on stdout. The file descriptors themselves: most of the
    warnings come from C++."""
    saved = []
    try:
        with open(log, "ab") as fh:
            for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
                stream.flush()
                saved.append((fd, stream, os.dup(fd)))
                os.dup2(fh.fileno(), fd)
        yield
    finally:
        for fd, stream, copy in saved:
            stream.flush()
            os.dup2(copy, fd)
            os.close(copy)


def _nncf(onnx_file: Path, frames: list, out_dir: Path, workdir: Path) -> Path:
    from lited.engines.openvino import import_openvino

    ov = import_openvino()  # first: nncf imports openvino, and both would report to Google Analytics
    import nncf

    model = ov.Core().read_model(str(onnx_file))
    names = [i.get_any_name() for i in model.inputs]
    dataset = nncf.Dataset(frames, lambda f: dict(zip(names, f)))
    try:
        quantized = nncf.quantize(model, dataset, subset_size=len(frames), fast_bias_correction=True)
    except Exception as exc:  # noqa: BLE001 - nncf raises many kinds, with long messages
        raise BuildError(f"int8 (openvino NNCF): {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") \
            from None
    out = out_dir / "model_int8.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def _resize_by_sizes_only(model: Any) -> None:
    """An opset-11 Resize that gives `sizes` names empty `roi` and `scales` tensors; from opset 13 such
    inputs must be left out (named ""), and onnxruntime refused NanoDet-m's converted graph ("Either
    `sizes` or `scales` must be provided, but not both")."""
    empty = {t.name for t in model.graph.initializer if list(t.dims) == [0]}
    for node in model.graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3] and node.input[2] in empty:
            node.input[2] = ""
            if node.input[1] in empty:
                node.input[1] = ""


def _onnxruntime(onnx_file: Path, frames: list, out_dir: Path, workdir: Path) -> Path:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = workdir / "int8_src.onnx"
    model = onnx.load(str(onnx_file))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < PER_CHANNEL_OPSET:  # per-channel DequantizeLinear (its axis) needs opset 13
        model = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        _resize_by_sizes_only(model)
    onnx.save(model, str(src))
    prepared = workdir / "int8_prepared.onnx"
    # symbolic shape inference fails on some graphs (opset-9 Slice), onnxruntime's optimiser on others (an
    # opset-11 Resize converted to 13 names both sizes and scales): each is tried without, in turn
    for skips in ({}, {"skip_symbolic_shape": True}, {"skip_symbolic_shape": True, "skip_optimization": True}):
        try:
            quant_pre_process(str(src), str(prepared), **{"skip_symbolic_shape": False, **skips})
            break
        except Exception as exc:  # noqa: BLE001 - many kinds, from onnx and onnxruntime
            failed = exc
    else:
        raise BuildError(f"int8 (onnxruntime quant_pre_process): {type(failed).__name__}: "
                         f"{str(failed).strip().splitlines()[0][:300]}")
    names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(frames)

        def get_next(self):
            frame = next(self.it, None)
            return None if frame is None else dict(zip(names, frame))

    out = out_dir / "model_int8.onnx"
    try:
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"int8 (onnxruntime quantize_static): {type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0][:300]}") from None
    return out
