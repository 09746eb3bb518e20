"""Logging to journald with structured fields, or to stderr as one line per record.

Log calls name the stream, bundle and event they are about with
`extra={"stream": "cam0", "bundle": "face", "event": "source_lost"}`. In the
journal these become STREAM=, BUNDLE=, EVENT= fields, so an operator can
`journalctl -u lited STREAM=cam0` or `EVENT=source_lost` instead of grepping
text; on stderr they are appended as key=value.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Union

from lited.errors import printable

try:
    from systemd.journal import JournalHandler
except ImportError:  # pragma: no cover - systemd-python is absent off Linux
    JournalHandler = None

#: `extra=` keys that become journal fields (upper-cased) and stderr key=value pairs.
FIELDS = ("stream", "bundle", "event")

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def stderr_is_journal() -> bool:
    """True when our stderr is the journal stream systemd connected us to.

    systemd sets JOURNAL_STREAM=<dev>:<inode> of that stream; comparing it with
    fd 2 (as systemd.exec(5) advises) keeps a child whose stderr was
    redirected, e.g. `lited serve 2>file` run from a unit's shell, on stderr.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:  # sys.stderr's own descriptor: lited.quiet moves it off fd 2, which then goes to /dev/null
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def journald_available() -> bool:
    """Whether records should go to journald rather than stderr."""
    if JournalHandler is None:
        return False
    if stderr_is_journal():
        return True
    # Under systemd (INVOCATION_ID is set for every unit) with stdout/stderr
    # pointed elsewhere: the native socket still reaches journald.
    return bool(os.environ.get("INVOCATION_ID")) and os.path.exists(JOURNAL_SOCKET)


class StructuredJournalHandler(JournalHandler or logging.Handler):  # type: ignore[misc]
    """JournalHandler that sends only well-formed fields.

    The stock handler forwards every LogRecord attribute under its Python
    name; journald drops the lower-case ones, so extra={"stream": ...} would
    be lost. Here FIELDS are sent upper-cased and nothing else is added.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(self._extra)
            for key in FIELDS:
                value = getattr(record, key, None)
                if value is not None:
                    fields[key.upper()] = str(value)
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                fields["EXCEPTION_TEXT"] = record.exc_text
            self.send(printable(record.getMessage()),
                      PRIORITY=str(self.map_priority(record.levelno)),
                      LOGGER=record.name,
                      THREAD_NAME=record.threadName,
                      CODE_FILE=record.pathname,
                      CODE_LINE=record.lineno,
                      CODE_FUNC=record.funcName,
                      **fields)
        except Exception:
            self.handleError(record)


class CompactFormatter(logging.Formatter):
    """`2026-12-05 12:00:01.234 W lited.stream: message stream=cam0 event=source_lost`: the date
    too, for a `lited serve 2>>file` that runs for days."""

    def __init__(self, debug: bool = False) -> None:
        where = " [%(threadName)s %(filename)s:%(lineno)d]" if debug else ""
        super().__init__(f"%(asctime)s.%(msecs)03d %(levelname).1s %(name)s{where}: %(message)s",
                         datefmt="%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)  # one line whatever it quotes (a traceback follows apart)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{key}={getattr(record, key)}" for key in FIELDS if getattr(record, key, None) is not None]
        if pairs:
            head, _, tail = line.partition("\n")  # keep a traceback below the fields
            line = head + " " + " ".join(pairs) + ("\n" + tail if tail else "")
        return line


def setup_logging(level: Union[int, str] = logging.INFO, debug: bool = False,
                  identifier: str = "lited") -> logging.Handler:
    """Route the root logger to journald or stderr; returns the handler used.

    `debug` forces DEBUG and adds thread and file:line to stderr lines (the
    journal always carries CODE_FILE/CODE_LINE/THREAD_NAME). Calling it again
    replaces the handler it installed before, so a reload may change level.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_lited", False)]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if journald_available():
        handler = StructuredJournalHandler(SYSLOG_IDENTIFIER=identifier)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(CompactFormatter(debug=debug))
    handler._lited = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else _level(level))
    return handler


def _level(level: Union[int, str]) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level '{level}'")
    return value
