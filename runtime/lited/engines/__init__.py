"""Engines run a model: one file per backend, each a subclass of `base.Engine`
that sets `kind` (see base.py for the interface and registry.py for the
convention). `open_engine` loads a model with the engine named.
"""
from __future__ import annotations

from lited.engines.base import Engine, EngineError, TensorSpec
from lited.errors import first_line
from lited.registry import Registry

__all__ = ["ENGINES", "Engine", "EngineError", "TensorSpec", "open_engine"]

ENGINES: Registry[Engine] = Registry("lited.engines", Engine)


def open_engine(kind: str, model_path: str, options: dict | None = None, checksums: dict | None = None) -> Engine:
    """Load `model_path` with the engine named `kind` (one a manifest lists for the file);
    `checksums` ({path: sha256}) are checked on the bytes the engine loads."""
    if kind not in ENGINES:
        raise EngineError(f"unknown engine '{kind}', expected one of {', '.join(ENGINES.kinds())}")
    cls = ENGINES.get(kind)
    if not cls.available():
        raise EngineError(f"engine '{kind}' is not installed here ({cls.package or cls.backend})")
    try:
        return cls(model_path, options or {}, checksums)
    except ImportError as exc:  # installed (found without importing it), but broken: not passed over
        raise EngineError(f"engine '{kind}' is installed here but does not import: {first_line(exc)}") from None
