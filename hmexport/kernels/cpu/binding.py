"""Direct ctypes calls into the CPU ops (tests and benchmarks; the runtime goes through onnxruntime).

Same signatures as hmexport.kernels.reference: the fn/ref pair the tests sweep.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from .build import build

_P = ctypes.c_void_p
_I = ctypes.c_int64


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    lib.hmx_cpu_selective_scan.argtypes = [_P] * 11 + [_I] * 4 + [ctypes.c_int]
    lib.hmx_cpu_causal_conv1d.argtypes = [_P] * 6 + [_I] * 4 + [ctypes.c_int]
    return lib


def _ptr(a: np.ndarray | None) -> int | None:
    if a is None:
        return None
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"expected a contiguous float32 array, got {a.dtype} (contiguous: {a.flags.c_contiguous})")
    return a.ctypes.data


def selective_scan(u, delta, A_log, B, C, D=None, z=None, delta_bias=None, state=None, delta_softplus=True):
    Bt, L, Di = u.shape
    N = A_log.shape[1]
    y = np.empty((Bt, L, Di), np.float32)
    state_out = np.empty((Bt, Di, N), np.float32)
    code = _lib().hmx_cpu_selective_scan(_ptr(u), _ptr(delta), _ptr(A_log), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(delta_bias),
                                         _ptr(state), _ptr(y), _ptr(state_out), Bt, L, Di, N, int(delta_softplus))
    if code:
        raise ValueError(f"hmx_cpu_selective_scan: invalid dimensions (Bt={Bt}, L={L}, Di={Di}, N={N}; N must be 1..64)")
    return y, state_out


def causal_conv1d(x, weight, bias=None, state=None, activation=True):
    Bt, L, Di = x.shape
    W = weight.shape[1]
    y = np.empty((Bt, L, Di), np.float32)
    state_out = np.empty((Bt, W - 1, Di), np.float32)
    code = _lib().hmx_cpu_causal_conv1d(_ptr(x), _ptr(weight), _ptr(bias), _ptr(state), _ptr(y), _ptr(state_out), Bt, L, Di, W, int(activation))
    if code:
        raise ValueError(f"hmx_cpu_causal_conv1d: invalid dimensions (Bt={Bt}, L={L}, Di={Di}, W={W}; W must be 1..32)")
    return y, state_out
