"""The `lited` command.

Every bad input (bundle, image, URI, config) ends in one line on stderr and
exit code 2; a traceback only with `--debug`. Heavy modules (Paddle Lite,
OpenCV) are imported inside the commands that need them, so `lited --help`
and errors found early stay fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A bad input found by the CLI itself (a file that is not an image, ...)."""


def _read_image(path: str) -> Any:
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise UsageError(f"{path}: not a readable image")
    return image


def _rounded(result: dict) -> dict:
    """JSON-friendly: boxes to 0.1 px, scores to 1e-4, times to 1 us."""
    out = dict(result)
    out["detections"] = [{**d, "score": round(d["score"], 4), "box": [round(v, 1) for v in d["box"]]}
                         for d in result["detections"]]
    out["classes"] = [{**c, "score": round(c["score"], 4)} for c in result["classes"]]
    if "timings_ms" in result:
        out["timings_ms"] = {k: round(v, 3) for k, v in result["timings_ms"].items()}
    return out


def format_result(result: dict, as_json: bool) -> str:
    """One JSON line, or a short human table."""
    if as_json:
        return json.dumps(_rounded(result), separators=(", ", ": "))
    where = result.get("image") or f"{result.get('stream', '')} #{result.get('seq', '')}"
    lines = [f"{where}  [{result['task']}]"]
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        lines.append(f"  {d['label']:<20} {d['score']:.3f}  box {x1:.0f},{y1:.0f} - {x2:.0f},{y2:.0f}")
    for c in result["classes"]:
        lines.append(f"  {c['label']:<20} {c['score']:.3f}")
    if not result["detections"] and not result["classes"]:
        lines.append("  (nothing found)")
    t = result.get("timings_ms", {})
    lines.append("  " + "  ".join(f"{k} {v:.1f} ms" for k, v in t.items()))
    return "\n".join(lines)


def _engine_args(args: argparse.Namespace) -> dict:
    """Model() keywords from --engine, --precision and --threads."""
    return {"engine": args.engine, "precision": args.precision,
            "options": {"threads": args.threads} if args.threads else None}


def cmd_infer(args: argparse.Namespace) -> int:
    from lited.model import load_model

    model = load_model(args.bundle, args.target, **_engine_args(args))
    images = [(path, _read_image(path)) for path in args.images]  # refuse a bad image before any output
    for path, image in images:
        result = {"image": path, **model.infer(image)}
        print(format_result(result, args.json), flush=True)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lited.bundle import load_bundle, machine_target, read_nb_header

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    target = args.target or machine_target(m["models"])
    info: dict = {
        "bundle": str(bundle.root), "name": bundle.name, "version": bundle.version, "task": bundle.task,
        "schema": m["schema"], "paddle_lite_version": m.get("paddle_lite_version"),
        "target": target, "models": {}, "inputs": bundle.inputs, "preprocess": bundle.preprocess,
        "decoder": bundle.decoder, "labels": {"file": m.get("labels"), "count": len(bundle.labels),
                                               "first": bundle.labels[:5]},
        "golden": (bundle.golden or {}).get("image"),
    }
    from lited.engines import ENGINES

    for t, files in bundle.models().items():
        info["models"][t] = []
        for mf in files:
            entry = {"file": mf.path.name, "engines": list(mf.engines), "precision": mf.precision,
                     "installed": [k for k in mf.engines if k in ENGINES and ENGINES.get(k).available()],
                     "size": mf.size, "sha256": mf.sha256[:16] + "..."}
            if "paddle_lite" in mf.engines and mf.path.is_file():
                try:
                    entry.update({k: sorted(v) if isinstance(v, set) else v
                                  for k, v in read_nb_header(mf.path).items()})
                except ValueError as exc:
                    entry["problem"] = str(exc)
            info["models"][t].append(entry)
    from lited.model import Model

    model = Model(bundle, args.target, **_engine_args(args))
    engine = model.engine
    info["engine"] = {"kind": engine.kind, "file": model.model_file.path.name, "why": model.choice.why,
                      "version": engine.version, "device": engine.device,
                      "inputs": [{"name": s.name, "shape": list(shape)} for s, shape in
                                 zip(engine.inputs, engine.input_shapes())],
                      "outputs": [{"name": n, "shape": list(s)} for n, s in
                                  zip(engine.output_names, engine.output_shapes())]}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} {info['version']}  ({info['task']})  {info['bundle']}")
    print(f"  runs here as: {target}, {info['engine']['file']} on {engine.kind} {engine.version} ({engine.device})"
          f": {model.choice.why} (bundle optimized with {info['paddle_lite_version']})")
    for t, files in info["models"].items():
        for e in files:
            kernels = f"  kernels {','.join(e['targets'])}" if e.get("targets") else ""
            print(f"  model {t:<7} {e['file']}  {e.get('size') or '?'} bytes  {e['precision']}  engines "
                  f"{', '.join(k + ('' if k in e['installed'] else ' (not installed)') for k in e['engines'])}"
                  f"{kernels}")
    for s in info["engine"]["inputs"]:
        print(f"  input  {s['name']}  {s['shape']}")
    for s in info["engine"]["outputs"]:
        print(f"  output {s['name']}  {s['shape']}")
    pre = bundle.preprocess
    print(f"  preprocess: {pre.get('color', 'BGR')} {pre['resize']['mode']} "
          f"scale {pre.get('scale', 1 / 255):.6g} mean {pre.get('mean', [0, 0, 0])} std {pre.get('std', [1, 1, 1])}")
    print(f"  decoder: {json.dumps(bundle.decoder)}")
    print(f"  labels: {info['labels']['count']} ({', '.join(info['labels']['first'])}"
          f"{', ...' if info['labels']['count'] > 5 else ''})")
    if info["golden"]:
        print(f"  golden image: {info['golden']}")
    return 0


