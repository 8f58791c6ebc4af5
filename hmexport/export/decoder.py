"""The two text graphs: ``embed`` (ids -> embeddings) and ``decoder`` (embeddings + state -> logits + state).

The decoder serves prefill chunks of any length and single-token decode with one graph. Its state
inputs and outputs, per layer i:

| mixer     | inputs                              | outputs                                       |
|-----------|-------------------------------------|-----------------------------------------------|
| mamba     | conv_state.i (B,W-1,Di), ssm_state.i (B,Di,N) | conv_state_out.i, ssm_state_out.i     |
| attention | key.i.j, value.i.j (P,Dh), head j   | key_new.i.j, value_new.i.j (L,Dh): new rows   |

``logits_to_keep`` (int64, shape [1]) picks how many final positions get logits (1 in generation).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..models.spec import ModelSpec
from . import layers as nn
from .graph import Graph

F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def state_shapes(spec: ModelSpec, i: int) -> dict[str, list[int | str]]:
    """The state inputs of layer i with symbolic dims: the layout the runtime allocates."""
    if spec.layers[i].mixer == "mamba":
        m = spec.mamba
        return {f"conv_state.{i}": ["batch", m.d_conv - 1, m.d_inner], f"ssm_state.{i}": ["batch", m.d_inner, m.d_state]}
    a = spec.attention
    return {f"{kind}.{i}.{j}": ["past", a.head_dim] for kind in ("key", "value") for j in range(a.num_kv_heads)}


def state_output_name(input_name: str) -> str:
    kind, rest = input_name.split(".", 1)
    return f"{kind}_out.{rest}" if kind in ("conv_state", "ssm_state") else f"{kind}_new.{rest}"


def build_embed(spec: ModelSpec, weights: dict[str, np.ndarray]) -> Graph:
    g = Graph("embed")
    ids = g.input("input_ids", I64, ["batch", "seq"])
    out = g.op("Gather", [g.weight("embed.weight", weights["embed.weight"]), ids], axis=0, name="embed_tokens")
    g.output(out, "inputs_embeds", F32, ["batch", "seq", spec.hidden_size])
    return g


def build_decoder(spec: ModelSpec, weights: dict[str, np.ndarray], ops: str = "standard") -> Graph:
    """``ops="fused"`` puts hmexport::CausalConv1d / hmexport::SelectiveScan in the Mamba layers."""
    g = Graph("decoder")
    # Attention layers compute with 2-D Gemms over each head's K/V rows, so the batch is 1 (the
    # runtime's sessions are single-sequence); onnxruntime rejects any other batch up front.
    batch = 1 if spec.attention is not None and any(layer.mixer == "attention" for layer in spec.layers) else "batch"
    x = g.input("inputs_embeds", F32, [batch, "seq", spec.hidden_size])
    keep = g.input("logits_to_keep", I64, [1])
    state_in = {}
    for i in range(spec.num_layers):
        for name, shape in state_shapes(spec, i).items():
            state_in[name] = g.input(name, F32, shape)
    state_out: dict[str, tuple[str, list]] = {}
    with g.scope("one_step"):  # L == 1: decode-step branches in the Mamba layers
        steps = g.op("Gather", [g.op("Shape", [x]), g.const(1)], axis=0)  # L, the chunk length
        one_step = g.op("Equal", [steps, g.const(1)])
    has_conv = ops == "standard" and any(layer.mixer == "mamba" for layer in spec.layers)
    conv_index = nn.conv_rows(g, steps, spec.mamba.d_conv) if has_conv else ""
    for i, layer in enumerate(spec.layers):
        p = f"layers.{i}"
        with g.scope(p):
            h = nn.rms_norm(g, x, weights[f"{p}.norm.weight"], f"{p}.norm", spec.norm_eps)
            with g.scope("mixer"):
                if layer.mixer == "mamba":
                    y, conv, ssm = nn.mamba_mixer(g, h, weights, f"{p}.mixer", spec.mamba, spec.norm_eps, state_in[f"conv_state.{i}"], state_in[f"ssm_state.{i}"],
                                                   one_step, conv_index, fused=ops == "fused")
                    shapes = state_shapes(spec, i)
                    state_out[f"conv_state_out.{i}"] = (conv, shapes[f"conv_state.{i}"])
                    state_out[f"ssm_state_out.{i}"] = (ssm, shapes[f"ssm_state.{i}"])
                else:
                    heads = range(spec.attention.num_kv_heads)
                    y, k, v = nn.attention(g, h, weights, f"{p}.mixer", spec.attention, [state_in[f"key.{i}.{j}"] for j in heads],
                                           [state_in[f"value.{i}.{j}"] for j in heads])
                    rows = ["seq", spec.attention.head_dim]
                    for j in heads:
                        state_out[f"key_new.{i}.{j}"], state_out[f"value_new.{i}.{j}"] = (k[j], rows), (v[j], rows)
            x = g.op("Add", [x, y], name="residual_mixer")
            if layer.mlp != "none":
                h = nn.rms_norm(g, x, weights[f"{p}.ffn_norm.weight"], f"{p}.ffn_norm", spec.norm_eps)
                if layer.mlp == "dense":
                    y = nn.dense_mlp(g, h, weights, f"{p}.mlp")
                else:
                    y = nn.moe_mlp(g, h, weights, f"{p}.mlp", layer, spec.hidden_size)
                x = g.op("Add", [x, y], name="residual_mlp")
    x = nn.rms_norm(g, x, weights["final_norm.weight"], "final_norm", spec.norm_eps)
    with g.scope("lm_head"):
        last = g.op("Slice", [x, g.op("Neg", [keep]), g.const([np.iinfo(np.int64).max]), g.const([1])], name="keep_last")
        logits = _lm_head(g, spec, weights, last)
    g.output(logits, "logits", F32, ["batch", "kept", spec.vocab_size])
    for name, (tensor, shape) in state_out.items():
        g.output(tensor, name, F32, shape)
    return g


def _lm_head(g: Graph, spec: ModelSpec, weights: dict[str, np.ndarray], x: str) -> str:
    """Tied heads read the embedding table itself (Gemm, transB) so both graphs share one tensor."""
    if not spec.tie_word_embeddings:
        return g.op("MatMul", [x, g.weight("lm_head.weight", np.ascontiguousarray(weights["lm_head.weight"].T))], name="matmul")
    flat = g.op("Reshape", [x, g.const([-1, spec.hidden_size])])
    logits = g.op("Gemm", [flat, g.weight("embed.weight", weights["embed.weight"])], transB=1, name="gemm")
    shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [x]), g.const([0]), g.const([2]), g.const([0])]), g.const([spec.vocab_size])], axis=0)
    return g.op("Reshape", [logits, shape])
