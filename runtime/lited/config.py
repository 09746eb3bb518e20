"""The daemon's config file (JSON, documented in docs/config.md).

Read and checked before anything starts, every problem at once with its
field path, like a bundle's manifest: a typo in a stream's source is caught
at `lited serve`, not at 3 a.m. when the camera reconnects.
"""
from __future__ import annotations

import grp
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lited.errors import first_line
from lited.files import FileRefused, read_capped
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
    max_inflight_bytes: int = 128 << 20
    engine_timeout: float = 20.0
    max_clients: int = 16
    request_workers: int = 1
    status_interval: float = 5.0
    raw: dict = field(default_factory=dict)


def default_runtime_dir() -> Path:
    """systemd's RuntimeDirectory, else /run/lited if we may write there or
    create it (root), else $XDG_RUNTIME_DIR/lited, else /tmp/lited-<uid>
    (the daemon creates and checks it: service/bus.py, lited/runtime_dir.py)."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.access("/run/lited", os.W_OK) or (not os.path.lexists("/run/lited") and os.access("/run", os.W_OK)):
        return Path("/run/lited")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "lited"
    return Path(f"/tmp/lited-{os.getuid()}")


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path("/var/lib/lited") if os.access("/var/lib/lited", os.W_OK) else Path.home() / ".local/state/lited"


MAX_CONFIG_BYTES = 1 << 20

TOP_FIELDS = ("runtime_dir", "state_dir", "models", "streams", "endpoints", "curve", "insecure_tcp", "group",
              "limits", "request_workers", "status_interval")
STREAM_FIELDS = ("name", "source", "model", "slots", "stall_timeout")


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
            try:
                models[name] = str((base / bundle).resolve()) if not os.path.isabs(bundle) else bundle
            except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.10)
                c.add(f"models.{name}", f"{bundle!r} cannot be resolved ({first_line(exc)})")
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
    c.unknown(limits, ("max_request_bytes", "pub_hwm", "max_inflight_bytes", "engine_timeout", "max_clients"),
              "limits.")
    max_req = c.number(limits, "max_request_bytes", "limits.", 16 << 20, integer=True, minimum=1024,
                       maximum=1 << 30)
    hwm = c.number(limits, "pub_hwm", "limits.", 1000, integer=True, minimum=1, maximum=1 << 20)
    inflight = c.number(limits, "max_inflight_bytes", "limits.", max(128 << 20, max_req), integer=True,
                        minimum=max_req, maximum=16 << 30)
    engine_timeout = c.number(limits, "engine_timeout", "limits.", 20.0, above=0, maximum=3600)
    clients = c.number(limits, "max_clients", "limits.", 16, integer=True, minimum=1, maximum=1024)
    workers = c.number(raw, "request_workers", "", 1, integer=True, minimum=1, maximum=64)
    interval = c.number(raw, "status_interval", "", 5.0, above=0, maximum=3600)
    insecure = c.get(raw, "insecure_tcp", "", bool, required=False, default=False)
    group = c.get(raw, "group", "", str, required=False)
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            c.add("group", f"no such group {group!r}")
    if c.problems:
        raise ConfigError(where, c.problems)
    return Config(path, runtime_dir, state_dir, models, streams, pub, req, curve, insecure, group, max_req, hwm,
                  inflight, float(engine_timeout), clients, workers, float(interval), raw)


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
        raw = json.loads(read_capped(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["missing"]) from None
    except FileRefused as exc:  # a FIFO would block, /dev/zero would never end
        raise ConfigError(str(path), [exc.reason]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot be read ({exc.strerror or exc})"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(str(path), [f"not valid JSON ({exc})"]) from None
    return parse_config(raw, path)
