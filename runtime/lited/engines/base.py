"""The engine interface: what every backend (one file in this package) is.

    engine = open_engine(kind, model_path, options, checksums)
                                     # checksums: {file path: sha256} of the bundle's manifest; the
                                     # engine loads the very bytes it hashed (read_model_file)
    engine.inputs                    # [TensorSpec(name, shape, dtype)], shape as the model reports it
    engine.set_input(i, array)       # float32, C-contiguous; one copy into the backend
    engine.input_view(i, shape)      # or: a writable view of the backend's own input buffer
                                     # (None if it has none): write the input there, no copy
    outputs = engine.run()           # list of float32 arrays owned by the engine,
                                     # valid until the next run() (copied out of the backend)
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
from dataclasses import dataclass
from typing import ClassVar, List, Optional

import numpy as np

from lited.files import MAX_MODEL_BYTES, FileRefused, read_capped


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
    name: str
    shape: tuple
    dtype: str = "float32"


class Engine:
    """One backend running one model file. Subclasses set `kind` (the
    manifest's `models.<target>.engine`) and `backend` (the module they
    import, lazily, in `__init__`)."""

    kind: ClassVar[str] = ""
    backend: ClassVar[str] = ""   # the module it imports
    package: ClassVar[str] = ""   # what provides that module (pip name), for "not installed" messages
    input_sets: ClassVar[int] = 1  # inputs that can be filled while another set runs (EngineProcess: 3)

    inputs: List[TensorSpec]
    output_names: List[str]
    version: str = ""
    device: str = "cpu"
    image_input: int = 0  # the input whose shape may change with the image (set from the bundle)
    pid: Optional[int] = None  # the process running it, when not this one (EngineProcess)

    @classmethod
    def available(cls) -> bool:
        """Is the backend installed here (without importing it)?"""
        return not cls.backend or importlib.util.find_spec(cls.backend) is not None

    def set_input(self, index: int, array: np.ndarray) -> None:
        raise NotImplementedError

    def input_view(self, index: int, shape: tuple) -> Optional[np.ndarray]:
        """A writable view of the backend's own buffer for input `index`, or
        None when it has none (then use `set_input`)."""
        return None

    def run(self) -> list:
        raise NotImplementedError

    def input_shapes(self) -> list:
        """Input shapes as the backend has them now."""
        raise NotImplementedError

    def output_shapes(self) -> list:
        """Output shapes as of the last run."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the backend now rather than at garbage collection."""
