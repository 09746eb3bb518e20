"""Ask a network camera's server before OpenCV opens it.

OpenCV's FFmpeg backend opens one capture at a time in a process: a global
lock is held through the whole open, up to `lited_open_timeout`. A camera
that accepts the connection and never answers (a hung camera, a SIGSTOPped
server) then held every other stream's open, and a looping file's restart,
for that long (measured: a file stream frozen 18 s at each loop, live cameras
not back for 137 s while a dead one kept retrying). So the server is asked
first, with our own socket and no lock (`reachable`: RTSP `OPTIONS`, which
costs a camera nothing, HTTP `HEAD`, for https the connection only): one
that refuses or does not answer in time is refused here, saying which; one
that answers goes on to OpenCV. When FFmpeg then fails, saying only "cannot
open", `refusal` asks for the stream itself (RTSP `DESCRIBE`) for the
server's reason: no stream at that path (404), a password needed (401).
Anything unexpected (a reply that is not RTSP or HTTP, a connection closed
without a word) is left to FFmpeg: the probe refuses only what FFmpeg would
fail on too.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from lited.errors import printable

DEFAULT_PORTS = {"rtsp": 554, "http": 80, "https": 443}
SLICE = 0.1  # s between looks at `cancelled` while waiting
MAX_STATUS_LINE = 4096


def server_address(url: str) -> tuple:
    """(host, port) of a network URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError("no host")
    try:
        port = parts.port  # ValueError: "Port out of range 0-65535", or not a number
    except ValueError:
        port = 0
    if port == 0:  # urllib takes 0, and no server listens there
        raise ValueError(f"port {parts.netloc.rpartition(':')[2]!r}: expected 1 to 65535")
    return host, port or DEFAULT_PORTS[parts.scheme.lower()]


def reachable(url: str, timeout: float, cancelled: threading.Event) -> Optional[str]:
    """None when the server at `url` answers a cheap request (RTSP `OPTIONS`,
    HTTP `HEAD`; https: the connection) within `timeout` seconds, or when
    `cancelled` is set (the caller checks it); else why not, one phrase."""
    problem, _ = _exchange(url, "OPTIONS", timeout, cancelled)
    return problem


def refusal(url: str, timeout: float, cancelled: threading.Event) -> Optional[str]:
    """Why the server refuses the stream itself (RTSP `DESCRIBE`, HTTP `HEAD`):
    no such path, a password needed; None when it does not say. Asked after
    FFmpeg failed to open, whose own words are only "cannot open"."""
    problem, line = _exchange(url, "DESCRIBE", timeout, cancelled)
    if problem or not line:
        return None
    return _judge(line, urlsplit(url))


def _exchange(url: str, rtsp_method: str, timeout: float, cancelled: threading.Event) -> tuple:
    """(why the server cannot be asked, or None; the reply's status line, or None)."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host, port = server_address(url)
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r} ({exc.strerror})", None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setblocking(False)
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS):
            return _refused(where, err), None
        if not _wait(sock, deadline, cancelled, write=True):
            return (None if cancelled.is_set() else f"no answer from {where} within {timeout:g} s "
                                                    "(lited_open_timeout)"), None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return _refused(where, err), None
        if scheme == "https":
            return None, None  # a TLS handshake is FFmpeg's
        method = rtsp_method if scheme == "rtsp" else "HEAD"
        sock.sendall(_request(parts, method))
        line = _status_line(sock, deadline, cancelled)
    if line is None and not cancelled.is_set():
        return f"{where} accepted the connection but did not answer {method} within {timeout:g} s " \
               "(lited_open_timeout)", None
    return None, line


def _request(parts, method: str) -> bytes:
    netloc = parts.netloc.rpartition("@")[2]  # host[:port] as written, without the credentials
    if parts.scheme.lower() == "rtsp":  # no credentials on the wire: a 401 says the server wants them
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        return f"{method} {url} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: lited\r\n\r\n".encode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"HEAD {target} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: lited\r\nConnection: close\r\n\r\n".encode()


def _status_line(sock: socket.socket, deadline: float, cancelled: threading.Event) -> Optional[str]:
    """The reply's first line; "" for a connection closed without one; None past the deadline."""
    data = b""
    while b"\n" not in data and len(data) < MAX_STATUS_LINE:
        if not _wait(sock, deadline, cancelled, write=False):
            return None
        try:
            chunk = sock.recv(MAX_STATUS_LINE)
        except OSError:
            return ""
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("latin-1").strip()


def _judge(line: str, parts) -> Optional[str]:
    """Why a status line means the stream cannot open, or None (go on)."""
    words = line.split(" ", 2)
    if len(words) < 2 or not words[0].startswith(("RTSP/", "HTTP/")) or not words[1].isdigit():
        return None  # not a status line we know: FFmpeg decides
    code = int(words[1])
    said = f"'{code} {printable(words[2][:80])}'" if len(words) > 2 and words[2] else f"'{code}'"  # the server's words
    if code < 400 or code in (405, 501):  # answered (HEAD or DESCRIBE not allowed: still a live server)
        return None
    if code == 401:
        return None if parts.username else \
            f"the server asks for a user and password ({said}): write {parts.scheme}://USER:PASSWORD@{parts.netloc}..."
    if code == 404:
        return f"the server has no stream at {parts.path or '/'} ({said})"
    return f"the server answered {said}"


def _refused(where: str, err: int) -> str:
    if err == errno.ECONNREFUSED:
        return f"connection refused by {where} (nothing listening there: the camera or its service is down)"
    return f"cannot connect to {where}: {os.strerror(err)}"


def _wait(sock: socket.socket, deadline: float, cancelled: threading.Event, write: bool) -> bool:
    """True when `sock` is ready; False past the deadline or once cancelled."""
    poller = select.poll()  # not select(): a descriptor past 1023 (the daemon's limit is raised) is refused
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    while not cancelled.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(min(left, SLICE) * 1000):
            return True
    return False
