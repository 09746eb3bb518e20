"""Live views for the HTTP front end: MJPEG of a stream, each frame with its own result.

A result names the ring slot of the frame it was computed from; a live view
reads exactly that frame (never "the newest frame" beside "the newest
result", which would put boxes one or two frames off), draws the result on
it and encodes one JPEG per result shared by every watcher. Each MJPEG part
carries that result as a header (`X-Lited-Result`), so a page can show the
text of the very frame it shows. A result whose frame the ring reused before
it could be read is skipped and counted.

Cost: nothing while nobody watches (`on_result` returns at once); the
encoder thread runs only while a stream has watchers, paced to `fps`, and
reads the frame into a buffer it keeps.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np

from lited.protocol import json_ready
from lited.service.render import draw_result

BOUNDARY = "litedframe"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
JPEG_QUALITY = 80
HEADER_KEYS = ("stream", "seq", "frame_ts", "model", "model_version", "task", "detections", "classes",
               "width", "height")


def result_header(result: dict) -> str:
    """A result as one header line (JSON, ASCII only, no timings or frame slot)."""
    shown = json_ready({k: result[k] for k in HEADER_KEYS if k in result})
    return json.dumps(shown, separators=(",", ":"), ensure_ascii=True)


def mjpeg_part(jpeg: bytes, result: dict) -> bytes:
    """One part of the multipart/x-mixed-replace body: headers, the JPEG, CRLF."""
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            f"X-Lited-Seq: {result['seq']}\r\nX-Lited-Result: {result_header(result)}\r\n\r\n")
    return b"".join((head.encode("ascii"), jpeg, b"\r\n"))


class LiveView:
    """One stream's MJPEG, made only while somebody watches.

    Threads: `on_result` is called by the stream's post thread; the encoder
    thread reads, draws and encodes; `join`, `leave` and `next_part` run on
    the front end's event loop, which `post` (call_soon_threadsafe) reaches."""

    def __init__(self, name: str, streams: dict, fps: float, post: Callable[..., Any]) -> None:
        self.name = name
        self.streams = streams          # the daemon's: name -> Stream (a reload may replace the Stream)
        self.period = 1.0 / fps
        self.post = post
        self.watchers = 0
        self.encoded = 0                # parts made
        self.overwritten = 0            # results skipped: their frame was gone before it was read
        self.latest: tuple = (-1, b"")  # (seq, part), loop thread only
        self._changed = asyncio.Event()  # replaced after every part (loop thread only)
        self._cond = threading.Condition()
        self._pending: Optional[dict] = None
        self._thread: Optional[threading.Thread] = None

    # -- stream side (post thread): must not block
    def on_result(self, result: dict) -> None:
        if not self.watchers:
            return
        with self._cond:
            self._pending = result
            self._cond.notify()

    # -- loop side
    def join(self) -> None:
        if not self.watchers:  # the last viewer's part may be long past: a new one waits for a fresh part
            self.latest = (-1, b"")
        with self._cond:
            self.watchers += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._encode_loop, name=f"live-{self.name}", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        with self._cond:
            self.watchers -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.watchers = 0
            self._cond.notify()

    async def next_part(self, after: int, timeout: float) -> Optional[tuple]:
        """(seq, part) newer than `after`, waiting up to `timeout` s; None if none came."""
        if self.latest[0] != after and self.latest[1]:
            return self.latest
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.latest

    def _publish(self, seq: int, part: bytes) -> None:
        self.latest = (seq, part)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- encoder thread
    def _encode_loop(self) -> None:
        buffer: Optional[np.ndarray] = None
        next_at = 0.0
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:  # pace first, then take the newest result: its frame is read at once
                time.sleep(delay)
            with self._cond:
                while self._pending is None and self.watchers > 0:
                    self._cond.wait(1.0)
                if self.watchers <= 0:
                    self._thread = None
                    self._pending = None
                    return
                result, self._pending = self._pending, None
            stream = self.streams.get(self.name)
            frame = stream.result_frame(result, buffer) if stream is not None else None
            if frame is None:
                self.overwritten += 1
                continue
            buffer = frame
            next_at = time.monotonic() + self.period
            draw_result(frame, result)
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                self.encoded += 1
                self.post(self._publish, result["seq"], mjpeg_part(jpeg.tobytes(), result))
