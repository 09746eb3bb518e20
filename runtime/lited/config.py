"""The daemon's config file: YAML (comments welcome) or JSON, docs/config.md.

The schema is the msgspec Structs below, in one place: they convert the file
into typed values with their defaults, give editors a JSON Schema (`lited
config schema`), and drive the checks, which report every problem at once
with its field path in lited.validate's words (`streams[0].slots: expected
an integer from 2 to 64, got 0`), before anything starts: a typo in a
stream's source is caught at `lited serve`, not at 3 a.m. when the camera
reconnects. A new section is one Struct and one field of `ConfigFile`; the
daemon reads it as `config.file.<section>`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from lited.bundle import PRECISIONS
from lited.errors import first_line
from lited.files import FileRefused, read_capped
from lited.stream.feed import POLICIES
from lited.validate import (MAX_TIMEOUT_S, Checker, reserved_stream_problem, choice_problem, has_type, name_problem,
                            shown, type_name, unique_keys)

try:
    from typing import Annotated
except ImportError:  # Python 3.8
    from typing_extensions import Annotated  # type: ignore

#: Where the service's config lives (systemd/lited.service); `lited ctl` and
#: `lited config check` read it when no --config is given.
DEFAULT_CONFIG = Path("/etc/lited/lited.conf")
MAX_CONFIG_BYTES = 1 << 20  # a config is read whole: a FIFO or /dev/zero must not be waited on or read for ever


class ConfigError(Exception):
    def __init__(self, where: str, problems: list) -> None:
        self.problems = problems
        super().__init__(f"config {where}: " + "; ".join(problems))


# -- the schema ----------------------------------------------------------------
# Meta(extra={"check": f}) gives a field a check of its own: f(value) -> a
# problem, a list of them, or None; the generic checks are skipped for it.

def _refusal(value: Any, expected: str, parse: Callable[[str], Any], error: type) -> Optional[str]:
    """Why `parse` refuses `value`, in its error's words (None: it takes it)."""
    if not isinstance(value, str):
        return f"expected {expected}, got {shown(value)}"
    try:
        parse(value)
    except error as exc:
        return str(exc)
    return None


def _source_problem(uri: Any) -> Optional[str]:
    from lited.sources import SourceError, open_source  # parses the URI; no I/O

    return _refusal(uri, "a source URI", open_source, SourceError)


def _endpoint_problems(value: Any) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return ["expected an endpoint or a list of them"]
    return [f"'{v}' is not an ipc://, tcp:// or inproc:// endpoint" for v in value
            if not re.match(r"^(ipc|tcp|inproc)://.+", v)]


Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", extra={"check": name_problem},
                           description="1 to 64 letters, digits, '.', '_', '-', not starting with '.' or '-'")]
Endpoints = Annotated[Union[str, Annotated[List[str], Meta(min_length=1)]], Meta(
    extra={"check": _endpoint_problems},
    description="an ipc://, tcp:// or inproc:// endpoint, or a list of them")]
Seconds = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)]


