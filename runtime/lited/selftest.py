"""Compare a result with a bundle's golden expectation, within tolerances; match
the boxes of two results (int8 against fp32, one engine against another).

Used by `lited selftest` (and so by tools/install_sdk.sh before it switches
to a new bundle): the same model on the same image must find the same
things, allowing for small numeric differences between builds and boards.
"""
from __future__ import annotations

DEFAULT_TOLERANCE = {"box_px": 4.0, "score": 0.05}


def compare(result: dict, expected: dict, tolerance: dict | None = None) -> list:
    """Problems found; an empty list means the result matches."""
    tol = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    problems = []
    for key in ("detections", "classes"):
        got, want = result.get(key, []), expected.get(key, [])
        if len(got) != len(want):
            problems.append(f"{key}: {len(got)} found, {len(want)} expected")
            continue
        unmatched = list(got)
        for w in want:
            match = next((g for g in unmatched if _close(g, w, tol)), None)
            where = f" at {[round(v) for v in w['box']]}" if "box" in w else ""
            if match is None:
                problems.append(f"{key}: expected {w['label']} {w['score']:.2f}{where} not found")
                continue
            unmatched.remove(match)
            if "text" in w and match.get("text") != w["text"]:  # a cascade's recognizer read it otherwise
                problems.append(f"{key}: {w['label']}{where}: {match.get('text')!r} read, {w['text']!r} expected")
    if "text" in expected and result.get("text") != expected["text"]:  # a text recognizer's reading
        problems.append(f"text: {result.get('text')!r} read, {expected['text']!r} expected")
    return problems


def _close(got: dict, want: dict, tol: dict) -> bool:
    if got["label"] != want["label"] or abs(got["score"] - want["score"]) > tol["score"]:
        return False
    if want.get("class_id", got.get("class_id")) != got.get("class_id"):  # one name twice in the labels
        return False
    if "box" in want:
        return all(abs(a - b) <= tol["box_px"] for a, b in zip(got["box"], want["box"]))
    return True


def iou(a: list, b: list) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched_boxes(reference: list, got: list, threshold: float = 0.7) -> int:
    """Detections of `got` matched one to one with `reference` (same label,
    IoU >= threshold), greedily, the reference's best scores first."""
    used: set = set()
    for ref in sorted(reference, key=lambda d: -d["score"]):
        best, best_iou = None, threshold
        for j, g in enumerate(got):
            if j not in used and g["label"] == ref["label"]:
                value = iou(ref["box"], g["box"])
                if value >= best_iou:
                    best, best_iou = j, value
        if best is not None:
            used.add(best)
    return len(used)
