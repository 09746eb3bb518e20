"""Paddle Inference engine: an AnalysisConfig predictor on `model.pdmodel` +
`model.pdiparams` (same stem, side by side).

It is the GPU path on Jetson boards (Paddle Lite has no CUDA), optionally
through TensorRT; on CPU it serves as a reference and a fallback.

Facts that shaped it (paddlepaddle 2.6.2, x86_64 CPU build):
- `import paddle` takes ~2.4 s and ~290 MB RSS and pulls in cv2, PIL and
  httpx, so only this module imports it; it also installs C-level handlers
  for SIGTERM, SIGSEGV, SIGABRT, SIGBUS, SIGFPE and SIGILL that replace the
  process's own (a daemon's SIGTERM handler never runs: paddle prints a C++
  "FatalError" and dies), so the previous handlers are put back;
- oneDNN (`mkldnn`) is on by default on x86 and 2-4x faster, but its `pad`
  kernel segfaults (or hangs in paddle's crash handler) on FastestDet, and
  its `elementwise_act_onednn_fuse_pass` gets MobileNetV2 and the PP-OCR
  classifier wrong (logits off by 40): off unless asked for, and when asked,
  without those (MKLDNN_BROKEN_OPS, MKLDNN_BROKEN_PASSES);
- `enable_memory_optim` halves the RSS of PP-OCRv4 det at 384x640 (765 ->
  383 MB) with bit-identical outputs: always on;
- the predictor reports no input shape before it gets an input: the shapes
  come from the program's variables (-1 marks a dynamic dimension);
- `copy_to_cpu` allocates a new array on every call. `share_external_data`
  with a zero-copy `paddle.Tensor` lets the predictor read inputs from, and
  write outputs into, arrays this engine owns (CPU only). An op could still
  swap an output's buffer for its own, so the run after an output is shared
  checks that the result landed in ours and falls back to copying if not;
- asked for the GPU, a CPU-only build silently runs on the CPU: checked here.
"""
from __future__ import annotations

import ctypes
import signal
from pathlib import Path

import numpy as np

from lited.engines.base import (Engine, EngineError, TensorSpec, bool_option, check_known, cpu_threads,
    int_option, read_model_file)
from lited.errors import first_line

_PADDLE_SIGNALS = (signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)


def _import_paddle():
    """`import paddle`, then give the process back the signal handlers it had.

    Restored at C level (sigaction), so it works from any thread and keeps
    Python handlers and faulthandler alike."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigaction.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    saved = {}
    for sig in _PADDLE_SIGNALS:
        action = ctypes.create_string_buffer(256)  # opaque struct sigaction (152 bytes on glibc)
        if libc.sigaction(int(sig), None, action) == 0:
            saved[sig] = action
    import paddle
    import paddle.inference  # noqa: F401
    for sig, action in saved.items():
        libc.sigaction(int(sig), action, None)
    return paddle


paddle = pi = core = None  # set by _load(): importing paddle costs seconds, so only an engine in use does
DTYPES: dict = {}
TRT_PRECISIONS = ("fp32", "fp16", "int8")
OPTIONS = ("threads", "mkldnn", "device", "device_id", "gpu_mem_mb", "trt")
GPU_OPTIONS = ("device_id", "gpu_mem_mb", "trt")
TRT_OPTIONS = ("precision", "workspace_mb", "shapes", "cache_dir")
# oneDNN in paddlepaddle 2.6.2: a kernel that crashes, a fuse pass that computes wrong results
MKLDNN_BROKEN_OPS = frozenset({"pad"})
MKLDNN_BROKEN_PASSES = ("elementwise_act_onednn_fuse_pass",)


def _load() -> None:
    """Import paddle once, with the process's signal handlers kept."""
    global paddle, pi, core
    if paddle is not None:
        return
    paddle = _import_paddle()
    from paddle import inference as pi
    from paddle.base import core
    vt = core.VarDesc.VarType
    DTYPES.update({vt.FP32: "float32", vt.FP16: "float16", vt.FP64: "float64", vt.INT64: "int64",
                   vt.INT32: "int32", vt.INT8: "int8", vt.UINT8: "uint8", vt.BOOL: "bool"})


