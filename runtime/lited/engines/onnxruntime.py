"""onnxruntime engine: an InferenceSession on an `.onnx` (or `.ort`) file.

Facts that shaped it (onnxruntime 1.23.2, CPython 3.10, numpy 1.26.4, x86_64 AVX2):
- `intra_op_num_threads=1` runs every kernel on the calling thread (no pool
  at all); N > 1 makes a pool of N-1 threads that spin between kernels
  unless `session.intra_op.allow_spinning` is "0". Spinning doubled or
  tripled the latency on shared cores (measured, docs/BENCHMARKS.md): two
  streams of two threads each on a 2-core board burn each other's cores.
  So `spin` is off unless asked for;
- `run()` releases the GIL (a 1 ms sleeper woke ~1.8 ms late during runs);
- IOBinding binds a raw pointer: inputs are read in place (no copy), and a
  preallocated output of the right shape is written in place. An output
  bound with the wrong shape fails the run cleanly ("OrtValue shape
  verification failed"), so outputs are bound only for input shapes a run
  has already shown the output shapes of, and a model whose output shapes
  vary with the data (NMS inside) falls back to ORT's own arrays;
- binding costs ~10-40 us an array: one IOBinding is kept per set of
  arrays (the engine process rotates 3 input sets x 3 output sets), so a
  stream binds nothing per frame;
- other execution providers (CUDA, TensorRT, OpenVINO, ...) come with other
  wheels (onnxruntime-gpu, onnxruntime-openvino): `device` asks for one and
  is refused when the installed wheel lacks it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lited.engines.base import (EngineError, InPlaceEngine, TensorSpec, bool_option, cpu_threads,
    read_model_file, str_option)
from lited.errors import first_line

DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
          "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
# `device` -> execution providers tried in order (the CPU one always comes last)
DEVICES = {
    "cpu": (),
    "cuda": ("CUDAExecutionProvider",),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider",),
    "auto": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"),
}
OPTIONS = ("threads", "device", "spin", "optimized_model")
MAX_BINDINGS = 12  # IOBindings kept: 3 input sets x 3 output sets, and spares for a new shape
OWN_OUTPUT_SHAPES = 4  # engine-owned output sets kept (one per input shape, for run())


def ort_words(exc: BaseException) -> str:
    """onnxruntime's message on one line: it puts the facts on the lines after the first ("... for
    the following indices" / "index: 2 Got: 64 Expected: 37"), then a boilerplate hint."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith("Please fix")]
    return "; ".join(kept)[:400] if kept else first_line(exc)