class Section(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A part of the config: unknown fields are typos, refused; read-only once read."""


# A stream's ring holds what the daemon holds (frames in flight, the latest
# result's and `keep_results` more) plus `slots` frames of margin for apps.
SLOTS_DEFAULT, SLOTS_MAX = 2, 64
KEEP_RESULTS_MAX = 16


def _one_of(options: Callable[[], tuple]) -> Callable[[Any], Optional[str]]:
    """A check that `value` is one of `options()` (called when checking: engines come from their registry)."""
    def problem(value: Any) -> Optional[str]:
        return choice_problem(value, options())
    return problem


_policy_problem = _one_of(lambda: POLICIES)


class StreamSection(Section):
    """A camera (or file) feeding one model."""
    name: Annotated[Name, Meta(description="in topics (result/<name>) and ring names")]
    source: Annotated[str, Meta(extra={"check": _source_problem},
                                description="v4l2://, gst://, rtsp://, http(s)://, file://, images://, synth://")]
    model: Optional[Annotated[Name, Meta(description="a name from models (default: the only one)")]] = None
    slots: Annotated[int, Meta(ge=0, le=SLOTS_MAX, description="the apps' margin in the frame ring, in camera "
                               "frames, beyond what the daemon holds")] = SLOTS_DEFAULT
    stall_timeout: Annotated[Seconds, Meta(description="seconds without a frame before 'stalled'")] = 5.0
    keep_results: Annotated[int, Meta(ge=0, le=KEEP_RESULTS_MAX, description="the frames of this many results "
                                      "before the latest stay readable too")] = 0
    policy: Optional[Annotated[Literal[POLICIES], Meta(extra={"check": _policy_problem}, description="'latest' or 'queue' "
                                         "(default: 'queue' for a lossless source, else 'latest')")]] = None


class EndpointsSection(Section):
    pub: Optional[Annotated[Endpoints, Meta(description="results and events (default ipc://<runtime_dir>/pub.sock)")]] = None
    req: Optional[Annotated[Endpoints, Meta(description="requests (default ipc://<runtime_dir>/req.sock)")]] = None


class CurveSection(Section):
    """CURVE keys for tcp:// endpoints (`lited keygen`)."""
    server_secret: Annotated[str, Meta(description="the daemon's secret key file (NAME.key_secret)")]
    clients_dir: Annotated[str, Meta(description="a directory of allowed clients' public keys (NAME.key)")]


class LimitsSection(Section):
    max_request_bytes: Annotated[int, Meta(ge=1024, le=1 << 30)] = 16 << 20
    pub_hwm: Annotated[int, Meta(ge=1, le=1 << 20, description="messages queued per subscriber before PUB drops")] = 1000
    max_inflight_bytes: Optional[Annotated[int, Meta(ge=1024, le=16 << 30, description=(
        "bytes all requests in flight may hold together, decoding included (at least max_request_bytes; "
        "default 128 MiB)"))]] = None
    engine_timeout: Annotated[Seconds, Meta(description="seconds an engine process may take to answer a run "
                                            "before it counts as stuck and is killed")] = 20.0
    max_clients: Annotated[int, Meta(ge=1, le=1024, description="clients connected to the request socket(s) "
                                     "at once")] = 16




def _bundle_problem(value: Any) -> Optional[str]:
    return None if isinstance(value, str) and value else f"expected a bundle directory, got {shown(value)}"


def _engine_kinds() -> tuple:
    from lited.engines import ENGINES  # the registry lists engines without loading their backends

    return tuple(ENGINES.kinds())


_engine_problem = _one_of(_engine_kinds)
_precision_problem = _one_of(lambda: PRECISIONS)
BundleDir = Annotated[str, Meta(min_length=1, extra={"check": _bundle_problem},
                                description="a bundle directory (relative: to the config file's)")]


class ModelSection(Section):
    """A model with how it runs (docs/config.md): the bundle's file and
    engine picked by engine and precision, else the bundle's order of preference."""
    bundle: BundleDir
    engine: Optional[Annotated[str, Meta(extra={"check": _engine_problem},
                                         description="paddle_lite, paddle_inference, openvino or onnxruntime "
                                                     "(default: the bundle's first choice installed here)")]] = None
    precision: Optional[Annotated[Literal[PRECISIONS], Meta(extra={"check": _precision_problem},
                                            description="fp32, fp16 or int8 (default: the bundle's first choice)")]] = None
    threads: Optional[Annotated[int, Meta(ge=1, le=256, description="the engine's threads (default: the bundle's, "
                                          "else 1; streams together are kept within the cores)")]] = None


class ConfigFile(Section):
    """lited's config (docs/config.md)."""
    models: Annotated[Dict[Name, Union[BundleDir, ModelSection]],
                      Meta(description="model name -> bundle directory, or {bundle, engine, precision, threads}")]
    streams: List[StreamSection] = []
    runtime_dir: Optional[Annotated[str, Meta(description="where the ipc sockets go")]] = None
    state_dir: Optional[str] = None
    endpoints: EndpointsSection = EndpointsSection()
    curve: Optional[CurveSection] = None
    insecure_tcp: Annotated[bool, Meta(description="allow tcp:// without CURVE (a lab bench only)")] = False
    group: Optional[Annotated[str, Meta(description="group of the frame rings (the apps that may read frames)")]] = None
    limits: LimitsSection = LimitsSection()
    request_workers: Annotated[int, Meta(ge=1, le=64)] = 1
    status_interval: Seconds = 5.0
    pin_engines: Annotated[bool, Meta(description="when the streams' engine threads leave cores over, run each "
                                      "engine process on cores of its own and lited's own threads on the rest")] = True
    # their Structs are below, each with what checks the fields that span them (parse_http, parse_uplink)
    http: Optional[Annotated["HttpSection", Meta(description="the HTTP front end (docs/http.md)")]] = None
    uplink: Optional[Annotated["UplinkSection", Meta(description="the MQTT uplink (docs/uplink.md)")]] = None


class _Where(Struct, kw_only=True, frozen=True):
    """What a client needs of the config to find the daemon (other fields ignored)."""
    runtime_dir: Optional[str] = None
    endpoints: EndpointsSection = EndpointsSection()


def json_schema() -> dict:
    """The config's JSON Schema, for editors (YAML and JSON language servers)."""
    schema = msgspec.json.schema(ConfigFile)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "lited config", **schema}


