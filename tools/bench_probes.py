#!/usr/bin/env python3
"""One measurement per process, so each row's peak RSS is its own.

    python tools/bench_probes.py PROBE --bundle DIR --image IMG [--runs N] ...

prints one JSON object. tools/bench.py runs these and writes the tables.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ROUNDS = 3  # probe_engine: run windows, each between two bare windows
LIVE_ROUNDS = 3  # probe_live: live windows, each between two bare windows


def timed(fn, runs: int, warmup: int = 5) -> list:
    for _ in range(warmup):
        fn()
    gc.disable()
    try:
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    finally:
        gc.enable()


def stats(ms: list) -> dict:
    return {"p50": statistics.median(ms), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "n": len(ms)}


def against_bare_beside(rates: list, bare_fps: list, ceiling: float = float("inf")) -> list:
    """Each window's rate over min(ceiling, the mean of the bare windows either side of it): the
    host drifts, so a window is only compared with bare loops seconds from it."""
    return [r / min(ceiling, (b0 + b1) / 2) for r, b0, b1 in zip(rates, bare_fps, bare_fps[1:])]


def load(args):
    import cv2

    from lited.bundle import load_bundle
    from lited.model import Model

    return Model(load_bundle(args.bundle), options=_options(args)), cv2.imread(args.image)


def _options(args) -> dict:
    return {"threads": args.threads} if args.threads else {}


def place_as_lited_run(threads: int) -> tuple:
    """Put this process on the cores `lited run` would use beside an engine
    of `threads` (lited/cores.py), for the stream "bench" about to run here:
    (the plan, every core; `pin_threads(every)` undoes it for the bare loop
    timed after the stream)."""
    from lited import cores

    every = sorted(os.sched_getaffinity(0))
    plan = cores.plan_cores({"bench": threads}, every)
    cores.apply(plan)
    return plan, every


def probe_bare(args) -> dict:
    """The limit: predictor.run() alone, on the tensor lited would feed."""
    from paddlelite import lite

    from lited.bundle import load_bundle

    import cv2

    from lited.preprocess import Preprocessor

    bundle = load_bundle(args.bundle)
    config = lite.MobileConfig()
    config.set_model_from_file(str(bundle.model_for().path))
    predictor = lite.create_paddle_predictor(config)
    pre = Preprocessor(bundle.preprocess, bundle.inputs[0]["shape"])
    pre(cv2.imread(args.image))
    predictor.get_input(0).from_numpy(pre.tensor)
    return {"ms": stats(timed(predictor.run, args.runs)), "rss_mb": peak_rss_mb()}


def probe_infer(args) -> dict:
    """lited infer: preprocess + hand-over + run + output copy + decode."""
    model, image = load(args)
    stages: dict = {"preprocess": [], "infer": [], "postprocess": []}

    def once() -> None:
        for k, v in model.infer(image)["timings_ms"].items():
            stages[k].append(v)
    ms = timed(once, args.runs)
    return {"ms": stats(ms), "stages": {k: statistics.median(v[5:]) for k, v in stages.items()},
            "engine": model.engine.kind, "rss_mb": peak_rss_mb()}


def probe_ort(args) -> dict:
    """onnxruntime on the ONNX original with lited's own pre- and post-processing."""
    import onnxruntime as ort

    model, image = load(args)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pre, decoder = model.preprocess, model.decoder

    def once() -> None:
        geom = pre(image)
        decoder.decode(session.run(None, {name: pre.tensor}), geom)
    return {"ms": stats(timed(once, args.runs)), "rss_mb": peak_rss_mb()}