class OnnxRuntimeEngine(InPlaceEngine):
    """One onnxruntime session. Use from one thread only."""

    kind = "onnxruntime"
    options = OPTIONS
    backend = "onnxruntime"
    package = "onnxruntime"
    formats = (".onnx", ".ort")

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        str_option(options, "device", DEVICES)
        bool_option(options, "spin", False)
        str_option(options, "optimized_model")

    def __init__(self, model_path: str, options: dict, checksums: Optional[dict] = None) -> None:
        import onnxruntime as ort  # here, not at import: listing engines must stay cheap

        threads = self.threads_of(options)
        device = options.get("device", "cpu")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if bool_option(options, "spin", False) else "0")
        if options.get("optimized_model"):  # save the optimised graph (a later start can load it)
            so.optimized_model_filepath = str(options["optimized_model"])
        available = ort.get_available_providers()
        wanted = [p for p in DEVICES[device] if p in available]
        if DEVICES[device] and not wanted and device != "auto":
            raise EngineError(f"option 'device': {device!r} asked, but this onnxruntime has only "
                              f"{', '.join(available)} (install onnxruntime-gpu or onnxruntime-openvino)")
        # From memory: the bytes the session gets are the ones checked against the manifest.
        model_bytes = read_model_file(str(model_path), checksums)
        try:
            self._session = ort.InferenceSession(model_bytes, so, providers=wanted + ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph/... with C++ text
            raise EngineError(f"{model_path}: onnxruntime refused the model: {ort_words(exc)}") from None
        used = self._session.get_providers()[0]
        self.version = ort.__version__
        self.device = cpu_threads("cpu" if used == "CPUExecutionProvider" else
                                  used.replace("ExecutionProvider", "").lower(), threads)
        ins, outs = self._session.get_inputs(), self._session.get_outputs()
        self.inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape),
                                  DTYPES.get(i.type, i.type)) for i in ins]
        self.output_names = [o.name for o in outs]
        self.init_buffers([tuple(d if isinstance(d, int) else -1 for d in o.shape) for o in outs])
        self._run_options = ort.RunOptions()
        self._bindings: dict = {}          # (input pointers and shapes, output pointers) -> (IOBinding, arrays)
        self._out_shapes: dict = {}        # input shapes -> the (shape, dtype) of each output a run produced
        self._own_out: dict = {}           # input shapes -> engine-owned outputs (run() writes there)
        self._outputs_vary = False         # output shapes depend on the data, not only the input shapes

    def own_outputs(self, input_shapes: tuple) -> Optional[list]:
        """`run()` writes into arrays of the engine's own, one set per input shape."""
        return self._own_out.get(input_shapes)

    def run_into(self, inputs: Sequence[np.ndarray], outputs: Optional[Sequence[Optional[np.ndarray]]] = None) -> list:
        """Read input i in place from `inputs[i]` and write output i in place into
        `outputs[i]` when it has the shape this run produces (see Engine.run_into)."""
        arrays = self.bindable(inputs)
        in_shapes = tuple(a.shape for a in arrays)
        known = None if self._outputs_vary else self._out_shapes.get(in_shapes)
        targets: list = [None] * len(self.output_names)
        if known is not None and outputs is not None:
            for i, out in enumerate(outputs):
                if out is not None and (out.shape, out.dtype) == known[i] \
                        and out.flags.c_contiguous and out.flags.writeable:
                    targets[i] = out
        binding = self._binding(arrays, targets)
        try:
            self._session.run_with_iobinding(binding, self._run_options)
        except Exception as exc:  # noqa: BLE001
            if any(t is not None for t in targets) and "shape" in str(exc).lower():
                self._outputs_vary = True  # same input shapes, other output shapes: stop binding outputs
                self._bindings.clear()
                self._own_out.clear()
                return self.run_into(inputs, None)
            raise EngineError(f"onnxruntime: {ort_words(exc)}") from None
        values = None
        result: list = []
        for i, target in enumerate(targets):
            if target is None:
                values = values if values is not None else binding.get_outputs()
                target = values[i].numpy()
            result.append(target)
        self.ran(arrays, result)
        if not self._outputs_vary and in_shapes not in self._out_shapes:
            # each output's dtype as the model gives it (a PaddleDetection export's row count is int32)
            layouts = self._out_shapes[in_shapes] = [(r.shape, r.dtype) for r in result]
            if len(self._own_out) >= OWN_OUTPUT_SHAPES:
                self._own_out.pop(next(iter(self._own_out)))
            self._own_out[in_shapes] = [np.empty(shape, dtype) for shape, dtype in layouts]
        return result

    def _binding(self, arrays: list, targets: list):
        """The IOBinding for these arrays, made once and kept (it keeps the
        arrays alive, so their addresses cannot be reused under it)."""
        key = (tuple((a.ctypes.data, a.shape) for a in arrays),
               tuple(t.ctypes.data if t is not None else None for t in targets))
        entry = self._bindings.get(key)
        if entry is None:
            binding = self._session.io_binding()
            for spec, a in zip(self.inputs, arrays):
                binding.bind_input(spec.name, "cpu", 0, a.dtype, a.shape, a.ctypes.data)
            for name, t in zip(self.output_names, targets):
                if t is None:
                    binding.bind_output(name, "cpu")  # ORT allocates: shape not known yet, or no buffer given
                else:
                    binding.bind_output(name, "cpu", 0, t.dtype, t.shape, t.ctypes.data)
            entry = self._bindings[key] = (binding, arrays, targets)
            self.binds += 1
            while len(self._bindings) > MAX_BINDINGS:
                self._bindings.pop(next(iter(self._bindings)))
        return entry[0]

    def close(self) -> None:
        self._bindings.clear()
        self._own_out.clear()
        self._session = None
