"""Mamba-1 (transformers' MambaForCausalLM): pure Mamba blocks, RMS norm before each mixer, tied head."""

from __future__ import annotations

from typing import Any

from .hfconfig import Config
from .spec import LayerSpec, MambaSpec, ModelSpec

NAME = "mamba"
MODEL_TYPES = ("mamba",)
HF_CLASS = "MambaForCausalLM"


def spec_from_config(raw: dict[str, Any], where: str) -> ModelSpec:
    c = Config(raw, where)
    D = c.int("hidden_size")
    dt_rank = raw.get("time_step_rank", "auto")
    if dt_rank == "auto":
        dt_rank = -(-D // 16)
    return ModelSpec(
        arch=NAME,
        vocab_size=c.int("vocab_size"),
        hidden_size=D,
        intermediate_size=0,
        norm_eps=c.float("layer_norm_epsilon", 1e-5),
        layers=tuple(LayerSpec(mixer="mamba") for _ in range(c.int("num_hidden_layers"))),
        mamba=MambaSpec(
            d_inner=c.int("intermediate_size", c.int("expand", 2) * D),
            d_state=c.int("state_size", 16),
            d_conv=c.int("conv_kernel", 4),
            dt_rank=int(dt_rank),
            conv_bias=c.bool("use_conv_bias", True),
            proj_bias=c.bool("use_bias", False),
        ),
        tie_word_embeddings=c.bool("tie_word_embeddings", True),
        dtype=c.dtype(),
        **c.special_tokens(),
    )


def checkpoint_key(spec: ModelSpec, name: str) -> str:
    if name == "embed.weight":
        return "backbone.embeddings.weight"
    if name == "final_norm.weight":
        return "backbone.norm_f.weight"
    if name == "lm_head.weight":
        return name
    return "backbone." + name  # layers.{i}.norm.* and layers.{i}.mixer.* match transformers' names
