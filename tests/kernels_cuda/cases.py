"""What the CUDA kernel tests share: tolerances, inputs, one comparison, the runs with state carried.

Used by test_kernels_gpu.py (CuPy on a GPU) and test_emulator.py (the same kernel sources run by
the CPU SIMT emulator, NumPy arrays); a ``Backend`` says how arrays go to and from the device.
Every input is quantised to the kernel's dtype first and the reference gets the same values in
fp32, so a difference is the kernel's fp32 arithmetic plus the final rounding of y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hmexport.kernels import reference
from hmexport.kernels_cuda.binding import CudaKernels, causal_conv1d_arrays, selective_scan_arrays


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float
    why: str


# Element passes when |got - want| <= atol + rtol * |want|.
TOL = {
    "fp32": Tol(1e-4, 1e-4, "fp32 reassociation of the sum over N (butterfly vs einsum) and the GPU's exp2f "
                            "(ex2.approx, 2 ulp) compounded over up to 4096 steps of a decaying state"),
    "fp16": Tol(1e-2, 1e-2, "both sides round the same fp32 value to fp16 (one ulp is 2^-10 ~ 1e-3 relative); "
                            "10x margin for fp32 differences that flip a rounding"),
    "bf16": Tol(5e-2, 5e-2, "one bf16 ulp is 2^-7 ~ 7.8e-3 relative; ~6x margin as for fp16"),
}  # fmt: skip
# The states are fp32 whatever the activation dtype, computed from identical inputs on both sides.
STATE_TOL = Tol(1e-4, 1e-4, "fp32 as TOL['fp32']; the conv state is a copy of inputs (exact)")


def assert_close(name: str, got, want, tol: Tol) -> None:
    """Fail listing how many elements are out, the worst (index, got, want) and the first."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, want {want.shape}"
    excess = np.abs(got - want) - tol.rtol * np.abs(want)
    bad = ~(excess <= tol.atol)  # NaN counts as bad
    if not bad.any():
        return
    worst = np.unravel_index(int(np.argmax(np.where(np.isnan(excess), np.inf, excess))), excess.shape)
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    raise AssertionError(
        f"{name}: {int(bad.sum())} of {bad.size} elements outside atol={tol.atol:g} rtol={tol.rtol:g}; "
        f"worst at {tuple(map(int, worst))}: got {got[worst]:.7g}, want {want[worst]:.7g}; "
        f"first at {tuple(map(int, first))}: got {got[first]:.7g}, want {want[first]:.7g}"
    )


# ----------------------------------------------------------------------------- dtypes


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), round to nearest even, as __float2bfloat16_rn (finite inputs)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(array in the kernel's dtype, the same values as fp32 for the reference)."""
    x = np.asarray(x, np.float32)
    if dtype == "fp32":
        return x, x
    if dtype == "fp16":
        h = x.astype(np.float16)
        return h, h.astype(np.float32)
    bits = bf16_bits(x)
    return bits, from_bf16_bits(bits)


def to_float(a: np.ndarray) -> np.ndarray:
    return from_bf16_bits(a) if a.dtype == np.uint16 else np.asarray(a, np.float32)


# ----------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    kernels: CudaKernels
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]


def numpy_backend(kernels: CudaKernels) -> Backend:
    return Backend(kernels, lambda a: np.array(a, copy=True), np.asarray)


def cupy_backend(kernels: CudaKernels) -> Backend:
    import cupy

    return Backend(kernels, cupy.asarray, cupy.asnumpy)


# ----------------------------------------------------------------------------- selective scan


@dataclass(frozen=True)
class ScanCase:
    Bt: int
    L: int
    Di: int
    N: int
    dtype: str = "fp32"
    D: bool = True
    z: bool = True
    delta_bias: bool = True
    state: bool = True
    softplus: bool = True

    def __str__(self) -> str:
        flags = "".join(k[0] if getattr(self, k) else "-" for k in ("D", "z", "delta_bias", "state", "softplus"))
        return f"scan[{self.dtype} Bt={self.Bt} L={self.L} Di={self.Di} N={self.N} {flags}]"


