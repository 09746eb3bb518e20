#!/usr/bin/env python3
"""`make demo`: lited on the committed PP-OCRv4 text-detection bundle.

Draws a page of text with OpenCV, runs `lited infer` on it, prints the boxes
and writes the page with the boxes drawn to build/demo/annotated.jpg.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "sdk_template" / "demo_ppocrv4_det"
OUT = ROOT / "build" / "demo"
LINES = ["lited: on-device inference", "for edge boards", "Paddle Lite + ZeroMQ", "frame 0042  cam-1"]


def draw_text_page(width: int = 640, height: int = 360, offset: int = 0) -> np.ndarray:
    """A white page with a few lines of black text, shifted up by `offset` px."""
    page = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(LINES):
        y = 70 + i * 80 - offset
        cv2.putText(page, line, (30, y), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 0, 0), 2, cv2.LINE_AA)
    return page


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    image_path = OUT / "text.png"
    cv2.imwrite(str(image_path), draw_text_page())
    print(f"demo: drew {image_path.relative_to(ROOT)}; running lited infer on {BUNDLE.relative_to(ROOT)}", flush=True)
    lited = Path(sys.executable).with_name("lited")
    proc = subprocess.run([str(lited), "infer", "--bundle", str(BUNDLE), str(image_path)], text=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
