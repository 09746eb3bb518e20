"""Paddle Lite engine: a MobileConfig predictor on a naive-buffer `.nb` file.

Facts that shaped it (paddlelite 2.13rc0):
- threads and power mode exist only on ARM builds of MobileConfig; the x86
  build's kernels size their OpenMP pool from `OMP_NUM_THREADS` when the
  library loads (unset: one thread per core, and every stream's engine
  process would make one), so `threads` reaches them through the
  environment (`process_env`, set by the engine process before its child
  imports paddlelite). Measured here, more OpenMP threads make x86 Paddle
  Lite no faster (the extra threads do almost no work): the default is 1;
- `Tensor.from_numpy` always copies, so inputs are staged in a preallocated
  float32 buffer and handed over once;
- an output's `numpy()` is a view valid only until the next `run()`, so
  outputs are copied into preallocated arrays right after `run()`;
- output names are like `save_infer_model/scale_0.tmp_0`: use indices;
- changing a dynamic input's shape on a live x86 predictor can corrupt its
  heap ("double free", segfault) when a side shrinks (seen with PP-OCR det:
  192x384 then 224x320), and gives silently wrong outputs when a side grows
  (PP-OCRv4 rec at another width). So the engine keeps one predictor per
  input shape (a small LRU, option `predictors`): a stream, whose shape never
  changes, builds one; `lited infer` on photos of several sizes pays ~35 ms
  per new shape. Each predictor holds its activations, sized to its shape,
  which can be large on x86 (PP-OCRv4 rec: process RSS ~310 MB at width
  320, ~750 MB at 640, ~1.2 GB at 960); an evicted predictor's memory is
  returned, so `predictors: 1` bounds a model to its largest shape.
"""
from __future__ import annotations

import os
import re
import struct
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lited.engines.base import Engine, EngineError, TensorSpec, cpu_threads, int_option, read_model_file, str_option
from lited.files import MAX_MODEL_BYTES, open_regular

# Paddle Lite naive buffer: uint16 meta version, char[16] opt version, uint64
# topology size, the topology (ops with kernel keys "op/alias/target/precision/
# layout"), then the weights. Target numbers are Paddle Lite's TargetType.
NB_HEADER = struct.Struct("<H16sQ")
NB_KERNEL_RE = re.compile(rb"[a-z0-9_]+/[A-Za-z0-9_]+/(\d+)/\d+/\d+\x00")
NB_TARGETS = {1: "host", 2: "x86", 4: "arm", 5: "opencl", 6: "any"}
NB_PORTABLE = {"host", "any"}

PREDICTORS_PER_SHAPE = 2  # predictors kept for a dynamic-shape model (option `predictors`)

POWER_MODES = ("LITE_POWER_HIGH", "LITE_POWER_LOW", "LITE_POWER_FULL", "LITE_POWER_NO_BIND",
               "LITE_POWER_RAND_HIGH", "LITE_POWER_RAND_LOW")