def _precision(name: str):
    return {"fp32": pi.PrecisionType.Float32, "fp16": pi.PrecisionType.Half, "int8": pi.PrecisionType.Int8}[name]


class PaddleInferenceEngine(Engine):
    """One Paddle Inference predictor. Use from one thread only."""

    kind = "paddle_inference"
    options = OPTIONS
    backend = "paddle"
    package = "paddlepaddle"
    formats = (".pdmodel",)

    @classmethod
    def weights_suffix(cls, path: str) -> Optional[str]:
        return ".pdiparams"

    @classmethod
    def check_options(cls, options: dict) -> None:
        super().check_options(options)
        _check_options(options)

    def __init__(self, model_path: str, options: dict, checksums: dict | None = None) -> None:
        model = Path(model_path)
        params = model.with_suffix(".pdiparams")
        for path in (model, params):
            if not path.is_file():
                raise EngineError(f"{path}: missing (Paddle Inference needs {model.stem}.pdmodel and "
                                  f"{model.stem}.pdiparams side by side)")
        self.check_options(options)
        _load()
        # Loaded from memory: the bytes the predictor gets are the ones checked against the manifest.
        program, weights = read_model_file(str(model), checksums), read_model_file(str(params), checksums)
        try:
            specs, op_types = _read_program(program)
        except Exception as exc:  # noqa: BLE001 - paddle raises ValueError/RuntimeError with C++ text
            raise EngineError(f"{model}: Paddle Inference refused the model: {first_line(exc)}") from None
        config = pi.Config()
        config.set_model_buffer(program, len(program), weights, len(weights))
        del program, weights
        config.disable_glog_info()
        config.enable_memory_optim()
        config.set_cpu_math_library_num_threads(int(options.get("threads", 1)))
        if options.get("mkldnn", False):
            config.enable_mkldnn()
            if op_types & MKLDNN_BROKEN_OPS:
                config.set_mkldnn_op(set(op_types - MKLDNN_BROKEN_OPS))  # the ops allowed oneDNN kernels
            for name in MKLDNN_BROKEN_PASSES:
                config.delete_pass(name)
        else:
            config.disable_mkldnn()
        self._zero_copy = options.get("device", "cpu") == "cpu"
        if not self._zero_copy:
            _use_gpu(config, options, specs)
        try:
            self._predictor = pi.create_predictor(config)
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{model}: Paddle Inference refused the model: {first_line(exc)}") from None
        self.version = paddle.__version__
        self.device = cpu_threads("cpu", int(options.get("threads", 1))) if self._zero_copy else \
            f"gpu:{options.get('device_id', 0)}" + (
            f" tensorrt {options['trt'].get('precision', 'fp32')}" if options.get("trt") else "")
        names = self._predictor.get_input_names()
        self.inputs = [specs[n] for n in names]
        self._in = [self._predictor.get_input_handle(n) for n in names]
        self.output_names = list(self._predictor.get_output_names())
        self._out_handles = [self._predictor.get_output_handle(n) for n in self.output_names]
        count = len(self.output_names)
        self._out: list[np.ndarray | None] = [None] * count
        # "new": no array yet; "check": shared, verify after the next run; "shared"; "copy"
        self._out_state = ["new" if self._zero_copy else "copy"] * count
        # zero-copy tensors over our arrays: the predictor holds raw pointers, these hold the memory
        self._in_alias: list = [None] * len(names)
        self._out_alias: list = [None] * count
        self._in_buf: list[np.ndarray | None] = [None] * len(names)
        if self._zero_copy:
            for i, spec in enumerate(self.inputs):
                if -1 not in spec.shape:
                    self._bind_input(i, spec.shape)

    def set_input(self, index: int, array: np.ndarray) -> None:
        """Copy `array` into input `index` (into the buffer the predictor reads, on CPU)."""
        if not self._zero_copy:
            self._in[index].copy_from_cpu(array)
            return
        buf = self._in_buf[index]
        if buf is None or buf.shape != array.shape:
            buf = self._bind_input(index, array.shape)
        np.copyto(buf, array)

    def input_view(self, index: int, shape: tuple) -> np.ndarray | None:
        """The buffer the predictor reads input `index` from (CPU), for
        preprocessing to write into directly; None on GPU (use set_input)."""
        if not self._zero_copy:
            return None
        buf = self._in_buf[index]
        if buf is None or buf.shape != tuple(shape):
            buf = self._bind_input(index, tuple(shape))
        return buf

    def run(self) -> list:
        """Run once; outputs land in arrays reused across calls: written there by
        the predictor on CPU, else copied from `copy_to_cpu` (which allocates)."""
        for i, state in enumerate(self._out_state):
            if state == "check":
                self._out[i].fill(np.nan)  # type: ignore[union-attr]  # tells "written" from "left alone"
        self._predictor.run()
        for i, handle in enumerate(self._out_handles):
            out, state = self._out[i], self._out_state[i]
            same = out is not None and out.shape == tuple(handle.shape())
            if state == "shared" and same:
                continue  # the predictor wrote into `out`
            fresh = handle.copy_to_cpu()
            if state == "check" and same:
                if np.array_equal(out, fresh, equal_nan=True):
                    self._out_state[i] = "shared"
                    continue
                self._out_state[i] = state = "copy"  # an op swapped in its own buffer (oneDNN)
            if state == "copy" and same:
                np.copyto(out, fresh)  # type: ignore[arg-type]
                continue
            self._out[i] = fresh  # first run or a new shape: adopt it, and let the predictor write into it
            if state != "copy" and fresh.dtype == np.float32:
                self._out_alias[i] = _alias(fresh)
                handle.share_external_data(self._out_alias[i])
                self._out_state[i] = "check"
            else:
                self._out_state[i] = "copy"
        return self._out  # type: ignore[return-value]

    def input_shapes(self) -> list:
        """Input shapes as of the last `set_input` (the model's, -1 for dynamic, before)."""
        return [buf.shape if buf is not None else spec.shape for buf, spec in zip(self._in_buf, self.inputs)]

    def output_shapes(self) -> list:
        """Output shapes as of the last run."""
        return [tuple(h.shape()) for h in self._out_handles]

    def _bind_input(self, index: int, shape: tuple) -> np.ndarray:
        """A new buffer that input `index` reads from (a new input shape)."""
        buf = np.empty(shape, self.inputs[index].dtype)
        self._in_alias[index] = _alias(buf)
        self._in[index].share_external_data(self._in_alias[index])
        self._in_buf[index] = buf
        return buf


