"""The `lited` command.

Every bad input (bundle, image, URI, config) ends in one line on stderr and
exit code 2; a traceback, and native libraries' own log lines, only with
`--debug` (before or after the command). Heavy modules (Paddle Lite, OpenCV)
are imported inside the commands that need them, so `lited --help` and
errors found early stay fast.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

from lited import __version__, ctl
from lited.errors import NO_THREAD, OneLineParser, first_line, printable
from lited.utf8 import in_utf8_mode
from lited.cli_args import arg_engine, arg_number, arg_stream_name, arg_timeout

EXIT_BAD_INPUT = 2
EXIT_NO_RESOURCES = 1  # memory or threads ran out: not the input's fault


class UsageError(Exception):
    """A bad input found by the CLI itself (a file that is not an image, ...)."""


def _read_image(path: str) -> Tuple[Any, Optional[str]]:
    """(image, None), or (None, why not) in a few words."""
    from lited.files import read_capped, unreadable
    from lited.imageheader import ImageTooLarge, decode_bounded
    from lited.sources.images import MAX_STILL_BYTES

    try:
        image = decode_bounded(read_capped(path, MAX_STILL_BYTES))
    except ImageTooLarge as exc:  # OpenCV's own limit was a cv2.error traceback, and 400 Mpixel took 1.2 GB
        return None, str(exc)
    except OSError as exc:  # the file is named once, by the caller
        return None, unreadable(exc)
    if image is None:
        return None, "not a readable image"
    return image, None


def _image_paths(args: list) -> Iterator[Tuple[str, Optional[str]]]:
    """Each image argument, a directory standing for its images in name order:
    (path, None), or (path, why it is not one) for a directory without images."""
    from lited.sources.images import EXTENSIONS

    for arg in args:
        if not os.path.isdir(arg):
            yield arg, None
            continue
        names = sorted(n for n in os.listdir(arg) if n.lower().endswith(EXTENSIONS))
        if not names:
            yield arg, f"no images ({', '.join(EXTENSIONS)}) in this directory"
        for name in names:
            yield os.path.join(arg, name), None


def _loading(bundle: str) -> Any:
    """A Progress line for a model's load and warm-up (seconds on a board)."""
    from lited.progress import Progress

    return Progress(f"loading {bundle} (the engine warms up)")


def _stage_fields(d: dict) -> str:
    """What later stages added to a detection, for the human table."""
    out = ""
    if d.get("classes"):
        out += f"  [{d['classes'][0]['label']} {d['classes'][0]['score']:.2f}]"
    if "text" in d:
        out += f"  {json.dumps(d['text'], ensure_ascii=False)} ({d['text_score']:.2f})"
    return out


def format_result(result: dict, as_json: bool) -> str:
    """One JSON line, or a short human table."""
    if as_json:
        from lited.protocol import json_ready

        return json.dumps(json_ready(result), separators=(", ", ": "))
    where = result.get("image") or f"{result.get('stream', '')} #{result.get('seq', '')}"
    lines = [f"{where}  [{result['task']}]"]
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        lines.append(f"  {printable(d['label']):<20} {d['score']:.3f}  box {x1:.0f},{y1:.0f} - {x2:.0f},{y2:.0f}"
                     + _stage_fields(d))
    for c in result["classes"]:
        lines.append(f"  {printable(c['label']):<20} {c['score']:.3f}")
    if "text" in result:
        lines.append(f"  text {json.dumps(result['text'], ensure_ascii=False)} ({result['text_score']:.3f})")
    if not result["detections"] and not result["classes"] and "text" not in result:
        lines.append("  (nothing found)")
    t = result.get("timings_ms", {})
    lines.append("  " + "  ".join(f"{k} {v:.1f} ms" for k, v in t.items()))
    return "\n".join(lines)


def _engine_args(args: argparse.Namespace) -> dict:
    """Model() keywords from --engine, --precision and --threads."""
    return {"engine": args.engine, "precision": args.precision,
            "options": {"threads": args.threads} if args.threads else None}


def _bundle_to_run(args: argparse.Namespace) -> Any:
    """The bundle of --bundle, to run here: a --target this machine does not run is refused first,
    naming it (it said "no model for target 'x86'", the target not asked for)."""
    from lited.bundle import BundleError, check_target_runs_here, load_bundle

    if not args.target:
        return load_bundle(args.bundle)
    bundle = load_bundle(args.bundle, check_models=False)
    models = bundle.manifest["models"]
    if args.target not in models:
        raise BundleError(str(bundle.root), [f"models: no model for target '{args.target}' (has {', '.join(models)})"])
    check_target_runs_here(args.target, args.bundle)
    bundle.all_model_files(args.target)  # on disk, checked as load_bundle checks this machine's
    return bundle