class PaddleLiteEngine(Engine):
    """One Paddle Lite predictor. Use from one thread only."""

    kind = "paddle_lite"
    options = ("threads", "power_mode", "predictors")
    backend = "paddlelite"
    package = "paddlelite"
    formats = (".nb",)

    @classmethod
    def file_info(cls, path: Path) -> dict:
        """The `.nb`'s Paddle Lite `version` and its kernels' `targets` (read_nb_header)."""
        return read_nb_header(path)

    @classmethod
    def file_problem(cls, path: Path, target: str, listed_as: str) -> Optional[str]:
        """A truncated `.nb` (Paddle Lite aborts the whole process on a short read), or one
        holding another machine's kernels (an arm `.nb` on x86 crashes inside run())."""
        try:
            info = read_nb_header(path)
        except ValueError as exc:
            return str(exc)
        foreign = info["targets"] - NB_PORTABLE - {target} - ({"arm"} if target == "opencl" else set())
        return f"holds {', '.join(sorted(foreign))} kernels but is listed as {listed_as}" if foreign else None

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        str_option(options, "power_mode", POWER_MODES)
        int_option(options, "predictors", PREDICTORS_PER_SHAPE)

    @classmethod
    def process_env(cls, options: dict) -> dict:
        """`OMP_NUM_THREADS` = `threads` (default 1): what the x86 build's kernels follow."""
        return {"OMP_NUM_THREADS": str(int(options.get("threads") or 1))}

    def __init__(self, model_path: str, options: dict, checksums: dict | None = None) -> None:
        if "paddlelite.lite" not in sys.modules:  # in this process (lited infer): before the library loads
            for key, value in self.process_env(options).items():
                if options.get("threads") or key not in os.environ:  # else the operator's own setting
                    os.environ[key] = value
        self.check_options(options)
        from paddlelite import lite  # here, not at import: the registry lists engines without loading them

        self._lite = lite
        config = lite.MobileConfig()
        # From memory, not from the file: the bytes loaded (now, and for every
        # predictor built later for a new input shape) are the bytes checked.
        config.set_model_from_buffer(read_model_file(str(model_path), checksums))
        threads = options.get("threads")
        if threads and hasattr(config, "set_threads"):
            config.set_threads(int(threads))
        power = options.get("power_mode")
        if power and hasattr(config, "set_power_mode"):
            config.set_power_mode(getattr(lite.PowerMode, power))
        self._config = config
        self._model_path = str(model_path)
        self._keep = options.get("predictors", PREDICTORS_PER_SHAPE)
        self.image_input = 0  # the input whose shape may change (the model sets it from the bundle)
        self._by_shape: OrderedDict = OrderedDict()
        self._use(self._build(), None)
        self.version = self._predictor.get_version()
        omp = os.environ.get("OMP_NUM_THREADS")
        shown = threads if hasattr(config, "set_threads") else omp
        self.device = cpu_threads("cpu", shown) if shown else "cpu"
        self.inputs = [TensorSpec(n, tuple(t.shape())) for n, t in zip(self._predictor.get_input_names(), self._inputs)]
        self.output_names = list(self._predictor.get_output_names())
        self._out: list[np.ndarray | None] = [None] * len(self._outputs)

    def _build(self) -> tuple:
        try:
            predictor = self._lite.create_paddle_predictor(self._config)
        except Exception as exc:  # Paddle Lite raises RuntimeError with a C++ message
            raise EngineError(f"{self._model_path}: Paddle Lite refused the model: {exc}") from None
        inputs = [predictor.get_input(i) for i in range(len(predictor.get_input_names()))]
        outputs = [predictor.get_output(i) for i in range(len(predictor.get_output_names()))]
        return predictor, inputs, outputs

    def _use(self, entry: tuple, shape: tuple | None) -> None:
        self._predictor, self._inputs, self._outputs = entry
        self._shape = shape
        if shape is not None:
            self._by_shape[shape] = entry
            self._by_shape.move_to_end(shape)
            while len(self._by_shape) > self._keep:
                self._by_shape.popitem(last=False)

    def _select(self, index: int, shape: tuple) -> None:
        """Switch to the predictor for this image shape (built on first use)."""
        if index == self.image_input and shape != self._shape:
            if self._shape is None:
                self._use((self._predictor, self._inputs, self._outputs), shape)
            else:
                cached = self._by_shape.get(shape)
                self._use(cached or self._build(), shape)

    def set_input(self, index: int, array: np.ndarray) -> None:
        """Hand a float32 C-contiguous array to input `index` (Paddle Lite copies it)."""
        self._select(index, array.shape)
        self._inputs[index].from_numpy(array)

    def input_view(self, index: int, shape: tuple) -> np.ndarray:
        """A writable view of input `index`'s own buffer inside Paddle Lite, of
        `shape`: preprocessing can write there and skip `from_numpy`'s copy.
        (`Tensor.numpy()` of an input is a view of the tensor's memory, stable
        while its shape stays.) Valid until the next call with another shape."""
        self._select(index, tuple(shape))
        tensor = self._inputs[index]
        if tuple(tensor.shape()) != tuple(shape):
            tensor.from_numpy(np.zeros(shape, np.float32))  # sizes the tensor once
        return tensor.numpy()

    def run(self) -> list:
        """Run once; outputs are copied into arrays reused across calls."""
        return self.run_into([])

    def run_into(self, inputs: Sequence[np.ndarray],
                 outputs: Optional[Sequence[Optional[np.ndarray]]] = None) -> list:
        """Engine.run_into with one copy of each output: from Paddle Lite's tensor
        (float32) straight into `outputs[i]` where that fits, else into an array
        of the engine's own, reused across calls (the fallback copied it twice)."""
        for i, array in enumerate(inputs):
            self.set_input(i, array)
        self._predictor.run()
        result = []
        for i, tensor in enumerate(self._outputs):
            view = tensor.numpy()
            out = outputs[i] if outputs is not None and i < len(outputs) else None
            if out is None or out.shape != view.shape or out.dtype != np.float32:
                out = self._out[i]
                if out is None or out.shape != view.shape:
                    out = self._out[i] = np.empty(view.shape, np.float32)
            np.copyto(out, view)
            result.append(out)
        return result

    def input_shapes(self) -> list:
        """Input shapes as of the last `set_input` (dynamic sides are -1 before)."""
        return [tuple(t.shape()) for t in self._inputs]

    def output_shapes(self) -> list:
        """Output shapes as of the last run (Paddle Lite knows them only after one)."""
        return [tuple(t.shape()) for t in self._outputs]


