"""Graphs -> .onnx files whose weights live once in a shared safetensors file (external data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..bundle.manifest import GraphInfo, TensorInfo
from ..bundle.weights import write_safetensors
from .graph import ELEM, Graph, make_model
from .layers import CUSTOM_DOMAIN

WEIGHTS_FILE = "weights.safetensors"
_DTYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64", TensorProto.INT32: "int32"}


def _register_custom_schemas() -> None:
    """Declare hmexport's custom ops to onnx so check_model(full_check=True) still checks fused graphs."""
    from onnx.defs import OpSchema, has, register_schema

    P, A = OpSchema.FormalParameter, OpSchema.Attribute
    opt = OpSchema.FormalParameterOption.Optional
    specs = {
        "SelectiveScan": (["u", "delta", "A_log", "B", "C", ("D", opt), ("z", opt), ("delta_bias", opt), "state"], "delta_softplus"),
        "CausalConv1d": (["x", "weight", ("bias", opt), "state"], "activation"),
    }
    for name, (inputs, attr) in specs.items():
        if has(name, CUSTOM_DOMAIN):
            continue
        params = [P(i, "T") if isinstance(i, str) else P(i[0], "T", param_option=i[1]) for i in inputs]
        schema = OpSchema(name, CUSTOM_DOMAIN, 1, inputs=params, outputs=[P("y", "T"), P("state_out", "T")],
                          type_constraints=[("T", ["tensor(float)"], "float32 tensors")],
                          attributes=[A(attr, OpSchema.AttrType.INT, "flag (default 1)", required=False)])
        register_schema(schema)


def write_graphs(root: Path, graphs: list[Graph]) -> dict[str, GraphInfo]:
    """Write every graph as ``<name>.onnx`` plus one weights file holding each weight once."""
    shared: dict[str, np.ndarray] = {}
    for g in graphs:
        for name, value in g.weights.items():
            if name in shared and not (shared[name] is value or np.array_equal(shared[name], value)):
                raise ValueError(f"weight {name!r} differs between graphs")
            shared[name] = value
    spans = write_safetensors(root / WEIGHTS_FILE, shared)
    models = {}
    for g in graphs:
        refs = [_external(name, ELEM[shared[name].dtype], shared[name].shape, *spans[name]) for name in sorted(g.weights)]
        models[g.name] = make_model(g, refs)
    return {name: _save(root, name, model) for name, model in models.items()}


def write_models(root: Path, models: dict[str, onnx.ModelProto], external: set[str] = frozenset(), min_external_bytes: int = 1024) -> dict[str, GraphInfo]:
    """Write loaded ModelProtos (a quantized bundle's graphs) like ``write_graphs``: the ``external`` names
    (the source's weights) and any other initializer of at least ``min_external_bytes`` go once into the
    shared weights file; smaller ones (constants, scales of small tensors) stay inside each .onnx file."""
    shared: dict[str, tuple[int, np.ndarray]] = {}
    for model in models.values():
        for t in model.graph.initializer:
            array = numpy_helper.to_array(t)
            if array.nbytes < min_external_bytes and t.name not in external:
                continue
            if t.name in shared and not np.array_equal(shared[t.name][1].view(np.uint8), array.view(np.uint8)):
                raise ValueError(f"initializer {t.name!r} differs between graphs")
            shared[t.name] = (t.data_type, array)
    spans = write_safetensors(root / WEIGHTS_FILE, {name: array for name, (_, array) in shared.items()})
    infos = {}
    for name, model in models.items():
        model = onnx.ModelProto.FromString(model.SerializeToString())
        inits = list(model.graph.initializer)
        del model.graph.initializer[:]
        for t in inits:
            if t.name in shared:
                elem, array = shared[t.name]
                t = _external(t.name, elem, array.shape, *spans[t.name])
            model.graph.initializer.append(t)
        infos[name] = _save(root, name, model)
    return infos


def _save(root: Path, name: str, model: onnx.ModelProto) -> GraphInfo:
    path = root / f"{name}.onnx"
    domains = sorted({op.domain for op in model.opset_import if op.domain and op.domain != "ai.onnx"})
    if CUSTOM_DOMAIN in domains:
        _register_custom_schemas()
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return GraphInfo(file=path.name, inputs=_infos(model.graph.input), outputs=_infos(model.graph.output), ops=domains)


def _external(name: str, elem: int, shape, offset: int, length: int) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=elem, dims=list(shape))
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, val in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, val
    return t


def _infos(values) -> list[TensorInfo]:
    out = []
    for v in values:
        dims = [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
        out.append(TensorInfo(name=v.name, dtype=_DTYPE_NAMES[v.type.tensor_type.elem_type], shape=dims))
    return out
