"""Standard-ONNX building blocks of a hybrid decoder: norms, linears, MLPs, MoE, attention, Mamba.

Each function takes tensor names, emits nodes into a Graph and returns the names it made. Linear
weights are stored (in, out) so a MatMul takes them directly; the float ordering of each step
follows transformers' PyTorch path so fp32 results agree to ~1e-6.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..models.spec import AttentionSpec, LayerSpec, MambaSpec
from .graph import Graph

NEG_INF = np.float32(-3.4028234663852886e38)
CUSTOM_DOMAIN = "hmexport"  # hmexport::SelectiveScan, hmexport::CausalConv1d (--ops fused)


def rms_norm(g: Graph, x: str, weight: np.ndarray, name: str, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * w: the pattern onnxruntime fuses into SimplifiedLayerNormalization."""
    with g.scope(name.rsplit(".", 1)[-1] if "." in name else name):
        var = g.op("ReduceMean", [g.op("Pow", [x, g.const(2.0)]), g.const([-1])], keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [var, g.const(eps)])])
        return g.op("Mul", [g.op("Div", [x, denom]), g.weight(f"{name}.weight", weight)])


def linear(g: Graph, x: str, w: dict[str, np.ndarray], name: str, op_name: str | None = None) -> str:
    """x @ W^T (+ b) for an nn.Linear weight W stored (out, in) in the checkpoint."""
    y = g.op("MatMul", [x, g.weight(f"{name}.weight", np.ascontiguousarray(w[f"{name}.weight"].T))], name=op_name or name.rsplit(".", 1)[-1])
    if f"{name}.bias" in w:
        y = g.op("Add", [y, g.weight(f"{name}.bias", w[f"{name}.bias"])], name=f"{op_name or name.rsplit('.', 1)[-1]}_bias")
    return y


def silu(g: Graph, x: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x])], name="silu")


def dense_mlp(g: Graph, h: str, w: dict[str, np.ndarray], p: str) -> str:
    """down(silu(gate(h)) * up(h))   # (B, L, D)"""
    with g.scope("mlp"):
        return linear(g, gated(g, h, w[f"{p}.gate_proj.weight"], w[f"{p}.up_proj.weight"], f"{p}.gate_up_proj"), w, f"{p}.down_proj")


def gated(g: Graph, x: str, gate: np.ndarray, up: np.ndarray, name: str) -> str:
    """silu(x @ gate^T) * (x @ up^T) with one MatMul over [gate | up] (one larger GEMV per decode step)."""
    F = gate.shape[0]
    fused = g.weight(f"{name}.weight", np.ascontiguousarray(np.concatenate([gate, up], axis=0).T))  # (D, 2F)
    a, b = g.op("Split", [g.op("MatMul", [x, fused], name="gate_up_proj"), g.const([F, F])], n_out=2, axis=-1)
    return g.op("Mul", [silu(g, a), b])


