"""Checking untrusted structured input: the manifest, the config, requests.

One helper so all three name a bad field the same way (`streams[0].slots:
expected an integer from 2 to 64, got 0`) and share one table of type names
and one rule for names. Standard library only: the installer's unpacker and
the SDK builder use it without the daemon's dependencies.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Optional

# One rule for bundle, model, stream and ring names: they become directory
# names (/var/lib/lited/bundles/<name>), shared-memory names and topics.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
MAX_TIMEOUT_S = 3600  # every lited timeout, in the config and on the command line
DAEMON_STREAM = "_daemon"  # the "stream" of the daemon's own events (docs/protocol.md): no stream's name
RESERVED_NAMES = frozenset({"current", "previous"})  # the installer's links beside a bundle's versions
NAME_RULE = ("may hold only ASCII letters, digits, '.', '_' and '-' (1 to 64 of them, not starting with '.' or '-', "
             "not 'current' or 'previous')")

# A bundle version becomes a directory name too (/var/lib/lited/bundles/<name>/<version>); '+' is allowed (semver).
VERSION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}\Z")
VERSION_RULE = "may hold only ASCII letters, digits, '.', '_', '+' and '-' (1 to 64 of them, not starting with '.', '+' or '-')"

TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
              bool: "true/false", bytes: "bin", type(None): "null"}


def name_problem(name: Any) -> Optional[str]:
    """Why `name` is not a valid name, or None when it is."""
    if not isinstance(name, str):  # `model: 3` was told the rule for the characters of a name
        return f"expected a name (text), got {shown(name)}"
    if NAME_RE.match(name) and name not in RESERVED_NAMES:
        return None
    return f"{name!r} {NAME_RULE}"


def version_problem(version: Any) -> Optional[str]:
    """Why `version` is not a valid bundle version, or None when it is."""
    if not isinstance(version, str):
        return f"expected a version (text), got {shown(version)}"
    if VERSION_RE.match(version) and version not in RESERVED_NAMES:
        return None
    return f"{version!r} {VERSION_RULE}"


class KeysGivenTwice:
    """json.loads' object_pairs_hook that notes each key given twice in an object (json takes
    the last one in silence); `keys` after the parse."""

    def __init__(self) -> None:
        self.keys: list = []

    def __call__(self, pairs: list) -> dict:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set = set()
            for key, _ in pairs:
                if key in seen:
                    self.keys.append(key)
                seen.add(key)
        return obj


def unique_keys(pairs: list) -> dict:
    """json.loads' object_pairs_hook that refuses a key given twice (ValueError)."""
    twice = KeysGivenTwice()
    obj = twice(pairs)
    if twice.keys:
        raise ValueError(f"{quoted(twice.keys[0])} is given twice")
    return obj


def type_name(t: Any) -> str:
    """'an integer', 'a number or null', ... for messages."""
    if isinstance(t, tuple):
        return " or ".join(dict.fromkeys(type_name(x) for x in t))
    return TYPE_NAMES.get(t, getattr(t, "__name__", str(t)))


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool; an int too large for a float is not)."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and (math.isfinite(v) if isinstance(v, float) else abs(v) < 2**1023))


def has_type(value: Any, types: Any) -> bool:
    """isinstance, where float also takes an int and bool is never a number."""
    types = types if isinstance(types, tuple) else (types,)
    if float in types:
        types = (*types, int)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def quoted(name: Any, limit: int = 64) -> str:
    """A name a client sent, as a message quotes it: 'cam0', cut after `limit`
    characters (a 60 KB stream name came back whole in its error)."""
    text = str(name)
    return f"'{text[:limit]}...'" if len(text) > limit else f"'{text}'"


class _Enough(Exception):
    """`shown` has written all it will show."""


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: short, one line, as JSON writes it. Written only as far
    as it is shown: a 601-byte YAML of nested aliases is 9^9 items, whose whole JSON took 4 GB."""
    parts: list = []
    room = [limit + 1]

    def emit(text: str) -> None:
        parts.append(text)
        room[0] -= len(text)
        if room[0] <= 0:
            raise _Enough

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            emit("{")
            for i, (k, x) in enumerate(v.items()):
                emit(", " if i else "")
                emit(json.dumps(k if isinstance(k, str) else str(k)) + ": ")
                walk(x)
            emit("}")
        elif isinstance(v, (list, tuple)):
            emit("[")
            for i, x in enumerate(v):
                emit(", " if i else "")
                walk(x)
            emit("]")
        else:
            try:
                emit(json.dumps(v[:limit + 1] if isinstance(v, str) else v))
            except (TypeError, ValueError):
                emit(type_name(type(v)))

    try:
        walk(value)
    except _Enough:
        pass
    text = "".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number_as_text(value: Any) -> str:
    """A hint when a number came as text: quoted, or YAML 1.1's `1.6e7` (it wants `1.6e+7`)."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return (" (text, not a number: unquote it; YAML reads 1e7 as text: write the digits, or 1.0e+7 where a "
            "fraction is taken)")


def choice_problem(value: Any, options: Iterable) -> Optional[str]:
    """Why `value` is not one of `options` (None if it is)."""
    options = tuple(options)
    if value in options:
        return None
    return f"unknown {shown(value)}, expected one of {', '.join(map(str, options))}"


