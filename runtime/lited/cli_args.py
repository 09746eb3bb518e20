"""argparse types for lited's commands: a command-line value that cannot work is
refused in the config's words (`expected an integer from 1 to 256, got '-3'`), a
usage error (exit 2), never silently odd behaviour."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

from lited.validate import MAX_TIMEOUT_S, is_number, name_problem, range_text, reserved_stream_problem


def arg_number(integer: bool = False, minimum: Optional[float] = None, maximum: Optional[float] = None,
               above: Optional[float] = None) -> Callable[[str], Any]:
    """An argparse `type` for a number in range (whole if `integer`)."""
    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        if value is None or not is_number(value) or (minimum is not None and value < minimum) \
                or (maximum is not None and value > maximum) or (above is not None and value <= above):
            raise argparse.ArgumentTypeError(f"expected {range_text(integer, minimum, maximum, above)}, "
                                             f"got {text!r}")
        return value
    return parse


def arg_name(text: str) -> str:
    """An argparse `type` for a name (a stream's, say): the one name rule."""
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def arg_stream_name(text: str) -> str:
    """An argparse `type` for a stream's name: the name rule, and not the name of the daemon's own events."""
    problem = reserved_stream_problem(arg_name(text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def arg_timeout(text: str) -> float:
    """An argparse `type` for a timeout in seconds: above 0 and at most MAX_TIMEOUT_S, as every lited timeout."""
    return arg_number(above=0, maximum=MAX_TIMEOUT_S)(text)


def arg_engine(text: str) -> str:
    """An argparse `type` for an engine name: one of the registry's (else "no file for foo" came later)."""
    from lited.engines import ENGINES  # only when --engine is given: the registry imports every engine module

    if text not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {text!r}, expected one of {', '.join(ENGINES.kinds())}")
    return text
