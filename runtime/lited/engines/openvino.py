"""OpenVINO engine: a compiled model on an `.onnx` file or an IR (`.xml` + `.bin`).

Facts that shaped it (openvino 2026.4.1, CPU plugin, x86_64 AVX2 and AVX-512, 2 cores):
- the CPU plugin reads ONNX directly, with outputs bit-identical to an fp32
  IR of the same model, so a bundle need not ship an IR (`ov.save_model`
  compresses weights to fp16 by default, which changes the outputs);
  `cache_dir` keeps compiled blobs so the next start compiles in about half
  the time;
- `INFERENCE_NUM_THREADS` sets the threads of one inference, with
  `PERFORMANCE_HINT=LATENCY` and `NUM_STREAMS=1`. `ENABLE_CPU_PINNING`
  defaults to true: measured, two engine processes with two threads each
  pinned a thread to the same core. Off unless `pin` asks for it;
- the CPU plugin's own precision is bf16 on a CPU with AMX or AVX-512 BF16
  (a Sapphire Rapids host): outputs moved up to 0.7 % from Paddle Lite's,
  past the golden tolerance, and classifier scores in the 4th digit. So on
  the CPU `INFERENCE_PRECISION_HINT` is f32 unless `precision` asks;
- `infer()` releases the GIL. The Python `InferRequest.infer` wraps the
  native one: it dispatches its inputs and copies the outputs into a fresh
  dict, 8 us a run on a 0.5 ms classifier; a prepared call (`prepare`)
  calls the native method of `openvino._pyopenvino` itself, with no inputs
  and its outputs shared: `infer(inputs: dict, share_outputs, decode_strings)`,
  as in 2026.4.1 and in the 2025 releases' binding source (a private module:
  tests/test_engines.py runs the call on every install). With run_into's own
  checks and lookups, that was 30 us a run;
- an image input fresh from the other core's cache slows its run: in `lited run`
  the engine process's 0.45 ms PP-OCR classifier runs took 11-36 us longer
  when preprocessing on the other core had just written the 110 KB of float32
  than when the same bytes stayed (medians of 10,000, timed in the child).
  Taken as float16 (`f16_images`, default on: a PrePostProcessor element type
  on each 4-D float input, converted to float32 as the model's first step)
  the difference was 2-4 us, and the runs were no slower otherwise (421-432
  against 438-441 us). Float16 holds a pixel normalised as the SDK's
  manifests do (scale 1/255, ImageNet's mean and std, PP-OCR's 0.5/0.5,
  NanoDet's) to within 1/16 of one 8-bit level, and decoded results match
  float32's within the golden tolerance (tests/test_engines.py);
- an `ov.Tensor(array, shared_memory=True)` set as an input is read in
  place, and set as an output of a model whose output shapes are static it
  is written in place (checked once per binding: were the bytes ours?);
- DANGER: on a model with dynamic output shapes, an output tensor bound with
  the wrong shape for the next input is silently reshaped when it is
  smaller and, when it is too small, leaves the compiled model broken
  (fresh requests return shape (0, 1, 0, 0)) and the process then dies in
  malloc ("unaligned tcache chunk") or "pure virtual method called". So
  outputs are bound only where the compiled model's output shape is static.
  A model with dynamic inputs (PP-OCR det) is compiled once per input
  shape (`static_shapes`, default on: 6-20 % faster than the dynamic
  compile, and its outputs can be bound), keeping a small LRU like the
  Paddle Lite engine's; `static_shapes: false` compiles it once, dynamic,
  and its outputs are the plugin's memory, copied by the caller.
- `import openvino` reports the import to Google Analytics (openvino_telemetry,
  from a thread that forks a sender process) unless the user opted out or
  CI=true; in a process that has loaded GStreamer that fork was seen to end
  in a segfault. lited imports it through `import_openvino`, which hides
  openvino_telemetry: openvino (and NNCF) then fall back to their stubs, and
  a board sends nothing.
"""
from __future__ import annotations

import operator
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

import numpy as np

from lited.engines.base import (EngineError, InPlaceEngine, TensorSpec, bool_option, cpu_threads, int_option,
    read_model_file, str_option)
from lited.errors import first_line

