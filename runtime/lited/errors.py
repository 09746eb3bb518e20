"""How a failure is shown: one line, never a traceback."""
from __future__ import annotations

import argparse
import encodings.unicode_escape  # noqa: F401 - loaded now: at the open-files limit a lazy import of it failed in
import re                         # every log line (a flood of `--- Logging error ---` tracebacks)
from typing import List, NoReturn, Optional

GLOG = re.compile(r"^\[([FEWI]) [\d/]+ [\d:. ]+ [^\]]*\]\s*")  # Paddle Lite's (glog's) line prefix
# Line breaks and other control characters text from outside may hold (a manifest key, a camera's reason phrase).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`): a line break
    would forge a log line, an ESC sequence rewrite an operator's terminal."""
    return CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def glog_fatal(lines: List[str]) -> Optional[str]:
    """The message of the first fatal (`F`) glog line among `lines` (stripped), which Paddle Lite and
    paddle_lite_opt write just before they abort; it may sit on the next line."""
    for i, line in enumerate(lines):
        match = GLOG.match(line)
        if match and match.group(1) == "F":
            return line[match.end():] or (lines[i + 1] if i + 1 < len(lines) else "")
    return None


OUT_OF_MEMORY = ("out of memory (MemoryError): the process's address-space limit (ulimit -v, prlimit --as) "
                 "or the board's RAM")
NO_THREAD = ("can't start new thread: out of memory for its stack (ulimit -v, prlimit --as) or over the "
             "threads limit (ulimit -u, a unit's TasksMax)")


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (C++ backends add hints and
    file:line after it), or its type when it has none (a bare MemoryError
    says what runs out, as `MemoryError` alone was read as the model's fault)."""
    text = str(exc).strip()
    if not text and isinstance(exc, MemoryError):
        return OUT_OF_MEMORY
    return text.splitlines()[0] if text else type(exc).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse whose bad usage is one line on stderr and exit 2, as every other
    bad input is (argparse's own printed the whole usage before it)."""

    def error(self, message: str) -> NoReturn:  # named as the program's other errors are (build_sdk: ...)
        self.exit(2, f"{self.prog.removesuffix('.py')}: {message} (see {self.prog} --help)\n")