def probe_run(args) -> dict:
    """lited run on an unpaced file source: fps beside a bare run() loop in the
    same process, allocations per frame, and frame copies."""
    from lited.bundle import load_bundle
    from lited.cores import pin_threads
    from lited.model import Model
    from lited.stream import Stream

    bundle = load_bundle(args.bundle)
    count, done = [0], []
    first = {}

    def publish(result: dict) -> None:
        count[0] += 1
        if count[0] == 10:
            first["t"] = time.perf_counter()
            first["n"] = count[0]

    # the limit, in this process: a bare loop on the same model, timed before and after the stream
    # (load on a shared machine drifts; the two together bracket the stream's run)
    bare_run = bare_predictor_run(bundle, args.video)
    bare_before = timed(bare_run, 100)
    plan, every = place_as_lited_run(args.threads or bundle.engine_threads(None, None, None))
    stream = Stream("bench", f"file://{args.video}", lambda: Model(bundle, options=_options(args), isolated=True,
                                                                   cpus=plan.engines["bench"]), publish,
                    lambda e: done.append(e) if e.get("state") == "ended" else None, stats_window=64)
    stream.start()
    tracing = {}
    # fps from the 10th result to the middle, allocations (tracemalloc slows all
    # Python code, so never in the fps window) over the third quarter
    start_at, stop_at = args.runs // 2, args.runs * 3 // 4
    while not done:
        if count[0] >= start_at and "before" not in tracing:
            tracing["fps_end"] = (time.perf_counter(), count[0])
            tracemalloc.start()
            tracing["before"], tracing["n0"] = tracemalloc.take_snapshot(), count[0]
        if count[0] >= stop_at and "after" not in tracing and "before" in tracing:
            tracing["after"], tracing["n1"] = tracemalloc.take_snapshot(), count[0]
            tracemalloc.stop()
        time.sleep(0.002)
    t_end, n_end = time.perf_counter(), count[0]
    status = stream.status()
    stream.stop()
    pin_threads(every)
    t_mid, n_mid = tracing.get("fps_end", (t_end, n_end))
    fps = (n_mid - first["n"]) / (t_mid - first["t"])
    alloc = {}
    if "after" in tracing:
        diff = tracing["after"].compare_to(tracing["before"], "filename")
        frames = tracing["n1"] - tracing["n0"]
        alloc = {"bytes_per_frame": sum(d.size_diff for d in diff) / frames,
                 "blocks_per_frame": sum(d.count_diff for d in diff) / frames}
    bare_after = timed(bare_run, 100)
    return {"fps": fps, "bare_fps": 1000 / statistics.mean(bare_before + bare_after), "frames": n_end,
            "bare_fps_before_after": [1000 / statistics.mean(bare_before), 1000 / statistics.mean(bare_after)],
            "skipped": status["counters"]["skipped"], "torn": status["counters"]["torn"],
            "latency": status["latency_ms"], "alloc": alloc, "rss_mb": peak_rss_mb(),
            "frame_copies": frame_copies(bundle)}