RUN_KEYS = ("stream", "seq", "frame_ts", "skipped", "task", "detections", "classes", "timings_ms")


def cmd_run(args: argparse.Namespace) -> int:
    """One stream in the foreground: a line per inferred frame."""
    import queue
    import time

    from lited.bundle import load_bundle
    from lited.model import Model
    from lited.stream import Stream

    bundle = load_bundle(args.bundle)
    results: queue.Queue = queue.Queue(maxsize=256)
    ended = []

    def publish(result: dict) -> None:
        try:
            results.put_nowait(result)
        except queue.Full:  # a slow terminal must not stall inference
            pass

    def on_event(event: dict) -> None:
        if event["event"] == "state":
            if event["state"] == "ended":
                ended.append(True)
            if args.verbose or event["state"] in ("backoff", "ended"):
                print(f"lited: stream {event['stream']}: {event['state']}"
                      f"{': ' + event['detail'] if event['detail'] else ''}", file=sys.stderr, flush=True)

    stream = Stream(args.name, args.source, lambda: Model(bundle, args.target, isolated=True, **_engine_args(args)),
                    publish, on_event, stall_timeout=args.stall_timeout)
    stream.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    count = 0
    try:
        while args.frames is None or count < args.frames:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                result = results.get(timeout=0.2)
            except queue.Empty:
                if ended and results.empty():
                    break
                continue
            out = {k: result[k] for k in RUN_KEYS}
            print(format_result(out, args.json), flush=True)
            count += 1
    finally:
        stream.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lited.service.daemon import serve
    from lited.service.logs import setup_logging

    setup_logging("DEBUG" if args.debug else "INFO", debug=args.debug)
    return serve(args.config, args.insecure_tcp)