def scan_inputs(case: ScanCase, seed: int = 0) -> tuple[dict, dict]:
    """(kernel inputs, reference inputs): activations quantised to the case's dtype, weights fp32."""
    rng = np.random.default_rng(seed)
    Bt, L, Di, N = case.Bt, case.L, case.Di, case.N
    act = {
        "u": rng.standard_normal((Bt, L, Di)),
        # softplus(delta + bias) ~ 0.001..0.3 as Mamba's init; without softplus dt must stay positive
        "delta": rng.standard_normal((Bt, L, Di)) * 0.5 if case.softplus else rng.uniform(0.001, 0.1, (Bt, L, Di)),
        "B": rng.standard_normal((Bt, L, N)),
        "C": rng.standard_normal((Bt, L, N)),
        "z": rng.standard_normal((Bt, L, Di)) if case.z else None,
    }
    weights = {
        "A_log": np.log(rng.uniform(1.0, 16.0, (Di, N))),
        "D": rng.standard_normal(Di) if case.D else None,
        "delta_bias": (np.log(np.expm1(rng.uniform(0.001, 0.1, Di))) if case.softplus else rng.uniform(0, 0.01, Di))
        if case.delta_bias else None,
        "state": rng.standard_normal((Bt, Di, N)) * 0.5 if case.state else None,
    }  # fmt: skip
    kernel, ref = {}, {}
    for k, v in act.items():
        kernel[k], ref[k] = (None, None) if v is None else quantize(v, case.dtype)
    for k, v in weights.items():
        kernel[k] = ref[k] = None if v is None else np.asarray(v, np.float32)
    return kernel, ref


