"""Long-context memory: once prefill's chunk has shrunk to the activation budget, memory grows by the
K/V rows alone. The decoder's input shapes change on every call, and onnxruntime's memory pattern
(one arena block planned per set of input shapes) made its CPU arena add regions as the context
grew: ~680 B per token on top of 1 KiB of K/V on longllava-small (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from hmexport.runtime import Bundle
from hmexport.runtime.bundle import CHANGING_SHAPE_GRAPHS

# A jamba with one attention layer (4 heads, 2 K/V heads of 16: 256 B of K/V per token). With a 16 MiB
# activation budget the chunk of 64 starts shrinking at ~3.3K tokens; from WARM on, every call's
# activations are at the budget. Measured (onnxruntime 1.32): with the memory pattern the arena adds a
# 16 MiB region after WARM and RSS grows 3.9 MB for 2.0 MB of K/V; without it, no region and 1.5 MB.
CONFIG = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, attn_layer_period=3, attn_layer_offset=2,
    expert_layer_period=2, expert_layer_offset=1, num_experts=1, num_experts_per_tok=1, num_attention_heads=4,
    num_key_value_heads=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
)  # fmt: skip
BUDGET, TOKENS, WARM = 16 * 2**20, 12_000, 4_000
MARK = "@@after-warm-up@@"
SLACK = 2**20  # RSS noise allowed on top of the K/V rows

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
import hmexport.runtime.session as session_module
from hmexport.runtime import Bundle

path, budget, tokens, warm, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
session_module.ACTIVATION_BUDGET = budget
ort.set_default_logger_severity(1)  # INFO: the arena logs each extension
s = Bundle.open(path, threads=1).session()
ids = np.random.default_rng(0).integers(5, 500, tokens)

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

start = 0
while start < tokens:
    end = min(start + s.step(), tokens)
    if start < warm <= end:
        print(mark, file=sys.stderr, flush=True)
        rss0, len0 = rss(), start
    s.forward(s.embed(ids[start:end]))
    start = end
kv_per_token = s.state.nbytes()["kv_used"] // tokens
print(json.dumps({"rss_growth": rss() - rss0, "kv_growth": (tokens - len0) * kv_per_token, "step_at_end": s.step()}))
"""


def test_only_changing_shape_graphs_drop_the_memory_pattern(bundles):
    bundle = Bundle.open(bundles["jamba-dense"])
    for name, session in bundle.sessions.items():
        assert session.get_session_options().enable_mem_pattern == (name not in CHANGING_SHAPE_GRAPHS), name
    assert "decoder" in CHANGING_SHAPE_GRAPHS


def test_long_prefill_grows_by_kv_only(tmp_path):
    from hmexport.export.build import BuildOptions, build
    from hmexport.models.presets import write_checkpoint

    ckpt = write_checkpoint("jamba", CONFIG, tmp_path / "ckpt", seed=7)
    build(str(ckpt), tmp_path / "bundle", BuildOptions(max_tokens=TOKENS, chunk=64, validate=False))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "bundle"), str(BUDGET), str(TOKENS), str(WARM), MARK],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["step_at_end"] < 64, f"the chunk should have shrunk to the budget by the end: {result}"
    before, _, after = done.stderr.partition(MARK)
    assert after, "the child never reached the warm-up mark"
    assert "Extended allocation" in before, "onnxruntime's INFO log no longer reports arena extensions; this test cannot see them"
    grown = [line.split("] ", 1)[-1] for line in after.splitlines() if "Extended allocation" in line]
    assert not grown, f"the CPU arena kept growing once every call was at the activation budget: {grown}"
    assert result["rss_growth"] <= result["kv_growth"] + SLACK, (
        f"RSS grew {result['rss_growth']} B over {TOKENS - WARM} tokens; their K/V is {result['kv_growth']} B")
