"""The engine interface: what every backend (one file in this package) is.

    engine = open_engine(kind, model_path, options, checksums)
                                     # checksums: {file path: sha256} of the bundle's manifest; the
                                     # engine loads the very bytes it hashed (read_model_file)
    engine.inputs                    # [TensorSpec(name, shape, dtype)], shape as the model reports it
    engine.set_input(i, array)       # float32, C-contiguous; one copy into the backend
    engine.input_view(i, shape)      # or: a writable view of the backend's own input buffer
                                     # (None if it has none): write the input there, no copy
    outputs = engine.run()           # list of arrays owned by the engine (float32; an integer
                                     # output may keep its own dtype: a PaddleDetection row count),
                                     # valid until the next run() (copied out of the backend)
    outputs = engine.run_into(inputs, outputs)  # or: read these arrays, write into those
                                     # (in place where the backend can bind memory: `zero_copy`)
    call = engine.prepare(inputs, outputs)  # after that run: the same run again, as one call
                                     # without run_into's checks (None where the engine has none)
    engine.version                   # backend version string
    engine.device                    # where it runs, for humans: "cpu", "gpu:0 tensorrt fp16"
    engine.close()                   # free it now

An engine instance is used from one thread only: Paddle Lite predictors must
not be shared across threads. Streams run theirs in a child process
(lited.engine_process.EngineProcess: the same interface, with several input
and output sets so runs can queue, plus submit/collect and restart),
because paddlelite's `run()` holds the GIL.
"""
from __future__ import annotations

import hashlib
import importlib.util
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Sequence

import numpy as np

from lited.files import MAX_MODEL_BYTES, FileRefused, read_capped


MAX_THREADS = 256  # an engine's threads, wherever they are set (bundle, config, --threads)


def cpu_threads(device: str, threads: object) -> str:
    """`engine.device` on a CPU, as status shows it for every engine: "cpu, 2 threads"."""
    return f"{device}, {threads} thread{'s' if str(threads) != '1' else ''}"


class EngineError(Exception):
    """The backend is missing, refused the model, or failed while running it."""


def read_model_file(path: str, checksums: Optional[dict]) -> bytes:
    """The bytes of model file `path`, read once, for the backend to load
    from memory. The bundle's sha256 was checked when it was loaded, but the
    file may have been replaced since (an upgrade, an attacker): if
    `checksums` names `path`, the bytes handed over must have that digest."""
    try:
        data = read_capped(path, MAX_MODEL_BYTES)
    except FileRefused as exc:
        raise EngineError(str(exc)) from None
    except OSError as exc:
        raise EngineError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    expected = (checksums or {}).get(str(path))
    if expected and hashlib.sha256(data).hexdigest() != expected.lower():
        raise EngineError(f"{path}: sha256 differs from the manifest's: the file changed after the bundle was "
                          "checked; refusing to load it (reload the bundle)")
    return data


@dataclass(frozen=True)
class TensorSpec:
    """A model input as the engine declares it (-1 for a dynamic side)."""
    name: str
    shape: tuple
    dtype: str = "float32"