def moe_mlp(g: Graph, h: str, w: dict[str, np.ndarray], p: str, layer: LayerSpec, D: int) -> str:
    """Top-k of a softmax router over E experts; each expert runs only on the tokens routed to it.

    ```
    h (B,L,D) -> (T,D) -> router -> softmax (T,E) -> TopK -> weights (T,E), zero where not chosen
    for e in 0..E-1:  rows = NonZero(e in top-k) ; y_e = mlp_e(h[rows]) * weight[rows, e]
                      out = ScatterND(out, rows, y_e, reduction=add)
    ```
    A decode step reads only its top-k experts' weights (MatMul on zero rows reads nothing), and
    prefill costs k/E of a dense MoE. Contributions are added in expert order, as transformers does.
    """
    with g.scope("moe"):
        tokens = g.op("Reshape", [h, g.const([-1, D])])  # (T, D)
        logits = g.op("MatMul", [tokens, g.weight(f"{p}.router.weight", np.ascontiguousarray(w[f"{p}.router.weight"].T))], name="router")
        probs = g.op("Softmax", [logits], axis=-1)  # (T, E)
        top_w, top_i = g.op("TopK", [probs, g.const([layer.top_k])], n_out=2, axis=-1, largest=1, sorted=1)
        route = g.op("ScatterElements", [g.op("Mul", [probs, g.const(0.0)]), top_i, top_w], axis=-1)  # (T, E)
        route = g.op("Unsqueeze", [g.op("Transpose", [route], perm=[1, 0]), g.const([-1])])  # (E, T, 1)
        hits = g.op("Equal", [g.op("Unsqueeze", [top_i, g.const([-1])]), g.const(np.arange(layer.experts, dtype=np.int64))])  # (T, k, E)
        hits = g.op("Transpose", [g.op("ReduceMax", [g.op("Cast", [hits], to=TensorProto.INT64), g.const([1])], keepdims=0)], perm=[1, 0])  # (E, T)
        out = g.op("Mul", [tokens, g.const(0.0)], name="zeros")  # (T, D)
        for e in range(layer.experts):
            with g.scope(f"experts.{e}"):
                rows = g.op("Transpose", [g.op("NonZero", [g.op("Gather", [hits, g.const(e)], axis=0)])], perm=[1, 0])  # (T_e, 1)
                x = g.op("GatherND", [tokens, rows])  # (T_e, D)
                weight = g.op("GatherND", [g.op("Gather", [route, g.const(e)], axis=0), rows], name="weight_gather")  # (T_e, 1)
                ew = {f"{p}.experts.{e}.{k}.weight": np.ascontiguousarray(w[f"{p}.experts.{k}"][e]) for k in ("gate_proj", "up_proj", "down_proj")}
                act = gated(g, x, ew[f"{p}.experts.{e}.gate_proj.weight"], ew[f"{p}.experts.{e}.up_proj.weight"], f"{p}.experts.{e}.gate_up_proj")
                y = g.op("Mul", [linear(g, act, ew, f"{p}.experts.{e}.down_proj"), weight])
                out = g.op("ScatterND", [out, rows, y], reduction="add")
        return g.op("Reshape", [out, g.op("Shape", [h])])


def attention(g: Graph, h: str, w: dict[str, np.ndarray], p: str, a: AttentionSpec, past_k: list[str], past_v: list[str]) -> tuple[str, list[str], list[str]]:
    """Causal GQA attention over the past K/V and this chunk; no positional encoding. Batch 1.

    Each K/V head is its own time-major (P, Dh) input, so the runtime binds its filled prefix as is
    and every product reads it in place (Gemm, transB): nothing copies or transposes the past.

    ```
    per K/V head j, with its G query heads as rows (G*L, Dh):
      scores = [q_j @ past_k_j^T | q_j @ k_new_j^T] * Dh^-0.5   (G*L, P+L); row r sees cols <= P + r % L
      ctx_j  = probs[:, :P] @ past_v_j + probs[:, P:] @ v_new_j  (G*L, Dh)
    ```
    Returns (output (1,L,D), new key rows per head (L,Dh), new value rows per head (L,Dh)).
    Only the scores (chunk x context) grow with the context; the runtime bounds them via the chunk.
    """
    Hkv, G, Dh = a.num_kv_heads, a.num_heads // a.num_kv_heads, a.head_dim
    q = g.op("Reshape", [linear(g, h, w, f"{p}.q_proj"), g.const([-1, Hkv, G, Dh])])  # (L, Hkv, G, Dh)
    q = g.op("Transpose", [q], perm=[1, 2, 0, 3])  # (Hkv, G, L, Dh)
    k_new = g.op("Reshape", [linear(g, h, w, f"{p}.k_proj"), g.const([-1, Hkv, Dh])], name="k_rows")  # (L, Hkv, Dh)
    v_new = g.op("Reshape", [linear(g, h, w, f"{p}.v_proj"), g.const([-1, Hkv, Dh])], name="v_rows")
    with g.scope("causal_mask"):
        P = g.op("Gather", [g.op("Shape", [past_k[0]]), g.const(0)], axis=0)
        L = g.op("Gather", [g.op("Shape", [h]), g.const(1)], axis=0)
        rows = g.op("Tile", [g.op("Range", [g.const(0), L, g.const(1)]), g.op("Unsqueeze", [g.const(G), g.const([0])])])  # (G*L,)
        limit = g.op("Unsqueeze", [g.op("Add", [rows, P]), g.const([1])])  # (G*L, 1)
        visible = g.op("LessOrEqual", [g.op("Range", [g.const(0), g.op("Add", [P, L]), g.const(1)]), limit])  # (G*L, P+L)
    k_rows = g.op("Split", [k_new, g.const([1] * Hkv)], n_out=Hkv, axis=1) if Hkv > 1 else [k_new]
    v_rows = g.op("Split", [v_new, g.const([1] * Hkv)], n_out=Hkv, axis=1) if Hkv > 1 else [v_new]
    q_heads = g.op("Split", [q, g.const([1] * Hkv)], n_out=Hkv, axis=0) if Hkv > 1 else [q]
    scale = g.const(float(Dh) ** -0.5)
    new_k, new_v, contexts = [], [], []
    for j in range(Hkv):
        with g.scope(f"kv_head.{j}"):
            qj = g.op("Reshape", [q_heads[j], g.const([-1, Dh])])  # (G*L, Dh)
            kj = g.op("Reshape", [k_rows[j], g.const([-1, Dh])], name="k_new")  # (L, Dh)
            vj = g.op("Reshape", [v_rows[j], g.const([-1, Dh])], name="v_new")
            scores = g.op("Concat", [g.op("Gemm", [qj, past_k[j]], transB=1, name="scores_past"), g.op("Gemm", [qj, kj], transB=1, name="scores_new")], axis=1)
            probs = g.op("Softmax", [g.op("Where", [visible, g.op("Mul", [scores, scale]), g.const(NEG_INF)])], axis=-1)
            past_part = g.op("Slice", [probs, g.const([0]), g.op("Unsqueeze", [P, g.const([0])]), g.const([1])])
            new_part = g.op("Slice", [probs, g.op("Unsqueeze", [P, g.const([0])]), g.const([np.iinfo(np.int64).max]), g.const([1])])
            ctx = g.op("Add", [g.op("Gemm", [past_part, past_v[j]], name="ctx_past"), g.op("Gemm", [new_part, vj], name="ctx_new")])  # (G*L, Dh)
            contexts.append(g.op("Reshape", [ctx, g.const([G, -1, Dh])]))  # (G, L, Dh)
            new_k.append(kj)
            new_v.append(vj)
    ctx = g.op("Concat", contexts, axis=0) if Hkv > 1 else contexts[0]  # (H, L, Dh), heads in q_proj order
    ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[1, 0, 2]), g.const([1, -1, Hkv * G * Dh])])  # (1, L, H*Dh)
    return linear(g, ctx, w, f"{p}.o_proj"), new_k, new_v


