"""Canonical weight names and shapes, shared by every architecture.

A canonical name is the path of the node that uses it, in checkpoint orientation
(``nn.Linear`` weights are (out, in)): ``layers.3.mixer.in_proj.weight``. Each architecture file
maps canonical names to its checkpoint's keys; experts are stacked into (E, ...) tensors here.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..errors import CheckpointError
from .spec import ModelSpec

Shape = tuple[int, ...]


def tensor_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """Every canonical tensor the decoder needs, with its shape."""
    D, F, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    shapes: dict[str, Shape] = {"embed.weight": (V, D), "final_norm.weight": (D,)}
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    for i, layer in enumerate(spec.layers):
        p = f"layers.{i}"
        shapes[f"{p}.norm.weight"] = (D,)
        if layer.mixer == "mamba":
            shapes.update(_mamba_shapes(spec, f"{p}.mixer"))
        else:
            a = spec.attention
            shapes[f"{p}.mixer.q_proj.weight"] = (a.num_heads * a.head_dim, D)
            shapes[f"{p}.mixer.k_proj.weight"] = (a.num_kv_heads * a.head_dim, D)
            shapes[f"{p}.mixer.v_proj.weight"] = (a.num_kv_heads * a.head_dim, D)
            shapes[f"{p}.mixer.o_proj.weight"] = (D, a.num_heads * a.head_dim)
        if layer.mlp != "none":
            shapes[f"{p}.ffn_norm.weight"] = (D,)
        if layer.mlp == "dense":
            shapes.update({f"{p}.mlp.gate_proj.weight": (F, D), f"{p}.mlp.up_proj.weight": (F, D), f"{p}.mlp.down_proj.weight": (D, F)})
        elif layer.mlp == "moe":
            E = layer.experts
            shapes[f"{p}.mlp.router.weight"] = (E, D)
            shapes.update({f"{p}.mlp.experts.gate_proj": (E, F, D), f"{p}.mlp.experts.up_proj": (E, F, D), f"{p}.mlp.experts.down_proj": (E, D, F)})
    return shapes


def _mamba_shapes(spec: ModelSpec, p: str) -> dict[str, Shape]:
    m, D = spec.mamba, spec.hidden_size
    Di, N, R = m.d_inner, m.d_state, m.dt_rank
    shapes = {
        f"{p}.in_proj.weight": (2 * Di, D),
        f"{p}.conv1d.weight": (Di, m.d_conv),
        f"{p}.x_proj.weight": (R + 2 * N, Di),
        f"{p}.dt_proj.weight": (Di, R),
        f"{p}.dt_proj.bias": (Di,),
        f"{p}.A_log": (Di, N),
        f"{p}.D": (Di,),
        f"{p}.out_proj.weight": (D, Di),
    }
    if m.conv_bias:
        shapes[f"{p}.conv1d.bias"] = (Di,)
    if m.proj_bias:
        shapes[f"{p}.in_proj.bias"] = (2 * Di,)
        shapes[f"{p}.out_proj.bias"] = (D,)
    if m.dt_bc_norm:
        shapes.update({f"{p}.dt_norm.weight": (R,), f"{p}.b_norm.weight": (N,), f"{p}.c_norm.weight": (N,)})
    return shapes


def checkpoint_shape(name: str, shape: Shape) -> Shape:
    """The shape a checkpoint stores: depthwise conv weights keep nn.Conv1d's (Di, 1, W)."""
    if name.endswith("conv1d.weight"):
        return (shape[0], 1, shape[1])
    return shape


def load_weights(spec: ModelSpec, ckpt, rename: Callable[[str], str], progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Read every canonical tensor from ``ckpt`` (a Checkpoint); collects all failures, then raises once."""
    weights: dict[str, np.ndarray] = {}
    errors: list[str] = []
    for name, shape in tensor_shapes(spec).items():
        try:
            weights[name] = _read(ckpt, name, shape, rename)
        except CheckpointError as exc:
            errors.append(str(exc))
        if progress:
            progress(1)
    if errors:
        head = errors[0] if len(errors) == 1 else f"{len(errors)} tensors are wrong: " + "; ".join(errors[:8])
        more = f"; and {len(errors) - 8} more" if len(errors) > 8 else ""
        raise CheckpointError(head + more)
    return weights


def _read(ckpt, name: str, shape: Shape, rename: Callable[[str], str]) -> np.ndarray:
    if ".mlp.experts." in name:  # stacked from one tensor per expert: experts.{e}.{proj}.weight
        prefix, proj = name.rsplit(".experts.", 1)
        parts = [ckpt.tensor(rename(f"{prefix}.experts.{e}.{proj}.weight"), shape[1:]) for e in range(shape[0])]
        return np.stack(parts)
    value = ckpt.tensor(rename(name), checkpoint_shape(name, shape))
    return value.reshape(shape)


def count_parameters(weights: dict[str, np.ndarray]) -> int:
    return int(sum(w.size for w in weights.values()))


def iter_layers(spec: ModelSpec, mixer: str) -> Iterator[int]:
    return iter(spec.layer_indices(mixer))