# -- checking against the schema --------------------------------------------------

def check_struct(c: Checker, value: Any, info: mi.StructType, path: str) -> None:
    """Every problem of `value` against a Struct type, each with its field path."""
    if not isinstance(value, dict):
        if path:
            c.add(path, f"expected an object, got {shown(value)}")
        else:
            c.problems.append(f"expected a mapping of fields (models:, streams:, ...), got {shown(value)}")
        return
    prefix = f"{path}." if path else ""
    fields = {f.encode_name: f for f in info.fields}
    if info.forbid_unknown_fields:
        c.unknown(value, fields, prefix)
    for key, f in fields.items():
        if key not in value:
            if f.required:
                c.add(prefix + key, "missing")
            continue
        _check_value(c, value[key], f.type, prefix + key)


def _check_value(c: Checker, value: Any, t: mi.Type, path: str) -> None:
    check: Optional[Callable] = None
    while isinstance(t, mi.Metadata):
        check = check or (t.extra or {}).get("check")
        t = t.type
    if isinstance(t, mi.UnionType) and t.includes_none:
        if value is None:
            return
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        t = rest[0] if len(rest) == 1 else mi.UnionType(tuple(rest))
        while isinstance(t, mi.Metadata):
            check = check or (t.extra or {}).get("check")
            t = t.type
    if check is None and isinstance(t, mi.UnionType):  # e.g. a bundle directory or an object: an object is checked as the Struct
        objects = [x for x in t.types if isinstance(x, (mi.StructType, mi.DictType))]
        others = [x for x in t.types if x not in objects]
        _check_value(c, value, objects[0] if isinstance(value, dict) and objects else others[0], path)
        return
    if check is not None:
        problems = check(value)
        for problem in [problems] if isinstance(problems, str) else problems or []:
            c.add(path, problem)
    elif isinstance(t, mi.StructType):
        check_struct(c, value, t, path)
    elif isinstance(t, mi.ListType):
        if not isinstance(value, list):
            c.add(path, f"expected a list, got {shown(value)}")
            return
        for i, item in enumerate(value):
            _check_value(c, item, t.item_type, f"{path}[{i}]")
    elif isinstance(t, mi.DictType):
        if not isinstance(value, dict):
            c.add(path, f"expected an object, got {shown(value)}")
            return
        for key, item in value.items():
            before = len(c.problems)
            _check_value(c, key, t.key_type, f"{path}.{key}")
            if len(c.problems) == before:
                _check_value(c, item, t.value_type, f"{path}.{key}")
    elif isinstance(t, (mi.IntType, mi.FloatType)):
        # Checker.number words it; its field path is `path` + the key "" of a one-value holder
        c.number({"": value}, "", path, integer=isinstance(t, mi.IntType), minimum=t.ge, maximum=t.le, above=t.gt)
    else:
        python = {mi.StrType: str, mi.BoolType: bool}.get(type(t))
        if python is not None and not has_type(value, python):
            c.add(path, f"expected {type_name(python)}, got {shown(value)}")


# -- what the daemon runs with ------------------------------------------------------

@dataclass
class StreamConfig:
    """One `streams[]` entry: a source, the model it runs, its ring and result settings."""
    name: str
    source: str
    model: str
    slots: int = SLOTS_DEFAULT
    stall_timeout: float = 5.0
    keep_results: int = 0
    policy: Optional[str] = None  # None: from the source ("queue" if lossless, else "latest")


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


def model_choice_problem(name: str, bundle: Any, settings: ModelSettings) -> Optional[str]:
    """Why `bundle` cannot run here as `models.<name>` asks (an engine or
    precision it lists no file for, or no engine of it installed), naming the
    config field; None if it can. `lited config check` and `lited serve` ask
    it, so the check says what the start would. (The files are not read again:
    loading the bundle checked them.)"""
    from lited.bundle import BundleError

    try:
        bundle.choose_all(settings.engine, settings.precision, check_file=False)
    except BundleError as exc:
        field = f"models.{name}" + (".engine" if settings.engine else ".precision" if settings.precision else "")
        return f"{field}: bundle {bundle.root}: {'; '.join(exc.problems)}"
    return None


@dataclass
class Config:
    """The daemon's config, typed and checked (every problem at once); `load_config` makes it."""
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
    file: Optional[ConfigFile] = None  # the typed file: later sections are read from here
    model_settings: dict = field(default_factory=dict)  # name -> ModelSettings
    max_inflight_bytes: int = 128 << 20
    engine_timeout: float = 20.0
    max_clients: int = 16
    pin_engines: bool = True


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


