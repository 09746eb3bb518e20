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

from lited.stream.feed import POLICIES
from lited.validate import Checker, name_problem, shown



class ConfigError(Exception):
    def __init__(self, where: str, problems: list) -> None:
        self.problems = problems
        super().__init__(f"config {where}: " + "; ".join(problems))


# A stream's ring holds what the daemon holds (frames in flight, the latest
# result's and `keep_results` more) plus `slots` frames of margin for apps.
SLOTS_DEFAULT, SLOTS_MAX = 2, 64
KEEP_RESULTS_MAX = 16


@dataclass
class StreamConfig:
    name: str
    source: str
    model: str
    slots: int = SLOTS_DEFAULT
    stall_timeout: float = 5.0
    keep_results: int = 0
    policy: Optional[str] = None  # None: from the source ("queue" if lossless, else "latest")


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
STREAM_FIELDS = ("name", "source", "model", "slots", "stall_timeout", "keep_results", "policy")


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
    models = {}
    for name, bundle in c.get(raw, "models", "", dict, default={}).items():
        problem = name_problem(name)
        if problem:
            c.add(f"models.{name}", problem)
        elif not isinstance(bundle, str) or not bundle:
            c.add(f"models.{name}", f"expected a bundle directory, got {shown(bundle)}")
        else:
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
                  workers, float(interval), raw)


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
        slots = c.number(s, "slots", p, SLOTS_DEFAULT, integer=True, minimum=0, maximum=SLOTS_MAX)
        stall = c.number(s, "stall_timeout", p, 5.0, above=0, maximum=3600)
        keep = c.number(s, "keep_results", p, 0, integer=True, minimum=0, maximum=KEEP_RESULTS_MAX)
        policy = c.choice(s, "policy", p, POLICIES) if "policy" in s else None
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
            streams.append(StreamConfig(name, source, model, slots, float(stall), keep, policy))
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
