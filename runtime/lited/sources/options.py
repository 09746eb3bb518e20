"""Source URI parsing and option validation, shared by every kind.

A URI is `SCHEME://TARGET?name=value&...`. Each kind declares its options
as `{name: Option(parser, default)}`; a parser turns the text into a value
or raises ValueError saying what it expected, so every kind reports an
unknown or ill-typed option in the same one-line form.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Tuple
from urllib.parse import parse_qsl, unquote

from lited.sources.errors import SourceError

MAX_OPTIONS = 64  # a URI's options: far more than any kind has


class Option(NamedTuple):
    parse: Callable[[str], Any]
    default: Any


def split_uri(uri: str) -> Tuple[str, str, str]:
    """(scheme, target, query) of `uri`; the target is not unquoted."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not scheme:
        raise SourceError(uri, "not a URI: expected SCHEME://..., e.g. file:///videos/in.mp4")
    target, _, query = rest.partition("?")
    return scheme.lower(), target, query


def split_query(uri: str, query: str) -> List[Tuple[str, str, str]]:
    """(name, value, raw text) for each `name=value` in the query, in order:
    decoded by urllib.parse.parse_qsl (%XX and '+'), the raw text kept for
    options a kind passes on untouched (a camera's own URL)."""
    parts = [part for part in query.split("&") if part]
    for part in parts:
        if "=" not in part:
            raise SourceError(uri, f"option {unquote(part)!r} has no value (write {part}=VALUE)")
    if len(parts) > MAX_OPTIONS:
        raise SourceError(uri, f"{len(parts)} options: at most {MAX_OPTIONS}")
    decoded = parse_qsl(query, keep_blank_values=True, strict_parsing=False, separator="&")
    return [(name, value, part) for (name, value), part in zip(decoded, parts)]


def parse_options(uri: str, pairs: List[Tuple[str, str, str]], spec: Dict[str, Option]) -> Dict[str, Any]:
    """Validate `pairs` against `spec`; every option in `spec` gets a value."""
    values = {name: opt.default for name, opt in spec.items()}
    seen = set()
    for name, text, _ in pairs:
        if name not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise SourceError(uri, f"unknown option {name!r} (known: {known})")
        if name in seen:
            raise SourceError(uri, f"option {name!r} given twice")
        seen.add(name)
        try:
            values[name] = spec[name].parse(text)
        except ValueError as exc:
            raise SourceError(uri, f"option {name!r} must be {exc}, got {text!r}") from None
    return values


# Parsers: the ValueError text completes "option 'x' must be ...".

def flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("0 or 1 (or true/false, yes/no, on/off)")


def count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("a whole number >= 0")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise ValueError("a whole number > 0")
    return int(text)


def rate(text: str) -> float:
    """A frame rate; 0 means unpaced."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ValueError("a number >= 0")
    return value


MAX_SECONDS = 3600.0  # a timeout past an hour is a typo (1e9 would never fire), as the config's


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise ValueError(f"a number of seconds > 0 and at most {MAX_SECONDS:g}")
    return value


def size(text: str) -> Tuple[int, int]:
    """`WxH` -> (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) == 0 or int(h) == 0:
        raise ValueError("WxH like 640x480")
    return int(w), int(h)


def fourcc(text: str) -> str:
    if len(text) != 4 or not text.isascii() or not text.isprintable():
        raise ValueError("4 characters like MJPG or YUYV")
    return text


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(" or ".join(allowed))
        return text

    return parse
