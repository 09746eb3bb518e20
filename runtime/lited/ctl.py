"""`lited ctl`: ask a running daemon, answer in a human table (or JSON with --json).

It finds the daemon the way every client does (lited.client.daemon_endpoints:
--endpoint, else the config the daemon runs with, --config or
/etc/lited/lited.conf, else the default runtime directory) and fails at once
when no daemon is there. Exit status: 0 done; 1 the daemon refused or the
reload failed; 2 bad usage or config; 3 no daemon answered (like `systemctl
status` for a stopped unit).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

from lited.cli_args import arg_number, arg_timeout
from lited.validate import MAX_TIMEOUT_S

EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3

#: Seconds to wait for a reply when --timeout is not given: a reload warms models up.
TIMEOUTS = {"ping": 10.0, "status": 10.0, "snapshot": 30.0, "reload": 300.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["ping", "status", "reload", "snapshot"])
    p.add_argument("--config", help="the daemon's config: its endpoints are where to ask "
                                    "(default /etc/lited/lited.conf if readable)")
    p.add_argument("--endpoint", help="the request endpoint itself (ipc://..., tcp://...)")
    p.add_argument("--json", action="store_true", help="the reply as one JSON object (for scripts)")
    p.add_argument("--timeout", type=arg_timeout, help="seconds to wait for the reply "
                                                 "(default: ping, status 10; snapshot 30; reload 300)")
    p.add_argument("--wait", type=arg_number(minimum=0, maximum=MAX_TIMEOUT_S), default=0, metavar="S",
                   help="wait up to S seconds for the daemon to come up (scripts that just started it)")
    p.add_argument("--model", help="reload: only this model (default: what SIGHUP does: re-read the config)")
    p.add_argument("--bundle", help="reload: load --model from this bundle directory instead of its configured one")
    p.add_argument("--force", action="store_true",
                   help="reload: swap even a bundle whose task or labels differ from the running one's")
    p.add_argument("--stream", help="snapshot: stream name (default: the only stream)")
    p.add_argument("-o", "--out", help="snapshot: JPEG file to write, '-' for stdout (default: STREAM.jpg)")


def endpoint_despite(error: Exception, config: Optional[str]) -> str:
    """The request endpoint when the config does not read (a YAML typo while the daemon runs on the
    text it read before): its top-level `runtime_dir:` line if it has one, else the default place.
    The error again (ConfigError) when the file is not there at all: nothing to go on."""
    from lited.config import DEFAULT_CONFIG, client_runtime_dir, relative_to_config

    path = config or DEFAULT_CONFIG
    try:
        text = open(path, encoding="utf-8", errors="replace").read(1 << 20)
    except OSError:
        raise error from None
    match = re.search(r"^\s*[{,]?\s*[\"']?runtime_dir[\"']?\s*:\s*[\"']?([^\s\"',#}]+)", text, re.M)
    runtime_dir = relative_to_config(Path(path).parent, match.group(1)) if match else client_runtime_dir()
    return f"ipc://{runtime_dir}/req.sock"


ACTION_OPTIONS = {"reload": ("model", "bundle", "force"), "snapshot": ("stream", "out")}


def usage_problem(args: argparse.Namespace) -> Optional[str]:
    """An option the action does not take (it was ignored in silence), or --bundle without --model."""
    for action, names in ACTION_OPTIONS.items():
        given = [n for n in names if getattr(args, n) not in (None, False)]
        if given and action != args.action:
            return f"ctl {args.action}: --{given[0]} is an option of ctl {action} only"
    if args.bundle is not None and args.model is None:
        return "ctl reload: --bundle needs --model (the key of the model to load it for)"
    return None


def run(args: argparse.Namespace) -> int:
    from lited.client import Client, ClientError, ConfigError, DaemonUnreachable, daemon_endpoints
    from lited.progress import Progress

    problem = usage_problem(args)
    if problem:
        raise ValueError(problem)  # a usage error: one line, exit 2

    try:
        endpoint = args.endpoint or daemon_endpoints(args.config)[1]
    except ConfigError as exc:  # a typo in the file the daemon was started from must not lock ctl out
        endpoint = endpoint_despite(exc, args.config)
        print(f"lited: warning: {exc}; asking the daemon at {endpoint}", file=sys.stderr)
    timeout = args.timeout or TIMEOUTS[args.action]
    with Client(endpoint, timeout=timeout) as client:
        try:
            if args.wait:
                with Progress(f"waiting for lited serve at {endpoint}"):
                    _wait_for(client, args.wait)
            if args.action == "reload":
                what = f"reloading {args.model or 'the config'}"
                with Progress(f"{what} (the new models warm up beside the running ones)"):
                    out = client.reload(args.model, args.bundle, timeout=timeout, force=args.force)
            elif args.action == "snapshot":
                out = _snapshot(client, args)
            else:
                t0 = time.perf_counter()
                out = client.ping() if args.action == "ping" else client.status()
                if args.action == "ping":
                    out["answered_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        except DaemonUnreachable as exc:
            print(f"lited: {args.action}: {exc.message}", file=sys.stderr)
            return EXIT_NOT_RUNNING
        except TimeoutError as exc:
            print(f"{exc} (is lited serve running, and not wedged? `systemctl status lited`)", file=sys.stderr)
            return EXIT_NOT_RUNNING
        except ClientError as exc:
            print(f"lited: {args.action}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    # with `snapshot -o -` stdout holds the JPEG: what was done goes to stderr
    where = sys.stderr if args.action == "snapshot" and out["written"] == "-" else sys.stdout
    if args.json:
        print(json.dumps(out, indent=None if args.action == "ping" else 2), file=where)
    else:
        print(HUMAN[args.action](out, endpoint), file=where)
    return 0


def _wait_for(client: Any, seconds: float) -> None:
    """Until the daemon answers a ping saying it is ready (its streams'
    models warm); DaemonUnreachable, TimeoutError or ClientError `refused`
    (its clients' places all taken) after `seconds`."""
    from lited.client import ClientError

    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.call("ping", timeout=max(0.2, min(5.0, deadline - time.monotonic()))).get("ready", True):
                return
        except (ClientError, TimeoutError) as exc:
            if getattr(exc, "code", "unreachable") not in ("unreachable", "refused") or time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"lited: the daemon at {client.endpoint} answers but was not ready "
                               f"within {seconds:g} s (its models are still warming up)")
        time.sleep(0.2)


