"""A subscriber in its own process: collects a stream's results until the
stream ends (or `--count` results), optionally reading each result's frame
from shared memory the moment the result arrives.

    python tests/subscriber_process.py PUB_ENDPOINT STREAM OUT.json [--frames] [--ready FILE] [--count N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from lited.client import FrameOverwritten, RingGone, Subscriber


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("stream")
    ap.add_argument("out", type=Path)
    ap.add_argument("--frames", action="store_true", help="read each result's frame; record its md5")
    ap.add_argument("--ready", type=Path, help="touch this file once subscribed")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--count", type=int, default=0, help="stop after this many results (0: at the end)")
    args = ap.parse_args()
    seqs, digests, overwritten, gone = [], {}, 0, 0
    # check=False: the stream may be added (SIGHUP) after this subscriber is ready
    with Subscriber(args.endpoint, streams=[args.stream], events=True, check=False) as sub:
        time.sleep(0.3)  # let the subscription reach the publisher
        if args.frames:  # what came meanwhile is not read on arrival: drop it
            while sub.recv(timeout=0) is not None:
                pass
        if args.ready:
            args.ready.touch()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not (args.count and len(seqs) >= args.count):
            msg = sub.recv(timeout=1.0)
            if msg is None:
                continue
            if msg["type"] == "event":
                if msg.get("stream") == args.stream and msg.get("state") == "ended":
                    break
                continue
            seqs.append(msg["seq"])
            if args.frames:
                try:
                    digests[msg["seq"]] = hashlib.md5(sub.frame(msg).tobytes()).hexdigest()
                except FrameOverwritten:
                    overwritten += 1
                except RingGone:
                    gone += 1
    args.out.write_text(json.dumps({"seqs": seqs, "digests": digests, "overwritten": overwritten, "gone": gone}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
