"""How a failure is shown: one line, never a traceback."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (C++ backends add hints and
    file:line after it), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
