#!/usr/bin/env python3
"""How fast, and how much memory, beside what you would otherwise use.

    python tools/bench.py [--models ultraface,fastestdet] [--quick] [--only live|http|ocr|uplink|nms|engines] [--out docs/BENCHMARKS.md]

Every row comes from one run on one machine; each measurement runs in its own
process (tools/bench_probes.py) so its peak RSS is its own. Writes
docs/BENCHMARKS.md (tables, the machine, ratios to the bare Paddle Lite loop)
and docs/benchmarks.png.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import demo  # tools/, beside this script: the demo bundle's detector alone
import make_bundles  # bundles and the ONNX originals' names

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROBES = ROOT / "tools" / "bench_probes.py"
SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))

IMAGE_FOR = {"ultraface": "astronaut", "fastestdet": "coffee", "mobilenetv2": "chelsea", "nanodet_m": "coffee",
             "ppocrv4_det": "page", "ppocr_cls": "page", "ppocrv4_rec": "page", "demo_ppocrv4_det": "page"}
ONNX = {**{m: f"{m}/onnx/{f}" for m, f in make_bundles.ONNX_FILES.items()},
        "demo_ppocrv4_det": f"ppocrv4_det/onnx/{make_bundles.ONNX_FILES['ppocrv4_det']}"}
PADDLE = {m: f"{m}/paddle" for m in ("ultraface", "fastestdet", "mobilenetv2", "ppocrv4_det", "ppocr_cls", "nanodet_m")}
# the OCR cascade's three models as ONNX originals (det, cls with its dynamic batch, rec)
OCR_ONNX = ("ppocrv4_det/onnx/ch_PP-OCRv4_det_infer.onnx", "ppocr_cls/onnx/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "ppocrv4_rec/onnx/ch_PP-OCRv4_rec_infer.onnx")
ENGINE_KINDS = ("paddle_lite", "paddle_inference", "openvino", "onnxruntime")
ENGINE_MODELS = ("ultraface", "fastestdet", "mobilenetv2", "nanodet_m", "ppocrv4_det", "ppocr_cls", "ppocrv4_rec")
# PP-OCRv4 rec alone, with its own ctc decoder and the OCR demo's keys (build_sdk makes its bundle from
# the ONNX, width fixed at 320); the agreement check compares its text. NanoDet runs with its own gfl
# decoder (tests/bundles).
REC_FRAGMENT = {"name": "ppocrv4_rec", "task": "text_recognition",
                "inputs": [{"name": "x", "shape": [1, 3, 48, 320]}],
                "preprocess": {"color": "BGR", "resize": {"mode": "letterbox", "align": "top_left",
                                                          "pad_value": 127.5, "interpolation": "linear"},
                               "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3},
                "decoder": {"type": "ctc"}}
REC_KEYS = ROOT / "sdk_template" / "demo_ppocrv4" / "rec_labels.txt"


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<50.50}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def probe(name: str, threads: int = 1, **kw) -> dict:
    args = [PY, str(PROBES), name]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if name == "pair" or (name in ("ort", "infer") and threads > 1):
        args += ["--threads", str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"probe {name} {kw}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_video(image: Path, path: Path, frames: int, size: tuple | None = None) -> None:
    import cv2

    img = cv2.imread(str(image))
    h, w = img.shape[:2]
    size = size or ((640, 480) if w >= h else (480, 640))
    img = cv2.resize(img, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        writer.write(img if i % 2 else cv2.flip(img, 1))
    writer.release()


def add_paddle_inference(root: Path, paddle_dir: Path, alone: bool) -> None:
    """Put the Paddle Inference model in the bundle at `root` (mkldnn on): as its
    only file (`alone`), or after the others."""
    import shutil

    from lited.bundle import file_specs, seal

    for f in ("model.pdmodel", "model.pdiparams"):
        shutil.copy(paddle_dir / f, root / f)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = {"file": "model.pdmodel", "engine": "paddle_inference", "params": {"file": "model.pdiparams"},
             "options": {"threads": 1, "mkldnn": True}}
    manifest["models"] = {"x86": entry if alone else [*file_specs(manifest["models"]["x86"]), entry]}
    manifest["schema"] = 1 if alone else 2
    (root / "manifest.json").write_text(json.dumps(seal(manifest, root)))


def pi_bundle(name: str, src_bundle: Path, out: Path) -> Path | None:
    """The same bundle with the Paddle Inference model, when paddle is installed."""
    import importlib.util
    import shutil

    paddle_dir = SHARED / "models" / PADDLE.get(name, "-")
    if importlib.util.find_spec("paddle") is None or not paddle_dir.is_dir():
        return None
    dst = out / f"{name}_pi"
    shutil.copytree(src_bundle, dst, ignore=shutil.ignore_patterns("*.nb"))
    add_paddle_inference(dst, paddle_dir, alone=True)
    return dst


def bench_models(names: list, bundles: Path, quick: bool, progress: Progress, tmp: Path) -> list:
    rows = []
    for name in names:
        bundle = bundles / name
        image = SHARED / "images" / f"{IMAGE_FOR[name]}.png"
        progress.step(f"{name}: bare run()")
        bare = probe("bare", bundle=bundle, image=image, runs=20)
        runs = max(20, min(300 if not quick else 60, int(6000 / bare["ms"]["p50"])))
        bare = probe("bare", bundle=bundle, image=image, runs=runs)
        row = {"model": name, "runs": runs, "bare": bare}
        progress.step(f"{name}: lited infer")
        row["infer"] = probe("infer", bundle=bundle, image=image, runs=runs)
        progress.step(f"{name}: onnxruntime")
        row["ort"] = probe("ort", bundle=bundle, image=image, runs=runs, onnx=SHARED / "models" / ONNX[name])
        progress.step(f"{name}: Paddle Inference")
        pi = pi_bundle(name, bundle, tmp)
        row["pi"] = probe("infer", bundle=pi, image=image, runs=runs) if pi else None
        progress.step(f"{name}: lited run on a file")
        frames = max(40, min(400 if not quick else 120, int(12000 / bare["ms"]["p50"])))
        video = tmp / f"{name}.avi"
        make_video(image, video, frames + 20)
        # three runs where they are short: on a shared machine one run can be off by 20 %
        runs_of_stream = [probe("run", bundle=bundle, video=video, runs=frames)
                          for _ in range(3 if bare["ms"]["p50"] < 100 else 1)]
        runs_of_stream.sort(key=lambda r: r["fps"] / r["bare_fps"])
        row["run"] = runs_of_stream[len(runs_of_stream) // 2]
        row["run_ratios"] = [r["fps"] / r["bare_fps"] for r in runs_of_stream]
        rows.append(row)
    return rows


LIVE_MODELS = ("ultraface", "fastestdet", "mobilenetv2", "demo_ppocrv4_det")
POLICIES = ("latest", "queue")


def bench_live(names: list, bundles: Path, quick: bool, progress: Progress, tmp: Path) -> list:
    """Each model on a paced 30 fps file through `lited serve`, with each
    policy, run alternately (three times each unless --quick): the load of a
    shared machine drifts, so the two policies see the same drift."""
    out = []
    for name in [n for n in names if n in LIVE_MODELS]:
        image = SHARED / "images" / f"{IMAGE_FOR[name]}.png"
        video = tmp / f"{name}-live.avi"
        make_video(image, video, 60)  # 30 fps, looped by the source
        ms = probe("bare", bundle=bundles / name, image=image, runs=20)["ms"]["p50"]
        seconds = max(12.0, min(40.0, 40 * ms / 1000))  # at least ~40 results
        runs: dict = {policy: [] for policy in POLICIES}
        for _ in range(1 if quick else 3):
            for policy in POLICIES:
                progress.step(f"live: {name} {policy}")
                runs[policy].append(probe("live", bundle=bundles / name, video=video, policy=policy, seconds=seconds))
        for policy, results in runs.items():
            for r in results:
                r["latency_ratio"] = r["latency"]["p50"] / r["own"]["p50"]
            results.sort(key=lambda r: r["latency_ratio"])
            out.append({"model": name, "policy": policy, "run": results[len(results) // 2], "runs": results,
                        "latency_ratios": [r["latency_ratio"] for r in results],
                        "rate_ratios": sorted(r["rate_ratio"] for r in results),
                        "busy": sorted(r["engine_busy"] for r in results)})
    return out


def bench_threads(names: list, bundles: Path, progress: Progress) -> list:
    rows = []
    for name in names:
        bundle, image = bundles / name, SHARED / "images" / f"{IMAGE_FOR[name]}.png"
        for threads in (1, 2):
            progress.step(f"threads: {name} x{threads}")
            rows.append({"model": name, "threads": threads,
                         "bare": probe("bare", threads, bundle=bundle, image=image, runs=60)["ms"]["p50"],
                         "infer": probe("infer", threads, bundle=bundle, image=image, runs=60)["ms"]["p50"],
                         "ort": probe("ort", threads, bundle=bundle, image=image, runs=60,
                                      onnx=SHARED / "models" / ONNX[name])["ms"]["p50"]})
    return rows


def memory_mb(pid: int) -> dict:
    """RSS, and PSS (shared pages split between the processes sharing them)."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        fields = dict(line.split(":", 1) for line in fh if line[:4] in ("Rss:", "Pss:"))
    return {"rss": int(fields["Rss"].split()[0]) / 1024, "pss": int(fields["Pss"].split()[0]) / 1024}


