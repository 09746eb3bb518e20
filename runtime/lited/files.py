"""Reading files named by untrusted input: regular files only, size-capped.

Why: a bundle, a config or an image path may name a FIFO (an `open()` that
never returns: a wedged request worker), a device such as `/dev/zero` (a
read that grows the daemon by a gigabyte a second) or a file far larger than
anything legitimate. Every such read goes through `open_regular`/`read_capped`:
opened with O_NONBLOCK (a FIFO or device never blocks the open), checked with
`fstat` on the descriptor actually read (not a path checked earlier), and read
no further than its cap. Standard library only.
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

CHUNK = 1 << 20
MAX_MODEL_BYTES = 2 << 30  # a model file: read whole into memory once, hashed, handed to its engine


class FileRefused(OSError):
    """Not a regular file, or over its size cap. str() is one line naming the
    file; `reason` is the same without it."""

    def __init__(self, path: "str | os.PathLike", reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def unreadable(exc: OSError) -> str:
    """Why a file could not be read, without its name (which the caller says once): a refusal's
    reason, else the system's words ("Too many levels of symbolic links", not "[Errno 40] ...")."""
    if isinstance(exc, FileRefused):
        return exc.reason
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return exc.strerror.lower() if exc.strerror else str(exc)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def open_regular(path: "str | os.PathLike", limit: int | None = None,
                 bundle_root: "str | os.PathLike | None" = None) -> BinaryIO:
    """`path` opened for reading, if it is a regular file of at most `limit`
    bytes (None: any size); FileRefused otherwise, FileNotFoundError if absent.
    With `bundle_root`, the file opened must be one inside it: a name checked
    first and opened after could be a link swapped in between, out to any
    file the daemon may read (its contents then served as labels). The
    descriptor is blocking again once checked, so reads behave as usual."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"not a regular file ({_kind(st.st_mode)})")
        if bundle_root is not None and not _opened_inside(st, path, bundle_root):
            raise FileRefused(path, "links out of the bundle")
        if limit is not None and st.st_size > limit:
            raise FileRefused(path, f"{st.st_size} bytes, over the limit of {_mib(limit)}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _opened_inside(opened: os.stat_result, path: "str | os.PathLike", root: "str | os.PathLike") -> bool:
    """Whether the file opened (its fstat) is the one `path` names inside `root` now: the links
    under `root` followed by hand, each staying inside (realpath also resolved `root`, which may be
    reached by a path that resolves elsewhere: /proc/PID/root/...), and the same file there (a link
    swapped back after the open leaves a path inside that is another file)."""
    rel = os.path.relpath(path, root)
    inside = _resolve_inside(os.fspath(root), rel.split(os.sep))
    if inside is None:
        return False
    try:
        there = os.stat(inside)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (opened.st_dev, opened.st_ino)


def _resolve_inside(root: str, parts: list) -> "str | None":
    """`root` joined with `parts`, the symbolic links among them followed, or None where a link
    or `..` leads out of `root`."""
    resolved: list = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            target = os.readlink(candidate)
            if hops > 40:
                return None
            if os.path.isabs(target):  # inside only if it lands under the root as this system resolves both
                real, base = os.path.realpath(target), os.path.realpath(root)
                if os.path.commonpath([real, base]) != base:
                    return None
                resolved, target = [], os.path.relpath(real, base)
            parts = target.split(os.sep) + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def read_capped(path: "str | os.PathLike", limit: int, bundle_root: "str | os.PathLike | None" = None) -> bytes:
    """The whole of regular file `path` if it holds at most `limit` bytes
    (also when it grows while being read); FileRefused otherwise (and, with
    `bundle_root`, for a file that is not inside it: `open_regular`)."""
    with open_regular(path, limit, bundle_root) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(path, f"grew past the limit of {_mib(limit)} while being read")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"