def cmd_infer(args: argparse.Namespace) -> int:
    """A result per good image, one error line per bad one (exit 2 if any)."""
    from lited.model import Model

    with _loading(args.bundle):
        model = Model(_bundle_to_run(args), args.target, **_engine_args(args))
    bad = 0
    for path, problem in _image_paths(args.images):
        image = None
        if problem is None:
            image, problem = _read_image(path)
        if problem is not None:
            bad += 1
            sys.stdout.flush()
            print(f"lited: {path}: {problem}", file=sys.stderr, flush=True)
            continue
        result = {"image": path, **model.infer(image)}
        print(format_result(result, args.json), flush=True)
    return EXIT_BAD_INPUT if bad else 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lited.bundle import BundleError, check_target_runs_here, listed_files, load_bundle, machine_target

    foreign = False  # --target of another machine (an arm bundle looked at on a PC): shown, never loaded
    if args.target:
        try:
            check_target_runs_here(args.target, "")
        except BundleError:
            foreign = True
    bundle = load_bundle(args.bundle, check_models=not foreign)
    m = bundle.manifest
    target = args.target or machine_target(m["models"])
    info: dict = {
        "bundle": str(bundle.root), "name": bundle.name, "version": bundle.version, "task": bundle.task,
        "schema": m["schema"], "paddle_lite_version": m.get("paddle_lite_version"),
        "target": target, "models": {}, "inputs": bundle.inputs, "preprocess": bundle.preprocess,
        "decoder": bundle.decoder, "labels": {"file": m.get("labels"), "count": len(bundle.labels),
                                               "first": bundle.labels[:5]},
        "golden": (bundle.golden or {}).get("image"),
        "stages": [],
    }
    from lited.engines import ENGINES

    for t, files in bundle.models().items():
        info["models"][t] = []
        for mf in files:
            entry = {"file": mf.path.name, "engines": list(mf.engines), "precision": mf.precision,
                     "installed": [k for k in mf.engines if k in ENGINES and ENGINES.get(k).available()],
                     "size": mf.size, "sha256": mf.sha256[:16] + "..."}
            for kind in (k for k in mf.engines if k in ENGINES and mf.path.is_file()):
                try:  # what the file says of itself (a .nb: its Paddle Lite version and kernels' targets)
                    entry.update({k: sorted(v) if isinstance(v, set) else v
                                  for k, v in ENGINES.get(kind).file_info(mf.path).items()})
                except ValueError as exc:
                    entry["problem"] = str(exc)
            info["models"][t].append(entry)
    if foreign:
        model, info["engine"], info["decoder_reads"] = None, None, None
        info["warnings"] = _foreign_problems(info, bundle) + _unsealed_labels(bundle)
        # what that machine would pick, as far as the bundle says (its installed engines decide the rest)
        asked = [f"--{k} {getattr(args, k)}" for k in ("engine", "precision") if getattr(args, k, None)]
        listed = listed_files(bundle.models().get(target, []), getattr(args, "engine", None),
                              getattr(args, "precision", None))
        if not listed:  # as for this machine's target: the bundle has nothing for what was asked
            raise BundleError(str(bundle.root), [f"models.{target}: no file for {' '.join(asked)}" if asked else
                                                 f"models.{target}: only int8 files, which run only when asked for "
                                                 "(--precision int8)"])
        first, kind = listed[0]
        info["runs_there"] = {"file": first.path.name, "engine": kind, "precision": first.precision,
                              "why": f"asked for ({', '.join(asked)})" if asked else "the bundle's first choice"}
        for stage in bundle.stages:
            file, engine, why = stage.listed_like(target, kind, first.precision) or (None, None, "none listed")
            info["stages"].append({"name": stage.name, "file": file.path.name if file else None, "engine": engine,
                                   "why": why, "crop": stage.crop, "decoder": stage.decoder})
    else:
        model = _inspect_load(info, bundle, args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} {info['version']}  ({info['task']})  {info['bundle']}")
    if model is not None:
        engine = model.engine
        print(f"  runs here as: {target}, {info['engine']['file']} on {engine.kind} {engine.version} "
              f"({engine.device}): {model.choice.why}"
              + (f" (bundle optimized with {info['paddle_lite_version']})" if info.get("paddle_lite_version") else ""))
    there = info.get("runs_there")
    if there:
        print(f"  runs on {target} as: {there['file']} on {there['engine']} ({there['precision']}): {there['why']}"
              + (", if that engine is installed there (else its next one)" if not there["why"].startswith("asked")
                 else ""))
    for t, files in info["models"].items():
        for e in files:
            kernels = f"  kernels {','.join(e['targets'])}" if e.get("targets") else ""
            print(f"  model {t:<7} {e['file']}  {e.get('size') or '?'} bytes  {e['precision']}  engines "
                  f"{', '.join(k + ('' if k in e['installed'] else ' (not installed)') for k in e['engines'])}"
                  f"{kernels}")
    for s in info["engine"]["inputs"] if info["engine"] else bundle.inputs:
        print(f"  input  {s['name']}  {s['shape']}")
    for s in info["engine"]["outputs"] if info["engine"] else []:
        print(f"  output {s['name']}  {s['shape']}")
    pre = bundle.preprocess
    print(f"  preprocess: {pre.get('color', 'BGR')} {pre['resize']['mode']} "
          f"scale {pre.get('scale', 1 / 255):.6g} mean {pre.get('mean', [0, 0, 0])} std {pre.get('std', [1, 1, 1])}")
    print(f"  decoder: {json.dumps(bundle.decoder)}")
    if info.get("decoder_reads"):
        print(f"  decoder reads: {info['decoder_reads']}")
    for stage, st in zip(bundle.stages, info["stages"]):
        print(f"  then stage {stage.name} on {stage.crop['mode']} crops: {st['file']} on {st['engine']}, "
              f"input {stage.inputs[stage.image_input]['shape']}, decoder {json.dumps(stage.decoder)}")
    print(f"  labels: {info['labels']['count']} ({', '.join(map(printable, info['labels']['first']))}"
          f"{', ...' if info['labels']['count'] > 5 else ''})")
    if info["golden"]:
        print(f"  golden image: {info['golden']}")
    for warning in info["warnings"]:
        print(f"  warning: {warning}")
    return 0


