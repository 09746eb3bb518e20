"""The soak script (tests/soak.py) run briefly: a full-speed synthetic stream
with two subscriber processes for LITED_SOAK_CI_MINUTES (default 1) minutes.
The long run (`LITED_SOAK_MINUTES=30 python tests/soak.py`, RSS < 1 MB/hour)
is documented in docs/RELIABILITY.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, need_shared

MINUTES = float(os.environ.get("LITED_SOAK_CI_MINUTES", "1"))


@pytest.mark.slow
def test_soak_full_speed_stream_with_two_subscribers(tmp_path):
    need_shared("models", "ultraface")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "soak.py"), "--minutes", str(MINUTES),
                           "--interval", "2", "--json", str(out), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=MINUTES * 60 + 120)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0, (report["problems"], proc.stderr[-3000:])
    assert report["fds"]["growth"] <= 0 and report["rings"]["growth"] == 0
    assert report["rings"]["max"] == 1 and report["rings"]["left_after_stop"] == []
    assert report["rss_mb"]["window_growth"] < 4, report["rss_mb"]
    assert report["threads"]["end"] <= report["threads"]["start"], report["threads"]
    assert report["inferred"] > 100 * MINUTES, report  # at full speed, even on a loaded 2-core box
    frames, plain = report["subscribers"]
    # frames read out of shared memory all along; the rest were overwritten first (4 slots are ~80 ms at
    # full speed, and a busy box delays the reader): a clean FrameOverwritten, never a torn frame or an error
    assert frames["frames_read"] > 0.3 * frames["results"] and frames["ring_gone"] == 0, frames
    assert plain["results"] > 0.9 * report["inferred"]  # nothing lost on the way to a subscriber that keeps up
    assert report["daemon_exit"] == 0
