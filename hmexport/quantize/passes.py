"""Graph passes: which MatMuls to quantize, and int8 / int4 / fp8 rewrites of an ONNX model.

Only a MatMul whose weight (second input) is one of the checkpoint's weights is a candidate; its
*site* is the weight's name without ``.weight`` (``layers.3.mlp.experts.0.down_proj``, ``lm_head``,
``vision.vision_tower...``). Everything else stays float32 whatever the precision: the embedding,
norms, conv1d, A_log, D, the dt bias, the SSM and conv state, and the attention products over K/V
(those MatMuls take an activation, not a weight). On top of that the ``keep`` patterns (fnmatch over
sites) keep chosen MatMuls in float32; the default keeps the MoE router (a wrong top-k choice sends
a token through different experts, a discrete error that no small rounding elsewhere makes).

int8 and int4 use onnxruntime.quantization's own passes (dynamic per-channel ``MatMulInteger``, and
``MatMulNBits``); fp8 is written here: onnxruntime's float-8 scaling sets each tensor's scale from its
standard deviation and refuses any weight past ~6 sigma, which trained LLM weights (with their
outliers) routinely have, whereas the convention TensorRT consumes is amax / 448.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError

PRECISIONS = ("int8", "int4", "fp8")
# The MoE router: a rounding error there changes which experts a token visits.
DEFAULT_KEEP = ("*.router",)
# The Mamba mixers' selective-parameter projections (x_proj makes dt, B and C; dt_proj makes the step
# size): errors there act through exp(dt * A) on every later step of the scan. Measured on an earlier
# kv-mamba fixture, int4 alone on x_proj cost 1.9 points, on dt_proj 0.6. int8 and fp8 (one activation
# scale per tensor) keep them float32; int4 gives them 8-bit blocks (DEFAULT_INT4_WIDE): task accuracy
# on all three committed fixtures equal to keeping them float32, at a quarter of the bytes.
SELECTIVE = ("layers.*.mixer.x_proj", "layers.*.mixer.dt_proj")
# Kept by fp8 also: the Mamba mixers' out_proj, whose input y * silu(z) carries outliers that one
# per-tensor activation scale cannot cover (measured on the trained fixtures, drop kv-jamba
# 2.1 -> 0.0 points, kv-mamba 1.7 -> 0.6 when kept; docs/quantization.md).
PRECISION_KEEP = {"int8": SELECTIVE, "int4": (), "fp8": SELECTIVE + ("layers.*.mixer.out_proj",)}
# int4: sites given 8-bit blocks instead of 4 (MatMulNBits bits=8; llama.cpp's Q4_K_M mixes widths the
# same way). The first decoder layer: in 4 bits its MatMuls together cost kv-jamba 8.3 points alone
# (count over 200-400 tokens: every later layer integrates its output), no single kind of them more
# than 2.3; the whole model lost 8.6 points with it in 4 bits, none with it in 8. And SELECTIVE.
DEFAULT_INT4_WIDE = ("layers.0.*",) + SELECTIVE


def default_keep(precision: str) -> tuple[str, ...]:
    """The site patterns a precision leaves in float32 unless told otherwise (``--no-default-keep``)."""
    return DEFAULT_KEEP + PRECISION_KEEP.get(precision, ())


def default_wide(precision: str) -> tuple[str, ...]:
    """The site patterns a precision gives 8-bit blocks unless told otherwise (int4 only)."""
    return DEFAULT_INT4_WIDE if precision == "int4" else ()


FP8_MAX = 448.0  # largest finite float8 e4m3fn
INT4_BLOCKS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class QuantOptions:
    precision: str
    block_size: int = 32  # int4: weights per quantization block along the input dimension
    accuracy_level: int = 4  # int4: onnxruntime MatMulNBits compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)
    symmetric: bool = True  # int4: no zero points
    keep: tuple[str, ...] | None = None  # site patterns left in float32 (None: default_keep(precision))
    quantize_vision: bool = True  # also quantize the vision graph's MatMuls
    only: tuple[str, ...] | None = None  # site patterns: quantize just these (the sensitivity sweep), else all not kept
    wide: tuple[str, ...] | None = None  # int4: site patterns given 8-bit blocks (None: DEFAULT_INT4_WIDE)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.block_size not in INT4_BLOCKS:
            raise InputError(f"--block-size: expected one of {', '.join(map(str, INT4_BLOCKS))}, got {self.block_size}")
        if self.accuracy_level not in range(5):
            raise InputError(f"--accuracy-level: expected 0..4 (onnxruntime MatMulNBits accuracy_level), got {self.accuracy_level}")
        if self.keep is None:
            object.__setattr__(self, "keep", default_keep(self.precision))
        if self.wide is None:
            object.__setattr__(self, "wide", default_wide(self.precision))
        if self.wide and self.precision != "int4":
            raise InputError(f"--int8-blocks: only for --precision int4 (got {self.precision})")

    def describe(self) -> dict:
        out: dict = {"precision": self.precision, "keep": list(self.keep)}
        if self.precision == "int4":
            out |= {"block_size": self.block_size, "accuracy_level": self.accuracy_level, "symmetric": self.symmetric, "int8_blocks": list(self.wide)}
        elif self.precision == "int8":
            out |= {"weights": "int8 per output channel, symmetric", "activations": "uint8 dynamic per tensor"}
        else:
            out |= {"weights": "float8 e4m3fn per output channel, amax/448", "activations": "float8 e4m3fn per tensor, calibrated amax/448"}
        return out


@dataclass
class Selection:
    """The weight-MatMuls of one graph: node name -> site, split into quantized and kept."""

    quantize: dict[str, str] = field(default_factory=dict)
    keep: dict[str, str] = field(default_factory=dict)


def site_of(weight_name: str, node_name: str = "") -> str:
    """``layers.3.mixer.in_proj`` for ``layers.3.mixer.in_proj.weight``. Weights torch.onnx.export named
    itself (``vision.onnx::MatMul_204``: the vision graph's transposed linears) take the node's path
    instead: ``/tower/encoder/layers.0/mlp/fc1/MatMul`` -> ``vision.tower.encoder.layers.0.mlp.fc1``."""
    if "::" in weight_name and node_name.strip("/"):
        graph = weight_name.split(".", 1)[0]
        path = node_name.strip("/").split("/")
        if path[-1].startswith("MatMul"):
            path = path[:-1]
        return ".".join([graph, *path])
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name


def select(model: onnx.ModelProto, keep: Iterable[str], weights: set[str], only: Iterable[str] | None = None) -> Selection:
    """Top-level MatMuls whose second input is a checkpoint weight; ``keep`` patterns over sites
    (and, when given, only the sites matching an ``only`` pattern are quantized)."""
    patterns, wanted = tuple(keep), None if only is None else tuple(only)
    sel = Selection()
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in weights:
            continue
        site = site_of(node.input[1], node.name)
        kept = any(fnmatch.fnmatchcase(site, p) for p in patterns) or (wanted is not None and not any(fnmatch.fnmatchcase(site, p) for p in wanted))
        (sel.keep if kept else sel.quantize)[node.name] = site
    return sel


def wants(site: str, options: QuantOptions) -> bool:
    """Whether ``options`` would quantize a MatMul at ``site``."""
    if any(fnmatch.fnmatchcase(site, p) for p in options.keep):
        return False
    return options.only is None or any(fnmatch.fnmatchcase(site, p) for p in options.only)


def tied_head(model: onnx.ModelProto, weights: set[str]) -> onnx.NodeProto | None:
    """The decoder's tied head: ``Gemm(x, embed.weight, transB=1)`` reading the embedding table (V, D)."""
    for node in model.graph.node:
        if node.op_type != "Gemm" or not node.name.startswith("/lm_head/") or len(node.input) != 2 or node.input[1] not in weights:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB") == 1 and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0:
            return node
    return None


def untie_head(model: onnx.ModelProto, weights: set[str]) -> str | None:
    """The quantizers take only ``MatMul(x, W)``: rewrite a tied head as a MatMul over its own transposed
    copy ``lm_head.weight`` (D, V), then quantized like an untied head (the embedding lookup keeps the
    float32 table). Returns the new weight's name, or None when the decoder has no tied head."""
    node = tied_head(model, weights)
    if node is None:
        return None
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[1]))
    name = "lm_head.weight"
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(table.T), name))
    table_name = node.input[1]
    node.op_type, node.input[1], node.name = "MatMul", name, "/lm_head/matmul"
    del node.attribute[:]
    weights.add(name)
    if not reads(model, table_name):  # the embed graph still has its own reference
        keep = [t for t in model.graph.initializer if t.name != table_name]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return name


