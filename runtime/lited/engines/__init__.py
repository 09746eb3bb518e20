"""Engines run a model: one file per backend, all with the same small interface.

    engine = open_engine(kind, model_path, options)
    engine.inputs                    # [TensorSpec(name, shape, dtype)], shape as the model reports it
    engine.set_input(i, array)       # float32, C-contiguous; one copy into the backend
    engine.input_view(i, shape)      # or: a writable view of the backend's own input buffer
                                     # (None if it has none): write the input there, no copy
    outputs = engine.run()           # list of float32 arrays owned by the engine,
                                     # valid until the next run() (copied out of the backend)
    engine.version                   # backend version string
    engine.device                    # where it runs, for humans: "cpu", "gpu:0 tensorrt fp16"

An engine instance is used from one thread only: Paddle Lite predictors must
not be shared across threads. Streams run theirs in a child process
(lited.engine_process.EngineProcess: the same interface, plus input slots,
submit/collect, restart and close), because paddlelite's `run()` holds the GIL.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

ENGINES = {"paddle_lite": "lited.engines.paddle_lite", "paddle_inference": "lited.engines.paddle_inference"}


class EngineError(Exception):
    """The backend is missing or refused the model."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str = "float32"


def open_engine(kind: str, model_path: str, options: dict | None = None) -> Any:
    """Load `model_path` with the engine named `kind` (a manifest's `models.<target>.engine`)."""
    if kind not in ENGINES:
        raise EngineError(f"unknown engine '{kind}', expected one of {', '.join(sorted(ENGINES))}")
    try:
        module = importlib.import_module(ENGINES[kind])
    except ImportError as exc:
        raise EngineError(f"engine '{kind}' is not installed here ({exc.name or exc})") from None
    return module.Engine(model_path, options or {})