def _alias(array: np.ndarray):
    """A CPU paddle.Tensor over `array`'s memory (no copy; it keeps `array` alive)."""
    return paddle.Tensor(value=array, place=paddle.CPUPlace(), zero_copy=True)


def _read_program(data: bytes) -> tuple:
    """Input name -> TensorSpec (from the `feed` ops' variables), and the op types used."""
    program = core.ProgramDesc(data)
    block = program.block(0)  # a view into `program`: keep that alive while reading
    specs, op_types = {}, set()
    for i in range(block.op_size()):
        op = block.op(i)
        op_types.add(op.type())
        if op.type() == "feed":
            name = op.output("Out")[0]
            var = block.find_var(name.encode())
            specs[name] = TensorSpec(name, tuple(var.shape()), DTYPES.get(var.dtype(), str(var.dtype())))
    return specs, frozenset(op_types - {"feed", "fetch"})


def _check_options(options: dict) -> None:
    """Refuse ill-typed options (beyond the base's names and threads), naming them, before anything
    is built."""
    int_option(options, "gpu_mem_mb", 1)
    int_option(options, "device_id", 0, minimum=0)
    bool_option(options, "mkldnn", False)
    device = options.get("device", "cpu")
    if device not in ("cpu", "gpu"):
        raise EngineError(f"option 'device': unknown {device!r}, expected 'cpu' or 'gpu'")
    if device == "cpu":
        given = [k for k in GPU_OPTIONS if k in options]
        if given:
            raise EngineError(f"option '{given[0]}': needs \"device\": \"gpu\"")
    trt = options.get("trt")
    if trt is None:
        return
    if not isinstance(trt, dict):
        raise EngineError(f"option 'trt': expected an object, got {trt!r}")
    check_known("paddle_inference", trt, TRT_OPTIONS, "trt.")
    if trt.get("precision", "fp32") not in TRT_PRECISIONS:
        raise EngineError(f"option 'trt.precision': unknown {trt['precision']!r}, expected one of "
                          f"{', '.join(TRT_PRECISIONS)}")
    if "workspace_mb" in trt:
        int_option({"trt.workspace_mb": trt["workspace_mb"]}, "trt.workspace_mb", 1)
    if not isinstance(trt.get("cache_dir", ""), str):
        raise EngineError(f"option 'trt.cache_dir': expected a path, got {trt['cache_dir']!r}")
    shapes = trt.get("shapes", {})
    if not isinstance(shapes, dict):
        raise EngineError(f"option 'trt.shapes': expected an object (input name -> min/opt/max), got {shapes!r}")
    for name, ranges in shapes.items():
        path = f"trt.shapes.{name}"
        if not isinstance(ranges, dict):
            raise EngineError(f"option '{path}': expected {{\"min\": [...], \"opt\": [...], \"max\": [...]}}")
        check_known("paddle_inference", ranges, ("min", "opt", "max"), path + ".")
        dims = [ranges.get(k) for k in ("min", "opt", "max")]
        if not all(isinstance(d, list) and d and all(isinstance(n, int) and n > 0 for n in d) for d in dims) \
                or len({len(d) for d in dims}) != 1:
            raise EngineError(f"option '{path}': min, opt and max must be shapes of the same rank (positive ints)")
        if not all(a <= b <= c for a, b, c in zip(*dims)):
            raise EngineError(f"option '{path}': expected min <= opt <= max in every dimension")


