"""Compare a result with a bundle's golden expectation, within tolerances.

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
            if match is None:
                where = f" at {[round(v) for v in w['box']]}" if "box" in w else ""
                problems.append(f"{key}: expected {w['label']} {w['score']:.2f}{where} not found")
            else:
                unmatched.remove(match)
    return problems


def _close(got: dict, want: dict, tol: dict) -> bool:
    if got["label"] != want["label"] or abs(got["score"] - want["score"]) > tol["score"]:
        return False
    if "box" in want:
        return all(abs(a - b) <= tol["box_px"] for a, b in zip(got["box"], want["box"]))
    return True
