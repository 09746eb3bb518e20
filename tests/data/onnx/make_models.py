"""Writes the tiny ONNX models the tests need and ../shared does not have. Run it
with the tools venv, which has onnx: `.venv-tools/bin/python tests/data/onnx/make_models.py`.

int_outputs.onnx: a classifier whose outputs are not all float32, as PaddleDetection
exports are not (their row count is int32):
    x [1, 3, 16, 16] -> mean over H, W -> [1, 3] x W [3, 5] + b -> softmax -> scores [1, 5] float
    scores -> argmax -> best [1] int64 -> cast -> best32 [1] int32

reduce_l2.onnx: a classifier with a ReduceL2, which x2paddle and paddle_lite_opt take but
Paddle Lite's x86 build cannot run (an `abs` activation fused into the conv's bias add, which
it has no kernel for: it aborts at the first run):
    x [1, 3, 16, 16] -> 1x1 conv with a bias -> ReduceL2 over H, W, kept -> [1, 3, 1, 1] -> mean -> [1, 3] x W [3, 5] + b
    -> softmax -> prob [1, 5]
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent
WEIGHTS = np.array([[2.0, -1.0, 0.5, 0.0, 1.0], [-1.0, 2.0, 0.0, 0.5, 1.0], [0.5, 0.0, 2.0, -1.0, 1.0]], np.float32)
BIAS = np.array([0.1, 0.2, 0.3, 0.4, 0.0], np.float32)


def save(name: str, nodes: list, outputs: list, weights: tuple = ()) -> None:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              outputs, [numpy_helper.from_array(WEIGHTS, "w"), numpy_helper.from_array(BIAS, "b"),
                                        *weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lited tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(HERE / f"{name}.onnx"))


def head(pooled: str, out: str) -> list:
    return [helper.make_node("MatMul", [pooled, "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [out], axis=1)]


save("int_outputs",
     [helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0), *head("pooled", "scores"),
      helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0),
      helper.make_node("Cast", ["best"], ["best32"], to=TensorProto.INT32)],
     [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5]),
      helper.make_tensor_value_info("best", TensorProto.INT64, [1]),
      helper.make_tensor_value_info("best32", TensorProto.INT32, [1])])
save("reduce_l2",
     [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[1, 1]),
      helper.make_node("ReduceL2", ["c"], ["l2"], axes=[2, 3], keepdims=1),
      helper.make_node("ReduceMean", ["l2"], ["pooled"], axes=[2, 3], keepdims=0), *head("pooled", "prob")],
     [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])],
     [numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "cw"),
      numpy_helper.from_array(np.full(3, 0.1, np.float32), "cb")])