class Checker:
    """Collects every problem at once, each prefixed with its field path."""

    def __init__(self) -> None:
        self.problems: list = []

    def add(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def get(self, obj: dict, key: str, path: str, types: Any, required: bool = True, default: Any = None) -> Any:
        """obj[key] if it has `types`; else a problem and `default`."""
        if key not in obj:
            if required:
                self.add(path + key, "missing")
            return default
        value = obj[key]
        if not has_type(value, types):
            self.add(path + key, f"expected {type_name(types)}, got {shown(value)}")
            return default
        return value

    def number(self, obj: dict, key: str, path: str, default: Any = None, *, integer: bool = False,
               minimum: Optional[float] = None, maximum: Optional[float] = None, above: Optional[float] = None,
               required: bool = False) -> Any:
        """A finite number (an integer if `integer`) in range; `default` when absent.
        `minimum`/`maximum` are inclusive, `above` exclusive."""
        if key not in obj:
            if required:
                self.add(path + key, "missing")
            return default
        value = obj[key]
        ok = is_number(value) and (not integer or float(value).is_integer() and not isinstance(value, float))
        ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        ok = ok and (above is None or value > above)
        if not ok:
            self.add(path + key, f"expected {range_text(integer, minimum, maximum, above)}, got {shown(value)}"
                                 f"{_number_as_text(value)}")
            return default
        return value

    def numbers(self, obj: dict, key: str, path: str, count: int) -> None:
        if key not in obj:
            return
        value = obj[key]
        if not isinstance(value, list) or not all(is_number(v) for v in value):
            self.add(path + key, f"expected {count} numbers, got {shown(value)}")
        elif len(value) != count:
            self.add(path + key, f"expected {count} numbers, got {len(value)}")

    def choice(self, obj: dict, key: str, path: str, options: Iterable, default: Any = None) -> Any:
        value = obj.get(key, default)
        options = tuple(options)
        problem = f"missing, expected one of {', '.join(map(str, options))}" if value is None and key not in obj \
            else choice_problem(value, options)
        if problem:
            self.add(path + key, problem)
            return None
        return value

    def name(self, obj: dict, key: str, path: str, required: bool = True) -> Optional[str]:
        return self._ruled(obj, key, path, required, name_problem)

    def version(self, obj: dict, key: str, path: str) -> Optional[str]:
        return self._ruled(obj, key, path, True, version_problem)

    def _ruled(self, obj: dict, key: str, path: str, required: bool,
               rule: Callable[[Any], Optional[str]]) -> Optional[str]:
        value = self.get(obj, key, path, str, required)
        problem = rule(value) if value is not None else None
        if problem:
            self.add(path + key, problem)
            return None
        return value

    def unknown(self, obj: dict, known: Iterable, path: str) -> None:
        """A problem per key of `obj` not in `known` (typos are caught, not ignored)."""
        known = set(known)
        for key in sorted(set(obj) - known, key=str):
            self.add(f"{path}{key}", f"unknown field (known: {', '.join(sorted(known))})")


def range_text(integer: bool, minimum: Optional[float], maximum: Optional[float], above: Optional[float]) -> str:
    what = "an integer" if integer else "a number"
    def num(v: float) -> str:
        return str(int(v)) if integer or float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"
    if above is not None:
        return f"{what} above {num(above)}" + (f" and at most {num(maximum)}" if maximum is not None else "")
    if minimum is not None and maximum is not None:
        return f"{what} from {num(minimum)} to {num(maximum)}"
    if minimum is not None:
        return f"{what} of at least {num(minimum)}"
    if maximum is not None:
        return f"{what} of at most {num(maximum)}"
    return what


def reserved_stream_problem(name: Any) -> Optional[str]:
    """Why `name`, valid by the name rule, still cannot name a stream, or None: it is the name of
    the daemon's own events, which its events would pass for (docs/protocol.md)."""
    return f"'{name}' is reserved for the daemon's own events" if name == DAEMON_STREAM else None


def image_input_problem(preprocess: dict, shape: list) -> Optional[str]:
    """Why `preprocess` cannot fill an image input of `shape` ([1, 3, H, W] for layout NCHW,
    [1, H, W, 3] for NHWC, -1 for a dynamic side), or None: at load and in the SDK builder,
    before the model is optimised."""
    layout = preprocess.get("layout", "NCHW")
    if len(shape) != 4:
        return f"inputs[0].shape: expected [1, 3, H, W] (or [1, H, W, 3] for layout NHWC), got {list(shape)}"
    channels = shape[1] if layout == "NCHW" else shape[3]
    if channels != 3:
        other, other_channels = ("NHWC", shape[3]) if layout == "NCHW" else ("NCHW", shape[1])
        hint = f" (preprocess.layout is {layout}; as {other} it has 3: set layout: {other})" \
            if other_channels == 3 else ""
        return f"inputs[0].shape: expected 3 colour channels, got {channels}{hint}"
    in_h, in_w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    mode = preprocess["resize"]["mode"]
    if (in_h == -1 or in_w == -1) and not (mode == "keep_ratio" or (mode == "fit_height" and in_h != -1)):
        return (f"preprocess.resize.mode: the input {list(shape)} is dynamic, which needs mode 'keep_ratio' "
                "(or 'fit_height' with a fixed height)")
    if mode == "fit_height" and in_w == -1 and not preprocess["resize"].get("widths"):
        return "preprocess.resize.widths: missing for a dynamic input width"
    return None