def _inspect_load(info: dict, bundle: Any, args: argparse.Namespace) -> Any:
    """Load the model as `lited run` would; its engine, stages and version warnings into `info`."""
    from lited.model import Model

    with _loading(args.bundle):
        model = Model(bundle, args.target, **_engine_args(args))
    info["stages"] = [{"name": spec.name, "file": st.part.model_file.path.name, "engine": st.part.choice.engine,
                       "why": st.part.choice.why, "crop": spec.crop, "decoder": spec.decoder}
                      for spec, st in zip(bundle.stages, model.cascade.stages)]
    engine = model.engine
    info["engine"] = {"kind": engine.kind, "file": model.model_file.path.name, "why": model.choice.why,
                      "version": engine.version, "device": engine.device,
                      "inputs": [{"name": s.name, "shape": list(shape)} for s, shape in
                                 zip(engine.inputs, engine.input_shapes())],
                      "outputs": [{"name": n, "shape": list(s)} for n, s in
                                  zip(engine.output_names, engine.output_shapes())]}
    info["decoder_reads"] = model.decoder_reads
    info["warnings"] = _version_warnings(info, engine) + _unsealed_labels(bundle) + _labels_past_classes(model)
    return model


def _labels_past_classes(model: Any) -> list:
    """A labels file longer than the model's classes loads (a classifier's spare lines are never
    read), but it is often another model's: said, since every name it gives may be wrong."""
    classes, spec = model.decoder_classes, model.spec
    if not classes or spec.labels_file is None or len(spec.labels) <= classes:
        return []
    return [f"{spec.labels_file.name}: {len(spec.labels)} labels for {classes} classes: the last "
            f"{len(spec.labels) - classes} are never read (is it this model's labels file?)"]


def _unsealed_labels(bundle: Any) -> list:
    """Labels files the manifest does not seal (a bundle from before `labels_sha256`, or
    assembled by hand): one changed after the build would name every result wrongly, unseen."""
    return [f"{part.where}labels: {part.manifest['labels']} is not sealed (no {part.where}labels_sha256): a "
            "change to it after the build would go unnoticed; seal the bundle again (tools/build_sdk.py, or "
            "lited.bundle.seal)"
            for part in (bundle, *bundle.stages)
            if part.manifest.get("labels") and not part.manifest.get("labels_sha256")]


