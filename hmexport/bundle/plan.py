"""``hmexport plan``: memory arithmetic for a context of N images + T text tokens, from a manifest alone.

    total = weights + K/V (tokens x bytes per token) + recurrent state (x2: the runtime double-buffers it)
            + peak activations of one prefill chunk (C tokens)

Activation model (float32 intermediates, the larger of):
  - a Mamba layer in standard ops: dA and dBu (C x Di x N each) plus ~8 (C x Di) tensors;
    with fused ops only the ~8 (C x Di) tensors;
  - an attention layer: ~5 live copies of the scores, C x H x (context) floats each, capped at
    ACTIVATION_BUDGET because the runtime shrinks the chunk as the context grows (never below one
    token, whose scores are the floor);
  - an MLP: C x F x 3 (gate, up, product) and, for MoE, the same per routed expert.
The largest N that fits solves the same sum for N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

F32 = 4
# The runtime bounds prefill activations by shrinking the chunk as the context grows: one chunk's
# attention scores are chunk x H x context floats with ~5 live copies (scores, mask select, softmax,
# transposes), measured with onnxruntime on longllava-small.
ACTIVATION_BUDGET = 256 * 2**20
SCORE_COPIES = 5
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class PlanInputs:
    weights_bytes: int
    kv_bytes_per_token: int
    recurrent_bytes: int
    tokens_per_image: int
    max_tokens: int | None
    chunk: int
    mamba_dims: tuple[int, int] | None  # (Di, N) of the widest Mamba layer
    attention_heads: int  # H of one attention layer (scores are per layer, freed before the next)
    mlp_width: int
    fused: bool

    @classmethod
    def from_manifest(cls, manifest, chunk: int | None = None) -> "PlanInputs":
        model = manifest.model
        vision = manifest.vision or {}
        return cls.from_spec(model, weights_bytes=sum(f.bytes for f in manifest.files.values()),
                             kv_bytes_per_token=manifest.kv_bytes_per_token(), recurrent_bytes=manifest.recurrent_bytes(),
                             tokens_per_image=int(vision.get("tokens_per_image", 0)), max_tokens=manifest.limits.max_tokens,
                             chunk=chunk or manifest.limits.prefill_chunk, fused=any(g.ops for g in manifest.graphs.values()))

    @classmethod
    def from_spec(cls, model: dict[str, Any], **known: Any) -> "PlanInputs":
        mamba = model.get("mamba")
        attention = model.get("attention")
        return cls(mamba_dims=(mamba["d_inner"], mamba["d_state"]) if mamba else None,
                   attention_heads=attention["num_heads"] if attention else 0, mlp_width=int(model.get("intermediate_size") or 0), **known)


def spec_state_bytes(model: dict[str, Any], dtype: str) -> tuple[int, int]:
    """(K/V bytes per token, recurrent bytes) for a ModelSpec dict: K/V in ``dtype``, SSM state in
    float32 (always), the conv window in ``dtype``."""
    kv = rec = 0
    item = _DTYPE_BYTES[dtype]
    for layer in model["layers"]:
        if layer["mixer"] == "attention":
            a = model["attention"]
            kv += 2 * a["num_kv_heads"] * a["head_dim"] * item
        else:
            m = model["mamba"]
            rec += m["d_inner"] * ((m["d_conv"] - 1) * item + m["d_state"] * F32)
    return kv, rec


def activation_bytes(p: PlanInputs, context: int) -> int:
    C = p.chunk
    candidates = [3 * C * p.mlp_width * F32]
    if p.mamba_dims:
        Di, N = p.mamba_dims
        candidates.append(C * Di * (8 + (0 if p.fused else 2 * N)) * F32)
    if p.attention_heads:
        candidates.append(min(SCORE_COPIES * C * p.attention_heads * context * F32, max(ACTIVATION_BUDGET, SCORE_COPIES * p.attention_heads * context * F32)))
    return max(candidates)


def plan(p: PlanInputs, images: int, prompt_tokens: int, new_tokens: int, device_bytes: int | None) -> dict[str, Any]:
    tokens = images * p.tokens_per_image + prompt_tokens + new_tokens
    parts = {
        "weights": p.weights_bytes,
        "kv": p.kv_bytes_per_token * tokens,
        "recurrent_state": 2 * p.recurrent_bytes,
        "activations_peak": activation_bytes(p, tokens),
    }
    out: dict[str, Any] = {"inputs": asdict(p), "images": images, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                           "context_tokens": tokens, "bytes": parts, "total_bytes": sum(parts.values())}
    if device_bytes:
        out["device_bytes"] = device_bytes
        out["fits"] = out["total_bytes"] <= device_bytes and (p.max_tokens is None or tokens <= p.max_tokens)
        out["max_images"] = max_images(p, prompt_tokens, new_tokens, device_bytes)
    if p.max_tokens is not None and tokens > p.max_tokens:
        out["over_max_tokens"] = f"{tokens} context tokens > max_tokens {p.max_tokens}"
    return out


def max_images(p: PlanInputs, prompt_tokens: int, new_tokens: int, device_bytes: int) -> int | None:
    """Largest N with plan(...) <= device_bytes (and within max_tokens), by bisection on the monotone
    total; None when memory does not grow with images (no attention layers) and no token limit applies."""
    if p.tokens_per_image == 0:
        return 0
    if p.kv_bytes_per_token == 0 and p.attention_heads == 0 and p.max_tokens is None:
        return None if plan(p, 0, prompt_tokens, new_tokens, None)["total_bytes"] <= device_bytes else 0

    def fits(n: int) -> bool:
        r = plan(p, n, prompt_tokens, new_tokens, None)
        return r["total_bytes"] <= device_bytes and (p.max_tokens is None or r["context_tokens"] <= p.max_tokens)

    if not fits(0):
        return 0
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def render(r: dict[str, Any]) -> str:
    gib = lambda n: f"{n / 2**30:8.2f} GiB"  # noqa: E731
    p = r["inputs"]
    lines = [f"context: {r['images']} images x {p['tokens_per_image']} tokens + {r['prompt_tokens']} prompt + {r['new_tokens']} new = {r['context_tokens']:,} tokens",
             f"  weights            {gib(r['bytes']['weights'])}",
             f"  K/V                {gib(r['bytes']['kv'])}   ({p['kv_bytes_per_token']:,} B/token)",
             f"  recurrent state    {gib(r['bytes']['recurrent_state'])}   ({p['recurrent_bytes']:,} B, x2 buffers; constant in context)",
             f"  activations (peak) {gib(r['bytes']['activations_peak'])}   (prefill chunk {p['chunk']} tokens)",
             f"  total              {gib(r['total_bytes'])}"]
    if "device_bytes" in r:
        most = "unbounded (no attention layers: memory does not grow with the context)" if r["max_images"] is None else f"{r['max_images']:,}"
        lines.append(f"device memory {gib(r['device_bytes']).strip()}: {'fits' if r['fits'] else 'DOES NOT FIT'}; largest image count that fits: {most}")
    if "over_max_tokens" in r:
        lines.append(f"over the bundle's limit: {r['over_max_tokens']} (rebuild with a larger --max-tokens)")
    return "\n".join(lines)