def _snapshot(client: Any, args: argparse.Namespace) -> dict:
    stream = args.stream
    if stream is None:
        names = [s["stream"] for s in client.status()["streams"]]
        if len(names) != 1:  # bad usage: the command line says it in one line, exit 2
            raise ValueError(f"snapshot: --stream is needed: the daemon has {len(names)} streams "
                             f"({', '.join(names) or 'none'})")
        stream = names[0]
    snap = client.snapshot(stream)
    jpeg = snap.pop("jpeg")
    out = args.out or f"{stream}.jpg"
    if out == "-":
        sys.stdout.buffer.write(jpeg)
        sys.stdout.flush()
    else:
        try:
            with open(out, "wb") as fh:
                fh.write(jpeg)
        except OSError as exc:  # bad usage, in one line (it was Python's "[Errno 2] ...: 'x.jpg'")
            raise ValueError(f"snapshot: cannot write {out}: {exc.strerror or exc}") from None
    return {"written": out, "stream": stream, "seq": snap["seq"], "width": snap["width"], "height": snap["height"],
            "detections": len(snap["detections"]), "classes": len(snap["classes"]), "bytes": len(jpeg)}


# -- human output ------------------------------------------------------------------

def table(rows: list, header: tuple) -> str:
    """Columns padded to their widest cell, like `systemctl list-units`."""
    cells = [tuple(str(c) for c in header)] + [tuple("-" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}min" if minutes else "",
             f"{secs}s"]
    return " ".join(p for p in parts if p)


def human_ping(out: dict, endpoint: str) -> str:
    starting = "" if out.get("ready", True) else " (starting: models warming up)"
    return (f"lited {out['version']} (protocol {out['protocol']}) answers at {endpoint} "
            f"in {out['answered_ms']:.1f} ms{starting}")


