"""A small ONNX graph builder: path-like node names, weights kept aside for one shared weights file.

Code that emits nodes takes tensor names and returns the names it made; there is no shared
"current input" state. Scopes give node and tensor names such as ``/layers.7/mixer/conv1d``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  # standard ONNX ops only; every op used here exists since opset 18 or earlier
ELEM = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16, np.dtype("int64"): TensorProto.INT64}


class Graph:
    """Collects nodes, graph inputs/outputs, constants and weights for one ONNX graph."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.constants: list[onnx.TensorProto] = []  # small, stored inside the .onnx file
        self.weights: dict[str, np.ndarray] = {}  # large, stored in the shared weights file
        self._scope: list[str] = []
        self._counts: dict[str, int] = {}

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _unique(self, base: str) -> str:
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, tensor: str, name: str, elem: int, shape: Sequence[int | str]) -> str:
        """Expose ``tensor`` as graph output ``name`` (an Identity renames it when needed)."""
        if tensor != name:
            self.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"/{name}/identity"))
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def weight(self, name: str, value: np.ndarray) -> str:
        """A named weight, stored once in the weights file; a name seen before must hold the same array."""
        if name in self.weights and self.weights[name] is not value:
            raise ValueError(f"weight {name!r} registered twice with different arrays")
        self.weights[name] = value
        return name

    def const(self, value: np.ndarray | int | float | Sequence[int], dtype: str | None = None) -> str:
        if isinstance(value, np.ndarray):
            array = value.astype(dtype) if dtype else value
        else:
            array = np.asarray(value, dtype=dtype or (np.int64 if isinstance(value, (int, list, tuple)) else np.float32))
        name = self._unique("/".join(["", *self._scope, "const"]))
        self.constants.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None, **attrs) -> str | list[str]:
        base = "/" + "/".join([*self._scope, name or op_type])
        node_name = self._unique(base)
        outs = [f"{node_name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def subgraph(self, name: str) -> "Graph":
        """A branch body: its constants and weights go to this graph (visible from the branch), names stay unique."""
        sub = Graph(f"{self.name}/{name}")
        sub.constants, sub.weights, sub._counts = self.constants, self.weights, self._counts
        sub._scope = [*self._scope, name]
        return sub

    def branch_proto(self, outputs: Sequence[str]) -> onnx.GraphProto:
        names = [self._unique("/".join(["", *self._scope, "out"])) for _ in outputs]
        nodes = self.nodes + [helper.make_node("Identity", [t], [n]) for t, n in zip(outputs, names)]
        return helper.make_graph(nodes, self.name, [], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])

    def if_op(self, cond: str, then: "Graph", then_outs: Sequence[str], other: "Graph", other_outs: Sequence[str], name: str) -> list[str]:
        out = self.op("If", [cond], n_out=len(then_outs), name=name, then_branch=then.branch_proto(then_outs), else_branch=other.branch_proto(other_outs))
        return [out] if isinstance(out, str) else out

    def to_graph_proto(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=list(self.constants))


def make_model(graph: Graph, weight_infos: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """An ONNX model whose weights are ``weight_infos`` (external-data initializers)."""
    proto = graph.to_graph_proto()
    proto.initializer.extend(weight_infos)
    domains = sorted({n.domain for n in graph.nodes if n.domain})
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(proto, opset_imports=opsets, producer_name="hmexport")
    model.ir_version = 10
    return model


def body_graph(nodes: list[onnx.NodeProto], name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, inputs, outputs)
