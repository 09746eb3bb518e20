"""Shared fixtures: where the real models and images are, and the CI rule.

Tests that need `../shared` skip with a reason where it is absent, except
under `CI=true`, where its absence is a failure.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))


def need_shared(*parts: str) -> Path:
    """Path under ../shared, or skip (fail under CI=true) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"{path} is absent (the real models and images live in ../shared)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def locale_env(tmp_path: Path, locale: str) -> dict:
    """The environment of a shell under `locale` (`zh_CN.GBK`, `en_US.ISO-8859-1`), made with
    localedef into tmp_path (LOCPATH), without Python's UTF-8 settings; skip (fail under CI=true)
    where localedef or its charmaps (apt's locales) are absent."""
    import shutil
    import subprocess

    if shutil.which("localedef") is None or not Path("/usr/share/i18n/charmaps").is_dir():
        msg = "localedef and its charmaps are not installed (apt's locales: tools/apt-test.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    name, charmap = locale.split(".")
    (tmp_path / "locales").mkdir(exist_ok=True)
    made = subprocess.run(["localedef", "-i", name, "-f", charmap, str(tmp_path / "locales" / locale)],
                          capture_output=True, text=True)
    assert (tmp_path / "locales" / locale).is_dir(), made.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "PYTHONIOENCODING", "LANGUAGE")}
    return {**env, "LANG": locale, "LC_ALL": locale, "LOCPATH": str(tmp_path / "locales")}


@pytest.fixture
def shared_models() -> Path:
    return need_shared("models")


@pytest.fixture
def shared_images() -> Path:
    return need_shared("images")


def _load_tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_bundle(name: str, out_dir: Path, targets: tuple = ("x86",), engines: tuple = ()) -> Path:
    """Assemble the bundle of shared model `name` (manifest from tests/bundles)
    into out_dir/name, as `make bundles` does; with `engines`, its ONNX too."""
    models = need_shared("models", name).parent
    return _load_tool("make_bundles").assemble(name, models, Path(out_dir), targets, engines)


def reseal(root: Path) -> Path:
    """The bundle at `root` sealed again after a test changed a file in it (labels, a model),
    as a builder would: its manifest then vouches for the change."""
    from lited.bundle import seal

    path = Path(root) / "manifest.json"
    path.write_text(json.dumps(seal(json.loads(path.read_text()), Path(root)), indent=2))
    return Path(root)


def shared_onnx(name: str) -> Path:
    """The ONNX original of shared model `name`."""
    return need_shared("models", name, "onnx", _load_tool("make_bundles").ONNX_FILES[name])


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory) -> Path:
    """All shared-model bundles, assembled once per test session."""
    out = tmp_path_factory.mktemp("bundles")
    for manifest in sorted((ROOT / "tests" / "bundles").glob("*.json")):
        make_bundle(manifest.stem, out)
    return out


DEMO_BUNDLE = ROOT / "sdk_template" / "demo_ppocrv4"


def write_video(path: Path, frames: int = 24, size=(320, 240), per_image: int = 1) -> list:
    """An MJPG video of the shared photos (chelsea, coffee, astronaut, each
    `per_image` frames in turn); returns the frames as OpenCV decodes them
    back, so a test can compare a stream's results with `infer` on them."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, size)
    images = [cv2.resize(cv2.imread(str(need_shared("images", f"{n}.png"))), size)
              for n in ("chelsea", "coffee", "astronaut")]
    for i in range(frames):
        writer.write(images[(i // per_image) % 3])
    writer.release()
    cap, out = cv2.VideoCapture(str(path)), []
    ok, frame = cap.read()
    while ok:
        out.append(frame)
        ok, frame = cap.read()
    return out
