"""The SDK's README.md: what is in the bundle and how to use it, for the person
who unzips it on a board without this repository at hand."""
from __future__ import annotations

import json

from lited.bundle import file_specs, spec_engines

TARGET_NOTES = {"x86": "x86_64 hosts", "arm": "ARM boards (aarch64/armv7)",
                "opencl": "ARM boards with an OpenCL GPU (falls back to ARM kernels)"}


def _resize(pre: dict) -> str:
    resize = pre["resize"]
    extra = ", ".join(f"{k} {v}" for k, v in resize.items() if k not in ("mode", "interpolation"))
    return f"{resize['mode']} ({resize.get('interpolation', 'linear')}{', ' + extra if extra else ''})"


def _golden(golden: dict) -> list:
    expected = golden["expected"]
    lines = [f"`{golden['image']}` is the self-test image; `lited selftest` expects:", ""]
    for det in expected.get("detections", [])[:10]:
        lines.append(f"- {det['label']} {det['score']:.3f} at {det['box']}")
    for cls in expected.get("classes", [])[:5]:
        lines.append(f"- {cls['label']} {cls['score']:.3f}")
    if not expected.get("detections") and not expected.get("classes"):
        lines.append("- nothing (no detection, no class above the threshold)")
    return lines


def render(manifest: dict, build: dict) -> str:
    """README.md text. `build` holds source, configs, command, fp16, quant, notice, labels_count."""
    name, pre = manifest["name"], manifest["preprocess"]
    lines = [f"# {name} {manifest['version']}: a lited SDK bundle", "",
             f"Task: {manifest['task']}. Built by lited's `tools/build_sdk.py` from `{build['source']}` "
             f"with paddle_lite_opt {manifest['paddle_lite_version']}"
             f"{' (fp16 on ARM)' if build.get('fp16') else ''}"
             f"{' (' + build['quant'] + ' weights)' if build.get('quant') else ''}.", "",
             "## Files", "", "| file | what |", "| --- | --- |",
             "| `manifest.json` | what the runtime reads: models, input, preprocessing, decoder |"]
    described: dict = {}  # file -> its row (the ONNX serves several targets)
    for target, spec in manifest["models"].items():
        for rank, model in enumerate(file_specs(spec), 1):
            row = described.setdefault(model["file"], {"model": model, "targets": []})
            row["targets"].append(f"{TARGET_NOTES.get(target, target)} (choice {rank})")
    for file, row in described.items():
        model = row["model"]
        engines = ", ".join(spec_engines(model))
        params = model.get("params")
        weights = f" + `{params['file']}`" if params else ""
        size = f"{model['size']} bytes" + (f" + {params['size']} bytes" if params and params.get("size") else "")
        lines.append(f"| `{file}`{weights} | {model.get('precision', 'fp32')} model run by {engines}, for "
                     f"{'; '.join(row['targets'])}; {size}, sha256 `{model['sha256'][:16]}...` |")
    if manifest.get("labels"):
        lines.append(f"| `{manifest['labels']}` | {build['labels_count']} class names, in output order |")
    if manifest.get("golden"):
        lines.append(f"| `{manifest['golden']['image']}` | self-test image and, in the manifest, its expected result |")
    if build.get("notice"):
        lines.append("| `NOTICE` | licence and source of the model |")
    for stage in manifest.get("stages", []):
        for target, model in stage["models"].items():
            lines.append(f"| `{model['file']}` | stage `{stage['name']}`: Paddle Lite model for "
                         f"{TARGET_NOTES.get(target, target)}, {model['size']} bytes |")
        if stage.get("labels"):
            lines.append(f"| `{stage['labels']}` | stage `{stage['name']}`: its labels, one a line |")
    lines += ["", "## Model", ""]
    for spec in manifest["inputs"]:
        lines.append(f"- input `{spec['name']}`: {spec['shape']} {spec.get('dtype', 'float32')}")
    lines += [f"- preprocessing: {pre.get('color', 'BGR')}, resize {_resize(pre)}, "
              f"out = (pixel x {pre.get('scale', 1 / 255):.6g} - mean {pre.get('mean', [0, 0, 0])}) "
              f"/ std {pre.get('std', [1, 1, 1])}, {pre.get('layout', 'NCHW')}",
              f"- decoder: `{json.dumps(manifest['decoder'])}`"]
    for stage in manifest.get("stages", []):
        lines.append(f"- then stage `{stage['name']}` on crops of the detections ({stage.get('crop', {'mode': 'box'})['mode']}): "
                     f"input {stage['inputs'][0]['shape']}, resize {_resize(stage['preprocess'])}, "
                     f"decoder `{json.dumps(stage['decoder'])}`")
    lines += ["", "## Use", "", "```",
              f"lited inspect --bundle {name}            # what it holds, checked",
              f"lited infer --bundle {name} photo.jpg    # run it on an image",
              f"lited selftest --bundle {name}           # the golden image gives the expected result",
              "```", "",
              "A model runs only on its target: lited refuses an ARM model on x86 and the reverse",
              "(Paddle Lite would crash), and any file whose size or sha256 differs from the manifest."]
    lines += ["", "lited runs the first file of this machine's target whose engine is installed, unless the",
              "config asks for an engine or a precision (docs/bundle.md); `lited inspect` says which and why."]
    if build.get("int8"):
        against = "other images (--int8-eval)" if build.get("int8_eval") else "the calibration images"
        lines += ["", "## Int8", "", f"Quantised by {build['int8_engine']} on {build.get('int8_calibration')} "
                  f"calibration images; against fp32 on the same engine, on {against}: {build['int8']}.",
                  "Select it with `\"precision\": \"int8\"` in the config."]
    if manifest.get("golden"):
        lines += ["", "## Self-test", ""] + _golden(manifest["golden"])
    lines += ["", "## Rebuild", "", "```", build["command"], "```", ""]
    return "\n".join(lines)