def _foreign_problems(info: dict, bundle: Any) -> list:
    """`inspect --target T` for a target this machine does not run: the model is
    not loaded; its files are checked on disk, their problems are warnings."""
    from lited.bundle import check_model_file

    target = info["target"]
    if target not in info["models"]:
        raise UsageError(f"bundle {bundle.root}: --target {target}: it has no model for it "
                         f"(has {', '.join(info['models'])})")
    return [f"target {target} does not run on this machine: the model was not loaded"] + \
        [p for f in bundle.models()[target] for p in check_model_file(f)]


def _version_warnings(info: dict, engine: Any) -> list:
    """Paddle Lite versions that disagree: the manifest's `paddle_lite_version`,
    each `.nb`'s own header, and the runtime that runs it here (a .nb is only
    sure to load on the version that optimized it)."""
    declared = info["paddle_lite_version"]
    warnings = []
    for files in info["models"].values():
        for e in files:
            if declared and e.get("version") and e["version"] != declared:
                warnings.append(f"{e['file']} was optimized with Paddle Lite {e['version']}, "
                                f"the manifest says {declared} (paddle_lite_version)")
    if engine.kind == "paddle_lite" and declared and engine.version != declared:
        warnings.append(f"paddle_lite_version: the bundle was optimized with {declared}, this runtime is "
                        f"Paddle Lite {engine.version}: if the model misbehaves, optimize it again with this version")
    return warnings


RUN_KEYS = ("stream", "seq", "frame_ts", "skipped", "task", "detections", "classes", "timings_ms")