@contextlib.contextmanager
def serving(config: dict, tmp: Path):
    """`lited serve` on `config` (runtime dir tmp/run), up to READY=1 read from a
    notify socket bound here: (the process, seconds to READY); stopped after."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "lited.conf").write_text(json.dumps({"runtime_dir": str(tmp / "run"), **config}))
    notify_path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(120)
    t0 = time.monotonic()
    daemon = subprocess.Popen([str(Path(PY).with_name("lited")), "serve", "--config", str(tmp / "lited.conf")],
                              env={**os.environ, "NOTIFY_SOCKET": notify_path, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while "READY=1" not in sock.recv(4096).decode():
            pass
        yield daemon, time.monotonic() - t0
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        sock.close()


def bench_daemon(bundles: Path, progress: Progress, tmp: Path) -> dict:
    """Start-up to READY, RSS beside a bare Paddle Lite process, infer over ipc,
    bus latency with 1 and 8 subscribers."""
    import cv2
    import numpy as np

    from lited.bundle import load_bundle
    from lited.client import Client
    from lited.engine_process import child_pids
    from lited.model import Model

    out: dict = {}
    run = tmp / "run"
    config = {"models": {"det": str(bundles / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=640x480&fps=25", "model": "det"}]}
    progress.step("daemon: start-up to READY=1")
    with serving(config, tmp) as (daemon, ready_s):
        out["ready_s"] = ready_s
        time.sleep(2)
        out["daemon_mb"] = memory_mb(daemon.pid)
        engines = [memory_mb(pid) for pid in child_pids(daemon.pid)]
        out["engines_mb"] = {k: sum(e[k] for e in engines) for k in ("rss", "pss")}
        out["engine_count"] = len(engines)
        bundle = load_bundle(bundles / "ultraface")
        progress.step("footprint: bare Paddle Lite process")
        out["bare_process"] = probe("bare_process", model=bundle.model_for().path, shape="1x3x240x320")
        progress.step("daemon: infer over ipc")
        image = cv2.imread(str(SHARED / "images" / "astronaut.png"))
        model = Model(bundle)
        local, remote = [], []
        with Client(f"ipc://{run}/req.sock", timeout=30) as client:
            encoded = cv2.imencode(".png", image)[1].tobytes()
            for i in range(60):
                t = time.perf_counter()
                model.infer(image)
                local.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                client.infer(image=image)
                remote.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            for i in range(20):
                client.infer(image=encoded)
            out["infer_png_ms"] = (time.perf_counter() - t) / 20 * 1e3
            out["status"] = client.status()
        out["infer_local_ms"] = float(np.median(local[5:]))
        out["infer_ipc_ms"] = float(np.median(remote[5:]))
        for n in (1, 8):
            progress.step(f"daemon: bus latency, {n} subscribers")
            procs = [subprocess.Popen([PY, str(PROBES), "sub", "--endpoint", f"ipc://{run}/pub.sock", "--runs", "150"],
                                      stdout=subprocess.PIPE, text=True) for _ in range(n)]
            results = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
            out[f"bus_{n}"] = {"p50": max(r["bus_ms"]["p50"] for r in results),
                               "p99": max(r["bus_ms"]["p99"] for r in results),
                               "e2e_p50": max(r["capture_to_app_ms"]["p50"] for r in results)}
    t = time.perf_counter()
    subprocess.run([PY, "-c", "import lited.service.daemon, lited.cli"], check=True)
    out["import_daemon_s"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([PY, "-c", "pass"], check=True)
    out["python_s"] = time.perf_counter() - t
    return out


def bench_http(bundles: Path, progress: Progress, tmp: Path) -> dict:
    """The HTTP front end: its RSS cost (the same daemon with and without
    `http`, before and after the first /metrics scrape), and the round trip of
    one image through `POST /v1/infer`, the ZeroMQ `infer` request and
    `Model.infer` in process, interleaved in one loop (same image, same model)."""
    import cv2
    import numpy as np
    import requests

    from lited.bundle import load_bundle
    from lited.client import Client
    from lited.model import Model

    out: dict = {}
    image_path = SHARED / "images" / "astronaut.png"
    jpeg = cv2.imencode(".jpg", cv2.imread(str(image_path)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    rss = {}
    for name, http in (("without", None), ("with", {"listen": "127.0.0.1:0"})):
        run = tmp / f"run-{name}"
        config = {"runtime_dir": str(run), "models": {"det": str(bundles / "ultraface")}, "streams": [],
                  **({"http": http} if http else {})}
        (tmp / f"{name}.conf").write_text(json.dumps(config))
        progress.step(f"http: daemon {name} http")
        daemon = subprocess.Popen([str(Path(PY).with_name("lited")), "serve", "--config", str(tmp / f"{name}.conf")],
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            with Client(f"ipc://{run}/req.sock", timeout=60) as client:
                status = client.status()
                client.infer(image=jpeg)  # the request worker's engine is up
                time.sleep(1)
                rss[name] = memory_mb(daemon.pid)
                if not http:
                    continue
                url = "http://" + status["http"]["listening"][0]
                requests.get(url + "/metrics").raise_for_status()
                time.sleep(0.5)
                rss["scraped"] = memory_mb(daemon.pid)
                model = Model(load_bundle(bundles / "ultraface"))
                decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                progress.step("http: /v1/infer vs ZeroMQ infer vs Model.infer")
                times: dict = {"http": [], "zmq": [], "local": [], "floor": []}
                with requests.Session() as session:
                    for i in range(3 * 60 + 15):  # three rounds of 60 after 15 warm-up runs
                        for kind in ("http", "zmq", "local", "floor"):
                            t = time.perf_counter()
                            if kind == "http":
                                session.post(url + "/v1/infer", data=jpeg).raise_for_status()
                            elif kind == "floor":  # the HTTP stack alone: a static file of the page
                                session.get(url + "/page/lited.css").raise_for_status()
                            elif kind == "zmq":
                                client.infer(image=jpeg)
                            else:
                                model.infer(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
                            if i >= 15:
                                times[kind].append((time.perf_counter() - t) * 1e3)
                out["load"] = os.getloadavg()[0]
                out["infer"] = {k: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                                for k, v in times.items()}
                rounds = [{k: float(np.median(v[r * 60:(r + 1) * 60])) for k, v in times.items()} for r in range(3)]
                out["round_ratios"] = {k: [r[k] / r["local"] for r in rounds] for k in ("http", "zmq")}
                out["image"] = f"{image_path.name} as a {len(jpeg) // 1024} KB JPEG, {decoded.shape[1]}x{decoded.shape[0]}"
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    out["rss"] = rss
    return out


def render_http(h: dict) -> str:
    r, inf = h["rss"], h["infer"]
    ratio = {k: sorted(v) for k, v in h["round_ratios"].items()}
    return f"""
## The HTTP front end

`lited serve` with UltraFace and no stream, with and without `http` in its config (tornado and,
from the first scrape of `/metrics`, prometheus_client are imported only then). RSS / PSS of the
daemon process after one `infer` request.

| daemon | RSS / PSS MB |
| --- | --- |
| without `http` | {r['without']['rss']:.1f} / {r['without']['pss']:.1f} |
| with `http`, serving | {r['with']['rss']:.1f} / {r['with']['pss']:.1f} ({r['with']['rss'] - r['without']['rss']:+.1f} MB RSS) |
| with `http`, after the first `/metrics` scrape | {r['scraped']['rss']:.1f} / {r['scraped']['pss']:.1f} ({r['scraped']['rss'] - r['without']['rss']:+.1f} MB RSS) |

One image ({h['image']}), the same model, three ways in one interleaved loop (180 runs each after
15 warm-up runs): `POST /v1/infer` with the JPEG as the body (requests, keep-alive), the ZeroMQ
`infer` request with the same bytes (`lited.client.Client`), and `Model.infer` on the decoded image
in the benchmark's process. Ratios are per round of 60 (median of the round over `Model.infer`'s).

| path | p50 ms | p99 ms | ratio to in-process (median, min-max of 3 rounds) |
| --- | --- | --- | --- |
| `Model.infer` in process (decode included) | {inf['local']['p50']:.2f} | {inf['local']['p99']:.2f} | 1 |
| ZeroMQ `infer` request (ipc) | {inf['zmq']['p50']:.2f} | {inf['zmq']['p99']:.2f} | {ratio['zmq'][1]:.3f} ({ratio['zmq'][0]:.3f}-{ratio['zmq'][2]:.3f}) |
| `POST /v1/infer` (HTTP on 127.0.0.1) | {inf['http']['p50']:.2f} | {inf['http']['p99']:.2f} | {ratio['http'][1]:.3f} ({ratio['http'][0]:.3f}-{ratio['http'][2]:.3f}) |
| for scale: `GET /page/lited.css` (the HTTP stack and client alone, no inference) | {inf['floor']['p50']:.2f} | {inf['floor']['p99']:.2f} | |

