"""A real RTSP server (GstRtspServer) for tests, run as its own process so a
test can SIGKILL it mid-stream (a camera dying without an end of stream),
SIGSTOP it (a camera that hangs) and start it again on the same port.

    python tests/rtsp_server.py PORT [PATH [WxH]]      prints "READY <port>" when serving

In tests: `server = RtspServer().start()`, then `server.url`, `server.kill()`,
`server.start()` (same port again), `server.stop()`.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from lited.sources.gst import keep_libgcc_unwinder

LAUNCH = (
    "( videotestsrc is-live=true pattern=ball"
    " ! video/x-raw,width={w},height={h},framerate=15/1"
    " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 threads=1"
    " ! rtph264pay name=pay0 pt=96 )"
)


def missing() -> Optional[str]:
    """Why this machine cannot run the server, or None when it can."""
    try:
        keep_libgcc_unwinder()  # before gi: see lited/sources/gst.py
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import Gst, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as exc:
        return f"PyGObject with the GstRtspServer typelib is missing ({exc})"
    Gst.init(None)
    for element in ("videotestsrc", "x264enc", "rtph264pay"):
        if Gst.ElementFactory.find(element) is None:
            return f"GStreamer element {element} is missing (gstreamer1.0-plugins-*)"
    return None


class RtspServer:
    """The server process, on localhost; port 0 picks a free one once."""

    def __init__(self, port: int = 0, path: str = "/test", size: str = "320x240") -> None:
        self.port = port
        self.path = path
        self.size = size  # WxH; may be changed between a kill and the next start
        self.proc: Optional[subprocess.Popen] = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = 15.0) -> "RtspServer":
        if self.proc is not None:
            raise RuntimeError("server already running")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), self.path, self.size],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"READY "):
            self.stop()
            self._log.seek(0)
            raise RuntimeError(f"RTSP server did not start: {line!r} {self._log.read()[-2000:]!r}")
        self.port = int(line.split()[1])
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig`; after SIGKILL the process is reaped and can be restarted."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(signal.SIGKILL)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(port: int, path: str, size: str = "320x240") -> None:
    keep_libgcc_unwinder()  # before gi: see lited/sources/gst.py
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    w, h = size.split("x")
    factory.set_launch(LAUNCH.format(w=w, h=h))
    factory.set_shared(True)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"FAILED to listen on 127.0.0.1:{port}", flush=True)
        sys.exit(1)
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "/test", sys.argv[3] if len(sys.argv) > 3 else "320x240")