def conv_rows(g: Graph, L: str, W: int) -> str:
    """(L, W) int64 indices into a conv window (B, W-1+L, Di): row t holds t..t+W-1. Made once per graph
    from the chunk length ``L`` (an int64 scalar) and shared by every Mamba layer's conv."""
    with g.scope("conv_rows"):
        t = g.op("Unsqueeze", [g.op("Range", [g.const(0), L, g.const(1)]), g.const([1])])  # (L, 1)
        return g.op("Add", [t, g.const(np.arange(W, dtype=np.int64)[None, :])])  # (L, W)


def mamba_mixer(g: Graph, h: str, w: dict[str, np.ndarray], p: str, m: MambaSpec, eps: float, conv_state: str, ssm_state: str,
                one_step: str, rows: str, fused: bool = False) -> tuple[str, str, str]:
    """Mamba-1 with explicit state. Returns (output (B,L,D), conv window out, SSM state out).

    ```
    h -> in_proj -> x, z (B,L,Di)
    x -> [conv_state | x] (B,W-1+L,Di) -> depthwise conv (valid) -> silu -> u (B,L,Di); last W-1 rows -> conv state out
    u -> x_proj -> dt (R), B, C (N) [-> RMS norms for Jamba] ; dt -> dt_proj + bias -> softplus (B,L,Di)
    dA = exp(dt*A), dBu = dt*B*u (B,L,Di,N) -> Scan over L: s = dA*s + dBu ; y = s @ C
    y + u*D -> * silu(z) -> out_proj
    ```
    The conv gathers each step's W window rows (``rows``, from conv_rows) and sums them against the
    taps: four ops for a decode step and a chunk alike. The scan sits in an ``If`` on ``one_step``
    (L == 1): a decode step takes three elementwise ops instead of an ONNX Scan. (The conv had its
    own ``If`` around a grouped Conv for chunks; the one form for both measured the same prefill and
    no slower decode on jamba-small, with 7 fewer ``If`` nodes.) The conv window is time-major like
    K/V, so a decode step needs no transposes.
    """
    Di, N, W, R = m.d_inner, m.d_state, m.d_conv, m.dt_rank
    x, z = g.op("Split", [linear(g, h, w, f"{p}.in_proj"), g.const([Di, Di])], n_out=2, axis=-1)
    if fused:
        return _fused_mixer(g, x, z, w, p, m, eps, conv_state, ssm_state)
    with g.scope("conv1d"):
        window = g.op("Concat", [conv_state, x], axis=1)  # (B, W-1+L, Di)
        conv_out_state = g.op("Slice", [window, g.const([-(W - 1)]), g.const([np.iinfo(np.int64).max]), g.const([1])])
        u = silu(g, _conv(g, window, w, p, Di, W, rows))  # (B, L, Di)
    dt, B, C = _x_proj(g, u, w, p, m, eps)
    with g.scope("dt_proj"):
        dt = g.op("MatMul", [dt, g.weight(f"{p}.dt_proj.weight", np.ascontiguousarray(w[f"{p}.dt_proj.weight"].T))])
        dt = g.op("Softplus", [g.op("Add", [dt, g.weight(f"{p}.dt_proj.bias", w[f"{p}.dt_proj.bias"])])])  # (B, L, Di)
    with g.scope("discretize"):
        # A column (.., Di, 1) times a (.., Di, N) block makes onnxruntime loop over Di rows of N
        # elements (~25 us per op at Di=1024, N=16); spread over N by a K=1 MatMul first (exact: one
        # product per element), each product is one flat elementwise pass. Same values, same order.
        A = g.op("Neg", [g.op("Exp", [g.weight(f"{p}.A_log", w[f"{p}.A_log"])])])  # (Di, N)
        ones = g.const(np.ones((1, N), np.float32))
        dt4 = g.op("Unsqueeze", [dt, g.const([-1])])  # (B, L, Di, 1)
        dA = g.op("Exp", [g.op("Mul", [g.op("MatMul", [dt4, ones], name="spread_dt"), A])])  # (B, L, Di, N)
        dB = g.op("MatMul", [dt4, g.op("Unsqueeze", [B, g.const([2])])], name="outer_dt_B")  # (B, L, Di, 1) @ (B, L, 1, N)
        dBu = g.op("Mul", [dB, g.op("MatMul", [g.op("Unsqueeze", [u, g.const([-1])]), ones], name="spread_u")])
        C = g.op("Unsqueeze", [C, g.const([-1])])  # (B, L, N, 1)
    y, ssm_out_state = _selective_scan(g, ssm_state, dA, dBu, C, one_step, (Di, N))
    with g.scope("gate"):
        y = g.op("Add", [y, g.op("Mul", [u, g.weight(f"{p}.D", w[f"{p}.D"])])])
        y = g.op("Mul", [y, silu(g, z)])
    return linear(g, y, w, f"{p}.out_proj"), conv_out_state, ssm_out_state