def client_runtime_dir() -> Path:
    """Where a client looks for the daemon when no config names the place:
    /run/lited whenever it exists (the service's, which an app in group lited
    may enter but not write: `default_runtime_dir` would send that app to its
    own /tmp/lited-<uid>), else where a daemon of this user would be."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.path.isdir("/run/lited"):
        return Path("/run/lited")
    return default_runtime_dir()


def default_state_dir() -> Path:
    """systemd's StateDirectory (/var/lib/lited/state for lited.service), else the same
    place for a daemon that may write there (root), else ~/.local/state/lited."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path("/var/lib/lited/state") if os.access("/var/lib/lited", os.W_OK) else \
        Path.home() / ".local/state/lited"


def _converted(raw: Any, cls: type, where: str) -> Any:
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:  # a rule the walk above does not word: msgspec's own words
        text, _, at = str(exc).rpartition(" - at `$")
        raise ConfigError(where, [f"{at.rstrip('`').lstrip('.')}: {text}" if text else str(exc)]) from None


def _endpoints(section: EndpointsSection, runtime_dir: Path, base: Path) -> Tuple[list, list]:
    """(pub, req) endpoints; a relative ipc:// path is relative to the config's folder (`base`),
    as every path of the config is (it was the daemon's working directory: `/` under systemd)."""
    def placed(endpoint: str) -> str:
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        if not path or path.startswith("@"):  # not ipc://, or an abstract socket
            return endpoint
        return f"ipc://{relative_to_config(base, path)}"

    def listed(value: Union[str, list, None], kind: str) -> list:
        if value is None:
            return [f"ipc://{runtime_dir}/{kind}.sock"]
        return [placed(e) for e in ([value] if isinstance(value, str) else value)]

    return listed(section.pub, "pub"), listed(section.req, "req")


def parse_config(raw: Any, path: Optional[Path] = None, base_dir: Optional[Path] = None) -> Config:
    """Check a config object; relative bundle paths are relative to `base_dir`
    (default: the config file's directory)."""
    where = str(path) if path else "<config>"
    c = Checker()
    check_struct(c, raw, mi.type_info(ConfigFile), "")
    if isinstance(raw, dict):
        _check_references(c, raw)
    if c.problems:
        raise ConfigError(where, c.problems)
    file = _converted(raw, ConfigFile, where)
    base = base_dir or (path.parent if path else Path.cwd())
    models, settings = {}, {}
    for name, entry in file.models.items():
        bundle = entry if isinstance(entry, str) else entry.bundle
        try:
            models[name] = bundle if os.path.isabs(bundle) else str((base / bundle).resolve())
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.10)
            c.add(f"models.{name}", f"{bundle!r} cannot be resolved ({first_line(exc)})")
            continue
        settings[name] = ModelSettings() if isinstance(entry, str) else \
            ModelSettings(entry.engine, entry.precision, entry.threads)
    only = next(iter(models)) if len(models) == 1 else None
    streams = [StreamConfig(s.name, s.source, s.model or only, s.slots, float(s.stall_timeout), s.keep_results,
                            s.policy) for s in file.streams]
    runtime_dir = Path(relative_to_config(base, file.runtime_dir) or default_runtime_dir())
    state_dir = Path(relative_to_config(base, file.state_dir) or default_state_dir())
    http = parse_http(c, file.http, file.limits.max_request_bytes) if file.http is not None else None
    uplink = parse_uplink(c, file.uplink, state_dir, base, [s.name for s in streams])
    if c.problems:
        raise ConfigError(where, c.problems)
    pub, req = _endpoints(file.endpoints, runtime_dir, base)
    curve = ({k: relative_to_config(base, v) for k, v in msgspec.structs.asdict(file.curve).items()}
             if file.curve else None)
    limits = file.limits
    inflight = limits.max_inflight_bytes if limits.max_inflight_bytes is not None else \
        max(128 << 20, limits.max_request_bytes)
    return Config(path, runtime_dir, state_dir, models, streams, pub, req,
                  curve, file.insecure_tcp, file.group, limits.max_request_bytes, limits.pub_hwm,
                  file.request_workers, float(file.status_interval), http, uplink, raw, file, settings,
                  max_inflight_bytes=inflight, engine_timeout=float(limits.engine_timeout),
                  max_clients=limits.max_clients, pin_engines=file.pin_engines)


def relative_to_config(base: Path, path: Optional[str]) -> Optional[str]:
    """A path of the config, relative to its directory (`base`) unless absolute;
    None and "" (absent) as they are."""
    return str(base / path) if path and not os.path.isabs(path) else path


