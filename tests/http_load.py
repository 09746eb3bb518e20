"""A round of HTTP load on a running daemon, from its own process (so its CPU is its own):

    python tests/http_load.py URL --stream cam --infer-clients 50 --requests 10 --live-clients 10 IMAGE...

`--infer-clients` threads each POST `--requests` images to /v1/infer (taking
the IMAGE files in turn) while `--live-clients` threads read
/v1/streams/<stream>/live the whole time. Prints one JSON line: the status
codes, MJPEG parts each live client got, wall and CPU seconds of this process.
"""
from __future__ import annotations

import argparse
import collections
import json
import resource
import sys
import threading
import time

import requests


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--stream", required=True)
    ap.add_argument("--infer-clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--live-clients", type=int, default=10)
    args = ap.parse_args()
    bodies = [open(path, "rb").read() for path in args.images]
    codes: collections.Counter = collections.Counter()
    parts: list = []
    stop = threading.Event()
    live_open = threading.Barrier(args.live_clients + 1)

    def watch() -> None:
        n = 0
        try:
            with requests.get(f"{args.url}/v1/streams/{args.stream}/live", stream=True, timeout=30) as r:
                codes[f"live {r.status_code}"] += 1
                live_open.wait()
                for chunk in r.iter_content(65536):
                    n += chunk.count(b"\r\nX-Lited-Seq: ")
                    if stop.is_set():
                        break
        except requests.RequestException:
            codes["live error"] += 1
        parts.append(n)

    def infer(i: int) -> None:
        with requests.Session() as session:
            for k in range(args.requests):
                try:
                    r = session.post(f"{args.url}/v1/infer", data=bodies[(i + k) % len(bodies)], timeout=120)
                    codes[r.status_code] += 1
                except requests.RequestException as exc:
                    codes[f"error {type(exc).__name__}: {str(exc)[:160]}"] += 1

    watchers = [threading.Thread(target=watch) for _ in range(args.live_clients)]
    for w in watchers:
        w.start()
    live_open.wait(30)
    t0 = time.monotonic()
    clients = [threading.Thread(target=infer, args=(i,)) for i in range(args.infer_clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    wall = time.monotonic() - t0
    stop.set()
    for w in watchers:
        w.join(60)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"codes": {str(k): v for k, v in codes.items()}, "live_parts": parts, "wall_s": wall,
                      "cpu_s": usage.ru_utime + usage.ru_stime}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
