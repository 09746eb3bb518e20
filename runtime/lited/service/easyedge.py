"""lited results in the shapes Baidu's edge SDKs answer with, so their client code works unchanged.

- EasyEdge SDK serving (`POST /` on port 24401; FastDeploy's
  docs/Linux-CPP-SDK-Serving.md): `{"error_code": 0, "results": [...],
  "cost_ms": N}`, each result `{"index", "label", "confidence", "x1", "y1",
  "x2", "y2"}` with corners as fractions of the image size (the documented
  fields) and `location` `{left, top, width, height}` in whole pixels
  (what deployed servers also send, and client code draws with).
- EdgeBoard V2 (`POST /api/model/service/base64/mid=N`): `{"code": 0,
  "msg": "success", "data": {"result": [{"index", "label", "score",
  "location": {left, top, width, height} in pixels, "extended": {}}]}}`.

docs/http.md maps every field.
"""
from __future__ import annotations

from typing import Optional

# error_code / code of the compatible routes (EasyEdge documents only 0 = success)
ERROR_NUMBERS = {"bad_request": 1001, "too_large": 1002, "unauthorized": 1003, "forbidden": 1003,
                 "not_found": 1004, "busy": 1005, "failed": 1006, "unknown_method": 1007}


def cost_ms(result: dict) -> int:
    """Inference time without the network: the sum of the request's stages."""
    return int(round(sum(result.get("timings_ms", {}).values())))


def easyedge_results(result: dict, top_num: Optional[int] = None) -> list:
    w, h = result["width"], result["height"]
    out = []
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        out.append({"index": d["class_id"], "label": d["label"], "confidence": round(d["score"], 4),
                    "x1": round(x1 / w, 6), "y1": round(y1 / h, 6), "x2": round(x2 / w, 6), "y2": round(y2 / h, 6),
                    "location": {"left": int(round(x1)), "top": int(round(y1)),
                                 "width": int(round(x2 - x1)), "height": int(round(y2 - y1))}})
    classes = [{"index": c["class_id"], "label": c["label"], "confidence": round(c["score"], 4)}
               for c in result["classes"]]
    return out + (classes[:top_num] if top_num else classes)


def edgeboard_results(result: dict) -> list:
    out = []
    for d in result["detections"]:
        x1, y1, x2, y2 = d["box"]
        out.append({"index": d["class_id"], "label": d["label"], "score": round(d["score"], 4),
                    "location": {"left": round(x1, 2), "top": round(y1, 2), "width": round(x2 - x1, 2),
                                 "height": round(y2 - y1, 2)}, "extended": {}})
    for c in result["classes"]:
        out.append({"index": c["class_id"], "label": c["label"], "score": round(c["score"], 4),
                    "extended": {}})
    return out