OPTIONS = ("threads", "device", "streams", "pin", "static_shapes", "cache_dir", "precision", "f16_images")
PRECISIONS = ("f32", "f16", "bf16")  # INFERENCE_PRECISION_HINT's values that compute something
COMPILED_PER_SHAPE = 2  # compiled models kept for a dynamic-input model with static_shapes
TENSORS_KEPT = 24       # ov.Tensor wrappers kept (3 input sets, 3 output sets, a few outputs each)
BINDINGS = 9            # infer requests per compiled model: one per input set and output set of an engine process
_CORE = None


def import_openvino() -> ModuleType:
    """openvino, imported with its telemetry off (see the module's docstring)."""
    sys.modules.setdefault("openvino_telemetry", None)  # None: `import openvino_telemetry` raises ImportError
    import openvino
    return openvino


def _core():
    """One ov.Core per process (it holds the loaded plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


class _Binding:
    """One infer request and the arrays bound to it (held, so their memory stays)."""

    def __init__(self, request, inputs: int, outputs: int) -> None:
        self.request = request
        self.inputs: list = [None] * inputs
        self.outputs: list = [None] * outputs
        self.checked: list = [False] * outputs   # did the plugin write into outputs[i]?


class _Compiled:
    """A compiled model and its infer requests, one per set of arrays bound.

    Why several: an engine process's stream rotates over 3 input sets and 3
    output sets, and binding one request anew every frame cost 6 % of a
    PP-OCR classifier frame (OpenVINO, 1 thread: 1.26 against 1.17 ms of
    CPU). A request per pair of sets binds once. Each request costs the
    plugin's own output memory (1.6 MB for PP-OCRv4 det at 640x640), so at
    most `BINDINGS` are made; past that the least recently used one is bound
    to the new arrays, as the one request was before."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        outs = compiled.outputs
        self.static_out = [o.get_partial_shape().is_static and o.get_element_type().get_type_name() == "f32"
                           for o in outs]
        self.out_shapes = [tuple(o.get_shape()) if s else None for o, s in zip(outs, self.static_out)]
        self.own_out = [np.empty(s, np.float32) if s is not None else None for s in self.out_shapes]
        self.bindings: OrderedDict = OrderedDict()  # ids of the arrays bound -> _Binding

    def binding(self, key: tuple) -> tuple:
        """(the binding for `key`, whether it already has those arrays bound)."""
        found = self.bindings.get(key)
        if found is not None:
            self.bindings.move_to_end(key)
            return found, True
        if len(self.bindings) < BINDINGS:
            found = _Binding(self.compiled.create_infer_request(), len(self.compiled.inputs),
                             len(self.compiled.outputs))
        else:
            found = self.bindings.popitem(last=False)[1]
        self.bindings[key] = found
        return found, False


