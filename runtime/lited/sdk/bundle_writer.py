"""Write the bundle directory and its zip.

The zip holds one folder named after the bundle, entries relative, regular
files only, with fixed timestamps and modes: the same bundle zips to the same
bytes, and unzipping it cannot write outside its folder.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

from lited.bundle import file_specs, seal

from lited.sdk import BuildError

MANIFEST_ORDER = ("schema", "name", "version", "task", "paddle_lite_version", "models", "inputs",
                  "preprocess", "decoder", "labels", "labels_sha256", "stages", "golden")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def to_json(obj: object, indent: int = 0) -> str:
    """JSON with two-space indents but flat lists on one line (shapes, mean, boxes)."""
    pad = "  " * indent
    if isinstance(obj, dict) and obj:
        items = [f"{pad}  {json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{pad}  {to_json(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj, ensure_ascii=False)


def _bundle_file(path: Path) -> bool:
    """A name this builder writes into a bundle."""
    name = path.name
    return path.is_file() and (name in ("manifest.json", "README.md", "labels.txt", "NOTICE")
                               or name.startswith("golden.")
                               or any(fnmatch.fnmatch(name, p) for p in (
                                   "*model_*.nb", "*_labels.txt", "*_model.pd*", "model*.onnx", "model*.xml",
                                   "model*.bin")))


def replace_problem(path: Path) -> str | None:
    """Why the bundle directory `path` may not be written (None: absent, empty, or
    an old or half-built bundle, which is replaced)."""
    if path.exists() and (not path.is_dir() or not all(_bundle_file(p) for p in path.iterdir())):
        return f"{path}: exists and is not a bundle; refusing to overwrite it"
    return None


def prepare_dir(path: Path) -> Path:
    """An empty directory for the bundle; an old (or half-built) bundle there is
    replaced, a directory holding anything else is refused."""
    problem = replace_problem(path)
    if problem:
        raise BuildError(problem)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_manifest(root: Path, manifest: dict) -> dict:
    """manifest.json with each model's sha256 and size and each labels file's sha256 filled in; returns
    what was written."""
    sealed = seal(manifest, root)
    parts = [("", manifest, sealed)] + [(f"stages[{i}].", stage, sealed["stages"][i])
                                        for i, stage in enumerate(manifest.get("stages", []))]
    for where, part, done in parts:
        wanted = {(t, e["file"]) for t, spec in part["models"].items() for e in file_specs(spec)}
        missing = sorted(wanted - {(t, e["file"]) for t, spec in done["models"].items() for e in file_specs(spec)})
        if missing:
            raise BuildError(f"{root}: {where}model file {', '.join(f for _, f in missing)} for "
                             f"{', '.join(sorted({t for t, _ in missing}))} is missing")
    ordered = {k: sealed[k] for k in MANIFEST_ORDER if k in sealed}
    (root / "manifest.json").write_text(to_json(ordered) + "\n", encoding="utf-8")
    return ordered


def write_blank_image(path: Path, side: int = 64) -> None:
    """A mid-grey 24-bit BMP (the builder's venv may have no OpenCV): an image
    to load and run a bundle on when no golden image is given."""
    row = side * 3  # a multiple of 4 for any side: no row padding
    pixels = bytes([128]) * (row * side)
    header = b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54) + \
        struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    path.write_bytes(header + pixels)


def write_labels(root: Path, labels: list) -> str:
    (root / "labels.txt").write_text("".join(f"{name}\n" for name in labels), encoding="utf-8")
    return "labels.txt"


def copy_in(root: Path, source: Path, name: str) -> str:
    """Copy a user's file into the bundle under `name` (its content, never a link)."""
    if not source.is_file():
        raise BuildError(f"{source}: not found")
    shutil.copyfile(source, root / name)
    return name


def write_zip(root: Path, out: Path, folder: str) -> Path:
    """Zip `root` as `folder/...` into `out` (written beside it, then renamed)."""
    files = sorted(p for p in root.rglob("*") if not p.is_dir())
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise BuildError(f"{path}: not a regular file; a bundle holds only files")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(f"{folder}/{path.relative_to(root).as_posix()}", _ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)
    return out