def cmd_run(args: argparse.Namespace) -> int:
    """One stream in the foreground: a line per inferred frame. A source that
    has not opened after --open-timeout seconds (or by the end of
    --duration) ends it with exit 2 and the source's last error: unlike the
    daemon, which retries for ever, a command in the foreground must end."""
    import queue

    from lited import cores
    from lited.model import Model
    from lited.sources import SourceError
    from lited.stream import Stream
    from lited.stream.stream import LineBudget, loss_reason

    bundle = _bundle_to_run(args)
    asked = args.threads or bundle.engine_threads(args.target, args.engine, args.precision)
    cpus = os.sched_getaffinity(0)
    threads = cores.share_threads({args.name: asked}, len(cpus))[args.name]
    if threads != asked:  # as the daemon does: more threads than cores only fight each other
        print(f"lited: engine threads asked for ({asked}) exceed the {len(cpus)} cores: running {threads}",
              file=sys.stderr, flush=True)
        args.threads = threads
    plan = cores.plan_cores({args.name: threads}, cpus, pin=not args.no_pin_engines,
                            taken=() if args.no_pin_engines else cores.cores_of_other_engines())
    cores.apply(plan)
    claim = cores.CoreClaim()
    claim.publish(plan)
    if args.verbose:
        print(f"lited: cores: {plan.describe()}", file=sys.stderr, flush=True)
    results: queue.Queue = queue.Queue(maxsize=256)
    ended, opened, last_problem = [], [], [""]

    def publish(result: dict) -> None:
        try:
            results.put_nowait(result)
        except queue.Full:  # a slow terminal must not stall inference
            pass

    # The stream's own lines for what on_event says here (Python's last-resort handler would print
    # its warnings: a lost source twice)
    logging.getLogger("lited.stream").addFilter(
        lambda record: getattr(record, "event", None) not in ("backoff", "stalled", "skipped", "resized"))

    said_loss = [""]  # the reason of the last loss said (its retries are not, but with -v)
    budgets: dict = {}  # event kind -> LineBudget: a looping folder of bad images, 5 lines in 10 s

    def on_event(event: dict) -> None:
        if event["event"] in ("skipped", "decode"):  # an image that cannot be read, a result lost: said
            line = budgets.setdefault(event["event"], LineBudget()).line(
                f"lited: stream {event['stream']}: {event['detail']}", event["event"])
            if line is not None:
                print(line, file=sys.stderr, flush=True)
        if event["event"] != "state":
            return
        state, detail = event["state"], event["detail"]
        why = loss_reason(detail)
        if state == "streaming":
            opened.append(True)
            said_loss[0] = ""
        elif state == "ended":
            ended.append(True)
        elif state == "backoff":
            last_problem[0] = why
        # while it first opens only the outcome is said; later, a lost source is news, once a reason
        news = state == "ended" or (state == "backoff" and why != said_loss[0])
        if args.verbose or (opened and news):
            said_loss[0] = why if state == "backoff" else said_loss[0]
            print(f"lited: stream {event['stream']}: {state}{': ' + detail if detail else ''}",
                  file=sys.stderr, flush=True)

    def stop_on_sigterm(signum: int, frame: Any) -> None:  # timeout(1), systemd: clean up as for Ctrl-C
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    stream = Stream(args.name, args.source, lambda: Model(bundle, args.target, isolated=True,
                                                          cpus=plan.engines[args.name], **_engine_args(args)),
                    publish, on_event, stall_timeout=args.stall_timeout)
    with _loading(args.bundle):
        stream.start()
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    count = 0
    try:
        while args.frames is None or count < args.frames:
            now = time.monotonic()
            stream.check_stall()  # as the daemon's loop does: its capture thread may be blocked in a read
            if deadline is not None and now >= deadline:
                break
            if not opened and now - started >= args.open_timeout:
                break
            try:
                result = results.get(timeout=0.2)
            except queue.Empty:
                if ended and results.empty():
                    break
                continue
            out = {k: result[k] for k in RUN_KEYS + ("text", "text_score") if k in result}
            print(format_result(out, args.json), flush=True)
            count += 1
        waited = min(time.monotonic() - started, args.open_timeout)
    finally:
        stream.stop()
        claim.close()
    if not opened:
        why = last_problem[0] or f"source {args.source!r}: did not open"
        raise SourceError(args.source, f"{why.split(': ', 1)[-1]} (not open after {waited:.0f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lited.service.daemon import serve
    from lited.service.logs import setup_logging

    setup_logging("DEBUG" if args.debug else "INFO", debug=args.debug)
    return serve(args.config, args.insecure_tcp, EARLY_SIGNALS)


def cmd_selftest(args: argparse.Namespace) -> int:
    """Run the bundle's golden image on every engine it lists for this
    machine that is installed here, and compare each with its expected
    result: an engine that disagrees is caught before the bundle serves."""
    from lited.engines import ENGINES, EngineError
    from lited.errors import first_line
    from lited.model import Model
    from lited.selftest import compare

    bundle = _bundle_to_run(args)
    golden = bundle.golden
    if not golden:
        raise UsageError(f"bundle {bundle.root}: no golden image in the manifest (golden.image): nothing to test")
    image, problem = _read_image(str(bundle.root / golden["image"]))
    if problem:
        raise UsageError(f"bundle {bundle.root}: golden.image {golden['image']}: {problem}")
    choices = [c for c in bundle.choices(args.target) if args.engine in (None, c.engine)]
    if not choices:  # refused as infer and run refuse it, naming the field
        bundle.choose(args.target, args.engine, check_file=False)
    failed = passed = 0
    for choice in choices:
        what = f"{bundle.name} {bundle.version} on {choice.engine} ({choice.model.path.name}, {choice.model.precision})"
        if not ENGINES.get(choice.engine).available():
            print(f"selftest {what}: skipped, not installed here ({ENGINES.get(choice.engine).package})")
            continue
        try:
            with _loading(args.bundle):  # in an engine process: one that crashes fails, the others are tested
                model = Model(bundle, choice=choice, isolated=True)
            try:
                result = model.infer(image)
            finally:
                model.close()
        except EngineError as exc:  # this engine refuses the file: the others are still tested
            problems = [first_line(exc)]
        else:
            problems = compare(result, choice.model.expected or golden["expected"], golden.get("tolerance", {}))
        if problems:
            print(f"lited: selftest {what} FAILED: " + "; ".join(problems), file=sys.stderr)
            failed += 1
            continue
        passed += 1
        read = f", text {result['text']!r}" if "text" in result else ""
        print(f"selftest {what}: ok ({len(result['detections'])} detections, "
              f"{len(result['classes'])} classes{read} match {golden['image']})")
    if failed:
        return 1
    if not passed:
        raise UsageError(f"bundle {bundle.root}: none of its engines is installed here: nothing could be tested")
    engines = sorted({c.engine for c in choices if ENGINES.get(c.engine).available()})
    print(f"selftest {bundle.name} {bundle.version}: ok on {', '.join(engines)} ({passed} file/engine "
          f"pair{'s' if passed != 1 else ''})")
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    return ctl.run(args)


def cmd_config(args: argparse.Namespace) -> int:
    """`config check`: the config and everything it names, like `nginx -t`;
    `config schema`: its JSON Schema, for editors."""
    from lited.config import DEFAULT_CONFIG, json_schema, load_config

    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    from lited.config import ConfigError
    from lited.preflight import machine_problems, tcp_problems
    from lited.sources.errors import redact

    path = Path(args.config or DEFAULT_CONFIG)
    config = load_config(path)
    bundles, problems = machine_problems(config)
    problems += tcp_problems(config)
    problems += _missing_parts(config)
    if problems:
        raise ConfigError(str(path), problems)
    print(f"config {path}: ok")
    for name, b in bundles.items():
        print(f"  model  {name}: {b.name} {b.version} ({b.task}) from {b.root}")
    for sc in config.streams:
        print(f"  stream {sc.name}: {redact(sc.source)} -> {sc.model}")
    if not config.streams:
        print("  no streams: the daemon will only answer requests")
    print(f"  endpoints: pub {' '.join(config.pub)}; req {' '.join(config.req)}")
    if config.http is not None:
        from lited.config import address

        print(f"  http: {' '.join(address(host, port) for host, port in config.http.listen)}")
    return 0


#: config section -> (lited's extra, the modules it brings), imported only when the section is there
OPTIONAL_PARTS = {"http": ("http", ("tornado", "prometheus_client")), "uplink": ("mqtt", ("paho",))}


def _missing_parts(config: Any) -> list:
    """The optional parts a config needs and this runtime lacks: the daemon would refuse to start
    (`config check` passed an `http:` that `lited serve` then stopped at)."""
    import importlib.util

    problems = []
    for section, (extra, modules) in OPTIONAL_PARTS.items():
        if getattr(config, section) is None:
            continue
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"{section}: needs the '{extra}' extra (pip install 'lited[{extra}]', or the installer's "
                            f"--with {extra}): No module named '{missing[0]}'")
    return problems


