"""The daemon's config file (JSON, documented in docs/config.md).

Read and checked before anything starts, every problem at once with its
field path, like a bundle's manifest: a typo in a stream's source is caught
at `lited serve`, not at 3 a.m. when the camera reconnects.
"""
from __future__ import annotations

import ipaddress
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
    http: Optional["HttpConfig"] = None
    uplink: Optional["UplinkConfig"] = None
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
              "limits", "request_workers", "status_interval", "http", "uplink")
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
    http = parse_http(c, raw.get("http"), max_req) if "http" in raw else None
    uplink = parse_uplink(c, raw.get("uplink"), state_dir, base, [s.name for s in streams])
    if c.problems:
        raise ConfigError(where, c.problems)
    return Config(path, runtime_dir, state_dir, models, streams, pub, req, curve, insecure, group, max_req, hwm,
                  workers, float(interval), http, uplink, raw)


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


# ---------------------------------------------------------------------------
# `http`: the HTTP front end (service/http.py, docs/config.md "http"). All of
# it is here, in one piece, so it can move into a config schema as a unit.
# ---------------------------------------------------------------------------
HTTP_FIELDS = ("listen", "token", "max_body_bytes", "body_budget_bytes", "max_live_clients", "live_fps",
               "max_event_clients", "metrics_public")
HTTP_DEFAULT_LISTEN = "127.0.0.1:24401"  # EasyEdge's port: code written for its SDK finds lited there
BODY_COPIES = 3  # a body counts this many times against the budget: itself, its text or a copy, the image in it
MIN_TOKEN_CHARS = 16


@dataclass
class HttpConfig:
    listen: list                      # [(host, port)]; port 0: any free port (status shows the one bound)
    token: Optional[str] = None       # bearer token; required unless every listen address is loopback
    max_body_bytes: int = 16 << 20    # one request body
    body_budget_bytes: int = 48 << 20  # all request bodies in flight, each counted BODY_COPIES times
    max_live_clients: int = 10        # MJPEG clients, all streams together
    live_fps: float = 10.0            # MJPEG frames per second at most, per stream
    max_event_clients: int = 20       # server-sent-events clients
    metrics_public: bool = False      # /metrics without the token


