"""Small hand-built ONNX graphs for the import tests: the helpers that write them. Import
this only after `pytest.importorskip("onnx")`."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_graph(path, nodes, inputs, outputs, inits=(), opset=17) -> str:
    """Write one graph as a model of the default domain at `opset`; returns the path."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return str(path)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def initializer(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