class OpenVinoEngine(InPlaceEngine):
    """One OpenVINO compiled model (and its infer requests). Use from one thread only."""

    kind = "openvino"
    options = OPTIONS
    backend = "openvino"
    package = "openvino"
    formats = (".onnx", ".xml")

    @classmethod
    def weights_suffix(cls, path: str) -> Optional[str]:
        return ".bin" if str(path).lower().endswith(".xml") else None  # an IR; an ONNX holds its weights

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        int_option(options, "streams", 1)
        for name in ("pin", "static_shapes", "f16_images"):
            bool_option(options, name, False)
        for name in ("device", "cache_dir"):
            str_option(options, name)
        str_option(options, "precision", PRECISIONS)

    def __init__(self, model_path: str, options: dict, checksums: Optional[dict] = None) -> None:
        ov = import_openvino()  # here, not at import: listing engines must stay cheap

        threads = self.threads_of(options)
        device = str(options.get("device", "CPU")).upper()
        self._ov = ov
        core = _core()
        present = core.available_devices
        base = device.split(":")[0].split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and not any(d.startswith(base) for d in present):
            raise EngineError(f"option 'device': {device!r} asked, but OpenVINO sees only {', '.join(present)}")
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if base == "CPU":
            config.update({"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": int_option(options, "streams", 1),
                           "ENABLE_CPU_PINNING": bool_option(options, "pin", False)})
        precision = options.get("precision") or ("f32" if base == "CPU" else None)  # see the module's docstring
        if precision:
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        if options.get("cache_dir"):
            config["CACHE_DIR"] = str(options["cache_dir"])
        self._config, self._device, self._model_path = config, device, str(model_path)
        # From memory: the bytes OpenVINO reads are the ones checked against the manifest.
        model_bytes = read_model_file(str(model_path), checksums)
        self._weights: Optional[np.ndarray] = None  # an IR's .bin, kept alive for the model made over it
        if str(model_path).lower().endswith(".xml"):
            weights = next((p for p in (checksums or {}) if p != str(model_path)),
                           str(Path(model_path).with_suffix(".bin")))
            self._weights = np.frombuffer(read_model_file(weights, checksums), np.uint8)
        try:
            if self._weights is not None:
                self._model = core.read_model(model_bytes, ov.Tensor(self._weights))
            else:
                self._model = core.read_model(model_bytes)
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{model_path}: OpenVINO refused the model: {_message(exc)}") from None
        if bool_option(options, "f16_images", True):
            self._model = _images_as_f16(ov, self._model)
        dynamic = any(i.get_partial_shape().is_dynamic for i in self._model.inputs)
        self._per_shape = dynamic and bool_option(options, "static_shapes", True)
        self._by_shape: OrderedDict = OrderedDict()
        self._tensors: dict = {}  # (pointer, shape, dtype) -> (ov.Tensor, the array it wraps)
        self._entry: Optional[_Compiled] = None if self._per_shape else self._compile(None)
        self.version = ov.__version__.split("-")[0]
        self.device = cpu_threads(device.lower(), threads) if base == "CPU" else device.lower()
        self.inputs = [TensorSpec(i.get_any_name(), tuple(d.get_length() if d.is_static else -1
                                                          for d in i.get_partial_shape()),
                                  np.dtype(i.get_element_type().to_dtype()).name) for i in self._model.inputs]
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        self.init_buffers([tuple(d.get_length() if d.is_static else -1 for d in o.get_partial_shape())
                           for o in self._model.outputs])

    def _compile(self, shapes: Optional[tuple]) -> _Compiled:
        model = self._model
        if shapes is not None:
            model = model.clone()
            model.reshape({i: self._ov.PartialShape(list(s)) for i, s in enumerate(shapes)})
        try:
            return _Compiled(_core().compile_model(model, self._device, self._config))
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self._model_path}: OpenVINO could not compile it for {self._device}: "
                              f"{_message(exc)}") from None

    def _select(self, shapes: tuple) -> _Compiled:
        if not self._per_shape:
            return self._entry  # type: ignore[return-value]
        entry = self._by_shape.get(shapes)
        if entry is None:
            entry = self._by_shape[shapes] = self._compile(shapes)
            while len(self._by_shape) > COMPILED_PER_SHAPE:
                self._by_shape.popitem(last=False)
        self._by_shape.move_to_end(shapes)
        return entry

    def _tensor(self, array: np.ndarray):
        """An ov.Tensor over `array`'s memory, kept for reuse (making one costs ~8 us)."""
        key = (array.ctypes.data, array.shape, array.dtype.str)
        hit = self._tensors.get(key)
        if hit is None:
            hit = self._tensors[key] = (self._ov.Tensor(array, shared_memory=True), array)
            while len(self._tensors) > TENSORS_KEPT:
                self._tensors.pop(next(iter(self._tensors)))
        return hit[0]

    def run_into(self, inputs: Sequence[np.ndarray], outputs: Optional[Sequence[Optional[np.ndarray]]] = None) -> list:
        """Read input i in place from `inputs[i]`; write output i in place into
        `outputs[i]` where the compiled output is static and `outputs[i]` has its
        shape (see Engine.run_into and, for why only there, the module docstring)."""
        try:  # binding checks shapes too: a wrong one is the backend's refusal, in one line
            arrays = self.bindable(inputs)
            entry = self._select(tuple(a.shape for a in arrays))
            targets = [None] * len(entry.static_out)
            for i, static in enumerate(entry.static_out):
                if not static:
                    continue  # never bind a dynamic output: see the module docstring
                target = outputs[i] if outputs is not None else None
                if target is None or target.shape != entry.out_shapes[i] or target.dtype != np.float32 \
                        or not target.flags.c_contiguous or not target.flags.writeable:
                    target = entry.own_out[i]
                targets[i] = target
            # The same array objects as a binding's: bound already (it holds them, so no
            # other array can have their ids meanwhile).
            bound, same = entry.binding((*map(id, arrays), *map(id, targets)))
            req = bound.request
            if not same:
                self._bind(bound, arrays, targets)
            req.infer()
        except EngineError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"openvino: {_message(exc)}") from None
        result = []
        for i, target in enumerate(targets):
            if target is not None:  # bound: a static output
                if not bound.checked[i]:  # once per binding: did the plugin write where we asked?
                    data = req.get_output_tensor(i).data
                    if not np.shares_memory(data, target):
                        np.copyto(target, data)
                        entry.static_out[i] = False  # it did not: from now on its own memory
                    bound.checked[i] = True
                result.append(target)
            else:
                data = req.get_output_tensor(i).data  # the plugin's memory, valid until the next run
                result.append(data if data.dtype == np.float32 else data.astype(np.float32))
        self.ran(arrays, result)
        return result

    def prepare(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Optional[Callable[[], None]]:
        """The infer request bound to exactly these arrays, as one call (see Engine.prepare):
        None unless every output is static and was seen written in place."""
        entry = self._by_shape.get(tuple(a.shape for a in inputs)) if self._per_shape else self._entry
        if entry is None or len(outputs) != len(entry.static_out) or not all(entry.static_out):
            return None
        bound = entry.bindings.get((*map(id, inputs), *map(id, outputs)))
        if bound is None or not all(bound.checked) or not all(map(operator.is_, bound.inputs, inputs)) \
                or not all(map(operator.is_, bound.outputs, outputs)):
            return None
        infer, request, arrays, ran = _native_infer(), bound.request, list(inputs), self.ran
        nothing: dict = {}

        def run_again() -> None:
            try:
                infer(request, nothing, True, False)  # inputs as bound, outputs shared (written in place)
            except Exception as exc:  # noqa: BLE001
                raise EngineError(f"openvino: {_message(exc)}") from None
            ran(arrays, outputs)
        return run_again

    def _bind(self, bound: _Binding, arrays: list, targets: list) -> None:
        """Bind `arrays` as the inputs and `targets` (None: left as they are) as
        the outputs of `bound`'s request, where it has other memory bound."""
        req = bound.request
        self.binds += 1
        for i, array in enumerate(arrays):
            old = bound.inputs[i]
            if old is None or old.ctypes.data != array.ctypes.data or old.shape != array.shape:
                req.set_input_tensor(i, self._tensor(array))
            bound.inputs[i] = array
        for i, target in enumerate(targets):
            if target is None:
                continue
            old = bound.outputs[i]
            if old is None or old.ctypes.data != target.ctypes.data:
                req.set_output_tensor(i, self._tensor(target))
                bound.checked[i] = False
            bound.outputs[i] = target

    def close(self) -> None:
        self._tensors.clear()
        self._by_shape.clear()
        self._entry = None
        self._model = None


def _images_as_f16(ov, model):
    """`model` taking each 4-D float32 input (an image: N, C, H, W or N, H, W, C) as
    float16, converted to float32 as the model's first step (see the module's docstring)."""
    from openvino.preprocess import PrePostProcessor
    images = [i for i, port in enumerate(model.inputs) if port.get_element_type() == ov.Type.f32
              and port.get_partial_shape().rank.is_static and port.get_partial_shape().rank.get_length() == 4]
    if not images:
        return model
    steps = PrePostProcessor(model)
    for i in images:
        steps.input(i).tensor().set_element_type(ov.Type.f16)
    return steps.build()


def _native_infer():
    """The native `InferRequest.infer(inputs: dict, share_outputs, decode_strings)` that the
    Python one wraps (see the module's docstring)."""
    from openvino._pyopenvino import InferRequest
    return InferRequest.infer


def _message(exc: BaseException) -> str:
    """OpenVINO's message on one line: its first lines only say where in its
    source it was raised ("Exception from src/...:84:", "Check '...' failed at ...")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return " ".join(said)[:300] if said else first_line(exc)