def cmd_keygen(args: argparse.Namespace) -> int:
    """A CURVE key pair: NAME.key (public) and NAME.key_secret (0600)."""
    from lited.keys import KeyFileError, make_keypair
    from lited.validate import name_problem

    problem = name_problem(args.name)
    if problem:
        raise UsageError(f"keygen: name {problem}")
    try:
        public, secret = make_keypair(Path(args.dir), args.name)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a --dir it cannot write in (/proc, read-only): said as the directory's problem
        why = "a file, not a directory" if os.path.isfile(args.dir) else exc.strerror
        raise UsageError(f"keygen: --dir {args.dir}: cannot write the keys there ({why})") from None
    print(f"wrote {public} (public: hand it out) and {secret} (secret, mode 0600: keep it where it is)")
    print("  as the daemon's key:  curve: {server_secret: " + str(secret) + ", clients_dir: DIR}  "
          "(DIR holds the public keys of the clients it lets in)")
    print(f"  or as a client's key: copy {public} into the daemon's clients_dir; the client connects with "
          f"curve={{'server_public': SERVER.key, 'client_secret': '{secret}'}} (docs/protocol.md, \"Over TCP\")")
    return 0


def _broker_settings(args: argparse.Namespace) -> Any:
    from lited.mqtt_link import BrokerSettings

    settings = BrokerSettings(args.broker, args.ca, args.cert, args.key, args.username, args.password_file,
                              names={"ca": "--ca", "cert": "--cert", "key": "--key",
                                     "password_file": "--password-file"})
    settings.check()  # a bad URL or TLS file fails here, as a one-line error naming the option
    return settings


