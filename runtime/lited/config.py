"""The daemon's config file (JSON, documented in docs/config.md).

Read and checked before anything starts, every problem at once with its
field path, like a bundle's manifest: a typo in a stream's source is caught
at `lited serve`, not at 3 a.m. when the camera reconnects.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lited.validate import Checker, name_problem, shown



class ConfigError(Exception):
    def __init__(self, where: str, problems: list) -> None:
        self.problems = problems
        super().__init__(f"config {where}: " + "; ".join(problems))


@dataclass
class StreamConfig:
    name: str
    source: str
    model: str
    slots: int = 4
    stall_timeout: float = 5.0


@dataclass(frozen=True)
class ModelSettings:
    """How one configured model runs: the engine and precision picked among
    the bundle's files (None: the bundle's order of preference), and its
    threads (None: the bundle's, else 1)."""

    engine: Optional[str] = None
    precision: Optional[str] = None
    threads: Optional[int] = None

    def model_kwargs(self, threads: Optional[int] = None) -> dict:
        """Model() keywords; `threads` overrides the configured count."""
        threads = threads or self.threads
        return {"engine": self.engine, "precision": self.precision,
                "options": {"threads": threads} if threads else None}


@dataclass
class Config:
    path: Optional[Path]
    runtime_dir: Path
    state_dir: Path
    models: dict                      # name -> bundle directory
    streams: list                     # [StreamConfig]
    pub: list
    req: list
    curve: Optional[dict] = None
    insecure_tcp: bool = False
    group: Optional[str] = None
    max_request_bytes: int = 16 << 20
    pub_hwm: int = 1000
    request_workers: int = 1
    status_interval: float = 5.0
    raw: dict = field(default_factory=dict)
    model_settings: dict = field(default_factory=dict)  # name -> ModelSettings


def default_runtime_dir() -> Path:
    """systemd's RuntimeDirectory, else /run/lited if we may write there,
    else $XDG_RUNTIME_DIR/lited, else /tmp/lited-<uid>."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.access("/run/lited", os.W_OK):
        return Path("/run/lited")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "lited"
    return Path(f"/tmp/lited-{os.getuid()}")


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path("/var/lib/lited") if os.access("/var/lib/lited", os.W_OK) else Path.home() / ".local/state/lited"


TOP_FIELDS = ("runtime_dir", "state_dir", "models", "streams", "endpoints", "curve", "insecure_tcp", "group",
              "limits", "request_workers", "status_interval")
STREAM_FIELDS = ("name", "source", "model", "slots", "stall_timeout")
MODEL_FIELDS = ("bundle", "engine", "precision", "threads")
PRECISIONS = ("fp32", "fp16", "int8")


def parse_config(raw: Any, path: Optional[Path] = None, base_dir: Optional[Path] = None) -> Config:
    """Check a config object; relative bundle paths are relative to `base_dir`."""
    where = str(path) if path else "<config>"
    if not isinstance(raw, dict):
        raise ConfigError(where, ["expected a JSON object"])
    c = Checker()
    c.unknown(raw, TOP_FIELDS, "")
    base = base_dir or (path.parent if path else Path.cwd())
    runtime_dir = Path(c.get(raw, "runtime_dir", "", str, required=False) or default_runtime_dir())
    state_dir = Path(c.get(raw, "state_dir", "", str, required=False) or default_state_dir())
    models, settings = {}, {}
    for name, entry in c.get(raw, "models", "", dict, default={}).items():
        problem = name_problem(name)
        if problem:
            c.add(f"models.{name}", problem)
            continue
        bundle, settings[name] = _model_entry(c, name, entry)
        if bundle is not None:
            models[name] = str((base / bundle).resolve()) if not os.path.isabs(bundle) else bundle
    streams = _streams(c, c.get(raw, "streams", "", list, required=False, default=[]), models)
    endpoints = c.get(raw, "endpoints", "", dict, required=False, default={})
    c.unknown(endpoints, ("pub", "req"), "endpoints.")
    pub = _endpoint_list(c, endpoints, "pub", f"ipc://{runtime_dir}/pub.sock")
    req = _endpoint_list(c, endpoints, "req", f"ipc://{runtime_dir}/req.sock")
    curve = c.get(raw, "curve", "", dict, required=False)
    if curve is not None:
        c.unknown(curve, ("server_secret", "clients_dir"), "curve.")
        for key in ("server_secret", "clients_dir"):
            c.get(curve, key, "curve.", str)
    limits = c.get(raw, "limits", "", dict, required=False, default={})
    c.unknown(limits, ("max_request_bytes", "pub_hwm"), "limits.")
    max_req = c.number(limits, "max_request_bytes", "limits.", 16 << 20, integer=True, minimum=1024,
                       maximum=1 << 30)
    hwm = c.number(limits, "pub_hwm", "limits.", 1000, integer=True, minimum=1, maximum=1 << 20)
    workers = c.number(raw, "request_workers", "", 1, integer=True, minimum=1, maximum=64)
    interval = c.number(raw, "status_interval", "", 5.0, above=0, maximum=3600)
    insecure = c.get(raw, "insecure_tcp", "", bool, required=False, default=False)
    group = c.get(raw, "group", "", str, required=False)
    if c.problems:
        raise ConfigError(where, c.problems)
    return Config(path, runtime_dir, state_dir, models, streams, pub, req, curve, insecure, group, max_req, hwm,
                  workers, float(interval), raw, settings)


def _model_entry(c: Checker, name: str, entry: Any) -> tuple:
    """`models.<name>`: a bundle directory, or {"bundle", "engine", "precision", "threads"};
    returns (the directory or None, ModelSettings)."""
    p = f"models.{name}"
    if isinstance(entry, dict):
        c.unknown(entry, MODEL_FIELDS, p + ".")
        bundle = c.get(entry, "bundle", p + ".", str)
        from lited.engines import ENGINES  # the registry lists engines without loading their backends

        engine = c.choice(entry, "engine", p + ".", ENGINES.kinds()) if "engine" in entry else None
        precision = c.choice(entry, "precision", p + ".", PRECISIONS) if "precision" in entry else None
        threads = c.number(entry, "threads", p + ".", None, integer=True, minimum=1, maximum=256)
        settings = ModelSettings(engine, precision, threads)
    else:
        bundle, settings = entry, ModelSettings()
    if not isinstance(bundle, str) or not bundle:
        if not isinstance(entry, dict) or "bundle" in entry:
            c.add(p + (".bundle" if isinstance(entry, dict) else ""),
                  f"expected a bundle directory, got {shown(bundle)}")
        return None, settings
    return bundle, settings


def _streams(c: Checker, items: list, models: dict) -> list:
    streams, seen = [], set()
    for i, s in enumerate(items):
        p = f"streams[{i}]."
        if not isinstance(s, dict):
            c.add(f"streams[{i}]", f"expected an object, got {shown(s)}")
            continue
        c.unknown(s, STREAM_FIELDS, p)
        name = c.name(s, "name", p)
        source = c.get(s, "source", p, str)
        model = c.get(s, "model", p, str, required=len(models) != 1)
        if model is None and len(models) == 1:
            model = next(iter(models))
        slots = c.number(s, "slots", p, 4, integer=True, minimum=2, maximum=64)
        stall = c.number(s, "stall_timeout", p, 5.0, above=0, maximum=3600)
        if name is not None:
            if name in seen:
                c.add(p + "name", f"'{name}' is used twice")
            seen.add(name)
        if model is not None and model not in models:
            c.add(p + "model", f"'{model}' is not in models ({', '.join(sorted(models)) or 'none'})")
        if source is not None:
            from lited.sources import SourceError, open_source

            try:
                open_source(source)
            except SourceError as exc:
                c.add(p + "source", str(exc))
        if name and source and model:
            streams.append(StreamConfig(name, source, model, slots, float(stall)))
    return streams


def _endpoint_list(c: Checker, endpoints: dict, key: str, default: str) -> list:
    value = endpoints.get(key, [default])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        c.add(f"endpoints.{key}", "expected an endpoint or a list of them")
        return []
    for v in value:
        if not re.match(r"^(ipc|tcp|inproc)://.+", v):
            c.add(f"endpoints.{key}", f"'{v}' is not an ipc://, tcp:// or inproc:// endpoint")
    return value


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["missing"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid JSON ({exc})"]) from None
    return parse_config(raw, path)
