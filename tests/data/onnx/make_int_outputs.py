"""Writes int_outputs.onnx: a tiny classifier whose outputs are not all float32,
as PaddleDetection exports are not (their row count is int32). Run it with the
tools venv, which has onnx: `.venv-tools/bin/python tests/data/onnx/make_int_outputs.py`.

    x [1, 3, 16, 16] float -> mean over H, W -> [1, 3] x W [3, 5] + b -> softmax -> scores [1, 5] float
    scores -> argmax -> best [1] int64 -> cast -> best32 [1] int32
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

weights = np.array([[2.0, -1.0, 0.5, 0.0, 1.0], [-1.0, 2.0, 0.0, 0.5, 1.0], [0.5, 0.0, 2.0, -1.0, 1.0]], np.float32)
bias = np.array([0.1, 0.2, 0.3, 0.4, 0.0], np.float32)
nodes = [
    helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
    helper.make_node("MatMul", ["pooled", "w"], ["logits0"]),
    helper.make_node("Add", ["logits0", "b"], ["logits"]),
    helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0),
    helper.make_node("Cast", ["best"], ["best32"], to=TensorProto.INT32),
]
graph = helper.make_graph(
    nodes, "int_outputs",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
    [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5]),
     helper.make_tensor_value_info("best", TensorProto.INT64, [1]),
     helper.make_tensor_value_info("best32", TensorProto.INT32, [1])],
    [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="lited tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, str(Path(__file__).with_name("int_outputs.onnx")))