def parse_listen(value: str) -> Optional[tuple]:
    """'HOST:PORT' ('[v6]:PORT', 'localhost:PORT') -> (host, port), None if malformed."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def parse_http(c: Checker, raw: Any, max_request_bytes: int) -> Optional[HttpConfig]:
    """The `http` section: problems go to `c`; None when it has any."""
    if not isinstance(raw, dict):
        c.add("http", f"expected an object, got {shown(raw)}")
        return None
    before = len(c.problems)
    c.unknown(raw, HTTP_FIELDS, "http.")
    listen_raw = raw.get("listen", HTTP_DEFAULT_LISTEN)
    listen_raw = [listen_raw] if isinstance(listen_raw, str) else listen_raw
    listen = []
    if not isinstance(listen_raw, list) or not listen_raw:
        c.add("http.listen", f"expected 'HOST:PORT' or a list of them, got {shown(raw.get('listen'))}")
    else:
        for value in listen_raw:
            parsed = parse_listen(value) if isinstance(value, str) else None
            if parsed is None:
                c.add("http.listen", f"{shown(value)} is not HOST:PORT with an IP address (or localhost) "
                                     "and a port from 0 to 65535")
            else:
                listen.append(parsed)
    token = c.get(raw, "token", "http.", str, required=False)
    if token is not None and (len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token):
        c.add("http.token", f"expected at least {MIN_TOKEN_CHARS} printable characters without spaces")
    remote = [f"{h}:{p}" for h, p in listen if not is_loopback(h)]
    if remote and token is None:
        c.add("http.token", f"needed: {', '.join(remote)} is not a loopback address "
                            "(clients send 'Authorization: Bearer <token>')")
    max_body = c.number(raw, "max_body_bytes", "http.", max_request_bytes, integer=True, minimum=1024,
                        maximum=1 << 30)
    budget = c.number(raw, "body_budget_bytes", "http.", BODY_COPIES * (max_body or max_request_bytes),
                      integer=True, minimum=1024, maximum=1 << 34)
    if max_body is not None and budget is not None and budget < BODY_COPIES * max_body:
        c.add("http.body_budget_bytes", f"{budget} is below {BODY_COPIES} x http.max_body_bytes "
                                        f"({BODY_COPIES * max_body}): a body of the largest size could not be taken")
    live = c.number(raw, "max_live_clients", "http.", 10, integer=True, minimum=0, maximum=1000)
    live_fps = c.number(raw, "live_fps", "http.", 10.0, above=0, maximum=120)
    events = c.number(raw, "max_event_clients", "http.", 20, integer=True, minimum=0, maximum=1000)
    public = c.get(raw, "metrics_public", "http.", bool, required=False, default=False)
    if len(c.problems) > before:
        return None
    return HttpConfig(listen, token, max_body, budget, live, float(live_fps), events, public)


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["missing"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid JSON ({exc})"]) from None
    return parse_config(raw, path)


# -- the `uplink` section (docs/uplink.md) ---------------------------------------------------------
# Kept in one block so it can move with the config format; it needs only the Checker, the state
# directory (default outbox place), the config's directory (relative paths) and the stream names.

UPLINK_FIELDS = ("broker", "device", "username", "password_file", "ca", "cert", "key", "keepalive", "ack",
                 "window", "resend_after", "outbox", "status_interval", "events", "requests", "streams")
UPLINK_RULE_FIELDS = ("labels", "min_score", "max_rate", "attach", "margin", "jpeg_quality", "max_crops")
UPLINK_ACK_MODES = ("broker", "cloud")
UPLINK_ATTACH = ("none", "crops", "frame")
ALL_STREAMS = "*"
SERVER_IDENTITY = "cloud"


@dataclass
class UplinkRule:
    """Which results of a stream go up, and with which images."""
    labels: Optional[frozenset] = None      # None: every label
    min_score: float = 0.0
    max_rate: Optional[float] = None        # results per second; None: no limit
    attach: str = "none"                    # none, crops (one JPEG per selected detection), frame
    margin: float = 0.1                     # crops: grown by this fraction of the box on each side
    jpeg_quality: int = 85
    max_crops: int = 8


@dataclass
class UplinkConfig:
    broker: str
    device: str
    username: Optional[str]
    password_file: Optional[str]
    ca: Optional[str]
    cert: Optional[str]
    key: Optional[str]
    keepalive: int
    ack: str
    window: int
    resend_after: float
    outbox_dir: Path
    outbox_max_bytes: int
    status_interval: float
    events: bool
    requests: bool
    rules: dict                             # stream name or "*" -> UplinkRule

    def rule_for(self, stream: str) -> Optional[UplinkRule]:
        return self.rules.get(stream) or self.rules.get(ALL_STREAMS)


def parse_uplink(c: Checker, raw: Any, state_dir: Path, base: Path, stream_names: list) -> Optional[UplinkConfig]:
    if raw is None:
        return None
    p = "uplink."
    if not isinstance(raw, dict):
        c.add("uplink", f"expected an object, got {shown(raw)}")
        return None
    c.unknown(raw, UPLINK_FIELDS, p)
    import importlib.util

    if importlib.util.find_spec("paho") is None:
        c.add("uplink", "needs paho-mqtt 2.x, which is not installed (pip install 'lited[mqtt]')")
    broker = c.get(raw, "broker", p, str)
    if broker is not None:
        from lited.mqtt_link import LinkError, parse_url

        try:
            parse_url(broker)
        except LinkError as exc:
            c.add(p + "broker", str(exc))
    device = c.name(raw, "device", p)
    if device == SERVER_IDENTITY:
        c.add(p + "device", f"'{SERVER_IDENTITY}' is the servers' identity in the documented broker ACL")
        device = None
    username = c.get(raw, "username", p, str, required=False, default=device)
    files = {}
    for key in ("password_file", "ca", "cert", "key"):
        value = c.get(raw, key, p, str, required=False)
        if value is not None:
            value = value if os.path.isabs(value) else str((base / value).resolve())
            if not os.path.isfile(value):
                c.add(p + key, f"{value}: no such file")
        files[key] = value
    if (files["cert"] is None) != (files["key"] is None):
        c.add(p + ("key" if files["key"] is None else "cert"), "cert and key go together")
    keepalive = c.number(raw, "keepalive", p, 30, integer=True, minimum=5, maximum=3600)
    ack = c.choice(raw, "ack", p, UPLINK_ACK_MODES, default="broker")
    window = c.number(raw, "window", p, 64, integer=True, minimum=1, maximum=1000)
    resend_after = c.number(raw, "resend_after", p, 10.0, above=0, maximum=3600)
    outbox = c.get(raw, "outbox", p, dict, required=False, default={})
    c.unknown(outbox, ("dir", "max_bytes"), p + "outbox.")
    outbox_dir = c.get(outbox, "dir", p + "outbox.", str, required=False)
    outbox_dir = Path(outbox_dir) if outbox_dir else state_dir / "outbox"
    max_bytes = c.number(outbox, "max_bytes", p + "outbox.", 64 << 20, integer=True, minimum=64 << 10,
                         maximum=1 << 40)
    status_interval = c.number(raw, "status_interval", p, 60.0, above=0, maximum=86400)
    events = c.get(raw, "events", p, bool, required=False, default=True)
    requests = c.get(raw, "requests", p, bool, required=False, default=True)
    rules = {}
    for stream, rule in c.get(raw, "streams", p, dict, required=False, default={}).items():
        rp = f"{p}streams.{stream}"
        if stream != ALL_STREAMS and stream not in stream_names:
            c.add(rp, f"not a stream in streams ({', '.join(stream_names) or 'none'}) nor '{ALL_STREAMS}'")
        elif not isinstance(rule, dict):
            c.add(rp, f"expected an object, got {shown(rule)}")
        else:
            rules[stream] = _uplink_rule(c, rule, rp + ".")
    if broker is None or device is None:
        return None
    return UplinkConfig(broker, device, username, files["password_file"], files["ca"], files["cert"], files["key"],
                        keepalive, ack, window, float(resend_after), outbox_dir, max_bytes, float(status_interval),
                        events, requests, rules)


def _uplink_rule(c: Checker, raw: dict, p: str) -> UplinkRule:
    c.unknown(raw, UPLINK_RULE_FIELDS, p)
    labels = c.get(raw, "labels", p, list, required=False)
    if labels is not None and not all(isinstance(x, str) for x in labels):
        c.add(p + "labels", "expected a list of label strings")
        labels = None
    max_rate = c.number(raw, "max_rate", p, None, above=0, maximum=1000)
    return UplinkRule(frozenset(labels) if labels is not None else None,
                      float(c.number(raw, "min_score", p, 0.0, minimum=0, maximum=1)),
                      float(max_rate) if max_rate is not None else None,
                      c.choice(raw, "attach", p, UPLINK_ATTACH, default="none") or "none",
                      float(c.number(raw, "margin", p, 0.1, minimum=0, maximum=2)),
                      c.number(raw, "jpeg_quality", p, 85, integer=True, minimum=1, maximum=100),
                      c.number(raw, "max_crops", p, 8, integer=True, minimum=1, maximum=64))
