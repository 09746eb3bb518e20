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

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


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


def _expect(problems: list, obj: dict, key: str, kind: Any, path: str, required: bool = False) -> Any:
    if key not in obj:
        if required:
            problems.append(f"{path}{key}: missing")
        return None
    value = obj[key]
    ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
    if not ok:
        names = {str: "a string", int: "an integer", (int, float): "a number", bool: "true/false",
                 dict: "an object", list: "a list"}
        problems.append(f"{path}{key}: expected {names.get(kind, kind)}, got {json.dumps(value)}")
        return None
    return value


def parse_config(raw: Any, path: Optional[Path] = None, base_dir: Optional[Path] = None) -> Config:
    """Check a config object; relative bundle paths are relative to `base_dir`."""
    where = str(path) if path else "<config>"
    problems: list = []
    if not isinstance(raw, dict):
        raise ConfigError(where, ["expected a JSON object"])
    known = {"runtime_dir", "state_dir", "models", "streams", "endpoints", "curve", "insecure_tcp", "group",
             "limits", "request_workers", "status_interval"}
    problems += [f"{k}: unknown field (known: {', '.join(sorted(known))})" for k in sorted(set(raw) - known)]
    base = base_dir or (path.parent if path else Path.cwd())
    runtime_dir = Path(_expect(problems, raw, "runtime_dir", str, "") or default_runtime_dir())
    state_dir = Path(_expect(problems, raw, "state_dir", str, "") or default_state_dir())
    models = {}
    for name, bundle in (_expect(problems, raw, "models", dict, "", required=True) or {}).items():
        if not NAME_RE.match(name):
            problems.append(f"models.{name}: a model name may hold only letters, digits, '.', '_' and '-'")
        elif not isinstance(bundle, str):
            problems.append(f"models.{name}: expected a bundle directory, got {json.dumps(bundle)}")
        else:
            models[name] = str((base / bundle).resolve()) if not os.path.isabs(bundle) else bundle
    streams = []
    seen = set()
    for i, s in enumerate(_expect(problems, raw, "streams", list, "") or []):
        p = f"streams[{i}]."
        if not isinstance(s, dict):
            problems.append(f"streams[{i}]: expected an object")
            continue
        for k in sorted(set(s) - {"name", "source", "model", "slots", "stall_timeout"}):
            problems.append(f"{p}{k}: unknown field")
        name = _expect(problems, s, "name", str, p, required=True)
        source = _expect(problems, s, "source", str, p, required=True)
        model = _expect(problems, s, "model", str, p, required=not len(models) == 1)
        if model is None and len(models) == 1:
            model = next(iter(models))
        slots = _expect(problems, s, "slots", int, p) or 4
        stall = _expect(problems, s, "stall_timeout", (int, float), p) or 5.0
        if name is not None:
            if not NAME_RE.match(name):
                problems.append(f"{p}name: '{name}' may hold only letters, digits, '.', '_' and '-'")
            elif name in seen:
                problems.append(f"{p}name: '{name}' is used twice")
            seen.add(name)
        if model is not None and model not in models:
            problems.append(f"{p}model: '{model}' is not in models ({', '.join(sorted(models)) or 'none'})")
        if slots is not None and not 2 <= slots <= 64:
            problems.append(f"{p}slots: expected 2 to 64, got {slots}")
        if source is not None:
            from lited.sources import SourceError, open_source

            try:
                open_source(source)
            except SourceError as exc:
                problems.append(f"{p}source: {exc}")
        if name and source and model:
            streams.append(StreamConfig(name, source, model, slots, float(stall)))
    endpoints = _expect(problems, raw, "endpoints", dict, "") or {}
    for k in sorted(set(endpoints) - {"pub", "req"}):
        problems.append(f"endpoints.{k}: unknown field (known: pub, req)")
    pub = _endpoint_list(problems, endpoints, "pub", f"ipc://{runtime_dir}/pub.sock")
    req = _endpoint_list(problems, endpoints, "req", f"ipc://{runtime_dir}/req.sock")
    curve = _expect(problems, raw, "curve", dict, "")
    if curve is not None:
        for key in ("server_secret", "clients_dir"):
            _expect(problems, curve, key, str, "curve.", required=True)
    limits = _expect(problems, raw, "limits", dict, "") or {}
    for k in sorted(set(limits) - {"max_request_bytes", "pub_hwm"}):
        problems.append(f"limits.{k}: unknown field (known: max_request_bytes, pub_hwm)")
    max_req = _expect(problems, limits, "max_request_bytes", int, "limits.") or 16 << 20
    hwm = _expect(problems, limits, "pub_hwm", int, "limits.") or 1000
    workers = _expect(problems, raw, "request_workers", int, "") or 1
    interval = _expect(problems, raw, "status_interval", (int, float), "") or 5.0
    insecure = bool(_expect(problems, raw, "insecure_tcp", bool, ""))
    group = _expect(problems, raw, "group", str, "")
    if problems:
        raise ConfigError(where, problems)
    return Config(path, runtime_dir, state_dir, models, streams, pub, req, curve, insecure, group, max_req, hwm,
                  workers, float(interval), raw)


def _endpoint_list(problems: list, endpoints: dict, key: str, default: str) -> list:
    value = endpoints.get(key, [default])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"endpoints.{key}: expected an endpoint or a list of them")
        return []
    for v in value:
        if not re.match(r"^(ipc|tcp|inproc)://.+", v):
            problems.append(f"endpoints.{key}: '{v}' is not an ipc://, tcp:// or inproc:// endpoint")
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
