"""Full-size model shapes for ``hmexport plan``: real configurations, no weights (nothing to download).

Weights bytes are the decoder's tensors (models/weights.py) in the checkpoint dtype plus the vision
side's parameter count; K/V and state bytes come from the same arithmetic the runtime allocates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import jamba, mamba
from .weights import tensor_shapes


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    model: dict  # ModelSpec JSON
    dtype: str
    vision_params: int
    tokens_per_image: int

    @property
    def weights_bytes(self) -> int:
        from .spec import ModelSpec

        spec = ModelSpec.from_json(self.model)
        params = sum(math.prod(s) for s in tensor_shapes(spec).values()) + self.vision_params
        return params * (4 if self.dtype == "float32" else 2)


# LongLLaVA-9B: Jamba layout of Jamba-v0.1 (attention on layer 4 of every 8) with dense MLPs,
# CLIP ViT-L/14-336 (303M) + mlp2x_gelu projector (1024 -> 4096 -> 4096), 24x24 patches pooled to 12x12.
_LONGLLAVA_9B = jamba.spec_from_config(dict(
    vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, attn_layer_period=8, attn_layer_offset=4,
    expert_layer_period=2, expert_layer_offset=1, num_experts=1, num_experts_per_tok=1, num_attention_heads=32, num_key_value_heads=8,
    mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=256, dtype="bfloat16"), "longllava-9b")
# Cobra-3.5B: mamba-2.8b (64 layers, D=2560, vocab padded to 50432, tied head) behind DINOv2-L/14
# (304M) + SigLIP-SO400M/14 (400M) at 384 px (27x27 = 729 tokens) and a 3-layer GELU projector.
_COBRA = mamba.spec_from_config(dict(
    vocab_size=50432, hidden_size=2560, num_hidden_layers=64, state_size=16, conv_kernel=4, expand=2, time_step_rank=160,
    tie_word_embeddings=True, dtype="bfloat16"), "cobra-3.5b")

SHAPES = {
    s.name: s
    for s in (
        Shape("longllava-9b", "LongLLaVA-9B shapes (bf16): Jamba 32 layers, 4 attention, D=4096; 144 tokens per image",
              _LONGLLAVA_9B.to_json(), "bfloat16", 303_000_000 + 1024 * 4096 + 4096 * 4096 + 2 * 4096, 144),
        Shape("cobra-3.5b", "Cobra-3.5B shapes (bf16): Mamba-1 64 layers, D=2560; 729 tokens per image",
              _COBRA.to_json(), "bfloat16", 304_000_000 + 400_000_000 + 2176 * 8704 + 8704 * 2560 + 2560 * 2560, 729),
    )
}