EMBED_SITE = "embed"  # the embedding table's site (``embed.weight``): int4 stores it in 4-bit blocks too


def reads(model: onnx.ModelProto, name: str) -> bool:
    """Whether any node of ``model`` (or a subgraph of one) takes ``name`` as an input."""
    return any(name in (*n.input, *subgraph_inputs(n)) for n in model.graph.node)


def quantize_embedding(model: onnx.ModelProto, block_size: int, table: str = "embed.weight") -> bool:
    """int4: the embed graph's ``Gather`` over the float32 table becomes ``com.microsoft::GatherBlockQuantized``
    over 4-bit blocks along the hidden dimension: symmetric, q in -8..7 stored +8 two to a byte (low
    nibble first, MatMulNBits' convention), one float32 scale = amax / 7 per block. A lookup reads one
    row, so this saves size (the table is ~30% of an int4 jamba-small bundle), not time. Returns False,
    the model unchanged, when the hidden size is not a multiple of the block."""
    node = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table), None)
    init = next((t for t in model.graph.initializer if t.name == table), None)
    if node is None or init is None:
        return False
    w = numpy_helper.to_array(init)
    V, D = w.shape
    if D % block_size or D % 2:
        return False
    blocks = w.reshape(V, D // block_size, block_size)
    amax = np.abs(blocks).max(axis=-1)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = (np.clip(np.rint(blocks / scale[..., None]), -8, 7).astype(np.int16) + 8).reshape(V, D)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)  # (V, D / 2)
    keep = [t for t in model.graph.initializer if t.name != table]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + [numpy_helper.from_array(packed, f"{table}_Q4"), numpy_helper.from_array(scale, f"{table}_scales")])
    new = helper.make_node("GatherBlockQuantized", [f"{table}_Q4", node.input[1], f"{table}_scales"], list(node.output), name=node.name,
                           domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block_size, bits=4)  # fmt: skip
    model.graph.node.insert(list(model.graph.node).index(node), new)
    model.graph.node.remove(node)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return True