def _check_references(c: Checker, raw: dict) -> None:
    """What one field cannot say alone: a stream's model is in models, stream
    names are unique, the in-flight budget holds one request."""
    limits = raw.get("limits") if isinstance(raw.get("limits"), dict) else {}
    inflight, max_req = limits.get("max_inflight_bytes"), limits.get("max_request_bytes", 16 << 20)
    if has_type(inflight, int) and has_type(max_req, int) and inflight < max_req:
        c.add("limits.max_inflight_bytes", f"{inflight} is less than limits.max_request_bytes ({max_req}): "
                                           "no request of the largest size could ever be served")
    models = raw.get("models") if isinstance(raw.get("models"), dict) else {}
    streams = raw.get("streams") if isinstance(raw.get("streams"), list) else []
    seen = set()
    for i, s in enumerate(streams):
        if not isinstance(s, dict):
            continue
        model, name = s.get("model"), s.get("name")
        if model is None and len(models) != 1:
            c.add(f"streams[{i}].model", "missing" if models else "missing (and models is empty)")
        elif isinstance(model, str) and model not in models:
            c.add(f"streams[{i}].model", f"'{model}' is not in models ({', '.join(sorted(models)) or 'none'})")
        if isinstance(name, str):
            if name in seen:
                c.add(f"streams[{i}].name", f"'{name}' is used twice")
            reserved = reserved_stream_problem(name)
            if reserved:
                c.add(f"streams[{i}].name", reserved)
            seen.add(name)


# -- reading the file ----------------------------------------------------------------

def read_config_file(path: Union[str, os.PathLike]) -> Any:
    """The file's contents as plain data: JSON, else YAML (duplicate keys refused)."""
    path = Path(path)
    try:
        text = read_capped(path, MAX_CONFIG_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["missing"]) from None
    except FileRefused as exc:  # a FIFO would block, /dev/zero would never end
        raise ConfigError(str(path), [exc.reason]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text ({exc})"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [exc.strerror or str(exc)]) from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)  # a key given twice: YAML's parse says where
    except RecursionError:
        raise ConfigError(str(path), ["not valid JSON (nested too deep)"]) from None
    except ValueError:
        pass
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(filter(None, (getattr(exc, "context", None), getattr(exc, "problem", None)))) or str(exc)
        what = " ".join(what.split())
        lines = text.splitlines()
        if mark is not None and mark.line < len(lines) and lines[mark.line][mark.column:mark.column + 1] == "\t":
            what += ": a tab (YAML indents with spaces)"  # libyaml's message does not say which character
        if what.endswith("is given twice"):  # JSON's too (json.loads took the last in silence)
            raise ConfigError(str(path), [f"{where}{what}"]) from None
        raise ConfigError(str(path), [f"{where}not valid YAML ({what})"]) from None


_LOADER: Optional[type] = None


def _loader() -> type:
    """yaml's safe loader (the C one when there) that refuses a key given twice."""
    global _LOADER
    if _LOADER is None:
        import yaml

        base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

        class UniqueKeyLoader(base):  # type: ignore[misc, valid-type]
            def construct_mapping(self, node, deep=False):  # noqa: ANN001 - yaml's signature
                seen = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if isinstance(key, (str, int, float, bool)) and key in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice",
                                                                key_node.start_mark)
                    seen.add(key)
                return super().construct_mapping(node, deep)

        _LOADER = UniqueKeyLoader
    return _LOADER


def load_config(path: Union[str, os.PathLike]) -> Config:
    """The config file read and checked (the first pass; what it names on this
    machine, the second, is lited/preflight.py)."""
    path = Path(path)
    return parse_config(read_config_file(path), path)


def client_endpoints(path: Union[str, os.PathLike]) -> Tuple[list, list]:
    """(pub, req) endpoints of the daemon that runs with the config at `path`:
    what `lited ctl --config` and `Client(config=...)` connect to. Only
    runtime_dir and endpoints are read (and checked)."""
    path = Path(path)
    raw = read_config_file(path)
    c = Checker()
    check_struct(c, raw, mi.type_info(_Where), "")
    if c.problems:
        raise ConfigError(str(path), c.problems)
    where = _converted(raw, _Where, str(path))
    runtime_dir = relative_to_config(path.parent, where.runtime_dir)
    return _endpoints(where.endpoints, Path(runtime_dir or client_runtime_dir()), path.parent)


# ---------------------------------------------------------------------------
# `http`: the HTTP front end (service/http.py, docs/config.md "http"). All of
# it is here, in one piece, so it can move into a config schema as a unit.
# ---------------------------------------------------------------------------
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