def human_status(out: dict, endpoint: str) -> str:
    starting = "" if out.get("ready", True) else " (starting: models warming up)"
    lines = [f"lited {out['version']} (protocol {out['protocol']}) at {endpoint}: up {_duration(out['uptime_s'])}"
             f"{starting}, RSS {out['rss_mb']:.0f} MB + engine processes {out['engines_rss_mb']:.0f} MB"]
    reload = out.get("last_reload") or {}
    if reload:
        when = time.strftime("%H:%M:%S", time.localtime(reload["ts"]))
        lines.append(f"last reload {when}: " + (f"ok ({reload['models']})" if reload["ok"]
                                                 else f"FAILED: {reload['error']}"))
    if out.get("watchdog_stale"):
        lines.append(f"watchdog: no beat from {', '.join(out['watchdog_stale'])}")
    if out.get("http"):
        lines.append(f"http: listening on {', '.join(out['http']['listening'])}")
    up = out.get("uplink")
    if up:
        box = up["outbox"]
        lines.append(f"uplink: {up['broker']} as {up['device']}, " + ("connected" if up["connected"] else
                     f"NOT CONNECTED ({up['last_error'] or 'connecting'})") +
                     f"; outbox {box['queued']} queued, {box['dropped']} dropped"
                     # losses that only --json showed: refused (a full disk, a record too big), by the broker (ACL)
                     + "".join(f", {n} {what}" for n, what in ((box.get("refused"), "refused"),
                               ((up.get("counters") or {}).get("refused_by_broker"), "refused by the broker")) if n)
                     + (f", FAILING: {box['problem']}" if box.get("problem") else ""))
    lines += ["", table([(n, m.get("name"), m["version"], m["task"], m["bundle"]) for n, m in out["models"].items()],
                        ("MODEL", "BUNDLE", "VERSION", "TASK", "DIRECTORY"))]
    if out["streams"]:
        rows = []
        for s in out["streams"]:
            c = s["counters"]
            infer = (s.get("latency_ms") or {}).get("infer") or {}
            rows.append((s["stream"], s["state"] + (" (engine down)" if s.get("engine_down") else ""), f"{s['fps']:.1f}", c.get("inferred", 0), c.get("skipped", 0),
                         c.get("errors", 0), f"{infer['p50']:.1f} ms" if infer else None,
                         s["model"]["name"] if s.get("model") else None,
                         f"{s['model']['engine']} ({s['model']['device']})" + _restarts(c) if s.get("model") else None,
                         s["source"]))
        lines += ["", table(rows, ("STREAM", "STATE", "FPS", "INFERRED", "SKIPPED", "ERRORS", "INFER p50", "MODEL",
                                   "ENGINE", "SOURCE"))]
        details = [f"{s['stream']}: {s['detail']}" for s in out["streams"] if s.get("detail")]
        details += [f"{s['stream']}: engine down: {s['engine_down']}" for s in out["streams"] if s.get("engine_down")]
        lines += details
    else:
        lines += ["", "no streams (add some to the config, then `lited ctl reload`)"]
    return "\n".join(lines)


def _restarts(counters: dict) -> str:
    """`, 3 restarts` for a stream whose engine process was started again (a crash, a hang): an engine
    that keeps dying showed nowhere in the table (ERRORS counts the source's)."""
    n = counters.get("engine_restarts", 0)
    return f", {n} restart{'s' if n != 1 else ''}" if n else ""


def human_reload(out: dict, endpoint: str) -> str:
    line = f"reloaded {', '.join(out['reloaded']) or 'nothing'} in {out['took_ms'] / 1e3:.1f} s"
    started, stopped = out.get("started") or [], out.get("stopped") or []
    for word, names in (("restarted", [n for n in started if n in stopped]),  # a changed entry: in both lists
                        ("started", [n for n in started if n not in stopped]),
                        ("stopped", [n for n in stopped if n not in started])):
        if names:
            line += f"; {word} {', '.join(names)}"
    if out.get("removed"):
        line += f"; removed {', '.join(out['removed'])}"
    if out.get("needs_restart"):
        line += f"; changed in the config, applied at the next start: {', '.join(out['needs_restart'])}"
    return line


def human_snapshot(out: dict, endpoint: str) -> str:
    found = f"{out['detections']} detections" if out["detections"] or not out["classes"] else f"{out['classes']} classes"
    return f"{out['stream']} frame {out['seq']} ({out['width']}x{out['height']}, {found}) -> {out['written']}"


HUMAN: dict = {"ping": human_ping, "status": human_status, "reload": human_reload, "snapshot": human_snapshot}