class Engine:
    """One backend running one model file. Subclasses set `kind` (the name
    a manifest's `engine`/`engines` and a config's `engine` use), `backend`
    (the module they import, lazily, in `__init__`), `package` (what
    provides it) and `formats` (the model files they read)."""

    kind: ClassVar[str] = ""
    backend: ClassVar[str] = ""   # the module it imports
    package: ClassVar[str] = ""   # what provides that module (pip name), for "not installed" messages
    input_sets: ClassVar[int] = 1  # inputs that can be filled while another set runs (EngineProcess: 3)
    formats: ClassVar[tuple] = ()  # model file suffixes it runs (".nb", ".onnx"): which bundle files it can take
    options: ClassVar[tuple] = ("threads",)  # the option names it takes (a manifest's or config's others are refused)
    zero_copy: ClassVar[bool] = False  # run_into reads inputs and writes outputs in place (no fallback copies)

    inputs: List[TensorSpec]
    output_names: List[str]
    version: str = ""
    device: str = "cpu"
    image_input: int = 0  # the input whose shape may change with the image (set from the bundle)
    pid: Optional[int] = None  # the process running it, when not this one (EngineProcess)
    binds: int = 0  # times memory was bound to the backend for a run (a zero-copy engine's steady state adds none)

    @classmethod
    def available(cls) -> bool:
        """Is the backend installed here (without importing it)?"""
        return not cls.backend or importlib.util.find_spec(cls.backend) is not None

    @classmethod
    def can_run(cls, path: str) -> bool:
        """Does this engine read a model file named like `path`?"""
        return str(path).lower().endswith(cls.formats) if cls.formats else False

    @classmethod
    def weights_suffix(cls, path: str) -> Optional[str]:
        """The suffix of the weights file a model file named like `path` needs beside it,
        under its stem (Paddle Inference's `.pdiparams`, an OpenVINO IR's `.bin`); None if none."""
        return None

    @classmethod
    def file_info(cls, path: Path) -> dict:
        """What the model file says of itself, read without loading it (Paddle Lite's `.nb`:
        its `version` and its kernels' `targets`); {} where the engine reads nothing there.
        ValueError if the file is not one this engine can read (truncated, another format)."""
        return {}

    @classmethod
    def file_problem(cls, path: Path, target: str, listed_as: str) -> Optional[str]:
        """Why the model file cannot run as target `target` (where the bundle lists it: `listed_as`,
        for the message), from the file itself, before any run; None if nothing is wrong."""
        return None

    @classmethod
    def check_options(cls, options: dict) -> None:
        """EngineError naming the first option this engine has not, or whose
        value it cannot take. The bundle check runs it for every engine a file
        lists (a bad value for the engine a board falls back to was found only
        there), and the engine when it opens. Subclasses add their options'."""
        check_known(cls.kind, options, cls.options)
        int_option(options, "threads", 1, maximum=MAX_THREADS)

    @classmethod
    def process_env(cls, options: dict) -> Dict[str, str]:
        """Environment a process must have before the backend loads, for these
        options (a backend that reads its thread count only from the
        environment). The engine process sets it in its child."""
        return {}

    def set_input(self, index: int, array: np.ndarray) -> None:
        raise NotImplementedError

    def input_view(self, index: int, shape: tuple) -> Optional[np.ndarray]:
        """A writable view of the backend's own buffer for input `index`, or
        None when it has none (then use `set_input`)."""
        return None

    def run(self) -> list:
        raise NotImplementedError

    def run_into(self, inputs: Sequence[np.ndarray],
                 outputs: Optional[Sequence[Optional[np.ndarray]]] = None) -> list:
        """Run on `inputs` (one array per input, left alone until this returns),
        writing output i into `outputs[i]` where that has the shape and dtype
        this run produces. Returns the outputs: `outputs[i]` itself where it
        was written, else the engine's own array, valid until the next run.

        Engines with `zero_copy` read the inputs and write the outputs in
        place; this fallback copies both ways (set_input, run, copyto)."""
        for i, array in enumerate(inputs):
            self.set_input(i, array)
        result = list(self.run())
        if outputs is not None:
            for i, (out, got) in enumerate(zip(outputs, result)):
                if out is not None and out.shape == got.shape and out.dtype == got.dtype:
                    np.copyto(out, got)
                    result[i] = out
        return result

    def prepare(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> Optional[Callable[[], None]]:
        """After `run_into(inputs, ...)` returned `outputs`, every one written in
        place: a call that runs again on those very arrays, without run_into's
        checks, lookups and bookkeeping (for the OpenVINO classifier they cost
        as much as 4 % of a 0.5 ms run). For callers that run the same arrays
        over and over: the engine process's steady runs, `run()`. Valid while
        `binds` stays as it was. None where the engine has no such call. When
        the call raises EngineError, callers run that run through run_into."""
        return None

    def input_shapes(self) -> list:
        """Input shapes as the backend has them now."""
        raise NotImplementedError

    def output_shapes(self) -> list:
        """Output shapes as of the last run."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the backend now rather than at garbage collection."""


class InPlaceEngine(Engine):
    """An engine whose backend reads inputs and writes outputs where it is told
    (`run_into` binds the caller's memory). `set_input`, `input_view` and
    `run` work on buffers of its own, bound the same way. Subclasses call
    `init_buffers()` once `inputs` is known and implement `run_into`."""

    zero_copy = True

    def threads_of(self, options: dict) -> int:
        """Refuse options this engine has not or cannot take; its `threads` (default 1)."""
        self.check_options(options)
        return int(options.get("threads", 1))

    def init_buffers(self, output_shapes: list) -> None:
        """Once `inputs` is known; `output_shapes`: the model's (-1 where dynamic)."""
        self._in_dtypes = [np.dtype(s.dtype) for s in self.inputs]
        self._in_buf: list = [None] * len(self.inputs)
        self._in_last: list = [None] * len(self.inputs)  # the arrays the last run read
        self._out_last = list(output_shapes)
        self._again: Optional[tuple] = None  # run()'s last run as (binds, its prepared call, in_buf, outputs)

    def ran(self, inputs: list, outputs: list) -> None:
        """Note a run's inputs and outputs (for `input_shapes`, `output_shapes`)."""
        self._in_last = inputs
        self._out_last = [o.shape for o in outputs]

    def input_shapes(self) -> list:
        """Input shapes of the last run (the model's, -1 for dynamic, before)."""
        return [a.shape if a is not None else s.shape for a, s in zip(self._in_last, self.inputs)]

    def output_shapes(self) -> list:
        """Output shapes of the last run."""
        return list(self._out_last)

    def set_input(self, index: int, array: np.ndarray) -> None:
        """Copy `array` into input `index`'s buffer (the one the backend reads in place)."""
        np.copyto(self.input_view(index, array.shape), array, casting="same_kind")

    def input_view(self, index: int, shape: tuple) -> np.ndarray:
        """The buffer the backend reads input `index` from: write the input there, no copy."""
        shape = tuple(int(s) for s in shape)
        buf = self._in_buf[index]
        if buf is None or buf.shape != shape:
            buf = self._in_buf[index] = np.zeros(shape, self._in_dtypes[index])
        return buf

    def run(self) -> list:
        """Run on the engine's own input buffers; outputs valid until the next run.
        Again on the same buffers, the engine's prepared call (`prepare`) runs it."""
        again = self._again
        if again is not None and again[0] == self.binds and all(map(operator.is_, again[2], self._in_buf)):
            try:
                again[1]()
                return list(again[3])
            except EngineError:  # run_into's way says it better, or runs where that call cannot
                self._again = None
        for i, buf in enumerate(self._in_buf):
            if buf is None:
                raise EngineError(f"input {i} ({self.inputs[i].name}): not set")
        inputs = tuple(self._in_buf)
        outputs = self.run_into(inputs, self.own_outputs(tuple(b.shape for b in inputs)))
        call = self.prepare(inputs, outputs)
        # its own tuple of the outputs: a caller may change the list it is given
        self._again = (self.binds, call, inputs, tuple(outputs)) if call is not None else None
        return outputs

    def own_outputs(self, input_shapes: tuple) -> Optional[list]:
        """Arrays of the engine's own for `run()` to write into, or None (the backend's)."""
        return None

    def bindable(self, inputs: Sequence[np.ndarray]) -> list:
        """`inputs` as the backend can read them in place: C-contiguous, the
        input's dtype (a copy only where an array is not)."""
        return [a if a.dtype == dt and a.flags.c_contiguous else np.ascontiguousarray(a, dt)
                for a, dt in zip(inputs, self._in_dtypes)]


def check_known(kind: str, options: dict, known: tuple, prefix: str = "") -> None:
    """Refuse an option this engine does not have, naming it and the ones it has."""
    for key in options:
        if key not in known:
            raise EngineError(f"unknown option '{prefix}{key}' for engine {kind}, expected one of {', '.join(known)}")


def int_option(options: dict, name: str, default: int, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """`options[name]` as an int from minimum to maximum (a bool is not an int here)."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        raise EngineError(f"option '{name}': expected an integer " + (f">= {minimum}" if maximum is None else
                                                                       f"from {minimum} to {maximum}")
                          + f", got {value!r}")
    return value


def str_option(options: dict, name: str, choices: Optional[tuple] = None) -> None:
    """`options[name]`, when given, is a string (one of `choices`, when given)."""
    value = options.get(name)
    if value is not None and not isinstance(value, str):
        raise EngineError(f"option '{name}': expected a string, got {value!r}")
    if value is not None and choices and value not in choices:
        raise EngineError(f"option '{name}': unknown {value!r}, expected one of {', '.join(choices)}")


def bool_option(options: dict, name: str, default: bool) -> bool:
    value = options.get(name, default)
    if not isinstance(value, bool):
        raise EngineError(f"option '{name}': expected true or false, got {value!r}")
    return value
