"""The errors every source raises, and URI redaction for their messages."""
from __future__ import annotations

import re
from typing import Optional, Tuple

Shape = Tuple[int, int, int]

_PASSWORD = re.compile(r"(://[^/:@?#]*:)[^/@?#]*@")
# cameras that take their credentials in the query (`...?user=admin&password=...`)
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|pwd|pass|token|access_token|secret|key|auth)=)[^&#]*", re.I)


def redact(uri: str) -> str:
    """The URI with any password masked (userinfo, and query parameters that
    name a secret): messages end up in logs, and status is readable by any
    local user over loopback HTTP."""
    return _SECRET_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", uri))


class SourceError(Exception):
    """A source cannot be parsed, opened or read; one line naming the URI."""

    def __init__(self, uri: str, detail: str) -> None:
        self.uri = uri
        self.detail = " ".join(str(detail).split())
        super().__init__(f"source {redact(uri)!r}: {self.detail}")


class FrameShapeChanged(SourceError):
    """The stream's frame size changed; reallocate `out` with `new_shape`.

    The frame that revealed the change is kept and delivered by the next
    `read_into` with a buffer of `new_shape`, so nothing is lost.
    """

    def __init__(self, uri: str, old_shape: Optional[Shape], new_shape: Shape) -> None:
        self.old_shape = old_shape
        self.new_shape = new_shape
        super().__init__(uri, f"frame shape changed from {old_shape} to {new_shape}")


class FrameUnreadable(SourceError):
    """One frame could not be read (a still that does not decode); the source
    itself is fine and the next `read_into` goes on with the frame after it.
    `out` is untouched."""