def check_patterns(patterns: Iterable[str], sites: Iterable[str], option: str = "--keep") -> None:
    """A pattern that matches no MatMul is almost always a typo: refuse it, listing examples."""
    sites = sorted(set(sites))
    for p in patterns:
        if p in DEFAULT_KEEP or p in DEFAULT_INT4_WIDE or any(p in extra for extra in PRECISION_KEEP.values()):
            continue  # a default: not every model has every kind
        if not any(fnmatch.fnmatchcase(s, p) for s in sites):
            sample = ", ".join(sites[:6]) + (", ..." if len(sites) > 6 else "")
            raise InputError(f"{option} {p!r}: matches no quantizable MatMul; sites look like: {sample}")


def quantize_model(model: onnx.ModelProto, sel: Selection, options: QuantOptions, calibration: Callable[[onnx.ModelProto, list[str]], dict[str, float]] | None = None) -> onnx.ModelProto:
    """Return a quantized copy of ``model`` (all initializers loaded) with ``sel.quantize`` rewritten."""
    if not sel.quantize:
        return model
    nodes = sorted(sel.quantize)
    if options.precision == "int8":
        return _int8(model, nodes)
    if options.precision == "int4":
        wide = [n for n in nodes if is_wide(sel.quantize[n], options)]
        return _int4(_int4(model, wide, options, bits=8), [n for n in nodes if n not in wide], options)
    if calibration is None:
        raise ValueError("fp8 needs a calibration callable (activation amax per MatMul input)")
    inputs = sorted({n.input[0] for n in model.graph.node if n.name in sel.quantize})
    return _fp8(model, sel, calibration(model, inputs))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice and per-node INFO lines through the root logger; keep stderr for our progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _int8(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="hmexport-int8-") as tmp, _quiet():
        out = Path(tmp) / "model.onnx"
        quantize_dynamic(
            model, out, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
            # DefaultTensorType: shape inference stops at --ops fused's custom nodes; every tensor here is float32
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT}, use_external_data_format=True,
        )  # fmt: skip
        return toposort(onnx.load(str(out), load_external_data=True))