def _x_proj(g: Graph, u: str, w: dict[str, np.ndarray], p: str, m: MambaSpec, eps: float) -> tuple[str, str, str]:
    """u -> dt (before dt_proj), B, C, with Jamba's RMS norms where the model has them."""
    dt, B, C = g.op("Split", [linear(g, u, w, f"{p}.x_proj"), g.const([m.dt_rank, m.d_state, m.d_state])], n_out=3, axis=-1)
    if m.dt_bc_norm:
        dt = rms_norm(g, dt, w[f"{p}.dt_norm.weight"], f"{p}.dt_norm", eps)
        B = rms_norm(g, B, w[f"{p}.b_norm.weight"], f"{p}.b_norm", eps)
        C = rms_norm(g, C, w[f"{p}.c_norm.weight"], f"{p}.c_norm", eps)
    return dt, B, C


def _fused_mixer(g: Graph, x: str, z: str, w: dict[str, np.ndarray], p: str, m: MambaSpec, eps: float, conv_state: str, ssm_state: str) -> tuple[str, str, str]:
    """The same mixer with hmexport::CausalConv1d and hmexport::SelectiveScan (kernels/reference.py)."""
    Di, W = m.d_inner, m.d_conv
    conv_w = g.weight(f"{p}.conv1d.weight", np.ascontiguousarray(w[f"{p}.conv1d.weight"].reshape(Di, 1, W)))
    taps = g.op("Reshape", [conv_w, g.const([Di, W])])  # folded at load
    bias = g.weight(f"{p}.conv1d.bias", w[f"{p}.conv1d.bias"]) if f"{p}.conv1d.bias" in w else ""
    u, conv_out = g.op("CausalConv1d", [x, taps, bias, conv_state], n_out=2, name="conv1d", domain=CUSTOM_DOMAIN, activation=1)
    dt, B, C = _x_proj(g, u, w, p, m, eps)
    dt = g.op("MatMul", [dt, g.weight(f"{p}.dt_proj.weight", np.ascontiguousarray(w[f"{p}.dt_proj.weight"].T))], name="dt_proj")
    inputs = [u, dt, g.weight(f"{p}.A_log", w[f"{p}.A_log"]), B, C, g.weight(f"{p}.D", w[f"{p}.D"]), z,
              g.weight(f"{p}.dt_proj.bias", w[f"{p}.dt_proj.bias"]), ssm_state]
    y, ssm_out = g.op("SelectiveScan", inputs, n_out=2, name="selective_scan", domain=CUSTOM_DOMAIN, delta_softplus=1)
    return linear(g, y, w, f"{p}.out_proj"), conv_out, ssm_out