def _use_gpu(config, options: dict, specs: dict) -> None:
    """GPU, and TensorRT if `trt` is given. TensorRT builds its engines on the first
    run of each shape range (minutes on a Jetson); with `trt.cache_dir` they are
    serialized there and reused by the next start. `int8` needs a model that
    carries its quantization scales (exported quantized): no calibration here."""
    if not paddle.device.is_compiled_with_cuda():
        raise EngineError("option 'device': 'gpu' asked, but this paddlepaddle build has no CUDA "
                          "(install paddlepaddle-gpu, or the Jetson wheel)")
    visible = paddle.device.cuda.device_count()
    device_id = int(options.get("device_id", 0))
    if device_id >= visible:
        raise EngineError(f"option 'device_id': {device_id}, but {visible} CUDA device(s) are visible")
    config.enable_use_gpu(int(options.get("gpu_mem_mb", 256)), device_id)
    trt = options.get("trt")
    if trt is None:
        return
    if tuple(pi.get_trt_compile_version()) == (0, 0, 0):
        raise EngineError("option 'trt': this paddlepaddle build has no TensorRT")
    shapes = trt.get("shapes", {})
    for name in shapes:
        if name not in specs:
            raise EngineError(f"option 'trt.shapes.{name}': no such input, expected one of {', '.join(specs)}")
    for name, spec in specs.items():
        if -1 in spec.shape and name not in shapes:
            raise EngineError(f"option 'trt.shapes': input '{name}' is dynamic {list(spec.shape)}: "
                              "give its min, opt and max shapes")
    cache_dir = trt.get("cache_dir")
    config.enable_tensorrt_engine(workspace_size=int(trt.get("workspace_mb", 256)) << 20, max_batch_size=1,
                                  min_subgraph_size=3, precision_mode=_precision(trt.get("precision", "fp32")),
                                  use_static=bool(cache_dir), use_calib_mode=False)
    if shapes:
        config.set_trt_dynamic_shape_info({n: r["min"] for n, r in shapes.items()},
                                          {n: r["max"] for n, r in shapes.items()},
                                          {n: r["opt"] for n, r in shapes.items()})
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        config.set_optim_cache_dir(str(cache_dir))


