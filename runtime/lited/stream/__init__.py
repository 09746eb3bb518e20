"""A stream: one source feeding one model, its frames in a shared-memory ring.

    ring.py      the frame ring (seqlocked slots in shared memory, leases, generations; apps read it too)
    capture.py   the capture loop: open, read into the ring, reconnect with backoff, rebuild the ring
    handoff.py   frames from capture to the model, each held until released: latest wins (or every one, lossless)
    feed.py      what a model runner may do with its stream: take frames, publish, report
    runner.py    the model runner: prep, infer and post threads around one engine process ("latest"/"queue")
    stats.py     counters, latency windows, fps, the stage timer
    stream.py    `Stream`, which wires them and keeps state, stall and status

Importing this package is cheap (apps import `lited.stream.ring`); `Stream`
is loaded on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Stream"]


def __getattr__(name: str) -> Any:
    if name == "Stream":
        from lited.stream.stream import Stream

        return Stream
    raise AttributeError(name)
