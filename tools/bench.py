#!/usr/bin/env python3
"""How fast, and how much memory, beside what you would otherwise use.

    python tools/bench.py [--models ultraface,fastestdet] [--quick] [--out docs/BENCHMARKS.md]

Every row comes from one run on one machine; each measurement runs in its own
process (tools/bench_probes.py) so its peak RSS is its own. Writes
docs/BENCHMARKS.md (tables, the machine, ratios to the bare Paddle Lite loop)
and docs/benchmarks.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROBES = ROOT / "tools" / "bench_probes.py"
SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))
IMAGE_FOR = {"ultraface": "astronaut", "fastestdet": "coffee", "mobilenetv2": "chelsea",
             "ppocrv4_det": "page", "ppocr_cls": "page", "demo_ppocrv4_det": "page"}
ONNX = {"ultraface": "ultraface/onnx/version-RFB-320.onnx", "fastestdet": "fastestdet/onnx/FastestDet.onnx",
        "mobilenetv2": "mobilenetv2/onnx/mobilenet_v2_dequant_fp32.onnx",
        "ppocrv4_det": "ppocrv4_det/onnx/ch_PP-OCRv4_det_infer.onnx",
        "ppocr_cls": "ppocr_cls/onnx/ch_ppocr_mobile_v2.0_cls_sanitized.onnx",
        "demo_ppocrv4_det": "ppocrv4_det/onnx/ch_PP-OCRv4_det_infer.onnx"}
PADDLE = {m: f"{m}/paddle" for m in ("ultraface", "fastestdet", "mobilenetv2", "ppocrv4_det", "ppocr_cls")}


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
    if name in ("ort", "infer") and threads > 1:
        args += ["--threads", str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"probe {name} {kw}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_video(image: Path, path: Path, frames: int) -> None:
    import cv2

    img = cv2.imread(str(image))
    h, w = img.shape[:2]
    size = (640, 480) if w >= h else (480, 640)
    img = cv2.resize(img, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        writer.write(img if i % 2 else cv2.flip(img, 1))
    writer.release()


def pi_bundle(name: str, src_bundle: Path, out: Path) -> Path | None:
    """The same bundle with the Paddle Inference model, when paddle is installed."""
    try:
        import importlib.util

        if importlib.util.find_spec("paddle") is None:
            return None
    except ImportError:
        return None
    import shutil

    from lited.bundle import seal_models

    paddle_dir = SHARED / "models" / PADDLE.get(name, "-")
    if not paddle_dir.is_dir():
        return None
    dst = out / f"{name}_pi"
    shutil.copytree(src_bundle, dst, ignore=shutil.ignore_patterns("*.nb"))
    for f in ("model.pdmodel", "model.pdiparams"):
        shutil.copy(paddle_dir / f, dst / f)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["models"] = {"x86": {"file": "model.pdmodel", "engine": "paddle_inference",
                                  "params": {"file": "model.pdiparams"}, "options": {"threads": 1, "mkldnn": True}}}
    (dst / "manifest.json").write_text(json.dumps(seal_models(manifest, dst)))
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
    config = {"runtime_dir": str(run), "models": {"det": str(bundles / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=640x480&fps=25", "model": "det"}]}
    (tmp / "lited.conf").write_text(json.dumps(config))
    notify_path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    progress.step("daemon: start-up to READY=1")
    t0 = time.monotonic()
    daemon = subprocess.Popen([str(Path(PY).with_name("lited")), "serve", "--config", str(tmp / "lited.conf")],
                              env={**os.environ, "NOTIFY_SOCKET": notify_path, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg:
                out["ready_s"] = time.monotonic() - t0
                break
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
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        sock.close()
    t = time.perf_counter()
    subprocess.run([PY, "-c", "import lited.service.daemon, lited.cli"], check=True)
    out["import_daemon_s"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([PY, "-c", "pass"], check=True)
    out["python_s"] = time.perf_counter() - t
    return out


def _spread(ratios: list) -> str:
    return f" (of {len(ratios)}: {min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""


def fmt(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def render(rows: list, threads: list, daemon: dict, machine: str, plot: str) -> str:
    lines = [f"""# Benchmarks

Written by `python tools/bench.py` on {time.strftime('%Y-%m-%d')}. Every figure below comes from the
same run on the same machine, so read the **ratios**: absolute times move with load (two shared
cores here). Each measurement ran in its own process; *RSS* is that process's peak.

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

## Thread counts

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
| daemon + engine (PSS) over that bare process | {over:+.0f} MB (aim: under 40 MB; RSS summed: {dm['rss'] + em['rss'] - d['bare_process']['rss_mb']:+.0f} MB) |
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


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    import cv2
    import numpy

    return (f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
            f"Python {platform.python_version()}, paddlelite 2.13rc0, numpy {numpy.__version__}, "
            f"OpenCV {cv2.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ultraface,fastestdet,mobilenetv2,ppocrv4_det,ppocr_cls,demo_ppocrv4_det")
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the benchmark itself)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = ap.parse_args()
    if not (SHARED / "models").is_dir():
        print(f"bench: {SHARED / 'models'} is absent: nothing to measure", file=sys.stderr)
        return 2
    names = [n for n in args.models.split(",") if n == "demo_ppocrv4_det" or (SHARED / "models" / n).is_dir()]
    thread_models = [n for n in ("fastestdet", "mobilenetv2") if n in names]
    progress = Progress(5 * len(names) + 2 * len(thread_models) + 5)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundles = tmp / "bundles"
        shared_names = [n for n in names if n != "demo_ppocrv4_det"]
        subprocess.run([PY, str(ROOT / "tools" / "make_bundles.py"), "--out", str(bundles), *shared_names],
                       check=True, stdout=subprocess.DEVNULL)
        if "demo_ppocrv4_det" in names:
            import shutil

            shutil.copytree(ROOT / "sdk_template" / "demo_ppocrv4_det", bundles / "demo_ppocrv4_det",
                            ignore=shutil.ignore_patterns("model_arm.nb"))
        rows = bench_models(names, bundles, args.quick, progress, tmp)
        threads = bench_threads(thread_models, bundles, progress)
        daemon = bench_daemon(bundles, progress, tmp)
    progress.close()
    png = args.out.with_name("benchmarks.png")
    plot(rows, png)
    import bench_nms

    text = render(rows, threads, daemon, machine(), png.name)
    args.out.write_text(bench_nms.replace_section(text, bench_nms.render(bench_nms.measure())))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