def scan_reference(ref: dict, softplus: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y, s = reference.selective_scan(ref["u"], ref["delta"], ref["A_log"], ref["B"], ref["C"], ref["D"], ref["z"],
                                    ref["delta_bias"], ref["state"], delta_softplus=softplus)  # fmt: skip
    return np.asarray(y, np.float32), s


def scan_run(backend: Backend, inputs: dict, chunks: list[int] | None = None, softplus: bool = True,
             in_place: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Run the kernel over consecutive time chunks (default: one), feeding state_out back in.

    ``in_place``: state_out is the state_in array (the aliasing the header allows)."""
    dev = {k: None if v is None else backend.to_device(v) for k, v in inputs.items()}
    L = inputs["u"].shape[1]
    chunks = chunks or [L]
    assert sum(chunks) == L, chunks
    state = dev["state"]
    ys, t0 = [], 0
    for n in chunks:
        part = {k: None if dev[k] is None else dev[k][:, t0:t0 + n] for k in ("u", "delta", "B", "C", "z")}
        y, state = selective_scan_arrays(backend.kernels, part["u"], part["delta"], dev["A_log"], part["B"], part["C"],
                                         dev["D"], part["z"], dev["delta_bias"], state, delta_softplus=softplus,
                                         state_out=state if in_place and state is not None else None)  # fmt: skip
        ys.append(to_float(backend.to_host(y)))
        t0 += n
    return np.concatenate(ys, axis=1), backend.to_host(state)


def check_scan(backend: Backend, case: ScanCase, chunks: list[int] | None = None, seed: int = 0) -> None:
    kernel_in, ref_in = scan_inputs(case, seed)
    want_y, want_s = scan_reference(ref_in, case.softplus)
    got_y, got_s = scan_run(backend, kernel_in, chunks, case.softplus)
    label = f"{case}" + (f" chunks={chunks if len(chunks) < 8 else f'{len(chunks)}x{chunks[0]}'}" if chunks else "")
    assert_close(f"{label} y", got_y, want_y, TOL[case.dtype])
    assert_close(f"{label} state", got_s, want_s, STATE_TOL)


def check_scan_chunking_exact(backend: Backend, case: ScanCase, chunks: list[int]) -> None:
    """Prefill chunks (each > 1 step) with the state carried give one run's bits (selective_scan.h)."""
    kernel_in, _ = scan_inputs(case)
    y1, s1 = scan_run(backend, kernel_in)
    y2, s2 = scan_run(backend, kernel_in, chunks)
    assert_exact(f"{case} chunks y", y2, y1)
    assert_exact(f"{case} chunks state", s2, s1)


# ----------------------------------------------------------------------------- causal conv1d


@dataclass(frozen=True)
class ConvCase:
    Bt: int
    L: int
    Di: int
    W: int = 4
    dtype: str = "fp32"
    bias: bool = True
    state: bool = True
    activation: bool = True

    def __str__(self) -> str:
        flags = "".join(k[0] if getattr(self, k) else "-" for k in ("bias", "state", "activation"))
        return f"conv[{self.dtype} Bt={self.Bt} L={self.L} Di={self.Di} W={self.W} {flags}]"


def conv_inputs(case: ConvCase, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x, x_ref = quantize(rng.standard_normal((case.Bt, case.L, case.Di)), case.dtype)
    # The state holds past inputs: values of the activation dtype, stored as fp32.
    state = to_float(quantize(rng.standard_normal((case.Bt, case.W - 1, case.Di)), case.dtype)[0]) if case.state else None
    weight = (rng.standard_normal((case.Di, case.W)) / np.sqrt(case.W)).astype(np.float32)
    bias = rng.standard_normal(case.Di).astype(np.float32) if case.bias else None
    common = {"weight": weight, "bias": bias, "state": state}
    return {"x": x, **common}, {"x": x_ref, **common}


def conv_reference(ref: dict, activation: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y, s = reference.causal_conv1d(ref["x"], ref["weight"], ref["bias"], ref["state"], activation=activation)
    return np.asarray(y, np.float32), s


def conv_run(backend: Backend, inputs: dict, chunks: list[int] | None = None, activation: bool = True,
             in_place: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    dev = {k: None if v is None else backend.to_device(v) for k, v in inputs.items()}
    L = inputs["x"].shape[1]
    chunks = chunks or [L]
    assert sum(chunks) == L, chunks
    state, ys, t0 = dev["state"], [], 0
    W = inputs["weight"].shape[1]
    for n in chunks:
        y, state = causal_conv1d_arrays(backend.kernels, dev["x"][:, t0:t0 + n], dev["weight"], dev["bias"], state,
                                        activation=activation,
                                        state_out=state if in_place and state is not None and W > 1 else None)  # fmt: skip
        ys.append(to_float(backend.to_host(y)))
        t0 += n
    return np.concatenate(ys, axis=1), backend.to_host(state)


def check_conv(backend: Backend, case: ConvCase, chunks: list[int] | None = None, seed: int = 0) -> None:
    kernel_in, ref_in = conv_inputs(case, seed)
    want_y, want_s = conv_reference(ref_in, case.activation)
    got_y, got_s = conv_run(backend, kernel_in, chunks, case.activation)
    label = f"{case}" + (f" chunks={chunks if len(chunks) < 8 else f'{len(chunks)}x{chunks[0]}'}" if chunks else "")
    assert_close(f"{label} y", got_y, want_y, TOL[case.dtype])
    assert_close(f"{label} state", got_s, want_s, STATE_TOL)


def check_conv_chunking_exact(backend: Backend, case: ConvCase, chunks: list[int]) -> None:
    kernel_in, _ = conv_inputs(case)
    y1, s1 = conv_run(backend, kernel_in)
    y2, s2 = conv_run(backend, kernel_in, chunks)
    assert_exact(f"{case} chunks y", y2, y1)
    assert_exact(f"{case} chunks state", s2, s1)


def assert_exact(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape}, want {want.shape}"
    differ = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    if differ.any():
        first = np.unravel_index(int(np.argmax(differ)), differ.shape)
        raise AssertionError(f"{name}: {int(differ.sum())} of {differ.size} elements differ; first at "
                             f"{tuple(map(int, first))}: got {got[first]!r}, want {want[first]!r}")  # fmt: skip


def split(L: int, size: int) -> list[int]:
    """[size, size, ..., rest]"""
    return [size] * (L // size) + ([L % size] if L % size else [])
