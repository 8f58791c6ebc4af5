"""Numpy references for hmexport's two fused ops. Every fast implementation is tested against these.

Layouts are time-major, like the decoder's K/V: Bt batch, L length, Di channels, N state size,
W conv width. Computation is float32 whatever the input dtype; the SSM state is always float32.

``selective_scan``  (ONNX: ``hmexport::SelectiveScan``, Mamba-1 semantics as transformers' mixer)
    u (Bt, L, Di), delta (Bt, L, Di), A_log (Di, N), B (Bt, L, N), C (Bt, L, N),
    D (Di,) | None, z (Bt, L, Di) | None, delta_bias (Di,) | None, state (Bt, Di, N)
    -> y (Bt, L, Di), state_out (Bt, Di, N)
    per step t:  dt = softplus(delta_t + delta_bias)          (softplus(x) = x for x > 20, as torch)
                 s  = exp(dt * A) * s + dt * B_t * u_t        (A = -exp(A_log); per channel and state)
                 y_t = sum_n s * C_t  (+ D * u_t)  (* silu(z_t))

``causal_conv1d``  (ONNX: ``hmexport::CausalConv1d``)
    x (Bt, L, Di), weight (Di, W), bias (Di,) | None, state (Bt, W-1, Di)  [the last W-1 inputs]
    -> y (Bt, L, Di) = silu(bias + sum_k weight[:, k] * window[t + k]),  window = [state | x] over time
       state_out (Bt, W-1, Di) = the last W-1 rows of the window

Both are exact for chunked use: running [0, L1) then [L1, L) with the state carried equals one run.
"""

from __future__ import annotations

import numpy as np


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def selective_scan(u, delta, A_log, B, C, D=None, z=None, delta_bias=None, state=None, delta_softplus=True):
    u32, dt = u.astype(np.float32), delta.astype(np.float32)
    Bt, L, Di = u32.shape
    N = A_log.shape[1]
    if delta_bias is not None:
        dt = dt + delta_bias.astype(np.float32)
    if delta_softplus:
        dt = softplus(dt)
    A = -np.exp(A_log.astype(np.float32))  # (Di, N)
    s = np.zeros((Bt, Di, N), np.float32) if state is None else state.astype(np.float32).copy()
    y = np.empty((Bt, L, Di), np.float32)
    for t in range(L):
        d = dt[:, t, :, None]  # (Bt, Di, 1)
        s = np.exp(d * A) * s + d * B[:, t, None, :].astype(np.float32) * u32[:, t, :, None]
        y[:, t] = np.einsum("bdn,bn->bd", s, C[:, t].astype(np.float32))
    if D is not None:
        y = y + u32 * D.astype(np.float32)
    if z is not None:
        y = y * silu(z.astype(np.float32))
    return y.astype(u.dtype), s


def causal_conv1d(x, weight, bias=None, state=None, activation=True):
    Bt, L, Di = x.shape
    W = weight.shape[1]
    if state is None:
        state = np.zeros((Bt, W - 1, Di), np.float32)
    window = np.concatenate([state.astype(np.float32), x.astype(np.float32)], axis=1)  # (Bt, W-1+L, Di)
    y = np.zeros((Bt, L, Di), np.float32)
    for k in range(W):
        y += window[:, k:k + L] * weight[:, k].astype(np.float32)
    if bias is not None:
        y += bias.astype(np.float32)
    if activation:
        y = silu(y)
    return y.astype(x.dtype), window[:, L:].copy() if W > 1 else np.zeros((Bt, 0, Di), np.float32)