Load average during the loop: {h['load']:.1f} on {os.cpu_count()} cores (other work shares this machine: absolute times
and the HTTP stack's share move with it).
"""


def bench_ocr(progress: Progress, tmp: Path, rounds: int = 2) -> list:
    """The demo bundle's cascade per frame, by stage, on Paddle Lite and on onnxruntime
    with the same lited code (probe `ocr`), interleaved `rounds` times per image."""
    import cv2

    import demo

    frame = tmp / "demo_frame.png"
    cv2.imwrite(str(frame), demo.draw_text_page(*demo.SIZE, offset=0))
    onnx = ",".join(str(SHARED / "models" / p) for p in OCR_ONNX)
    bundle = ROOT / "sdk_template" / "demo_ppocrv4"
    rows = []
    for label, image in (("page.png (scan, 7 lines)", SHARED / "images" / "page.png"),
                         ("demo frame (640x256, 3 lines)", frame)):
        runs: dict = {"lite": [], "ort": []}
        for r in range(rounds):
            progress.step(f"ocr: {label[:12]} Paddle Lite {r + 1}/{rounds}")
            runs["lite"].append(probe("ocr", bundle=bundle, image=image, runs=3))
            progress.step(f"ocr: {label[:12]} onnxruntime {r + 1}/{rounds}")
            runs["ort"].append(probe("ocr", bundle=bundle, image=image, runs=6, onnx=onnx))
        rows.append({"image": label, **runs})
    return rows


OCR_STAGES = ("preprocess", "infer", "postprocess", "crop", "cls", "rec")


def render_ocr(rows: list, machine_line: str) -> str:
    def cell(runs: list, stage: str) -> str:
        p50s = [r["stages"][stage]["p50"] for r in runs if stage in r["stages"]]
        if not p50s:
            return "-"
        return fmt(statistics.median(p50s)) + (f" ({fmt(min(p50s))}-{fmt(max(p50s))})" if len(p50s) > 1 else "")

    lines = [f"""
## OCR cascade: PP-OCRv4 det -> cls -> rec, per frame

The committed demo bundle (`sdk_template/demo_ppocrv4`): text detection, then on each line's
quad-warped crop the orientation classifier (batches of 6) and the recognizer (width buckets
320-1280, one predictor kept). *Paddle Lite* is `Model.infer` as `lited infer` runs it, each model
in this process. *onnxruntime* is the same lited code (preprocessing, crops, batching, decoders)
with each part's engine replaced by onnxruntime (1 thread) on the ONNX original of the same
model (the classifier's with its dynamic batch). ms per frame, p50 of the runs of each probe; the
probes ran {len(rows[0]['lite'])} times interleaved and the range of their p50s follows. *det* is
preprocess / inference / DB decode; *crop* cuts every line; *cls* and *rec* are each stage's
time for all lines of the frame. RSS is the probe process's peak (the onnxruntime probe first
loads the Paddle Lite models without running them).

{machine_line}

| image | engine | det pre | det infer | det decode | crop | cls | rec | total | rec Lite / ort | same text | RSS MB |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"""]
    for row in rows:
        lite_rec = statistics.median(r["stages"]["rec"]["p50"] for r in row["lite"])
        ort_rec = statistics.median(r["stages"]["rec"]["p50"] for r in row["ort"])
        same = sum(a == b for a, b in zip(row["lite"][0]["texts"], row["ort"][0]["texts"]))
        for engine, runs in (("Paddle Lite x86", row["lite"]), ("onnxruntime", row["ort"])):
            total = sorted(r["ms"]["p50"] for r in runs)
            lines.append(
                f"| {row['image']} | {engine} | " + " | ".join(cell(runs, st) for st in OCR_STAGES)
                + f" | {fmt(statistics.median(total))} ({fmt(total[0])}-{fmt(total[-1])}) | "
                + (f"{lite_rec / ort_rec:.1f}x" if engine == "onnxruntime" else "")
                + f" | {same}/{len(row['lite'][0]['texts'])} | {max(r['rss_mb'] for r in runs):.0f} |")
    lines.append("""
The recognizer dominates on x86: Paddle Lite's x86 kernels run it an order of magnitude slower
than onnxruntime (its ARM kernels are what boards use). Each Paddle Lite predictor holds
activations sized to its width (process RSS ~310 MB at width 320, ~750 MB at 640, ~1.2 GB at 960,
measured one predictor at a time), which is why the bundle keeps one (`predictors: 1`) and reads
a frame's lines grouped by width bucket.
""")
def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_uplink(bundles: Path, progress: Progress, tmp: Path) -> dict:
    """The MQTT uplink on loopback (Mosquitto with TLS): what one device sustains,
    its CPU beside its stream's, the answer round trip, and answers/s for N
    devices into one broker with 1, 2, 4 `lited cloud` processes."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    from mqtt_broker import Broker

    from lited.client import Client, Subscriber
    from lited.engine_process import child_pids

    devices = [f"dev{i}" for i in range(1, 5)]
    broker = Broker(tmp / "mqtt", devices=devices)
    broker.start()
    image = SHARED / "images" / "astronaut.png"
    out: dict = {"cores": os.cpu_count()}

    def clouds(n: int, bundle: Path | None = None) -> list:
        procs = []
        for i in range(n):
            log = tmp / f"cloud-{len(list(tmp.glob('cloud-*.log')))}.log"
            procs.append((subprocess.Popen([PY, "-m", "lited.cli", "cloud", *broker.server_args(), "--client-id",
                                            f"bench-{log.stem}", "--group", f"bench{n}"]
                                           + (["--bundle", str(bundle)] if bundle else []),
                                           stdout=subprocess.PIPE, stderr=open(log, "wb"),
                                           env={**os.environ, "OMP_NUM_THREADS": "1"}), log))
        deadline = time.monotonic() + 120
        while not all(b"subscribed to" in log.read_bytes() for _, log in procs):
            if time.monotonic() > deadline:
                raise RuntimeError("lited cloud did not subscribe")
            time.sleep(0.1)
        return procs

    def stop_all(procs: list) -> list:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        return [json.loads(proc.communicate(timeout=60)[0].decode().strip().splitlines()[-1]) for proc, _ in procs]

    def device(name: str, rate: float, seconds: float, ack: str, faces: int = 2) -> subprocess.Popen:
        uplink = broker.uplink_config(name, ack=ack, resend_after=5, outbox={"dir": str(tmp / f"outbox-{name}")},
                                      streams={"*": {"labels": ["face"], "attach": "crops"}})
        return subprocess.Popen([PY, str(PROBES), "uplink_device", "--uplink", json.dumps(uplink), "--image",
                                 str(image), "--rate", str(rate), "--seconds", str(seconds), "--faces", str(faces)],
                                stdout=subprocess.PIPE, text=True)

    def result(proc: subprocess.Popen) -> dict:
        return json.loads(proc.communicate(timeout=300)[0].strip().splitlines()[-1])

    try:
        progress.step("uplink: one device flat out, ack broker")
        out["flat_broker"] = result(device("dev1", 0, 12, "broker"))
        progress.step("uplink: one device flat out, ack cloud")
        servers = clouds(1)
        out["flat_cloud"] = result(device("dev2", 0, 12, "cloud"))
        stop_all(servers)

        progress.step("uplink: a stream's CPU beside its uplink's")
        video = tmp / "faces.avi"
        make_video(image, video, 300)
        run = tmp / "run"
        progress.step("uplink: MobileNetV2 alone (the server's model)")
        out["server_infer_ms"] = probe("infer", bundle=bundles / "mobilenetv2", image=image, runs=40)["ms"]["p50"]
        # without a model: every face, the CPU figure; with MobileNetV2: 1 result/s, under the server's capacity,
        # so the round trip is the path and the model, not a queue growing behind an overloaded server
        for label, bundle, rate in (("receipt", None, None), ("mobilenetv2", bundles / "mobilenetv2", 1)):
            servers = clouds(1, bundle)
            rule = {"labels": ["face"], "min_score": 0.7, "attach": "crops", "margin": 0.2}
            config = {"runtime_dir": str(run), "models": {"face": str(bundles / "ultraface")},
                      "streams": [{"name": "cam", "source": f"file://{video}?loop=1&realtime=1", "model": "face",
                                   "slots": 16}],
                      "uplink": broker.uplink_config("dev3", ack="cloud", outbox={"dir": str(tmp / f"ob-{label}")},
                                                     streams={"*": {**rule, "max_rate": rate} if rate else rule})}
            (tmp / "uplink.conf").write_text(json.dumps(config))
            daemon = subprocess.Popen([str(Path(PY).with_name("lited")), "serve", "--config", str(tmp / "uplink.conf")],
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                trips = []
                with Client(f"ipc://{run}/req.sock", timeout=60) as client, \
                        Subscriber(f"ipc://{run}/pub.sock", answers=True, check=False) as sub:
                    deadline = time.monotonic() + 120
                    while not _uplink_up(client):
                        if time.monotonic() > deadline:
                            raise RuntimeError("lited serve with an uplink did not come up")
                        time.sleep(0.2)
                    time.sleep(3)
                    engines = child_pids(daemon.pid)
                    s0 = client.status()
                    c0, e0, t0 = _cpu_s(daemon.pid), sum(_cpu_s(p) for p in engines), time.monotonic()
                    while time.monotonic() - t0 < 20:
                        msg = sub.recv(timeout=0.5)
                        if msg and msg["type"] == "answer" and "round_trip_ms" in msg:
                            trips.append(msg["round_trip_ms"])
                    s1 = client.status()
                    c1, e1, t1 = _cpu_s(daemon.pid), sum(_cpu_s(p) for p in engines), time.monotonic()
                up = s1["uplink"]["cpu_s"] - s0["uplink"]["cpu_s"]
                stream = (c1 - c0 - up) + (e1 - e0)
                counters = {k: s1["uplink"]["counters"][k] - s0["uplink"]["counters"][k] for k in ("queued", "answers")}
                out[f"stream_{label}"] = {
                    "seconds": t1 - t0, "fps": s1["streams"][0]["fps"], "uplink_cpu_s": up, "stream_cpu_s": stream,
                    "messages_per_s": counters["queued"] / (t1 - t0), "answers_per_s": counters["answers"] / (t1 - t0),
                    "round_trip_ms": {"p50": float(np.percentile(trips, 50)), "p99": float(np.percentile(trips, 99)),
                                      "n": len(trips)} if trips else None}
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
                stop_all(servers)

        for n_servers in (1, 2, 4):
            progress.step(f"uplink: 4 devices, {n_servers} lited cloud (mobilenetv2)")
            infer_ms = probe("infer", bundle=bundles / "mobilenetv2", image=image, runs=40)["ms"]["p50"]
            servers = clouds(n_servers, bundles / "mobilenetv2")
            probes = [device(name, 4, 15, "cloud") for name in devices]
            rows = [result(p) for p in probes]
            stats = stop_all(servers)
            out[f"fleet_{n_servers}"] = {"answers_per_s": sum(r["answers_per_s"] for r in rows), "infer_ms": infer_ms,
                                         "demand_crops_per_s": sum(r["crops_per_s"] for r in rows),
                                         "per_server": [s.get("answered", 0) for s in stats],
                                         "round_trip_p50": float(np.median([r["round_trip_ms"]["p50"] for r in rows
                                                                            if r["round_trip_ms"]] or [0]))}
    finally:
        broker.stop()
    return out


def render_uplink(u: dict) -> str:
    fb, fc = u["flat_broker"], u["flat_cloud"]
    limit = 1000 / u["server_infer_ms"]
    lines = [f"""## MQTT uplink

`lited serve` with an `uplink` to Mosquitto 2.0 on loopback (TLS, passwords, the documented ACL),
written by `tools/bench.py` (`--only uplink` rewrites just this section). A device's messages are a
result (JSON) and one JPEG crop per face (640x480 frames, crops ~190x240 with a 20 % margin); every
message is stored in the outbox with `fdatasync` before it is sent. {u['cores']} cores shared by
everything below (broker, devices, servers, models) and by other jobs: read the ratios.

What one device sustains, flat out (simulated results with 2 faces each, real crops cut from a
shared-memory ring and JPEG-encoded, the real outbox and paho over TLS). *Stored* is what the
device can take in; *confirmed* is what leaves its outbox for good (`ack: cloud`: the window of 64
unconfirmed records over the round trip through the broker and the server).

| mode | stored msgs/s | crops/s | confirmed msgs/s | uplink CPU (cores) |
| --- | --- | --- | --- | --- |
| `ack: broker` (PUBACK frees the record; no server subscribed) | {fb['stored_per_s']:.0f} | {fb['crops_per_s']:.0f} | {fb['confirmed_per_s']:.0f} | {fb['cpu_s_per_s']:.2f} |
| `ack: cloud`, one `lited cloud` without a model | {fc['stored_per_s']:.0f} | {fc['crops_per_s']:.0f} | {fc['confirmed_per_s']:.0f} | {fc['cpu_s_per_s']:.2f} |

A real stream: UltraFace on a 640x480 video at 30 fps (a face in every frame), `ack: cloud`, one
`lited cloud`. *Stream CPU* is the daemon's CPU without the uplink's threads plus its engine
process; *uplink CPU* is its packer, store and sender threads and paho's network thread. The round
trip runs from the crop being stored on the device to its answer on the device's local bus.
MobileNetV2 alone took {u['server_infer_ms']:.0f} ms per crop (p50) in this run, so one server
answers at most ~{limit:.0f} crops/s: its row sends 1 result/s.

| server | stream fps | uplink msgs/s | uplink CPU / stream CPU | answers/s | round trip p50 / p99 ms (answers) |
| --- | --- | --- | --- | --- | --- |"""]
    for label, what in (("receipt", "`lited cloud` without a model, every face"),
                        ("mobilenetv2", "`lited cloud` + MobileNetV2 (Paddle Lite x86), 1 result/s")):
        r = u[f"stream_{label}"]
        trip = r["round_trip_ms"]
        lines.append(f"| {what} | {r['fps']:.1f} | {r['messages_per_s']:.1f} | {r['uplink_cpu_s']:.2f} s / "
                     f"{r['stream_cpu_s']:.2f} s = {r['uplink_cpu_s'] / r['stream_cpu_s']:.3f} | "
                     f"{r['answers_per_s']:.1f} | "
                     + (f"{trip['p50']:.0f} / {trip['p99']:.0f} ({trip['n']})" if trip else "n/a") + " |")
    lines.append(f"""
Four simulated devices (processes, 4 results/s each with 2 face crops: 32 crops/s offered) into one
broker, `lited cloud` processes with MobileNetV2 in one shared-subscription group, 15 s. Beside
each row, MobileNetV2 alone (one process, one thread, measured just before the row): with
{u['cores']} cores shared by the devices, the broker and the servers, more servers than cores
cannot add answers/s; the row shows the group spreading the crops (answered per server).

| servers | answers/s (all devices) | MobileNetV2 alone p50 ms | crops/s offered | answered per server | round trip p50 ms |
| --- | --- | --- | --- | --- | --- |""")
    for n in (1, 2, 4):
        f = u[f"fleet_{n}"]
        lines.append(f"| {n} | {f['answers_per_s']:.1f} | {f['infer_ms']:.0f} | "
                     f"{f['demand_crops_per_s']:.1f} | {' / '.join(str(x) for x in f['per_server'])} | "
                     f"{f['round_trip_p50']:.0f} |")
    lines.append("""
Where the servers cannot keep up, crops wait in the devices' outboxes and the round trip is that
queue; the resend timeout follows the confirmation time, so the servers are not sent copies.
""")
    return "\n".join(lines)
# --- engines: every engine on every model, side by side ----------------------

ENGINE_FRAMES = {"ultraface": 80, "fastestdet": 80, "mobilenetv2": 60, "nanodet_m": 40, "ppocrv4_det": 24,
                 "ppocr_cls": 120, "ppocrv4_rec": 24}
# PP-OCR det at 192x384, as measured before; the text-line models on text-line frames (their crops in a cascade)
VIDEO_SIZE = {"ppocrv4_det": (384, 192), "ppocrv4_rec": (320, 48), "ppocr_cls": (192, 48)}


def build_sdk(args: list, tmp: Path, what: str) -> Path | None:
    """tools/build_sdk.py (the tools venv); its work directory, or None when it cannot run here."""
    work = tmp / f"work_{what}"
    proc = subprocess.run([PY, str(ROOT / "tools" / "build_sdk.py"), *map(str, args), "--workdir", str(work)],
                          capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        sys.stderr.write(f"\nbench: build_sdk {what}: {proc.stderr.strip().splitlines()[-1:]}\n")
        return None
    return work


FIX_SHAPE = """
import sys, onnx
model = onnx.load(sys.argv[1])
dims = model.graph.input[0].type.tensor_type.shape.dim
for dim, size in zip(dims, map(int, sys.argv[3].split(","))):
    dim.ClearField("dim_param")
    dim.dim_value = size
for output in model.graph.output:
    for dim in output.type.tensor_type.shape.dim:
        dim.ClearField("dim_param")
del model.graph.value_info[:]
onnx.save(onnx.shape_inference.infer_shapes(model), sys.argv[2])
"""


def fixed_shape_onnx(onnx_file: Path, shape: list, tmp: Path) -> Path | None:
    """A copy of the ONNX with its input's size fixed (in the tools venv, which has
    onnx): x2paddle 1.6 cannot convert PP-OCRv4 rec with a dynamic width (its
    LayerNorm then sees [-1, -1, -1])."""
    out = tmp / f"{onnx_file.stem}_fixed.onnx"
    tools = ROOT / ".venv-tools" / "bin" / "python"
    if not tools.is_file():
        return None
    subprocess.run([str(tools), "-c", FIX_SHAPE, str(onnx_file), str(out), ",".join(map(str, shape))], check=True)
    return out


def engine_bundles(names: list, tmp: Path, progress: Progress) -> dict:
    """name -> a bundle listing the model for every engine (ONNX, .nb, Paddle model)."""
    import importlib.util

    out, bundles = tmp / "engines", {}
    with_pi = importlib.util.find_spec("paddle") is not None
    for name in names:
        progress.step(f"engines: bundle {name}")
        if name == "ppocrv4_rec":  # ONNX only in ../shared: build_sdk converts it (x2paddle, paddle_lite_opt)
            fragment = tmp / "ppocrv4_rec.json"
            fragment.write_text(json.dumps(REC_FRAGMENT))
            onnx = fixed_shape_onnx(SHARED / "models" / ONNX[name], REC_FRAGMENT["inputs"][0]["shape"], tmp)
            work = onnx and build_sdk(["--model", onnx, "--config", fragment, "--labels", REC_KEYS,
                                       "--targets", "x86", "--out", tmp / "rec.zip", "--keep-dir", out / name],
                                      tmp, name)
            if work is None:
                continue
            root, paddle_dir = out / name, work / "x2paddle" / "inference_model"
        else:
            root = make_bundles.assemble(name, SHARED / "models", out, ("x86",), ("openvino", "onnxruntime"))
            paddle_dir = SHARED / "models" / PADDLE[name]
        if with_pi:
            add_paddle_inference(root, paddle_dir, alone=False)
        bundles[name] = root
    return bundles


def bench_engines(bundles: dict, rounds: int, progress: Progress, tmp: Path) -> list:
    """Each engine's bare loop and `lited run` per model, engines interleaved in
    shuffled order within each round (load drifts), then the agreement check."""
    import random

    from lited.bundle import load_bundle
    from lited.engines import ENGINES
    from lited.selftest import compare

    rows = []
    for name, root in bundles.items():
        kinds = [k for k in ENGINE_KINDS if ENGINES.get(k).available()
                 and any(k in f.engines for f in load_bundle(root).model_files())]
        image = SHARED / "images" / f"{IMAGE_FOR[name]}.png"
        video = tmp / f"{name}_engines.avi"
        make_video(image, video, ENGINE_FRAMES[name] + 20, VIDEO_SIZE.get(name))
        by_kind: dict = {k: [] for k in kinds}
        for r in range(rounds):
            order = random.Random(r).sample(kinds, len(kinds))
            for kind in order:
                progress.step(f"engines: {name} {kind} round {r + 1}")
                try:
                    by_kind[kind].append(probe("engine", bundle=root, engine=kind, image=image, video=video,
                                               runs=ENGINE_FRAMES[name]))
                except RuntimeError as exc:
                    sys.stderr.write(f"\nbench: {exc}\n")
        reference = (by_kind.get("paddle_lite") or [{}])[0].get("result")
        for kind, runs in by_kind.items():
            if not runs:
                continue
            problems = compare(runs[0]["result"], reference) if reference else ["no Paddle Lite result"]
            lite = by_kind.get("paddle_lite", [])
            rows.append({"model": name, "engine": kind, "runs": runs, "agrees": problems,
                         "vs_lite": [r["bare_fps"] / p["bare_fps"] for r, p in zip(runs, lite)],
                         "vs_lite_cpu": [p["bare_cpu_ms"] / r["bare_cpu_ms"] for r, p in zip(runs, lite)]})
    return rows


def bench_pair(bundle: Path, progress: Progress, tmp: Path) -> list:
    """One stream, two streams of one thread each (what the daemon gives them on
    2 cores), two streams of two threads each (what they would take unshared)."""
    video = tmp / "pair.avi"
    make_video(SHARED / "images" / "coffee.png", video, 180)
    rows = []
    for kind in ("onnxruntime", "paddle_lite"):
        for streams, threads in ((1, 1), (2, 1), (2, 2)):
            progress.step(f"pair: {kind} {streams}x{threads}")
            rows.append({"engine": kind, "streams": streams, "threads": threads,
                         **probe("pair", threads, bundle=bundle, engine=kind, video=video, runs=160, streams=streams)})
    return rows


def bench_footprint(bundle: Path, progress: Progress, tmp: Path) -> list:
    """`lited serve` with one stream on each engine: daemon + engine PSS beside a
    bare process of that engine (Python, numpy, the backend, the model, one run)."""
    from lited.bundle import load_bundle
    from lited.engine_process import child_pids
    from lited.engines import ENGINES

    rows = []
    b = load_bundle(bundle)
    for kind in ENGINE_KINDS:
        if not ENGINES.get(kind).available():
            continue
        progress.step(f"footprint: {kind}")
        config = {"models": {"det": {"bundle": str(bundle), "engine": kind}},
                  "streams": [{"name": "cam", "source": "synth://?size=640x480&fps=25", "model": "det"}]}
        with serving(config, tmp / f"fp_{kind}") as (daemon, _):
            time.sleep(3)
            mine = memory_mb(daemon.pid)
            engines = [memory_mb(pid) for pid in child_pids(daemon.pid)]
        model = b.choose(engine=kind).model
        bare = probe("engine_process", engine=kind, model=model.path,
                     shape="x".join(map(str, b.inputs[0]["shape"])))
        rows.append({"engine": kind, "daemon": mine, "engine_mb": {k: sum(e[k] for e in engines) for k in ("rss", "pss")},
                     "bare": bare})
    return rows


def bench_int8(names: list, calib: Path, progress: Progress, tmp: Path) -> list:
    """build_sdk --int8 per model and quantiser: its accuracy and speed report."""
    rows, instructions = [], int8_instructions()
    for name in names:
        for kind in ("openvino", "onnxruntime"):
            progress.step(f"int8: {name} {kind}")
            work = build_sdk(["--model", SHARED / "models" / ONNX[name], "--config",
                              ROOT / "tests" / "bundles" / f"{name}.json", "--labels",
                              SHARED / "models" / name / "labels.txt", "--targets", "x86", "--int8", calib,
                              "--int8-engine", kind, "--out", tmp / f"{name}_{kind}_int8.zip"], tmp, f"{name}_{kind}")
            if work is not None:
                rows.append({"model": name, "calib": str(calib), "int8_instructions": instructions,
                             **json.loads((work / "int8_report.json").read_text())})
    return rows


def int8_instructions() -> str:
    """This CPU's instructions for int8 dot products, as /proc/cpuinfo names them: what decides
    whether an int8 model can be faster than its fp32 one."""
    flags = cpuinfo("flags").split()
    return ", ".join(f for f in ("avx_vnni", "avx512_vnni", "amx_int8") if f in flags) or "none (no VNNI)"


def _spread(ratios: list) -> str:
    return f" (of {len(ratios)}: {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""


def fmt(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _load_range(rows: list) -> str:
    loads = [r["load"] for row in rows for r in row["runs"] if "load" in r]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"


def render_live(live: list) -> str:
    """The live-camera section (also measured alone by --only live)."""
    lines = ["""## Live cameras: capture to result, and every result's own frame

A paced file source (`file://...?realtime=1&loop=1`, 30 fps, 640x480) through `lited serve`,
read by a subscriber in another process that copies each result's frame from shared memory the
moment the result arrives. *capture -> result* is `timings_ms.total` (frame published in the ring
to result ready); *own work* is `preprocess + infer + postprocess` of the same results; *latency
ratio* is the p50 of the first over the p50 of the second. *results/s ratio* is results per
second over min(camera fps, bare `run()` loop fps). The bare loop (a bare Paddle Lite predictor,
one thread, in the probe process; its fps is runs over wall time) takes turns with the daemon: bare, live, bare, live, bare, live, bare,
with the daemon's engine process stopped (SIGSTOP) during the bare windows; each live window is
compared with the mean of the bare windows on either side of it, and the probe gives the median
of its three windows (the host's speed drifts by several percent over seconds). The results of the
first runs after each bare window are not counted. *engine busy* is the share of the live windows'
wall time the engine computed runs (status `engine_busy_s`, timed by the engine process around each
run): 1 minus it is the time lited left the engine waiting (for a frame, for the daemon to collect and
submit, or, `latest`, for a fresher frame), which the host's drift, moving the bare loop's speed by
10% and more within seconds, barely moves. *frames read* is the share of results whose frame that
subscriber could copy. *skipped* is the stream's `skipped` counter at the end: frames the camera
delivered that no run started, the bare windows' included (the engine was stopped then). `latest` is the live default (one run in the engine, the newest frame
started the moment it frees); `queue` keeps a second run queued (the lossless default), shown for
comparison. The daemon ran with its defaults: where its engine's threads left a core over, the engine
process had cores of its own (docs/config.md, "Threads and cores"). Each policy ran three times, alternating with the other; the row is the run with the
median latency ratio, the ranges of the three follow. Measured on {date}; the machine's 1-minute
load average was {loads} at the ends of the runs (two cores: above 2, other
jobs took turns with the daemon's threads and its engine process).

| model | policy | camera fps | bare loop fps | results/s | results/s ratio | engine busy | capture -> result p50 / p99 ms | own work p50 ms | latency ratio | wait / queue / infer p50 ms | frames read | skipped |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"""]
    lines[0] = lines[0].format(date=time.strftime("%Y-%m-%d"), loads=_load_range(live))
    for lv in live:
        r = lv["run"]
        lines.append(
            f"| {lv['model']} | {lv['policy']} | {r['camera_fps']:.1f} | {r['bare_fps']:.1f} | "
            f"{r['results_per_s']:.2f} | {r['rate_ratio']:.2f}{_spread(lv['rate_ratios'])} | "
            f"{r['engine_busy']:.2f}{_spread(lv['busy'])} | "
            f"{fmt(r['latency']['p50'])} / {fmt(r['latency']['p99'])} | {fmt(r['own']['p50'])} | "
            f"{r['latency_ratio']:.2f}{_spread(lv['latency_ratios'])} | "
            f"{r['stages']['wait']:.1f} / {r['stages']['queue']:.1f} / {fmt(r['stages']['infer'])} | "
            f"{100 * r['readable']:.0f}% of {r['results']} | {r['skipped']} |")
    return "\n".join(lines) + "\n"


def render(rows: list, threads: list, live: list, daemon: dict, machine: str, plot: str) -> str:
    lines = [f"""# Benchmarks

Written by `python tools/bench.py` on {time.strftime('%Y-%m-%d')}. Every figure below comes from the
same run on the same machine, so read the **ratios**: absolute times move with load (two shared
cores here; at a load average over 2 the engines' ratios moved by 0.2 and more). Each measurement ran
in its own process; *RSS* is that process's peak. A section measured apart (`tools/bench.py --only
NAME`) says so, dated, under its heading; `--only engines` rewrites its whole section, and a part
whose model is not among `--engine-models` (footprint: ultraface; two streams: fastestdet) or whose
tools are absent (int8: `make tools-venv`) comes out empty. The models and images are read from
`../shared` beside the repository, or `LITED_SHARED`.

Machine: {machine}

![latency per model]({plot})

## Single image: lited beside the bare Paddle Lite loop and onnxruntime

ms per image, p50 / p90 / p99. *bare `run()`* is `predictor.run()` alone on the tensor lited
feeds: the limit. *lited infer* adds preprocessing from the decoded image, the input hand-over,
the output copy and decoding, as `lited infer` does. *onnxruntime* runs the ONNX original with
one thread and lited's own pre- and post-processing. *Paddle Inference* is lited's second engine
(mkldnn on). Ratios are to the bare loop.

| model | bare `run()` | lited infer | lited / bare | added by lited (pre + decode + copies) | onnxruntime 1 thread | ort / bare | Paddle Inference | PI / bare | RSS MB: bare / lited / ort / PI |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"""]
    for r in rows:
        b, i, o, pi = r["bare"]["ms"], r["infer"]["ms"], r["ort"]["ms"], (r["pi"] or {}).get("ms")
        added = i["p50"] - b["p50"]
        st = r["infer"]["stages"]
        pi_cell = f"{fmt(pi['p50'])} / {fmt(pi['p90'])} / {fmt(pi['p99'])}" if pi else "n/a"
        lines.append(
            f"| {r['model']} | {fmt(b['p50'])} / {fmt(b['p90'])} / {fmt(b['p99'])} | "
            f"{fmt(i['p50'])} / {fmt(i['p90'])} / {fmt(i['p99'])} | {i['p50'] / b['p50']:.3f} | "
            f"{added:+.2f} ms ({100 * added / b['p50']:+.1f}%; pre {st['preprocess']:.2f}, decode "
            f"{st['postprocess']:.2f}) | {fmt(o['p50'])} / {fmt(o['p90'])} / {fmt(o['p99'])} | "
            f"{o['p50'] / b['p50']:.2f} | {pi_cell} | {(pi['p50'] / b['p50']):.2f} | " if pi else
            f"| {r['model']} | {fmt(b['p50'])} / {fmt(b['p90'])} / {fmt(b['p99'])} | "
            f"{fmt(i['p50'])} / {fmt(i['p90'])} / {fmt(i['p99'])} | {i['p50'] / b['p50']:.3f} | "
            f"{added:+.2f} ms ({100 * added / b['p50']:+.1f}%; pre {st['preprocess']:.2f}, decode "
            f"{st['postprocess']:.2f}) | {fmt(o['p50'])} / {fmt(o['p90'])} / {fmt(o['p99'])} | "
            f"{o['p50'] / b['p50']:.2f} | n/a | n/a | ")
        lines[-1] += (f"{r['bare']['rss_mb']:.0f} / {r['infer']['rss_mb']:.0f} / {r['ort']['rss_mb']:.0f} / "
                      f"{(r['pi'] or {}).get('rss_mb', float('nan')):.0f} |")
    lines.append("""
`lited infer` preprocesses straight into Paddle Lite's own input tensor (no hand-over copy).

## Streams: `lited run` on a file beside a bare `run()` loop

An unpaced file source (nothing dropped) through the whole pipeline: capture into the shared-memory
ring, preprocessing straight into the engine's input slot in shared memory and decoding on their
own threads, the predictor in an engine process of its own (paddlelite's Python `run()` holds the
GIL, so in one process those threads could not run during inference), publish. Frames per second
from the 10th result to the middle of the file, beside `1000 / mean(bare run())` in the probe process,
timed over 100 runs just before the stream and 100 just after (load drifts on a shared machine).
Models under 100 ms ran the stream three times: the row is the run with the median ratio, and
the range of the three follows it.
*Allocations* are tracemalloc's net growth per frame over the third quarter (tracemalloc slows
Python down, so it never runs during the fps window). *Frame copies* were
counted by watching numpy's copy entry points while a frame went from capture to the model input,
and by checking the capture wrote into the ring slot's own buffer.

| model | frames | lited run fps | bare loop fps (before / after the stream) | ratio | skipped | torn | latency p50 ms (queue / infer / total) | Python bytes allocated per frame | frame copies capture -> input | RSS MB |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |""")
    for r in rows:
        run = r["run"]
        lat = run["latency"]
        alloc = run.get("alloc") or {}
        copies = run["frame_copies"]
        lines.append(
            f"| {r['model']} | {run['frames']} | {run['fps']:.1f} | {run['bare_fps']:.1f} "
            f"({run['bare_fps_before_after'][0]:.1f} / {run['bare_fps_before_after'][1]:.1f}) | "
            f"{run['fps'] / run['bare_fps']:.3f}{_spread(r['run_ratios'])} | {run['skipped']} | {run['torn']} | "
            f"{lat.get('queue', {}).get('p50', 0):.1f} / {lat['infer']['p50']:.1f} / {lat['total']['p50']:.1f} | "
            f"{alloc.get('bytes_per_frame', float('nan')):.0f} | "
            f"{copies['frame_sized_copies']} (capture into slot: {'yes' if copies['capture_into_slot'] else 'NO'}) | "
            f"{run['rss_mb']:.0f} |")
    lines.append("""
The one copy lited makes on the way in is of the *input tensor*, not the frame: Paddle Lite's
`Tensor.from_numpy` always copies.
""")
    lines.append(render_live(live))
    lines.append("""## Thread counts

The x86 Python build of Paddle Lite has no `set_threads` (ARM builds do: the bundle's
`models.<target>.options.threads`); its x86 kernels follow `OMP_NUM_THREADS`, swept here.
onnxruntime's `intra_op_num_threads` is swept alongside. p50 ms.

| model | threads | bare `run()` | lited infer | onnxruntime |
| --- | --- | --- | --- | --- |""")
    for t in threads:
        lines.append(f"| {t['model']} | {t['threads']} | {fmt(t['bare'])} | {fmt(t['infer'])} | {fmt(t['ort'])} |")
    d = daemon
    dm, em = d["daemon_mb"], d["engines_mb"]
    total_pss = dm["pss"] + em["pss"]
    over = total_pss - d["bare_process"]["rss_mb"]
    lines.append(f"""
## The daemon

`lited serve` with UltraFace on one synthetic 640x480 stream at 25 fps.

| what | measured |
| --- | --- |
| start-up to `READY=1` (read from a notify socket the benchmark bound) | {d['ready_s']:.2f} s |
| daemon process (serving, one stream, bus; no Paddle Lite in it), RSS / PSS | {dm['rss']:.0f} / {dm['pss']:.0f} MB |
| its engine process{'es' if d['engine_count'] != 1 else ''} ({d['engine_count']}: the stream's predictor), RSS / PSS | {em['rss']:.0f} / {em['pss']:.0f} MB |
| together, RSS summed / PSS summed (RSS counts the shared Python and numpy pages twice) | {dm['rss'] + em['rss']:.0f} / {total_pss:.0f} MB |
| a bare Python process that loads Paddle Lite and the same model and runs it once, RSS | {d['bare_process']['rss_mb']:.0f} MB |
| daemon + engine (PSS) over that bare process's RSS (like for like, PSS over PSS: the engines section's footprint) | {over:+.0f} MB (aim: under 40 MB; RSS summed: {dm['rss'] + em['rss'] - d['bare_process']['rss_mb']:+.0f} MB) |
| `import lited.service.daemon, lited.cli` in a new interpreter (bare interpreter: {d['python_s']:.2f} s) | {d['import_daemon_s']:.2f} s |
| `infer` in process (`Model.infer` on the 512x512 astronaut photo) p50 | {d['infer_local_ms']:.2f} ms |
| `infer` request over ipc, raw BGR array, round trip p50 | {d['infer_ipc_ms']:.2f} ms (x{d['infer_ipc_ms'] / d['infer_local_ms']:.2f}) |
| `infer` request over ipc, PNG bytes (decoded by the daemon), mean | {d['infer_png_ms']:.2f} ms |
| bus: result ready -> subscriber, 1 subscriber, p50 / p99 | {d['bus_1']['p50']:.3f} / {d['bus_1']['p99']:.3f} ms |
| bus: result ready -> subscriber, 8 subscribers (worst of 8), p50 / p99 | {d['bus_8']['p50']:.3f} / {d['bus_8']['p99']:.3f} ms (aim: p99 under 1 ms) |
| capture -> subscriber, 1 / 8 subscribers, p50 | {d['bus_1']['e2e_p50']:.1f} / {d['bus_8']['e2e_p50']:.1f} ms |
""")
    return "\n".join(lines)


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    series = [("bare run()", [r["bare"]["ms"]["p50"] for r in rows]),
              ("lited infer", [r["infer"]["ms"]["p50"] for r in rows]),
              ("onnxruntime", [r["ort"]["ms"]["p50"] for r in rows]),
              ("Paddle Inference", [(r["pi"] or {"ms": {"p50": 0}})["ms"]["p50"] for r in rows])]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.2
    for k, (label, values) in enumerate(series):
        ax.bar([i + (k - 1.5) * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("ms per image (p50), log scale")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("lited beside bare Paddle Lite and onnxruntime (same machine, same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)




def _med(values: list) -> float:
    import statistics

    return statistics.median(values)


def _range(values: list, digits: int = 2) -> str:
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""


def render_engines(rows: list, pair: list, footprint: list, int8: list, machine_line: str) -> str:
    lines = [f"""## Engines: Paddle Lite, Paddle Inference, OpenVINO, onnxruntime

Every figure in this section comes from one run of `tools/bench.py` (or `--only engines`) on
{time.strftime('%Y-%m-%d')}. Machine: {machine_line}. The 1-minute load average at the ends of the
engine runs was {_load_range(rows)} (two cores: above 2, other work took turns with the engines, and
wall-clock figures are inflated and noisy). The **ratios** are each measured in one process or one
round, and the **CPU milliseconds per frame**, which other load barely moves (it counts spinning),
say what a frame costs on a board.

Per model, each engine ran in its own process, in shuffled order, in each round: its bare loop (the
engine's `run()` on the video's first frame, preprocessed by lited: what an app calling that runtime
pays; for Paddle Lite it includes copying the outputs out; in a process of its own since 2026-12-03,
before in the one feeding `lited run`), in windows alternating with `lited run` on
an unpaced MJPG file of the model's image through the whole pipeline (capture, preprocessing into the
engine's input set in shared memory, the engine in its engine process, decoding), the file looping:
bare, run, bare, run, bare, run, bare, each window 1-3 s (a run window at least 15 frames), from the
10th result. The engine process is stopped (SIGSTOP) during the bare windows, and the pipeline then
idles. The host's speed drifts by several percent within seconds, so each run window is compared with
the bare windows on either side of it. `lited run` places its work as the daemon does (docs/config.md,
"Threads and cores"): the engine process on core 1, the rest of lited on core 0. One thread per engine
(`threads: 1`). Paddle Inference runs with `mkldnn: true`. OpenVINO takes the image as float16 (`f16_images`,
its default since 2026-12-03: docs/bundle.md), in its bare loop as in `lited run`. *x Paddle Lite* is the bare loop's speed over
Paddle Lite's in the same round; *run / bare* is a run window's fps over the mean of the bare windows
beside it, the median of a probe's three, then the median of the rounds (range); a bare window's fps is
its runs over its wall time, like `lited run`'s (every slow run counted; until 2026-12-01 it was 1000 over
the median run's ms, which differs from it by a few percent either way on this host). *Agrees* compares each engine's decoded result on the image with Paddle
Lite's within the golden tolerance (box 4 px, score 0.05): empty means identical within it.
NanoDet-m and PP-OCRv4 rec are decoded by their own decoders (gfl; ctc with the OCR demo's keys, and
*agrees* then compares the text read); PP-OCRv4 rec's `.nb` and Paddle model were made by `tools/build_sdk.py` from its
ONNX with its width fixed at 320; PP-OCRv4 det ran at 192x384, and the text-line models on frames of a
text line (PP-OCR cls 192x48, PP-OCRv4 rec 320x48: in the OCR cascade they run on crops of that size). Every model ran {max((len(r['runs']) for r in rows), default=0)} rounds (`--rounds`, default 3:
an odd count, so that one round the host slowed does not set the median).
Copies a frame in the engine process, steady state (its `stats()`, checked by tests/test_engines.py):
OpenVINO and onnxruntime read the input set and write the output set in place, 0 and 0 (after the first
run into each of the three output sets), and bind each pair of sets to the backend once (`binds`: an
infer request or an IOBinding per pair; OpenVINO bound one request anew every frame until 2026-12-02);
Paddle Lite and Paddle Inference copy the inputs in and the
outputs out, 1 and 1 (Paddle Lite's `run()` also copies its outputs out of the predictor).

| model | engine | bare loop fps | bare CPU ms / frame | x Paddle Lite, wall (same round) | x Paddle Lite, CPU (same round) | `lited run` fps | run / bare | `lited run` CPU ms / frame: engine process / all | agrees with Paddle Lite |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"""]
    best: dict = {}
    for r in rows:
        runs = r["runs"]
        ratios = [x["ratio"] for x in runs]
        bare, cpu = _med([x["bare_fps"] for x in runs]), _med([x["bare_cpu_ms"] for x in runs])
        if cpu < best.get(r["model"], ("", 0.0, float("inf")))[2]:
            best[r["model"]] = (r["engine"], bare, cpu, ratios,
                                [x["bare_cpu_ms"] / x["run_engine_cpu_ms"] for x in runs],
                                [x["run_engine_cpu_ms"] * x["fps"] / 1e3 for x in runs],
                                [x["beside_busy"] for x in runs if "beside_busy" in x])
        vs = " | ".join(f"{_med(r[k]):.2f}{_range(r[k])}" if r[k] else "-" for k in ("vs_lite", "vs_lite_cpu"))
        agrees = "yes" if not r["agrees"] else "; ".join(r["agrees"])[:80]
        lines.append(
            f"| {r['model']} | {r['engine']} | {bare:.1f} | {cpu:.1f} | {vs} | "
            f"{_med([x['fps'] for x in runs]):.1f} | {_med(ratios):.2f}{_range(ratios)} | "
            f"{_med([x['run_engine_cpu_ms'] for x in runs]):.1f} / {_med([x['run_total_cpu_ms'] for x in runs]):.1f}"
            f" | {agrees} |")
    lines += ["", "The best engine per model (least CPU per frame in its bare loop: wall-clock speed on this loaded "
              "machine follows the share of the cores a process gets) and `lited run` against its own bare loop "
              "(aim: at least 0.97). *Engine CPU, bare / in `lited run`* is the CPU a frame costs the engine in "
              "its bare loop over what it costs the engine process in `lited run`: 1.00 means lited adds nothing "
              "to the engine's own work (no copies, no waiting); the fps ratio also carries the pipeline's own "
              "CPU (capture, preprocessing, decoding: the *all* minus *engine process* column above), which "
              "runs on the other core. *Engine busy* is the share of the wall time the engine process spent "
              "computing in `lited run` (its CPU per frame times the frames per second; it alone runs on its "
              "core): 1.00 means the pipeline never kept it waiting for a frame. *Bare, other core busy / idle* "
              "is the bare loop on the engine's core while a pure-Python spin runs on the other core, over the "
              "same loop with that core idle (alternating windows, `beside_a_busy_core` in tools/bench_probes.py): "
              "what work on one core costs an engine on the other on this host, whatever the work is.", "",
              "| model | best engine | bare CPU ms / frame | bare loop fps | `lited run` / bare loop (fps) | "
              "engine CPU, bare / in `lited run` | engine busy in `lited run` | bare, other core busy / idle |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, (engine, bare, cpu, ratios, cpu_ratios, busy, beside) in best.items():
        lines.append(f"| {model} | {engine} | {cpu:.1f} | {bare:.1f} | {_med(ratios):.2f}{_range(ratios)} | "
                     f"{_med(cpu_ratios):.2f}{_range(cpu_ratios)} | {_med(busy):.2f}{_range(busy)} | "
                     + (f"{_med(beside):.2f}{_range(beside)} |" if beside else "- |"))
    lines += ["", """### Footprint per engine

`lited serve` with one synthetic 640x480 stream on UltraFace, run by each engine (`models.det.engine`):
the daemon process and its engine process, PSS (shared pages split between the processes that share
them), beside a bare process of that engine: Python, numpy, the backend, the model, one run, nothing
else (no OpenCV, no ZeroMQ).

| engine | daemon PSS MB | engine process PSS MB | together PSS MB | bare process of that engine PSS MB | daemon + engine over bare |
| --- | --- | --- | --- | --- | --- |"""]
    for f in footprint:
        together = f["daemon"]["pss"] + f["engine_mb"]["pss"]
        lines.append(f"| {f['engine']} | {f['daemon']['pss']:.0f} | {f['engine_mb']['pss']:.0f} | {together:.0f} | "
                     f"{f['bare']['pss_mb']:.0f} | {together - f['bare']['pss_mb']:+.0f} MB |")
    lines += ["", """### Two streams on one model

FastestDet, two `lited run` streams on one file each at once, each with an engine process of its own:
the daemon gives each stream `threads` so that together they fit the cores (lited/cores.py's `share_threads`: on these 2
cores, 1 each); the last row per engine is what two streams of 2 threads would take without that.
Total frames per second of the streams together and CPU milliseconds per frame (all processes).

| engine | streams x threads | total fps | CPU ms / frame | threads in each engine process |
| --- | --- | --- | --- | --- |"""]
    for p in pair:
        lines.append(f"| {p['engine']} | {p['streams']} x {p['threads']} | {p['fps']:.1f} | {p['cpu_ms']:.1f} | "
                     f"{', '.join(map(str, p['engine_threads']))} |")
    lines += ["", """### Int8

`tools/build_sdk.py --int8 DIR --int8-engine E` on the same calibration images, accuracy against the
same engine's fp32 model on those images (decoded results: boxes matched one to one at IoU 0.7 with the
same label, or top-1 agreement), speed of each model's bare loop in interleaved bursts (1 thread), and
file sizes (an IR counts its `.bin`). Int8 instructions of the CPU: {int8_cpu}. Calibration
images: {calib}.

| model | quantiser | accuracy against fp32 | fp32 ms (CPU ms) | int8 ms (CPU ms) | speed-up (CPU) | size fp32 -> int8 |
| --- | --- | --- | --- | --- | --- | --- |""".replace("{calib}", ", ".join(sorted({f"`{q['calib']}`" for q in int8 if "calib" in q}))
                                                   or "not recorded").replace(
        "{int8_cpu}", ", ".join(sorted({q["int8_instructions"] for q in int8 if "int8_instructions" in q}))
        or "not recorded")]
    for q in int8:
        if "top1_agreement" in q:
            acc = f"top-1 agreement {q['top1_agreement']:.0%} of {q['frames']} images"
        else:
            acc = (f"boxes {q['fp32_boxes']} / {q['int8_boxes']}, {q['matched']} matched "
                   f"(recall {q['recall'] or 0:.0%}, precision {q['precision'] or 0:.0%}) on {q['frames']} images")
        sp = q["speed"]
        lines.append(f"| {q['model']} | {'OpenVINO NNCF' if q['engine'] == 'openvino' else 'onnxruntime QDQ'} | "
                     f"{acc} | {sp['fp32']['ms']:.2f} ({sp['fp32']['cpu_ms']:.2f}) | {sp['int8']['ms']:.2f} "
                     f"({sp['int8']['cpu_ms']:.2f}) | x{q['speedup']:.2f} (x{q['cpu_speedup']:.2f}) | "
                     f"{q['bytes']['fp32'] / 1e6:.1f} -> {q['bytes']['int8'] / 1e6:.1f} MB |")
    return "\n".join(lines) + "\n"


def cpuinfo(field: str) -> str:
    """The first core's `field` in /proc/cpuinfo ("" where there is none)."""
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith(field)), "")


def machine() -> str:
    cpu = cpuinfo("model name") or "unknown CPU"
    import cv2
    import numpy

    return (f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, paddlelite 2.13rc0, numpy {numpy.__version__}, "
            f"OpenCV {cv2.__version__}")


def _uplink_up(client) -> bool:
    """The daemon answers, its uplink is connected and its streams run (False while it starts)."""
    from lited.client import DaemonUnreachable

    try:
        status = client.status()
    except (TimeoutError, DaemonUnreachable):
        return False
    return bool((status["uplink"] or {}).get("connected") and status["streams"])


UPLINK_STEPS = 8


def assemble_bundles(out: Path, names: list) -> None:
    """The shared models' bundles into `out`, from SHARED (LITED_SHARED): make_bundles alone looked in
    ../shared, so a clone without it beside failed with a traceback."""
    subprocess.run([PY, str(ROOT / "tools" / "make_bundles.py"), "--models", str(SHARED / "models"), "--out", str(out),
                    *names], check=True, stdout=subprocess.DEVNULL)


def section_http(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    assemble_bundles(tmp / "bundles", ["ultraface"])
    return render_http(bench_http(tmp / "bundles", progress, tmp))


def section_ocr(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    return render_ocr(bench_ocr(progress, tmp), "")


def section_uplink(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    assemble_bundles(tmp / "bundles", ["ultraface", "mobilenetv2"])
    return render_uplink(bench_uplink(tmp / "bundles", progress, tmp))


def live_models(args: argparse.Namespace) -> list:
    """The live section's models among --models."""
    return [n for n in LIVE_MODELS if n in args.models.split(",")]


def section_live(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    names = [n for n in live_models(args) if n == "demo_ppocrv4_det" or (SHARED / "models" / n).is_dir()]
    bundles = tmp / "bundles"
    assemble_bundles(bundles, [n for n in names if n != "demo_ppocrv4_det"])
    demo.detector_bundle(bundles / "demo_ppocrv4_det")
    return render_live(bench_live(names, bundles, False, progress, tmp))


def section_nms(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    import bench_nms

    return bench_nms.section()


def section_engines(tmp: Path, progress: Progress, args: argparse.Namespace) -> str:
    return run_engines(args, tmp, progress)


def engine_steps(args: argparse.Namespace) -> int:
    names = [n for n in args.engine_models.split(",") if (SHARED / "models" / n).is_dir()]
    return len(names) * (1 + 4 * args.rounds) + 6 + 4 + 2 * len([n for n in args.int8_models.split(",") if n])


# --only NAME: (its section's heading, what measures and renders it, its progress steps)
SECTIONS = {"live": ("## Live cameras", section_live, lambda args: len(live_models(args)) * len(POLICIES) * 3),
            "http": ("## The HTTP front end", section_http, lambda args: 3),
            "ocr": ("## OCR cascade", section_ocr, lambda args: 8),
            "uplink": ("## MQTT uplink", section_uplink, lambda args: UPLINK_STEPS),
            "nms": ("## NMS: OpenCV beside the numpy loop", section_nms, lambda args: 1),
            "engines": ("## Engines: Paddle Lite, Paddle Inference, OpenVINO, onnxruntime", section_engines,
                        engine_steps)}


def only(name: str, out: Path, args: argparse.Namespace) -> int:
    """Measure one section alone and put it in place of the old one in `out`, dated (it is not
    from the same run as the rest); the rest of the file is kept as it is."""
    heading, measure, steps = SECTIONS[name]
    progress = Progress(steps(args))
    with tempfile.TemporaryDirectory() as tmp:
        section = measure(Path(tmp), progress, args)
    progress.close()
    start = section.index(heading)
    line_end = section.index("\n", start)
    section = (section[:line_end + 1] + f"\n(Measured on {time.strftime('%Y-%m-%d')} by `python tools/bench.py "
               f"--only {name}`, apart from the full run. Machine: {machine()}.)\n" + section[line_end + 1:])
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    begin = text.find(heading)
    if begin < 0:
        text = text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    else:
        end = text.find("\n## ", begin + 1)
        text = text[:begin] + section.strip("\n") + "\n" + (text[end:] if end >= 0 else "")
    out.write_text(text)
    print(section)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="ultraface,fastestdet,mobilenetv2,ppocrv4_det,ppocr_cls,demo_ppocrv4_det",
                    help="models of the single-image, streams and live tables (the daemon and HTTP sections run "
                         "UltraFace, the threads table FastestDet and MobileNetV2 among these)")
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the benchmark itself)")
    ap.add_argument("--only", choices=sorted(SECTIONS), help="measure only this section and replace it in --out")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="the report written")
    ap.add_argument("--rounds", type=int, default=3,
                    help="engines: rounds of every engine per model (1 or more; odd: a bad round is outvoted)")
    ap.add_argument("--calib", type=Path, default=SHARED / "images", help="int8: calibration images")
    ap.add_argument("--engine-models", default=",".join(ENGINE_MODELS),
                    help="engines: the models (the footprint needs ultraface among them, two streams fastestdet)")
    ap.add_argument("--int8-models", default="mobilenetv2,fastestdet", help="engines: models made int8")
    ap.add_argument("--render-only", action="store_true",
                    help="with --only engines: render build/bench_engines.json, measure nothing")
    args = ap.parse_args()
    if not (SHARED / "models").is_dir():
        print(f"bench: {SHARED / 'models'} is absent: nothing to measure (LITED_SHARED names another place)",
              file=sys.stderr)
        return 2
    problem = argument_problem(args)
    if problem:  # before minutes of measuring: an unknown model wrote empty tables, a bad --out lost them all
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    if args.only:
        return only(args.only, args.out, args)
    names = [n for n in args.models.split(",") if n == "demo_ppocrv4_det" or (SHARED / "models" / n).is_dir()]
    thread_models = [n for n in ("fastestdet", "mobilenetv2") if n in names]
    with_uplink = {"ultraface", "mobilenetv2"} <= set(names)
    live_runs = len([n for n in names if n in LIVE_MODELS]) * len(POLICIES) * (1 if args.quick else 3)
    progress = Progress(live_runs + 5 * len(names) + 2 * len(thread_models) + 5 + 8 + 2
                        + (UPLINK_STEPS if with_uplink else 0) + engine_steps(args))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundles = tmp / "bundles"
        # the daemon and HTTP sections run UltraFace whatever --models says (it crashed without it)
        assemble_bundles(bundles, sorted({n for n in names if n != "demo_ppocrv4_det"} | {"ultraface"}))
        if "demo_ppocrv4_det" in names:  # the demo bundle's detector alone (its cascade has its own section)
            demo.detector_bundle(bundles / "demo_ppocrv4_det")
        rows = bench_models(names, bundles, args.quick, progress, tmp)
        live = bench_live(names, bundles, args.quick, progress, tmp)
        threads = bench_threads(thread_models, bundles, progress)
        daemon = bench_daemon(bundles, progress, tmp)
        http = bench_http(bundles, progress, tmp)
        ocr = bench_ocr(progress, tmp)
        uplink = bench_uplink(bundles, progress, tmp) if with_uplink else None
        engines_section = run_engines(args, tmp, progress)
    progress.close()
    png = args.out.with_name("benchmarks.png")
    plot(rows, png)
    import bench_nms

    args.out.write_text(render(rows, threads, live, daemon, machine(), png.name) + render_http(http) + "\n"
                        + render_ocr(ocr, "") + ("\n" + render_uplink(uplink) if uplink else "") + "\n"
                        + bench_nms.section() + "\n" + engines_section)
    print(args.out.read_text())
    return 0


def argument_problem(args: argparse.Namespace) -> Optional[str]:
    """Why these arguments cannot give a report, or None."""
    known = set(ENGINE_MODELS) | set(LIVE_MODELS) | set(make_bundles.ONNX_FILES)
    for flag, value in (("--models", args.models), ("--engine-models", args.engine_models),
                        ("--int8-models", args.int8_models)):
        names = [n for n in value.split(",") if n]
        if not names and flag != "--int8-models":
            return f"{flag}: no model named"
        for name in names:
            if name not in known:
                return f"{flag}: unknown model {name!r} (known: {', '.join(sorted(known))})"
            if name != "demo_ppocrv4_det" and not (SHARED / "models" / name).is_dir():
                return f"{flag}: {SHARED / 'models' / name} is absent"
    if args.rounds < 1:
        return f"--rounds: expected 1 or more, got {args.rounds}"
    if not args.out.parent.is_dir():
        return f"--out: {args.out.parent} is not a directory"
    return None


PARTIAL = ROOT / "build" / "bench_engines.json"  # every result so far: a run cut short still renders


def run_engines(args: argparse.Namespace, tmp: Path, progress: Progress) -> str:
    """The engines section: every engine on every model, the footprint per engine,
    two streams on one model, int8. Results are kept in build/bench_engines.json
    as they come (`--only engines --render-only` renders what is there)."""
    if args.render_only:
        done = json.loads(PARTIAL.read_text())
        return render_engines(done["rows"], done["pair"], done["footprint"], done["int8"], done["machine"])
    names = [n for n in args.engine_models.split(",") if (SHARED / "models" / n).is_dir()]
    int8_models = [n for n in args.int8_models.split(",") if n]
    done = {"rows": [], "pair": [], "footprint": [], "int8": [], "machine": machine()}

    def keep(key: str, value: list) -> list:
        done[key] = value
        PARTIAL.parent.mkdir(exist_ok=True)
        PARTIAL.write_text(json.dumps(done))
        return value

    bundles = engine_bundles(names, tmp, progress)
    for name in names:
        if name in bundles:
            keep("rows", done["rows"] + bench_engines({name: bundles[name]}, args.rounds, progress, tmp))
    for key, model, measure in (("footprint", "ultraface", bench_footprint), ("pair", "fastestdet", bench_pair)):
        try:
            if model in bundles:
                keep(key, measure(bundles[model], progress, tmp))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # the rest still runs
            sys.stderr.write(f"\nbench: {key}: {exc}\n")
    keep("int8", bench_int8(int8_models, args.calib, progress, tmp))
    return render_engines(done["rows"], done["pair"], done["footprint"], done["int8"], done["machine"])


if __name__ == "__main__":
    sys.exit(main())