def address(host: str, port: int) -> str:
    """'host:port', an IPv6 host in brackets ('[::]:24401')."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def _overlap(a: tuple, b: tuple) -> bool:
    """Would binding listen addresses `a` and `b` (host, port) collide? The same
    port (not 0) and the same address, `localhost` being 127.0.0.1 and ::1, or a
    wildcard (0.0.0.0, ::) beside any address of its family."""
    if a[1] != b[1] or a[1] == 0:
        return False

    def ips(host: str) -> set:
        return {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} if host == "localhost" \
            else {ipaddress.ip_address(host)}
    return any(x == y or (x.version == y.version and (x.is_unspecified or y.is_unspecified))
               for x in ips(a[0]) for y in ips(b[0]))


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _listen_problems(value: Any) -> List[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        return [f"expected 'HOST:PORT' or a list of them, got {shown(value)}"]
    return [f"{shown(v)} is not HOST:PORT with an IP address (or localhost) and a port from 0 to 65535"
            for v in values if not isinstance(v, str) or parse_listen(v) is None]


def _token_problem(value: Any) -> Optional[str]:
    if isinstance(value, str) and len(value) >= MIN_TOKEN_CHARS and value.isascii() and value.isprintable() \
            and " " not in value:  # ASCII: HTTP headers carry bytes, and a client's é never matched the config's
        return None
    return f"expected at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces"


class HttpSection(Section):
    """The HTTP front end, field by field (docs/config.md "http"); parse_http
    checks what spans fields and fills the defaults that follow others."""
    listen: Annotated[Union[str, Annotated[List[str], Meta(min_length=1)]], Meta(extra={"check": _listen_problems}, description=(
        "HOST:PORT (HOST an IP address, [v6] or localhost; port 0: any free one), or a list of them"))] \
        = HTTP_DEFAULT_LISTEN
    token: Optional[Annotated[str, Meta(extra={"check": _token_problem}, description=(
        f"the bearer token, at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces; "
        "required when any listen address is not loopback"))]] = None
    max_body_bytes: Optional[Annotated[int, Meta(ge=1024, le=1 << 30, description=(
        "one request body (default: limits.max_request_bytes)"))]] = None
    body_budget_bytes: Optional[Annotated[int, Meta(ge=1024, le=1 << 34, description=(
        f"all request bodies in flight, each counted {BODY_COPIES} times; at least "
        f"{BODY_COPIES} x max_body_bytes (the default)"))]] = None
    max_live_clients: Annotated[int, Meta(ge=0, le=1000, description="MJPEG clients, all streams together")] = 10
    live_fps: Annotated[float, Meta(gt=0, le=120, description="live frames per second per stream at most")] = 10.0
    max_event_clients: Annotated[int, Meta(ge=0, le=1000, description="server-sent-events clients")] = 20
    metrics_public: Annotated[bool, Meta(description="/metrics without the token")] = False


def parse_http(c: Checker, section: HttpSection, max_request_bytes: int) -> Optional[HttpConfig]:
    """The `http` section, its fields already checked: what spans them (listen
    addresses that collide, a token for a non-loopback address, the budget
    against the body size); problems go to `c`, None when it has any."""
    before = len(c.problems)
    listen: list = []
    for value in [section.listen] if isinstance(section.listen, str) else section.listen:
        parsed = parse_listen(value)
        clash = next((address(*other) for other in listen if _overlap(parsed, other)), None)
        if clash:
            c.add("http.listen", f"{value} overlaps {clash}: both cannot be bound")
        else:
            listen.append(parsed)
    remote = [address(h, p) for h, p in listen if not is_loopback(h)]
    if remote and section.token is None:
        c.add("http.token", f"needed: {', '.join(remote)} is not a loopback address "
                            "(clients send 'Authorization: Bearer <token>')")
    max_body = section.max_body_bytes if section.max_body_bytes is not None else max_request_bytes
    budget = section.body_budget_bytes if section.body_budget_bytes is not None else BODY_COPIES * max_body
    if budget < BODY_COPIES * max_body:
        c.add("http.body_budget_bytes", f"{budget} is below {BODY_COPIES} x http.max_body_bytes "
                                        f"({BODY_COPIES * max_body}): a body of the largest size could not be taken")
    if len(c.problems) > before:
        return None
    return HttpConfig(listen, section.token, max_body, budget, section.max_live_clients, float(section.live_fps),
                      section.max_event_clients, section.metrics_public)


# -- the `uplink` section (docs/uplink.md) ---------------------------------------------------------
# Kept in one block so it can move with the config format; it needs only the Checker, the state
# directory (default outbox place), the config's directory (relative paths) and the stream names.

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


UPLINK_LIVE = ("rules", "events")  # what a reload applies; every other field waits for a restart
UPLINK_FIELD_NAMES = {"outbox_dir": "outbox.dir", "outbox_max_bytes": "outbox.max_bytes"}


def uplink_restart_fields(old: Optional["UplinkConfig"], new: Optional["UplinkConfig"]) -> list:
    """The config fields of `uplink` that changed and need a restart (`uplink` itself when the
    section came or went): a reload took `ack` or `outbox.max_bytes` in silence."""
    if (old is None) != (new is None):
        return ["uplink"]
    if old is None or new is None:
        return []
    return [f"uplink.{UPLINK_FIELD_NAMES.get(name, name)}" for name in old.__dataclass_fields__
            if name not in UPLINK_LIVE and getattr(old, name) != getattr(new, name)]


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
    window_bytes: int
    resend_after: float
    outbox_dir: Path
    outbox_max_bytes: int
    status_interval: float
    events: bool
    requests: bool
    rules: dict                             # stream name or "*" -> UplinkRule

    def rule_for(self, stream: str) -> Optional[UplinkRule]:
        return self.rules.get(stream) or self.rules.get(ALL_STREAMS)


def _broker_problem(value: Any) -> Optional[str]:
    from lited.mqtt_link import LinkError, parse_url

    return _refusal(value, "a string", parse_url, LinkError)


def _device_problem(value: Any) -> Optional[str]:
    if value == SERVER_IDENTITY:
        return f"'{SERVER_IDENTITY}' is the servers' identity in the documented broker ACL"
    return name_problem(value)


# the uplink's credential files -> how messages name their fields
UPLINK_FILES = {key: f"uplink.{key}" for key in ("password_file", "ca", "cert", "key")}
_ack_problem = _one_of(lambda: UPLINK_ACK_MODES)
_attach_problem = _one_of(lambda: UPLINK_ATTACH)


class UplinkRuleSection(Section):
    """Which results of a stream go up, and with which images (docs/uplink.md)."""
    labels: Optional[Annotated[List[str], Meta(description="detections (or classes) with one of these labels "
                                                            "(default: every label)")]] = None
    min_score: Annotated[float, Meta(ge=0, le=1, description="... and at least this score")] = 0.0
    max_rate: Optional[Annotated[float, Meta(gt=0, le=1000, description="results per second of this stream "
                                             "at most (default: no limit)")]] = None
    attach: Annotated[Literal[UPLINK_ATTACH], Meta(extra={"check": _attach_problem}, description=(
        "'crops': a JPEG of each selected detection; 'frame': of the whole frame"))] = "none"
    margin: Annotated[float, Meta(ge=0, le=2, description="crops: the box grown by this fraction of its "
                                  "width and height on each side")] = 0.1
    jpeg_quality: Annotated[int, Meta(ge=1, le=100)] = 85
    max_crops: Annotated[int, Meta(ge=1, le=64, description="crops per result at most")] = 8


class OutboxSection(Section):
    dir: Optional[Annotated[str, Meta(description="where the outbox lives (default: <state_dir>/outbox)")]] = None
    max_bytes: Annotated[int, Meta(ge=64 << 10, le=1 << 40, description="its bound on disk; when full, the "
                                   "oldest records go first")] = 64 << 20


class UplinkSection(Section):
    """The MQTT uplink, field by field (docs/uplink.md); parse_uplink checks
    what needs the rest of the config (stream names, files, paho)."""
    broker: Annotated[str, Meta(extra={"check": _broker_problem},
                                description="mqtt://HOST[:PORT] (1883) or mqtts://HOST[:PORT] (8883, TLS)")]
    device: Annotated[str, Meta(extra={"check": _device_problem}, description=(
        "this board's id, a name (not 'cloud'): every topic is under lited/<device>/"))]
    username: Optional[Annotated[str, Meta(description="MQTT user name (default: device)")]] = None
    password_file: Optional[Annotated[str, Meta(description="a file whose first line is the MQTT password")]] = None
    ca: Optional[Annotated[str, Meta(description="mqtts://: the CA file that signed the broker's certificate "
                                                 "(default: the system's CAs)")]] = None
    cert: Optional[Annotated[str, Meta(description="a client certificate (with key)")]] = None
    key: Optional[Annotated[str, Meta(description="the client certificate's key (with cert)")]] = None
    keepalive: Annotated[int, Meta(ge=5, le=3600, description="seconds")] = 30
    ack: Annotated[Literal[UPLINK_ACK_MODES], Meta(extra={"check": _ack_problem}, description=(
        "when a record leaves the outbox: at the broker's PUBACK, or when lited cloud confirms it"))] = "broker"
    window: Annotated[int, Meta(ge=1, le=1000, description="records sent and not yet acknowledged, at most")] = 64
    window_bytes: Annotated[int, Meta(ge=64 << 10, le=1 << 30, description=(
        "bytes of records sent and not yet acknowledged, at most (one record is sent whatever its size)"))] = 1 << 20
    resend_after: Annotated[float, Meta(gt=0, le=3600, description="ack: cloud: seconds before an unconfirmed "
                                        "record is sent again")] = 10.0
    outbox: OutboxSection = OutboxSection()
    status_interval: Annotated[float, Meta(gt=0, le=86400, description="seconds between retained status "
                                           "messages")] = 60.0
    events: Annotated[bool, Meta(description="send the events of every stream and of the daemon")] = True
    requests: Annotated[bool, Meta(description="take remote requests on lited/<device>/req")] = True
    streams: Annotated[Dict[str, UplinkRuleSection], Meta(description=(
        "stream name (or '*' for every stream without its own rule) -> rule; a stream without one sends nothing"))] = {}


def _directory_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be a directory the daemon makes, or None (one that is
    there is taken, writable or not). Where it does not exist yet, a directory is made and removed at
    once in the deepest part that does (`nginx -t` opens its logs likewise):
    only trying tells /proc or a read-only mount from a writable place, as root."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path}: {'not a directory' if probe == path else f'{probe} is not a directory'}"
    if not os.access(probe, os.W_OK | os.X_OK) and probe != path:  # (one there that turned read-only, an SD card
        return f"{path}: {probe} is not writable"                      # remounted so: the uplink says so, serving on)
    if probe != path:
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".lited-check-", dir=probe))
        except OSError as exc:
            return f"{path}: cannot be made in {probe} ({exc.strerror or exc})"
    return None


def parse_uplink(c: Checker, section: Optional[UplinkSection], state_dir: Path, base: Path,
                 stream_names: list) -> Optional[UplinkConfig]:
    """The `uplink` section, its fields already checked: what needs the rest
    (the streams its rules name, its files, paho-mqtt); problems go to `c`."""
    if section is None:
        return None
    p = "uplink."
    before = len(c.problems)
    import importlib.util

    try:  # the client module itself: a paho without it (a broken install) is as good as none
        paho = importlib.util.find_spec("paho.mqtt.client")
    except ImportError:
        paho = None
    if paho is None:
        c.add("uplink", "needs paho-mqtt 2.x, which is not installed (pip install 'lited[mqtt]')")
    from lited.mqtt_link import BrokerSettings, LinkError, file_problem

    files = {}
    for key, named in UPLINK_FILES.items():
        value = getattr(section, key)
        if value is not None:
            value = value if os.path.isabs(value) else str((base / value).resolve())
            problem = file_problem(value)
            if problem:
                c.add(named, f"{value}: {problem}")
        files[key] = value
    if (files["cert"] is None) != (files["key"] is None):
        c.add(p + ("key" if files["key"] is None else "cert"), "cert and key go together")
    if len(c.problems) == before:  # the files are there: read them as TLS will (not PEM, a key of another cert)
        try:
            BrokerSettings(section.broker, files["ca"], files["cert"], files["key"], None, files["password_file"],
                           names=UPLINK_FILES).check()
        except LinkError as exc:
            c.add(exc.field or p + "broker", exc.detail)
    outbox_dir = Path(relative_to_config(base, section.outbox.dir)) if section.outbox.dir else state_dir / "outbox"
    if section.outbox.dir:
        problem = _directory_problem(outbox_dir)
        if problem:
            c.add(p + "outbox.dir", problem)
    rules = {}
    for stream, rule in section.streams.items():
        if stream != ALL_STREAMS and stream not in stream_names:
            c.add(f"{p}streams.{stream}", f"not a stream in streams ({', '.join(stream_names) or 'none'}) "
                                          f"nor '{ALL_STREAMS}'")
            continue
        rules[stream] = UplinkRule(frozenset(rule.labels) if rule.labels is not None else None,
                                   float(rule.min_score), float(rule.max_rate) if rule.max_rate is not None else None,
                                   rule.attach, float(rule.margin), rule.jpeg_quality, rule.max_crops)
    if len(c.problems) > before:
        return None
    outbox = section.outbox
    return UplinkConfig(section.broker, section.device,
                        section.username if section.username is not None else section.device,
                        files["password_file"], files["ca"], files["cert"], files["key"], section.keepalive,
                        section.ack, section.window, section.window_bytes, float(section.resend_after),
                        outbox_dir, outbox.max_bytes,
                        float(section.status_interval), section.events, section.requests, rules)