def cmd_selftest(args: argparse.Namespace) -> int:
    """Run the bundle's golden image on every engine it lists for this
    machine that is installed here, and compare each with its expected
    result: an engine that disagrees is caught before the bundle serves."""
    from lited.bundle import load_bundle
    from lited.engines import ENGINES, EngineError
    from lited.errors import first_line
    from lited.model import Model
    from lited.selftest import compare

    bundle = load_bundle(args.bundle)
    golden = bundle.golden
    if not golden:
        raise UsageError(f"bundle {bundle.root}: no golden image in the manifest (golden.image): nothing to test")
    image = _read_image(str(bundle.root / golden["image"]))
    choices = [c for c in bundle.choices(args.target) if args.engine in (None, c.engine)]
    if not choices:
        raise UsageError(f"bundle {bundle.root}: lists no file for engine {args.engine!r} here")
    failed = passed = 0
    for choice in choices:
        what = f"{bundle.name} {bundle.version} on {choice.engine} ({choice.model.path.name}, {choice.model.precision})"
        if not ENGINES.get(choice.engine).available():
            print(f"selftest {what}: skipped, not installed here ({ENGINES.get(choice.engine).package})")
            continue
        try:
            result = Model(bundle, choice=choice).infer(image)
        except EngineError as exc:  # this engine refuses the file: the others are still tested
            problems = [first_line(exc)]
        else:
            problems = compare(result, choice.model.expected or golden["expected"], golden.get("tolerance", {}))
        if problems:
            print(f"lited: selftest {what} FAILED: " + "; ".join(problems), file=sys.stderr)
            failed += 1
            continue
        passed += 1
        print(f"selftest {what}: ok ({len(result['detections'])} detections, "
              f"{len(result['classes'])} classes match {golden['image']})")
    if failed:
        return 1
    if not passed:
        raise UsageError(f"bundle {bundle.root}: none of its engines is installed here: nothing could be tested")
    engines = sorted({c.engine for c in choices if ENGINES.get(c.engine).available()})
    print(f"selftest {bundle.name} {bundle.version}: ok on {', '.join(engines)} ({passed} file/engine "
          f"pair{'s' if passed != 1 else ''})")
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    """Talk to a running daemon: ping, status, reload (waits until done), snapshot."""
    from lited.client import Client, ClientError

    with Client(args.endpoint, timeout=args.timeout) as client:
        try:
            if args.action == "ping":
                out = client.ping()
            elif args.action == "status":
                out = client.status()
            elif args.action == "reload":
                out = client.reload(args.model, args.bundle, timeout=args.timeout)
            else:
                if not args.stream or not args.out:
                    raise UsageError("snapshot needs --stream and --out")
                snap = client.snapshot(args.stream)
                with open(args.out, "wb") as fh:
                    fh.write(snap.pop("jpeg"))
                out = {"written": args.out, "seq": snap["seq"], "detections": len(snap["detections"])}
        except ClientError as exc:
            print(f"lited: {args.action}: {exc}", file=sys.stderr)
            return 1
        except TimeoutError as exc:
            print(f"{exc} (is lited serve running at {client.socket.LAST_ENDPOINT.decode() or args.endpoint}?)",
                  file=sys.stderr)
            return 3
    print(json.dumps(out, indent=None if args.action == "ping" else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lited", description="lited: the Paddle Lite daemon")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="run a bundle's model on images")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("run", help="run one stream in the foreground")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--source", required=True, help="source URI: file://, rtsp://, v4l2://, gst://, images://, synth://")
    p.add_argument("--name", default="cam0", help="stream name (in results and the shared-memory ring)")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per frame per line")
    p.add_argument("--frames", type=int, help="stop after this many results")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--stall-timeout", type=float, default=5.0, help="seconds without a frame before 'stalled'")
    p.add_argument("-v", "--verbose", action="store_true", help="print every state change on stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="the daemon: streams, results and requests over ZeroMQ")
    p.add_argument("--config", required=True, help="config file (JSON, see docs/config.md)")
    p.add_argument("--insecure-tcp", action="store_true", help="allow tcp:// endpoints without CURVE keys")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ctl", help="ask a running daemon: ping, status, reload, snapshot")
    p.add_argument("action", choices=["ping", "status", "reload", "snapshot"])
    p.add_argument("--endpoint", help="request endpoint (default: ipc://<runtime dir>/req.sock)")
    p.add_argument("--model", help="reload: model name from the config (default: all)")
    p.add_argument("--bundle", help="reload: load this bundle directory instead of the configured one")
    p.add_argument("--stream", help="snapshot: stream name")
    p.add_argument("--out", help="snapshot: JPEG file to write")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("selftest", help="check a bundle against its golden image, on every engine it lists")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    p.add_argument("--engine", help="test only this engine (default: every engine listed and installed)")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("inspect", help="show what a bundle holds, and which engine runs it here and why")
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    return ap


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", help="engine to run (default: the bundle's first choice installed here)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="the bundle file of this precision")
    p.add_argument("--threads", type=int, help="threads of the engine (default: the bundle's, else 1)")


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lited.bundle import BundleError
    from lited.engines import EngineError
    from lited.service.bus import BusError
    from lited.config import ConfigError
    from lited.sources import SourceError

    try:
        return args.func(args)
    except (BundleError, BusError, ConfigError, EngineError, SourceError, UsageError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"lited: {exc}".splitlines()[0], file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