def is_wide(site: str, options: QuantOptions) -> bool:
    """int4: whether ``site`` gets 8-bit blocks."""
    return any(fnmatch.fnmatchcase(site, p) for p in options.wide or ())


def _int4(model: onnx.ModelProto, nodes: list[str], options: QuantOptions, bits: int = 4) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    if not nodes:
        return model
    config = DefaultWeightOnlyQuantConfig(
        block_size=options.block_size, is_symmetric=options.symmetric, accuracy_level=options.accuracy_level or None, op_types_to_quantize=("MatMul",),
        bits=bits,
    )  # fmt: skip
    # Its nodes_to_include only adds to op_types_to_quantize, so exclude every other MatMul (subgraphs too).
    exclude = sorted({n.name for n in _all_nodes(model.graph) if n.op_type == "MatMul"} - set(nodes))
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
    return toposort(quantizer.model.model)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                yield from _all_nodes(g)


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's subgraphs (If branches, Scan/Loop bodies) read without declaring them."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
            for n in g.node:
                names |= {i for i in n.input if i and i not in local}
                names |= subgraph_inputs(n) - local
    return names


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Order the top-level nodes so every node follows the producers of its inputs *and* of the names
    its subgraphs capture. onnxruntime's quantizers sort without the latter, which moves an If before
    the node making a value one of its branches reads (an invalid model)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    needs = {id(n): (set(n.input) | subgraph_inputs(n)) for n in pending}
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if needs[id(n)] <= available]
        if not ready:
            missing = sorted(needs[id(pending[0])] - available)
            raise ValueError(f"graph {graph.name!r}: node {pending[0].name!r} needs {missing[:3]}, which no node makes (a cycle or a dangling input)")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def fp8_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float32 -> (float8 e4m3fn bits as uint8 (K, N), float32 scale per output column (N,)); w ~= q * scale."""
    import ml_dtypes

    amax = np.max(np.abs(w), axis=0)
    scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
    q = (w / scale).astype(ml_dtypes.float8_e4m3fn)
    return q.view(np.uint8), scale


def _fp8(model: onnx.ModelProto, sel: Selection, amax: dict[str, float]) -> onnx.ModelProto:
    """QDQ: Q/DQ (per tensor, calibrated) on each quantized MatMul's activation, DQ (per column) on its weight."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    activation_q: dict[str, str] = {}
    for node in graph.node:
        if node.name not in sel.quantize:
            new_nodes.append(node)
            continue
        x, w_name = node.input
        if x not in activation_q:
            a = float(amax.get(x, 0.0))
            scale = a / FP8_MAX if a > 0 else 1.0
            s_name, z_name = f"{x}/fp8_scale", f"{x}/fp8_zero"
            graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name), _fp8_zero(z_name, ())])
            new_nodes.append(helper.make_node("QuantizeLinear", [x, s_name, z_name], [f"{x}/fp8"], name=f"{node.name}/input_quantize"))
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{x}/fp8", s_name, z_name], [f"{x}/fp8_dq"], name=f"{node.name}/input_dequantize"))
            activation_q[x] = f"{x}/fp8_dq"
        w = numpy_helper.to_array(inits[w_name])
        bits, w_scale = fp8_weight(w)
        q_name = f"{w_name}_fp8"
        if q_name not in {t.name for t in graph.initializer}:
            t = onnx.TensorProto(name=q_name, data_type=TensorProto.FLOAT8E4M3FN, dims=list(bits.shape), raw_data=bits.tobytes())
            graph.initializer.extend([t, numpy_helper.from_array(w_scale, f"{w_name}_fp8_scale"), _fp8_zero(f"{w_name}_fp8_zero", w_scale.shape)])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, f"{w_name}_fp8_scale", f"{w_name}_fp8_zero"], [f"{w_name}_dq"], name=f"{node.name}/weight_dequantize", axis=1))
        node.input[0], node.input[1] = activation_q[x], f"{w_name}_dq"
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in (*n.input, *subgraph_inputs(n))}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def _fp8_zero(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    n = int(np.prod(shape)) if shape else 1
    return onnx.TensorProto(name=name, data_type=TensorProto.FLOAT8E4M3FN, dims=list(shape), raw_data=bytes(n))
