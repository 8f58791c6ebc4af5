"""``hmexport plan``: the arithmetic matches what the runtime allocates, and the full-size shapes
match LongLLaVA's published numbers (~16 KB of K/V per token, ~15 MB of Mamba state for the 9B)."""

from __future__ import annotations

import pytest

from hmexport.bundle.io import read_manifest
from hmexport.bundle.plan import PlanInputs, plan, spec_state_bytes
from hmexport.runtime import Bundle


def test_plan_matches_the_runtime_allocation(bundles):
    manifest = read_manifest(bundles["jamba-moe"])
    session = Bundle.open(bundles["jamba-moe"]).session()
    sizes = session.state.nbytes()
    inputs = PlanInputs.from_manifest(manifest)
    assert inputs.kv_bytes_per_token * session.state.max_tokens == sizes["kv_allocated"]
    assert inputs.recurrent_bytes == sizes["recurrent"]
    r = plan(inputs, images=0, prompt_tokens=100, new_tokens=28, device_bytes=None)
    assert r["bytes"]["kv"] == 128 * inputs.kv_bytes_per_token


def test_max_images_is_the_largest_that_fits():
    p = PlanInputs(weights_bytes=1000, kv_bytes_per_token=10, recurrent_bytes=50, tokens_per_image=4, max_tokens=None, chunk=8,
                   mamba_dims=(4, 2), attention_heads=1, mlp_width=16, fused=False)
    budget = plan(p, 37, 5, 3, None)["total_bytes"]
    r = plan(p, 37, 5, 3, budget)
    assert r["fits"] and r["max_images"] == 37
    assert plan(p, 38, 5, 3, budget)["fits"] is False


@pytest.mark.parametrize("name,kv_kb,state_mb", [("longllava-9b", 16, 15)])
def test_full_size_shapes_match_the_paper(name, kv_kb, state_mb):
    from hmexport.models.shapes import SHAPES

    shape = SHAPES[name]
    kv, rec = spec_state_bytes(shape.model, shape.dtype)
    assert abs(kv / 1024 - kv_kb) / kv_kb <= 0.10, f"K/V {kv / 1024:.1f} KB/token"
    assert abs(rec / 1e6 - state_mb) / state_mb <= 0.10, f"Mamba state {rec / 1e6:.1f} MB"
    assert 17e9 < shape.weights_bytes < 21e9, "9B parameters in bf16 plus the CLIP tower"
