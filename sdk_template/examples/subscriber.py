#!/usr/bin/env python3
"""Print lited's live results with the client library (lited.client).

    python subscriber.py [--config FILE | --endpoint ipc:///run/lited/pub.sock] [--stream cam0] [--duration S] [--count N] [--frames]

With --frames it also reads each result's frame from shared memory, zero
copy, and prints its mean brightness: what an app that crops or records
the detected objects would do.

No daemon to talk to, one that refuses us, a socket served by a process we
must not trust, a config that cannot be read, or a stream the daemon does
not have: the library's one-line message on stderr, exit 2. Ctrl-C ends it
quietly (exit 130), and so does a reader that stops reading its output
(`| head`: exit 0).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from lited.client import ClientError, ConfigError, FrameOverwritten, RingGone, Subscriber, UntrustedPeer


def describe(result: dict) -> str:
    found = "; ".join(f"{d['label']} {d['score']:.2f} {','.join(str(round(v)) for v in d['box'])}"
                      + (f" {d['text']!r}" if "text" in d else "")  # a cascade's text stage read this
                      for d in result["detections"])
    found = found or "; ".join(f"{c['label']} {c['score']:.2f}" for c in result["classes"]) or "-"
    t = result["timings_ms"]
    return (f"{result['stream']} #{result['seq']} {result['model']}: {len(result['detections'])} found "
            f"[{found}] infer {t['infer']:.0f} ms, total {t['total']:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="the daemon's config: it says where its sockets are "
                                    "(default /etc/lited/lited.conf if readable)")
    ap.add_argument("--endpoint", help="PUB endpoint (default: from the config, else ipc://<runtime dir>/pub.sock)")
    ap.add_argument("--stream", action="append", help="stream(s) to follow (default: all)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--count", type=int, help="stop after this many results")
    ap.add_argument("--frames", action="store_true", help="also read each frame from shared memory")
    args = ap.parse_args()
    try:
        return follow(args)
    except (ClientError, ConfigError, UntrustedPeer) as exc:  # DaemonUnreachable and `refused` are ClientErrors
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head` had enough: no traceback, nor another one flushing stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def event_line(msg: dict) -> str:
    """`event STREAM KIND STATE DETAIL` as the C example prints it: `-` for what the event does not
    carry, a reload's `ok` as the state `ok` or `failed`."""
    state = msg.get("state") or {True: "ok", False: "failed"}.get(msg.get("ok")) or "-"
    return f"event {msg['stream']} {msg['event']} {state} {msg.get('detail') or '-'}"


def follow(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.duration if args.duration else None
    results = 0
    with Subscriber(args.endpoint, streams=args.stream, events=True, config=args.config) as sub:
        while (deadline is None or time.monotonic() < deadline) and (args.count is None or results < args.count):
            msg = sub.recv(timeout=0.5)
            if msg is None:
                continue
            if msg["type"] == "event":
                print(event_line(msg), flush=True)
                continue
            line = describe(msg)
            if args.frames:
                try:
                    with sub.frame_view(msg) as frame:  # read-only view into the daemon's ring: no copy
                        brightness = float(frame.mean())
                    line += f" brightness {brightness:.0f}"
                except (FrameOverwritten, RingGone) as exc:
                    line += f" (frame gone: {exc})"
            print(line, flush=True)
            results += 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