def read_nb_header(path: Path) -> dict:
    """Version and kernel targets of a Paddle Lite `.nb`, read from its header
    and topology (the weights are only walked). Raises ValueError if truncated."""
    with open_regular(path, MAX_MODEL_BYTES) as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(NB_HEADER.size)
        if len(head) < NB_HEADER.size:
            raise ValueError(f"{size} bytes, too small for a Paddle Lite model (truncated)")
        meta, version, topo_size = NB_HEADER.unpack(head)
        if meta != 2 or not version.startswith(b"v"):
            raise ValueError("not a Paddle Lite naive-buffer model (bad header)")
        if topo_size > size - NB_HEADER.size:
            raise ValueError(f"{size} bytes, shorter than its own header says (truncated)")
        topology = fh.read(topo_size)
        _walk_nb_weights(fh, size)
    targets = {NB_TARGETS.get(int(m.group(1)), f"target#{m.group(1)}") for m in NB_KERNEL_RE.finditer(topology)}
    return {"version": version.split(b"\0")[0].decode("ascii", "replace"), "targets": targets}


def _walk_nb_weights(fh, size: int) -> None:
    """Skip through the weights after the topology as Paddle Lite reads them
    (lite/model_parser/flatbuffers/io.cc): uint16 version 0, uint16 meta size
    and the meta, uint16 header size and the header (uint16 count, ...), then
    per weight uint32 total size, uint32 offset (4) and total - 4 bytes.
    Paddle Lite aborts the whole process on a short read: refuse it here."""
    def take(fmt: str) -> tuple:
        data = fh.read(struct.calcsize(fmt))
        if len(data) < struct.calcsize(fmt):
            raise ValueError(f"{size} bytes, its weights end early (truncated)")
        return struct.unpack(fmt, data)

    version, meta_size = take("<HH")
    fh.seek(meta_size, 1)
    header_size, = take("<H")
    if version != 0 or header_size < 2:
        raise ValueError("not a Paddle Lite naive-buffer model (bad weights header)")
    count, = take("<H")
    fh.seek(header_size - 2, 1)
    for _ in range(count):
        total, offset = take("<II")
        if offset < 4 or total < offset:
            raise ValueError("not a Paddle Lite naive-buffer model (bad weights header)")
        fh.seek(total - 4, 1)
    if fh.tell() > size:
        raise ValueError(f"{size} bytes, its weights end early (truncated)")
