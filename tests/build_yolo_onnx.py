"""Test fixture: a real detector in the layouts of the YOLO family and PP-YOLOE.
FastestDet's ONNX (head `[1, 5+C, H, W]`) with the `grid` decoder's arithmetic
appended inside the graph, so its output is what a YOLO export gives and its
detections must be the grid decoder's on FastestDet (tests/test_yolo.py).
Run in the tools venv (onnx 1.17):

  .venv-tools/bin/python tests/build_yolo_onnx.py --src ../shared/models/fastestdet/onnx/FastestDet.onnx \\
      --layouts v8,v5 --out-dir DIR        (writes DIR/v8.onnx, DIR/v5.onnx)

Per row (cell): class score obj^0.6 * cls^0.4 (`v5` puts obj^0.6 in an objectness
column and cls^0.4 in the class columns, whose product is the same), centre
(cell + tanh(t)) * stride, size sigmoid(t) * input size. Layouts:
  v8       one `[1, 4 + C, N]`: cx, cy, w, h, class scores (YOLOv8, YOLO11)
  v8_rows  one `[1, N, 4 + C]`
  v5       one `[1, N, 5 + C]`: cx, cy, w, h normalised to the input, objectness, classes (YOLOv5)
  ppyoloe  boxes `[1, N, 4]` x1, y1, x2, y2 and scores `[1, C, N]` (PP-YOLOE without NMS)
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Graph:
    """Nodes and constants appended to a loaded model's graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.nodes, self.inits = model, [], []

    def const(self, name: str, values, dtype=np.float32) -> str:
        array = np.asarray(values, dtype)
        self.inits.append(numpy_helper.from_array(array.reshape(1, 1, -1) if dtype == np.float32 else array, name))
        return name

    def op(self, kind: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [name], **attrs))
        return name


def rewrite(src: str, out: str, layout: str) -> None:
    model = onnx.load(src)
    graph = model.graph
    head = graph.output[0].name
    _, k, gh, gw = (d.dim_value for d in graph.output[0].type.tensor_type.shape.dim)
    _, _, in_h, in_w = (d.dim_value for d in graph.input[0].type.tensor_type.shape.dim)
    n = gh * gw
    g = Graph(model)
    rows = g.op("Reshape", [head, g.const("rows_shape", [1, k, n], np.int64)], "rows")

    def part(a: int, b: int, name: str) -> str:
        return g.op("Slice", [rows, g.const(f"{name}_from", [a], np.int64), g.const(f"{name}_to", [b], np.int64),
                              g.const(f"{name}_axis", [1], np.int64)], name)

    cell = np.arange(n)
    cx = g.op("Mul", [g.op("Add", [g.const("gx", cell % gw), g.op("Tanh", [part(1, 2, "tx")], "tanh_x")], "cell_x"),
                      g.const("stride_x", [in_w / gw])], "cx")
    cy = g.op("Mul", [g.op("Add", [g.const("gy", cell // gw), g.op("Tanh", [part(2, 3, "ty")], "tanh_y")], "cell_y"),
                      g.const("stride_y", [in_h / gh])], "cy")
    w = g.op("Mul", [g.op("Sigmoid", [part(3, 4, "tw")], "sig_w"), g.const("in_w", [in_w])], "w")
    h = g.op("Mul", [g.op("Sigmoid", [part(4, 5, "th")], "sig_h"), g.const("in_h", [in_h])], "h")
    obj = g.op("Pow", [part(0, 1, "obj_raw"), g.const("p06", [0.6])], "obj")
    cls = g.op("Pow", [part(5, k, "cls_raw"), g.const("p04", [0.4])], "cls")
    c = k - 5
    if layout in ("v8", "v8_rows"):
        table = g.op("Concat", [cx, cy, w, h, g.op("Mul", [obj, cls], "score")], "table", axis=1)
        outs = [(table, [1, 4 + c, n])] if layout == "v8" else \
            [(g.op("Transpose", [table], "rows_last", perm=[0, 2, 1]), [1, n, 4 + c])]
    elif layout == "v5":
        unit = [g.op("Div", [v, g.const(f"by_{v}", [size])], f"{v}_unit")
                for v, size in ((cx, in_w), (cy, in_h), (w, in_w), (h, in_h))]
        table = g.op("Concat", [*unit, obj, cls], "table", axis=1)
        outs = [(g.op("Transpose", [table], "rows_last", perm=[0, 2, 1]), [1, n, 5 + c])]
    elif layout == "ppyoloe":
        half_w = g.op("Mul", [w, g.const("half_a", [0.5])], "half_w")
        half_h = g.op("Mul", [h, g.const("half_b", [0.5])], "half_h")
        corners = [g.op("Sub", [cx, half_w], "x1"), g.op("Sub", [cy, half_h], "y1"),
                   g.op("Add", [cx, half_w], "x2"), g.op("Add", [cy, half_h], "y2")]
        boxes = g.op("Transpose", [g.op("Concat", corners, "corners", axis=1)], "boxes", perm=[0, 2, 1])
        outs = [(boxes, [1, n, 4]), (g.op("Mul", [obj, cls], "scores"), [1, c, n])]
    else:
        raise SystemExit(f"--layout: unknown {layout!r}")
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.inits)
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outs)
    onnx.checker.check_model(model)
    onnx.save(model, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True)
    parser.add_argument("--layouts", required=True, help="comma-separated: v8, v8_rows, v5, ppyoloe")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    for layout in args.layouts.split(","):
        rewrite(args.src, f"{args.out_dir}/{layout}.onnx", layout)


if __name__ == "__main__":
    main()