def _conv(g: Graph, window: str, w: dict[str, np.ndarray], p: str, Di: int, W: int, rows: str) -> str:
    """Depthwise causal conv over the time-major window (B, W-1+L, Di) -> (B, L, Di):
    y_t = sum_k taps_k * window_{t+k} (+ bias), with the (B, L, W, Di) windows gathered by ``rows``."""
    weight = g.weight(f"{p}.conv1d.weight", np.ascontiguousarray(w[f"{p}.conv1d.weight"].reshape(Di, 1, W)))
    taps = g.op("Transpose", [g.op("Reshape", [weight, g.const([Di, W])])], perm=[1, 0])  # (W, Di), folded at load
    windows = g.op("Gather", [window, rows], axis=1)  # (B, L, W, Di)
    y = g.op("ReduceSum", [g.op("Mul", [windows, taps]), g.const([2])], keepdims=0)  # (B, L, Di)
    if f"{p}.conv1d.bias" in w:
        y = g.op("Add", [y, g.weight(f"{p}.conv1d.bias", w[f"{p}.conv1d.bias"])])
    return y


def _selective_scan(g: Graph, state: str, dA: str, dBu: str, C: str, one_step: str, dims_di_n: tuple[int, int]) -> tuple[str, str]:
    """s = dA_t * s + dBu_t ; y_t = s @ C_t over time (axis 1). Returns (y (B,L,Di), final s).

    One step is three ops; a chunk is an ONNX Scan whose body is those same three ops.
    """
    step = g.subgraph("step")
    s1 = step.op("Add", [step.op("Mul", [dA, state]), dBu])  # (B, 1, Di, N): the state broadcasts over the time axis
    y1 = step.op("Reshape", [step.op("MatMul", [s1, C]), g.const([0, 1, -1])])  # (B, 1, Di, 1) -> (B, 1, Di)
    s1 = step.op("Reshape", [s1, g.const([0, dims_di_n[0], dims_di_n[1]])])
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["dA_t", "s_in"], ["decayed"]),
            helper.make_node("Add", ["decayed", "dBu_t"], ["s_out"]),
            helper.make_node("MatMul", ["s_out", "C_t"], ["y_t"]),  # (B, Di, N) @ (B, N, 1)
        ],
        "selective_scan_step",
        [helper.make_tensor_value_info(n, f, None) for n in ("s_in", "dA_t", "dBu_t", "C_t")],
        [helper.make_tensor_value_info("s_out", f, None), helper.make_tensor_value_info("y_t", f, None)],
    )
    chunk = g.subgraph("chunk")
    sL, yL = chunk.op("Scan", [state, dA, dBu, C], n_out=2, name="scan", body=body, num_scan_inputs=3, scan_input_axes=[1, 1, 1], scan_output_axes=[1])
    yL = chunk.op("Squeeze", [yL, g.const([-1])])  # (B, L, Di)
    y, s = g.if_op(one_step, step, [y1, s1], chunk, [yL, sL], name="selective_scan")
    return y, s
