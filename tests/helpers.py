"""Shared test helpers: the tiny model configurations and one close-comparison that prints the worst index."""

from __future__ import annotations

import numpy as np

JAMBA_MOE = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
    num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2,
    mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
)  # fmt: skip
JAMBA_DENSE = {**JAMBA_MOE, "num_experts": 1, "attn_layer_period": 3, "attn_layer_offset": 2, "num_hidden_layers": 3}
MAMBA = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, state_size=8, conv_kernel=4, expand=2, time_step_rank=8, tie_word_embeddings=True)

MODELS = {"jamba-moe": ("jamba", JAMBA_MOE), "jamba-dense": ("jamba", JAMBA_DENSE), "mamba": ("mamba", MAMBA)}


def assert_close(name: str, got: np.ndarray, want: np.ndarray, tol: float | tuple[float, float]) -> None:
    """``tol`` is an absolute bound, or (atol, rtol): |got - want| <= atol + rtol * |want| everywhere."""
    atol, rtol = tol if isinstance(tol, tuple) else (tol, 0.0)
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    want64 = want.astype(np.float64)
    excess = np.abs(got.astype(np.float64) - want64) - (atol + rtol * np.abs(want64))
    worst = np.unravel_index(int(np.argmax(excess)), excess.shape) if excess.size else ()
    assert excess.size == 0 or excess.max() <= 0, (
        f"{name}: |got - want| exceeds {atol:g} + {rtol:g}*|want| at {worst}: got {got[worst]}, want {want[worst]}")
