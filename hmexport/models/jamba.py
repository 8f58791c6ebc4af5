"""Jamba (transformers' JambaForCausalLM): Mamba-1 with dt/B/C norms, attention on 1 layer in
``attn_layer_period``, MoE MLPs on 1 layer in ``expert_layer_period``, no positional encoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from .spec import AttentionSpec, LayerSpec, MambaSpec, ModelSpec
from .hfconfig import Config

NAME = "jamba"
MODEL_TYPES = ("jamba",)
HF_CLASS = "JambaForCausalLM"


def spec_from_config(raw: dict[str, Any], where: str) -> ModelSpec:
    c = Config(raw, where)
    D = c.int("hidden_size")
    n_layers = c.int("num_hidden_layers")
    attn_period, attn_offset = c.int("attn_layer_period", 8), c.int("attn_layer_offset", 4)
    moe_period, moe_offset = c.int("expert_layer_period", 2), c.int("expert_layer_offset", 1)
    experts, top_k = c.int("num_experts", 16), c.int("num_experts_per_tok", 2)
    if attn_offset >= attn_period or moe_offset >= moe_period:
        raise CheckpointError(f"{where}: layer offsets must be smaller than their periods")
    layers = []
    for i in range(n_layers):
        mixer = "attention" if i % attn_period == attn_offset else "mamba"
        is_moe = experts > 1 and i % moe_period == moe_offset
        layers.append(LayerSpec(mixer=mixer, mlp="moe" if is_moe else "dense", experts=experts if is_moe else 0, top_k=top_k if is_moe else 0))
    heads = c.int("num_attention_heads")
    kv_heads = c.int("num_key_value_heads", heads)
    dt_rank = raw.get("mamba_dt_rank", "auto")
    if dt_rank == "auto":
        dt_rank = -(-D // 16)
    return ModelSpec(
        arch=NAME,
        vocab_size=c.int("vocab_size"),
        hidden_size=D,
        intermediate_size=c.int("intermediate_size"),
        norm_eps=c.float("rms_norm_eps", 1e-6),
        layers=tuple(layers),
        mamba=MambaSpec(
            d_inner=c.int("mamba_expand", 2) * D,
            d_state=c.int("mamba_d_state", 16),
            d_conv=c.int("mamba_d_conv", 4),
            dt_rank=int(dt_rank),
            conv_bias=c.bool("mamba_conv_bias", True),
            proj_bias=c.bool("mamba_proj_bias", False),
            dt_bc_norm=True,
        ),
        attention=AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=c.int("head_dim", D // heads)),
        tie_word_embeddings=c.bool("tie_word_embeddings", False),
        dtype=c.dtype(),
        **c.special_tokens(),
    )


_MIXER = {"mamba": "mamba", "attention": "self_attn"}


@dataclass(frozen=True)
class KeyLayout:
    """How a Jamba checkpoint names its tensors: transformers' names, or AI21's older ones (LongLLaVA)."""

    ffn_norm: str = "pre_ff_layernorm"
    mamba_norms: tuple[tuple[str, str], ...] = (("dt_norm", "dt_layernorm"), ("b_norm", "b_layernorm"), ("c_norm", "c_layernorm"))
    legacy_moe: bool = False  # AI21: MLPs under ``moe.``, a dense MLP stored as the one expert ``moe.experts.0.``


TRANSFORMERS = KeyLayout()
AI21_LEGACY = KeyLayout(ffn_norm="pre_moe_layernorm", mamba_norms=(("dt_norm", "dt_layernorm"), ("b_norm", "B_layernorm"), ("c_norm", "C_layernorm")),
                        legacy_moe=True)


def checkpoint_key(spec: ModelSpec, name: str, layout: KeyLayout = TRANSFORMERS) -> str:
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "final_norm.weight":
        return "model.final_layernorm.weight"
    if name == "lm_head.weight":
        return name
    _, i, part, rest = name.split(".", 3)
    prefix, layer = f"model.layers.{i}", spec.layers[int(i)]
    if part == "norm":
        return f"{prefix}.input_layernorm.{rest}"
    if part == "ffn_norm":
        return f"{prefix}.{layout.ffn_norm}.{rest}"
    if part == "mixer":
        head, _, tail = rest.partition(".")
        return f"{prefix}.{_MIXER[layer.mixer]}.{dict(layout.mamba_norms).get(head, head)}{'.' + tail if tail else ''}"
    if not layout.legacy_moe:
        return f"{prefix}.feed_forward.{rest}"  # mlp
    if layer.mlp == "dense":
        return f"{prefix}.moe.experts.0.{rest}"
    return f"{prefix}.moe.{rest}"  # router.weight, experts.{e}.{proj}.weight