def probe_live(args) -> dict:
    """A live camera (a 30 fps file, paced) through `lited serve`, read by a
    subscriber in this process that copies each result's frame the moment the
    result arrives: results/s, capture->result latency beside the model's own
    work (preprocess + infer + postprocess), the share of frames it could
    read. A bare run() loop in this process takes turns with the daemon:
    bare, live, bare, live, bare, live, bare; during a bare window the daemon's engine
    process is stopped (SIGSTOP), and each live window's results/s is compared
    with the bare windows on either side of it (the host drifts over seconds)."""
    import tempfile

    from lited.bundle import load_bundle
    from lited.client import Client, DaemonUnreachable, FrameOverwritten, RingGone, Subscriber

    bundle = load_bundle(args.bundle)
    bare_run = bare_predictor_run(bundle, args.video)
    bare_ms = statistics.median(timed(bare_run, 5, warmup=1))
    bare_seconds = max(2.0, min(8.0, 5 * bare_ms / 1000))  # at least ~5 runs
    windows: list = []  # per live window: [(arrived, timings_ms, readable)]
    bare: list = []     # per bare window: fps
    busy: list = []     # per live window: the share of it the engine computed
    with tempfile.TemporaryDirectory() as tmp:
        stream = {"name": "live", "source": f"file://{args.video}?realtime=1&loop=1", "model": "m"}
        if args.policy:
            stream["policy"] = args.policy
        config = {"runtime_dir": f"{tmp}/run", "models": {"m": args.bundle}, "streams": [stream]}
        Path(tmp, "lited.conf").write_text(json.dumps(config))
        daemon = subprocess.Popen([str(Path(sys.executable).with_name("lited")), "serve", "--config",
                                   f"{tmp}/lited.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(f"ipc://{tmp}/run/req.sock", timeout=2) as client, \
                    Subscriber(f"ipc://{tmp}/run/pub.sock", streams=["live"], check=False) as sub:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if client.status()["ready"]:
                            break
                    except (TimeoutError, DaemonUnreachable):  # not up yet
                        pass
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise RuntimeError("lited serve did not get ready")
                    time.sleep(0.2)
                engine_pid = client.status()["streams"][0]["model"]["engine_pid"]
                out = None

                def engine_busy_s() -> float:
                    return client.status()["streams"][0]["model"]["engine_busy_s"]

                def results(warmup: float, seconds: float) -> list:
                    """Results arriving in `seconds` after `warmup` s of results not counted; the
                    share of those seconds the engine computed (status `engine_busy_s`) goes to `busy`."""
                    nonlocal out
                    rows = []
                    warm_until = time.monotonic() + warmup
                    end = warm_until + seconds
                    counted = None
                    while time.monotonic() < end:
                        if counted is None and time.monotonic() >= warm_until:
                            counted = (time.monotonic(), engine_busy_s())
                        msg = sub.recv(timeout=1.0)
                        if msg is None or msg.get("type") != "result":
                            continue
                        arrived = time.perf_counter()
                        try:
                            out = sub.frame(msg, out)
                            readable = True
                        except (FrameOverwritten, RingGone):
                            readable = False
                        if time.monotonic() >= warm_until:
                            rows.append((arrived, msg["timings_ms"], readable))
                    if counted is not None:
                        busy.append((engine_busy_s() - counted[1]) / (time.monotonic() - counted[0]))
                    return rows

                def bare_window() -> None:
                    os.kill(engine_pid, signal.SIGSTOP)
                    try:
                        bare.append(bursts(bare_run, bare_seconds)["fps"])
                    finally:
                        os.kill(engine_pid, signal.SIGCONT)

                results(args.warmup, 0)
                for _ in range(LIVE_ROUNDS):
                    bare_window()
                    # results from before the stop are late: skip a few runs' worth
                    windows.append(results(max(1.0, 3 * bare_ms / 1000), args.seconds / LIVE_ROUNDS))
                bare_window()
                status = client.status()["streams"][0]
        finally:
            daemon.terminate()
            daemon.wait(30)
    camera = status["fps"] or 30.0
    rates = [(len(w) - 1) / (w[-1][0] - w[0][0]) if len(w) > 1 else float("nan") for w in windows]
    rate_ratios = against_bare_beside(rates, bare, camera)
    rows = [row for w in windows for row in w]
    total = [t["total"] for _, t, _ in rows]
    own = [t["preprocess"] + t["infer"] + t["postprocess"] for _, t, _ in rows]
    return {"results": len(rows), "results_per_s": statistics.median(rates), "camera_fps": status["fps"],
            "policy": status["policy"], "latency": stats(total), "own": stats(own),
            "stages": {k: statistics.median(t[k] for _, t, _ in rows) for k in ("wait", "queue", "infer")},
            "readable": sum(r for _, _, r in rows) / len(rows),
            "skipped": status["counters"]["skipped"], "torn": status["counters"]["torn"],
            "bare_fps": statistics.mean(bare), "bare_fps_windows": bare,
            "rate_ratio": statistics.median(rate_ratios), "rate_ratios": rate_ratios,
            "engine_busy": statistics.median(busy), "engine_busy_windows": busy,
            "load": os.getloadavg()[0]}


def bare_predictor_run(bundle, video: str):
    """`predictor.run` of a bare Paddle Lite predictor fed the video's first frame."""
    import cv2
    from paddlelite import lite

    from lited.model import Model

    config = lite.MobileConfig()
    config.set_model_from_file(str(bundle.model_for().path))
    predictor = lite.create_paddle_predictor(config)
    model = Model(bundle, warmup=0)
    cap = cv2.VideoCapture(video)
    ok, frame = cap.read()
    cap.release()
    model.preprocess(frame)
    predictor.get_input(0).from_numpy(model.preprocess.tensor)
    return predictor.run


def frame_copies(bundle) -> dict:
    """Count how often a frame's bytes are copied between capture and the model
    input: run one frame through the ring and preprocessing while watching
    numpy/OpenCV copy entry points, and check buffer addresses."""
    import cv2

    from lited.stream.ring import FrameRing
    from lited.preprocess import Preprocessor
    from lited.sources import open_source

    source = open_source("synth://?size=640x480&fps=0")
    shape = source.open()
    ring = FrameRing.create("copies", 3, shape)
    try:
        pre = Preprocessor(bundle.preprocess, bundle.inputs[0]["shape"])
        slot, view = ring.begin_write()
        address = view.ctypes.data
        source.read_into(view)
        _, seq = ring.commit(slot)
        latest = ring.latest()
        frame = ring.view(latest[0])
        calls = {"np.copyto": 0, "ndarray.copy": 0}
        real_copyto = np.copyto

        def counting_copyto(dst, src, *a, **k):
            if getattr(src, "nbytes", 0) >= frame.nbytes:
                calls["np.copyto"] += 1
            return real_copyto(dst, src, *a, **k)
        np.copyto = counting_copyto
        try:
            pre(frame)
        finally:
            np.copyto = real_copyto
        in_place = frame.ctypes.data == address and ring.is_current(*latest)
        return {"capture_into_slot": in_place, "frame_sized_copies": calls["np.copyto"],
                "slot_to_input": "resize reads the slot; the input is written, not copied",
                "input_to_engine": 1, "opencv": cv2.__version__}
    finally:
        ring.unlink()
        source.close()


def probe_sub(args) -> dict:
    """A subscriber: how long a result takes from being ready to arriving here.
    bus ms = (arrival wall time - frame_ts) - timings_ms.total."""
    from lited.client import Subscriber

    bus, e2e = [], []
    with Subscriber(args.endpoint) as sub:
        while len(bus) < args.runs:
            msg = sub.recv(timeout=10)
            if msg is None:
                break
            now = time.time()
            e2e.append((now - msg["frame_ts"]) * 1e3)
            bus.append(e2e[-1] - msg["timings_ms"]["total"])
    return {"bus_ms": stats(bus[5:]), "capture_to_app_ms": stats(e2e[5:]), "rss_mb": peak_rss_mb()}


def probe_bare_process(args) -> dict:
    """What any Paddle Lite app pays: Python + Paddle Lite + this model, run once."""
    from paddlelite import lite

    config = lite.MobileConfig()
    config.set_model_from_file(args.model)
    predictor = lite.create_paddle_predictor(config)
    shape = [int(x) for x in args.shape.split("x")]
    predictor.get_input(0).from_numpy(np.zeros(shape, np.float32))
    predictor.run()
    with open("/proc/self/statm") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"rss_mb": rss, "peak_rss_mb": peak_rss_mb()}


def probe_ocr(args) -> dict:
    """The OCR cascade (det -> cls -> rec) per frame, split by stage: lited's
    Model.infer on Paddle Lite, or the same code with each part's engine
    replaced by lited's onnxruntime engine on the part's ONNX original (--onnx det,cls,rec)."""
    import cv2

    from lited.bundle import load_bundle
    from lited.engines import open_engine
    from lited.model import Model

    image = cv2.imread(args.image)
    ort = args.onnx is not None
    model = Model(load_bundle(args.bundle), options=_options(args), warmup=0 if ort else 1)
    if ort:
        parts = [model] + [stage.part for stage in model.cascade.stages]
        for part, path in zip(parts, args.onnx.split(",")):
            part.engine.close()
            part.engine = open_engine("onnxruntime", path, {"threads": args.threads or 1})
            part.engine.image_input = part.image_input
    stages: dict = {}
    texts: list = []

    def once() -> None:
        result = model.infer(image)
        for k, v in result["timings_ms"].items():
            stages.setdefault(k, []).append(v)
        texts[:] = [d.get("text", "") for d in sorted(result["detections"], key=lambda d: d["box"][1])]
    ms = timed(once, args.runs, warmup=1)
    warm = {k: v[1:] for k, v in stages.items()}  # the warm-up run's times are dropped
    return {"ms": stats(ms), "stages": {k: {"p50": statistics.median(v), "min": min(v), "max": max(v)}
                                        for k, v in warm.items()},
            "texts": texts, "engine": "onnxruntime" if ort else model.engine.kind, "rss_mb": peak_rss_mb()}


def probe_uplink_device(args) -> dict:
    """A simulated device: the real uplink (outbox on disk, paho, TLS, crops
    cut from a real shared-memory ring and JPEG-encoded) fed results with
    `--faces` face detections each, at `--rate` results/s (0: as fast as the
    uplink stores them) for `--seconds`; then up to 30 s to drain."""
    import cv2

    from lited.config import parse_config
    from lited.service.uplink import Uplink
    from lited.stream.ring import FrameRing

    cfg = parse_config({"models": {},
                        "uplink": json.loads(args.uplink)}).uplink
    image = cv2.resize(cv2.imread(args.image), (640, 480))
    ring = FrameRing.create(f"bench-{os.getpid()}", 4, image.shape)
    slot, view = ring.begin_write()
    view[:] = image
    slot, slot_seq = ring.commit(slot)
    answers: list = []
    uplink = Uplink(cfg, lambda m, p, done: done(None, None), lambda stream, answer: answers.append(answer),
                    lambda result, out: ring.read(result["slot"], result["slot_seq"], out),
                    lambda: {"streams": []})
    boxes = [[240.0, 60.0, 400.0, 260.0], [60.0, 200.0, 180.0, 340.0], [420.0, 220.0, 560.0, 400.0]]
    dets = [{"label": "face", "score": 0.95, "box": boxes[i % 3]} for i in range(args.faces)]
    per_result = 1 + args.faces
    uplink.start()
    try:
        t_wait = time.monotonic()
        while not uplink.connected.is_set() and time.monotonic() - t_wait < 30:
            time.sleep(0.05)
        t0 = time.monotonic()
        offered, marks = 0, []
        while (now := time.monotonic()) - t0 < args.seconds:
            stored = uplink.counters["queued"] // per_result
            if (args.rate and offered >= args.rate * (now - t0)) or offered - stored >= 32:
                time.sleep(0.002)
            else:
                uplink.offer_result({"stream": "cam", "seq": offered, "frame_ts": time.time(), "skipped": 0,
                                     "model": "bench", "model_version": "0", "task": "face_detection",
                                     "detections": dets, "classes": [], "timings_ms": {"total": 1.0},
                                     "ring": ring.name, "slot": slot, "slot_seq": slot_seq,
                                     "width": 640, "height": 480})
                offered += 1
            if not marks or now - marks[-1][0] >= 1.0:
                marks.append((now, dict(uplink.counters), uplink.cpu_seconds(), len(answers)))
        marks.append((time.monotonic(), dict(uplink.counters), uplink.cpu_seconds(), len(answers)))
        deadline = time.monotonic() + 30
        while uplink.outbox.stats()["queued"] and time.monotonic() < deadline:
            time.sleep(0.1)
        status = uplink.status()
    finally:
        uplink.stop()
        ring.unlink()
    (a_t, a_c, a_cpu, a_n), (b_t, b_c, b_cpu, b_n) = marks[min(2, len(marks) - 2)], marks[-1]
    span = b_t - a_t
    trips = sorted(a["round_trip_ms"] for a in answers if "round_trip_ms" in a)
    return {"seconds": span, "offered": offered,
            "stored_per_s": (b_c["queued"] - a_c["queued"]) / span,
            "confirmed_per_s": (b_c["acked"] - a_c["acked"]) / span,
            "crops_per_s": (b_c["queued"] - a_c["queued"]) / span * args.faces / per_result,
            "answers_per_s": (b_n - a_n) / span, "answers": len(answers),
            "cpu_s_per_s": (b_cpu - a_cpu) / span, "resent": status["counters"]["resent"],
            "left_in_outbox": status["outbox"]["queued"], "dropped": status["outbox"]["dropped"],
            "round_trip_ms": stats(trips) if trips else None, "rss_mb": peak_rss_mb()}


def cpu_s(pid: object = "self") -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bursts(run, seconds: float, bursts_: int = 3) -> dict:
    """A bare loop in short bursts: runs a second over the bursts' wall time
    (`fps`: a throughput, every slow run counted, as `lited run`'s fps is),
    the median ms a run (of burst medians) and CPU ms a run."""
    medians, cpu, wall, n = [], 0.0, 0.0, 0
    for _ in range(bursts_):
        times, c0, t0 = [], time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds / bursts_ or len(times) < 3:
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        n += len(times)
        medians.append(statistics.median(times))
    return {"fps": n / wall, "ms": statistics.median(medians), "cpu_ms": cpu * 1e3 / n, "runs": n}


def probe_bare_engine(args) -> dict:
    """probe_engine's bare loop, in a process of its own, as an app's would be (and no
    engine idles in the process that feeds `lited run`: a probe with one there had
    the engine process serve slower). Prints the decoded result on the image, then
    answers one JSON line on stdin with one on stdout: {"window": s} -> bursts() on
    every core; {"beside": [engine cores, other cores, s]} -> beside_a_busy_core()."""
    import cv2

    from lited.bundle import load_bundle
    from lited.cores import pin_threads
    from lited.model import Model

    local = Model(load_bundle(args.bundle), engine=args.engine, options={"threads": args.threads or 1})
    result = local.infer(cv2.imread(args.image))
    cap = cv2.VideoCapture(args.video)
    frame = cap.read()[1]
    cap.release()
    local.infer(frame)  # the bare loop runs on the video's frame, as the stream does
    every = sorted(os.sched_getaffinity(0))
    print(json.dumps({k: result[k] for k in ("detections", "classes", "text") if k in result}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        if "window" in ask:
            pin_threads(every)  # the bare loop as an app would run it: on any core
            answer = bursts(local.engine.run, ask["window"])
        else:
            answer = beside_a_busy_core(local.engine.run, *ask["beside"])
        print(json.dumps(answer), flush=True)
    local.close()
    return {}


def probe_engine(args) -> dict:
    """One engine on one model: its bare run() loop (probe_bare_engine, a process of its
    own), in windows alternating with `lited run` on a file through the whole pipeline
    with the engine in its engine process; fps, CPU per frame (this process and the
    engine process), and the decoded result on the image (for the agreement check)."""
    from lited.bundle import load_bundle
    from lited.model import Model
    from lited.stream import Stream

    bundle = load_bundle(args.bundle)
    opts = {"threads": args.threads or 1}
    bare_loop = subprocess.Popen([sys.executable, __file__, "bare_engine", "--bundle", args.bundle, "--engine",
                                  args.engine, "--image", args.image, "--video", args.video, "--threads",
                                  str(opts["threads"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(**question) -> object:
        bare_loop.stdin.write(json.dumps(question) + "\n")
        bare_loop.stdin.flush()
        return json.loads(bare_loop.stdout.readline())

    result = json.loads(bare_loop.stdout.readline())
    seconds = min(6.0, max(2.0, args.runs * 0.02))
    window = seconds / 2
    count = [0]

    def publish(_: dict) -> None:
        count[0] += 1

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 300
        while count[0] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args.engine}: {n} results not out after 300 s: {stream.status()}")
            time.sleep(0.002)

    # The file loops (unpaced: the `queue` policy). Bare loop and stream alternate,
    # bare-run-bare-run-bare-run-bare, each window half the old 2-6 s: the host's
    # speed drifts by several percent over seconds, so each run window is compared with
    # the bare windows on either side of it. During a bare window the engine process is
    # stopped (SIGSTOP): the pipeline waits for it and uses no CPU.
    plan, _ = place_as_lited_run(opts["threads"])
    stream = Stream("bench", f"file://{args.video}?loop=1", lambda: Model(bundle, engine=args.engine, options=opts,
                                                                         isolated=True, cpus=plan.engines["bench"]),
                    publish, lambda e: None, stats_window=64)
    stream.start()
    wait_for(10)
    pid = stream.status()["model"]["engine_pid"]
    bare, runs = [], []

    def bare_window() -> None:
        os.kill(pid, signal.SIGSTOP)
        bare.append(ask(window=window))
        os.kill(pid, signal.SIGCONT)

    for _ in range(ROUNDS):
        bare_window()
        wait_for(count[0] + 3)  # the pipeline is full again
        m0 = (time.perf_counter(), count[0], cpu_s(), cpu_s(pid))
        time.sleep(max(window, 15 * bare[-1]["ms"] / 1e3))  # and at least 15 frames
        m1 = (time.perf_counter(), count[0], cpu_s(), cpu_s(pid))
        runs.append([b - a for a, b in zip(m0, m1)])  # seconds, frames, CPU s here, CPU s of the engine
    bare_window()
    status = stream.status()
    stream.stop()
    beside = ask(beside=[plan.engines["bench"], plan.own, window / 2])
    bare_loop.stdin.close()
    bare_loop.wait()
    ratios = against_bare_beside([n / t for t, n, _, _ in runs], [b["fps"] for b in bare])
    seconds_, frames, here, engine = (sum(r[i] for r in runs) for i in range(4))
    return {"engine": args.engine, "device": status["model"]["device"] if status.get("model") else "",
            "fps": frames / seconds_, "bare_fps": statistics.mean(b["fps"] for b in bare),
            "ratio": statistics.median(ratios), "ratios": ratios, "bare_ms": [b["ms"] for b in bare],
            "bare_cpu_ms": statistics.mean(b["cpu_ms"] for b in bare),
            "run_engine_cpu_ms": engine * 1e3 / frames, "run_total_cpu_ms": (engine + here) * 1e3 / frames,
            "frames": count[0], "skipped": status["counters"]["skipped"], "load": os.getloadavg()[0],
            "beside_busy": statistics.median(beside), "beside_busy_all": beside,
            "result": result}


SPIN = "import os, sys\nos.sched_setaffinity(0, {int(c) for c in sys.argv[1:]})\nwhile True:\n    pass\n"


def beside_a_busy_core(run, engine_cpus: list, other_cpus: list, window: float) -> list:
    """The bare loop on the engine's cores, in windows alternating between the
    other cores idle and busy with a pure-Python spin (another process, no
    memory traffic to speak of): each busy window's fps over the idle windows'
    beside it. Under 1.00 when one core's work slows the next one's (shared
    execution units or caches, a clock that drops as more cores run), which
    `lited run`'s pipeline then costs the engine whatever lited does."""
    from lited.cores import pin_threads

    pin_threads(engine_cpus)
    fps = []
    for busy in (False, True, False, True, False, True, False):
        burner = subprocess.Popen([sys.executable, "-c", SPIN, *map(str, other_cpus)]) if busy else None
        try:
            time.sleep(0.2 if busy else 0.0)  # the burner is spinning
            fps.append(bursts(run, window)["fps"])
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    return against_bare_beside(fps[1::2], fps[0::2])


def probe_pair(args) -> dict:
    """Streams on one model at once (`--streams`, each with `--threads`): total fps
    and CPU per frame, to see whether they oversubscribe the cores."""
    from lited.bundle import load_bundle
    from lited.model import Model
    from lited.stream import Stream

    bundle = load_bundle(args.bundle)
    counts, done = [0] * args.streams, []
    streams = []
    for i in range(args.streams):
        def publish(_: dict, i=i) -> None:
            counts[i] += 1
        streams.append(Stream(f"pair{i}", f"file://{args.video}",
                              lambda: Model(bundle, engine=args.engine, options={"threads": args.threads},
                                            isolated=True),
                              publish, lambda e: done.append(e) if e.get("state") == "ended" else None))
    for stream in streams:
        stream.start()
    while min(counts) < 10:
        time.sleep(0.005)
    pids = [s.status()["model"]["engine_pid"] for s in streams]
    t0, n0, c0 = time.perf_counter(), sum(counts), cpu_s() + sum(cpu_s(p) for p in pids)
    while min(counts) < args.runs * 3 // 4 and not done:
        time.sleep(0.005)
    t1, n1, c1 = time.perf_counter(), sum(counts), cpu_s() + sum(cpu_s(p) for p in pids)
    threads = [len(os.listdir(f"/proc/{p}/task")) for p in pids]
    for stream in streams:
        stream.stop()
    return {"fps": (n1 - n0) / (t1 - t0), "cpu_ms": (c1 - c0) * 1e3 / (n1 - n0), "engine_threads": threads}


def probe_engine_process(args) -> dict:
    """What any app running this engine pays: Python + numpy + the backend +
    this model, run once on zeros (lited's thin engine class, nothing else of
    lited: no OpenCV, no ZeroMQ). PSS and RSS."""
    from lited.engines import open_engine

    engine = open_engine(args.engine, args.model, {"threads": 1})
    engine.set_input(0, np.zeros([int(x) for x in args.shape.split("x")], np.float32))
    engine.run()
    with open("/proc/self/smaps_rollup") as fh:
        fields = dict(line.split(":", 1) for line in fh if line[:4] in ("Rss:", "Pss:"))
    return {"rss_mb": int(fields["Rss"].split()[0]) / 1024, "pss_mb": int(fields["Pss"].split()[0]) / 1024}


PROBES = {"bare": probe_bare, "infer": probe_infer, "ort": probe_ort, "run": probe_run, "live": probe_live,
          "sub": probe_sub, "bare_process": probe_bare_process, "ocr": probe_ocr, "uplink_device": probe_uplink_device,
          "engine": probe_engine, "bare_engine": probe_bare_engine, "pair": probe_pair, "engine_process": probe_engine_process}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("probe", choices=sorted(PROBES))
    ap.add_argument("--bundle")
    ap.add_argument("--endpoint")
    ap.add_argument("--model")
    ap.add_argument("--shape")
    ap.add_argument("--image")
    ap.add_argument("--video")
    ap.add_argument("--onnx")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--uplink", help="uplink_device: the uplink config section (JSON)")
    ap.add_argument("--rate", type=float, default=0.0, help="uplink_device: results per second (0: flat out)")
    ap.add_argument("--faces", type=int, default=2, help="uplink_device: detections (crops) per result")
    ap.add_argument("--seconds", type=float, default=15.0, help="live, uplink_device: how long to measure")
    ap.add_argument("--policy", choices=("latest", "queue"), help="live: the stream's policy (default: the source's)")
    ap.add_argument("--warmup", type=float, default=3.0, help="live: seconds of results not counted")
    ap.add_argument("--engine", help="engine, run, pair, engine_process: the engine kind")
    ap.add_argument("--streams", type=int, default=2, help="pair: streams on one model")
    args = ap.parse_args()
    print(json.dumps(PROBES[args.probe](args)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
