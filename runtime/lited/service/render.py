"""A result drawn on its frame: boxes or text polygons, labels, top classes."""
from __future__ import annotations

import cv2
import numpy as np

GREEN = (0, 200, 0)
ORANGE = (0, 200, 255)


def drawable(text: str) -> str:
    """`text` for OpenCV's ASCII-only font: one `?` a character it lacks (it drew one a UTF-8 byte)."""
    return text.encode("ascii", "replace").decode("ascii")


def draw_result(frame: np.ndarray, result: dict) -> None:
    """Boxes, labels and classes drawn in place on a BGR frame (snapshot, demo)."""
    for d in result.get("detections", []):
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        poly = d.get("polygon")
        if poly:
            cv2.polylines(frame, [np.array(poly, np.int32)], True, GREEN, 2)
        else:
            cv2.rectangle(frame, (x1, y1), (x2, y2), GREEN, 2)
        caption = d["text"] if d.get("text") else f"{d['label']} {d['score']:.2f}"  # a cascade's text
        cv2.putText(frame, drawable(caption), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, GREEN, 1, cv2.LINE_AA)
    for i, c in enumerate(result.get("classes", [])[:3]):
        cv2.putText(frame, drawable(f"{c['label']} {c['score']:.2f}"), (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    ORANGE, 1, cv2.LINE_AA)