def cmd_cloud(args: argparse.Namespace) -> int:
    """The server side of the uplink: a second model on the devices' crops, answers back."""
    import threading

    from lited.cloud import CloudWorker
    from lited.service.logs import setup_logging

    setup_logging("DEBUG" if args.debug else "INFO", debug=args.debug, identifier="lited-cloud")
    settings = _broker_settings(args)
    factory = None
    if args.bundle:
        from lited.bundle import load_bundle
        from lited.model import Model

        bundle = load_bundle(args.bundle)  # a bad bundle fails before connecting
        factory = lambda: Model(bundle, args.target)  # noqa: E731
    record = open(args.record, "a", encoding="utf-8") if args.record else None
    worker = CloudWorker(settings, factory, args.group, args.client_id, record, args.session_expiry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        worker.start()
        stop.wait(args.duration)
    finally:
        worker.stop()
        if record is not None:
            record.close()
    print(json.dumps(worker.stats()), flush=True)
    return 0


def cmd_remote(args: argparse.Namespace) -> int:
    """A request to a device over MQTT: ping, status, reload, snapshot."""
    import base64

    from lited.cloud import remote_call

    params: dict = {}
    if args.action == "reload" and args.model:
        params["model"] = args.model
    if args.action == "snapshot":
        if not args.stream or not args.out:
            raise UsageError("snapshot needs --stream and --out")
        params["stream"] = args.stream
    try:
        reply = remote_call(_broker_settings(args), args.device, args.action, params, args.timeout)
    except (TimeoutError, ConnectionError) as exc:
        print(str(exc), file=sys.stderr)
        return 3
    if not reply.get("ok"):
        error = reply.get("error") or {}
        print(f"lited: {args.action}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return 1
    out = reply.get("result")
    if args.action == "snapshot":
        with open(args.out, "wb") as fh:
            fh.write(base64.b64decode(out.pop("jpeg")))
        out = {"written": args.out, "seq": out["seq"], "detections": len(out["detections"])}
    print(json.dumps(out, indent=None if args.action == "ping" else 2))
    return 0


def _broker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    p.add_argument("--ca", help="mqtts: CA file that signed the broker's certificate (default: the system's)")
    p.add_argument("--cert", help="client certificate (mutual TLS)")
    p.add_argument("--key", help="the client certificate's key")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", help="file whose first line is the password")


SECONDS = arg_number(above=0)  # a duration given on the command line


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="lited", description="lited: the Paddle Lite daemon")
    ap.add_argument("--version", action="version", version=f"lited {__version__} (Python {sys.version.split()[0]})")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and native libraries' log lines")
    # --debug after the command too: a subcommand leaves it unset unless given (SUPPRESS)
    common = OneLineParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and native libraries' log lines")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func, command_parser=p)
        return p

    p = command("infer", "run a bundle's model on images", cmd_infer)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image per line")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or directories of them")

    p = command("run", "run one stream in the foreground", cmd_run)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--source", required=True, help="source URI: file://, rtsp://, http(s)://, v4l2://, gst://, images://, synth://")
    p.add_argument("--name", default="cam0", type=arg_stream_name, help="stream name (in results and the shared-memory ring)")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per frame per line")
    p.add_argument("--frames", type=arg_number(integer=True, minimum=1), help="stop after this many results")
    p.add_argument("--duration", type=SECONDS, help="stop after this many seconds")
    p.add_argument("--open-timeout", type=arg_timeout, default=10.0, metavar="S",
                   help="give up (exit 2) when the source has not opened within S seconds (default 10)")
    p.add_argument("--stall-timeout", type=arg_timeout, default=5.0,
                   help="seconds without a frame before 'stalled' (as a stream's stall_timeout: at most 3600)")
    p.add_argument("--no-pin-engines", action="store_true",
                   help="let the engine share every core with lited's own threads (default: when its threads leave "
                        "cores over, it gets cores of its own; docs/config.md, pin_engines)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every state change on stderr and the cores used")

    p = command("serve", "the daemon: streams, results and requests over ZeroMQ", cmd_serve)
    p.add_argument("--config", required=True, help="config file (YAML or JSON, see docs/config.md)")
    p.add_argument("--insecure-tcp", action="store_true", help="allow tcp:// endpoints without CURVE keys")

    p = command("ctl", "ask a running daemon: ping, status, reload, snapshot", cmd_ctl)
    ctl.add_arguments(p)

    p = command("cloud", "the server side of the uplink: a second model on devices' crops (docs/uplink.md)", cmd_cloud)
    _broker_arguments(p)
    p.add_argument("--bundle", help="bundle of the second model (default: none, crops are only receipted)")
    p.add_argument("--target", help="model target (default: this machine's)")
    p.add_argument("--group", default="lited", help="shared-subscription group: workers in one group share the load")
    p.add_argument("--client-id", help="stable MQTT client id: the broker keeps this worker's session and queue")
    p.add_argument("--session-expiry", type=arg_number(integer=True, minimum=0), default=600,
                   help="with --client-id: seconds the broker keeps the session of a worker that vanished")
    p.add_argument("--record", help="append every first-seen message (JSON lines) to this file")
    p.add_argument("--duration", type=SECONDS, help="stop after this many seconds (default: until SIGTERM)")

    p = command("remote", "ask a device over MQTT: ping, status, reload, snapshot", cmd_remote)
    _broker_arguments(p)
    p.add_argument("device", help="the device id (its uplink.device)")
    p.add_argument("action", choices=["ping", "status", "reload", "snapshot"])
    p.add_argument("--model", help="reload: model name from the device's config (default: all)")
    p.add_argument("--stream", help="snapshot: stream name")
    p.add_argument("--out", help="snapshot: JPEG file to write")
    p.add_argument("--timeout", type=arg_timeout, default=30.0, help="seconds to wait for the reply")

    p = command("config", "check the daemon's config (like nginx -t), or print its JSON Schema", cmd_config)
    p.add_argument("action", choices=["check", "schema"])
    p.add_argument("--config", help="config file (default /etc/lited/lited.conf)")

    p = command("keygen", "make a CURVE key pair for tcp:// endpoints", cmd_keygen)
    p.add_argument("name", help="the keys' name: NAME.key (public) and NAME.key_secret")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")

    p = command("selftest", "check a bundle against its golden image, on every engine it lists", cmd_selftest)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    p.add_argument("--engine", type=arg_engine, help="test only this engine (default: every engine listed and installed)")

    p = command("inspect", "show what a bundle holds, and which engine runs it here and why", cmd_inspect)
    p.add_argument("--bundle", required=True, help="bundle directory")
    p.add_argument("--target", help="model target (default: this machine's)")
    _add_engine_args(p)
    p.add_argument("--json", action="store_true")
    return ap


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", type=arg_engine, help="engine to run (default: the bundle's first choice installed here)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="the bundle file of this precision")
    p.add_argument("--threads", type=arg_number(integer=True, minimum=1, maximum=256),
                   help="threads of the engine, 1 to 256 (default: the bundle's, else 1)")


#: Commands that run a model in this process: a native crash there is told by run_watched.
IN_PROCESS = ("infer", "inspect")


EARLY_SIGNALS: list = []  # signals `lited serve` got before its daemon took them over (keep_early_signals)


def keep_early_signals() -> None:
    """SIGHUP, SIGTERM and SIGINT that come while `lited serve` imports and reads its config (longer on a
    board) are kept for the daemon, not fatal: SIGHUP's default action killed it with exit 129 and
    nothing said."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: EARLY_SIGNALS.append(signum))


def main(argv: list | None = None) -> int:
    if argv is None:
        in_utf8_mode("lited.cli")
    if "serve" in (sys.argv[1:] if argv is None else argv)[:2]:
        keep_early_signals()
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # said by the command's parser (argparse's top level said "lited: ...", see lited --help)
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.debug:
        from lited.quiet import quiet_native_output

        quiet_native_output()
        if args.command in IN_PROCESS:
            from lited.native_crash import run_watched

            return run_watched(lambda: _dispatch(args))
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """The command's exit code; a bad input is one line on stderr and EXIT_BAD_INPUT."""
    from lited.bundle import BundleError
    from lited.engines import EngineError
    from lited.service.bus import BusError
    from lited.config import ConfigError
    from lited.mqtt_link import LinkError
    from lited.sources import SourceError

    try:
        return args.func(args)
    except BrokenPipeError:  # `lited infer ... | head`: the reader has what it wanted; end as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + 13
    except (BundleError, BusError, ConfigError, EngineError, LinkError, SourceError, UsageError, ValueError,
            OSError) as exc:
        _traceback_if(args.debug)  # and still exit 2: a script run with --debug reads the same codes
        _fatal(f"lited: {exc}".splitlines()[0])
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:  # an optional extra not installed (paho for cloud/remote, tornado, ...)
        _traceback_if(args.debug)
        _fatal(f"lited: {exc} (an optional part of lited: pip install 'lited[mqtt,http]' or the extra the docs "
               "name for this command)")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except (MemoryError, RuntimeError) as exc:  # RuntimeError: only "can't start new thread" (the rest, a bug)
        if isinstance(exc, RuntimeError) and "can't start new thread" not in str(exc):
            raise
        _traceback_if(args.debug)
        _fatal(f"lited: {first_line(exc) if isinstance(exc, MemoryError) else NO_THREAD}")
        return EXIT_NO_RESOURCES


def _traceback_if(debug: bool) -> None:
    """With --debug, the traceback of the exception being handled, on stderr."""
    if debug:
        import traceback

        traceback.print_exc()


def _fatal(line: str) -> None:
    """The one line a failed command ends with; in the journal (a unit's `lited serve` that cannot
    start) at priority err, not the info every line on stderr gets (`journalctl -p err` finds it),
    and as the unit's STATUS=, which `systemctl status` shows (it showed the last process's
    "stopping" beside a failed start)."""
    from lited.service.logs import stderr_is_journal

    line = printable(line)  # a label or a camera's words quoted in it: no ESC sequence reaches the terminal
    print(f"<3>{line}" if stderr_is_journal() else line, file=sys.stderr, flush=True)
    if os.environ.get("NOTIFY_SOCKET"):
        from lited.service.sdnotify import Notifier

        Notifier().status(line)


if __name__ == "__main__":
    sys.exit(main())
