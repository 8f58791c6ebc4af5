"""ctypes binding of hmexport's CUDA kernels (``libhmexport_cuda-*.so``, see build.py). No torch.

Two levels:

- ``CudaKernels.selective_scan(...)`` / ``causal_conv1d(...)``: raw device pointers (ints), shapes
  and strides, for callers that own their memory (an onnxruntime op, cuda-python, a test).
- ``selective_scan_arrays(...)`` / ``causal_conv1d_arrays(...)``: arrays in, arrays out. CuPy
  arrays on the GPU; NumPy arrays only with the CPU emulator library the tests build. CuPy is
  imported when first needed, never at import time.

Shapes are time-major (see hmexport/kernels/reference.py and the headers' first comments):
u, delta, z, y, x (Bt, L, Di); B, C (Bt, L, N); A_log (Di, N); scan state (Bt, Di, N); conv state
(Bt, W-1, Di); weight (Di, W). Activations are fp32, fp16 or bf16 (one dtype per call; NumPy and
CuPy have no bfloat16, so bf16 travels as uint16 arrays holding the bits, or as ml_dtypes'
bfloat16); weights and states are fp32.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HmexportError

FP32, FP16, BF16 = 0, 1, 2
DTYPES = {"fp32": FP32, "fp16": FP16, "bf16": BF16}
ABI_VERSION = 1

_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_i32 = ctypes.c_int32


class CudaUnavailableError(HmexportError):
    """The kernel library cannot be loaded, or the CUDA driver or a GPU is missing."""


class KernelError(HmexportError):
    """A kernel call was rejected (bad shapes, dtype, pointers) or failed on the GPU."""


class ScanParams(ctypes.Structure):
    """Mirror of HmxScanParams (selective_scan/selective_scan.h); checked against the library's sizeof."""

    _fields_ = [
        ("u", _p), ("delta", _p), ("A_log", _p), ("B", _p), ("C", _p), ("D", _p), ("z", _p),
        ("delta_bias", _p), ("state_in", _p), ("state_out", _p), ("y", _p),
        ("u_batch_stride", _i64), ("u_time_stride", _i64),
        ("delta_batch_stride", _i64), ("delta_time_stride", _i64),
        ("z_batch_stride", _i64), ("z_time_stride", _i64),
        ("y_batch_stride", _i64), ("y_time_stride", _i64),
        ("B_batch_stride", _i64), ("B_time_stride", _i64),
        ("C_batch_stride", _i64), ("C_time_stride", _i64),
        ("state_batch_stride", _i64), ("state_dim_stride", _i64),
        ("Bt", _i32), ("L", _i32), ("Di", _i32), ("N", _i32),
        ("delta_softplus", _i32), ("reserved", _i32),
    ]  # fmt: skip


class ConvParams(ctypes.Structure):
    """Mirror of HmxConvParams (causal_conv1d/causal_conv1d.h)."""

    _fields_ = [
        ("x", _p), ("weight", _p), ("bias", _p), ("state_in", _p), ("state_out", _p), ("y", _p),
        ("x_batch_stride", _i64), ("x_time_stride", _i64),
        ("y_batch_stride", _i64), ("y_time_stride", _i64),
        ("state_batch_stride", _i64), ("state_time_stride", _i64),
        ("Bt", _i32), ("L", _i32), ("Di", _i32), ("W", _i32),
        ("activation", _i32), ("reserved", _i32),
    ]  # fmt: skip


@dataclass(frozen=True)
class CudaKernels:
    """The loaded library. ``CudaKernels.load()`` builds it first when it is not in the cache."""

    lib: ctypes.CDLL
    path: Path

    @classmethod
    def load(cls, path: Path | str | None = None, check_device: bool = True) -> CudaKernels:
        if path is None:
            from .build import build

            path = build()
        path = Path(path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise CudaUnavailableError(f"{path}: cannot load the CUDA kernel library: {e}") from e
        for name, argtypes in (
            ("hmx_abi_version", []), ("hmx_scan_params_size", []), ("hmx_conv_params_size", []),
            ("hmx_selective_scan", [ctypes.POINTER(ScanParams), ctypes.c_int, _p]),
            ("hmx_causal_conv1d", [ctypes.POINTER(ConvParams), ctypes.c_int, _p]),
            ("hmx_device_count", [ctypes.POINTER(ctypes.c_int)]),
        ):  # fmt: skip
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        lib.hmx_last_error.argtypes, lib.hmx_last_error.restype = [], ctypes.c_char_p
        found = (lib.hmx_abi_version(), lib.hmx_scan_params_size(), lib.hmx_conv_params_size())
        want = (ABI_VERSION, ctypes.sizeof(ScanParams), ctypes.sizeof(ConvParams))
        if found != want:
            raise CudaUnavailableError(f"{path}: ABI (version, sizeof scan params, sizeof conv params) is {found}, "
                                       f"this binding expects {want}: rebuild with hmexport.kernels_cuda.build.build(force=True)")  # fmt: skip
        kernels = cls(lib, path)
        if check_device:
            kernels.device_count()
        return kernels

    def last_error(self) -> str:
        return (self.lib.hmx_last_error() or b"").decode(errors="replace")

    def device_count(self) -> int:
        """Number of GPUs; raises CudaUnavailableError when the driver or every GPU is missing."""
        n = ctypes.c_int(0)
        rc = self.lib.hmx_device_count(ctypes.byref(n))
        if rc != 0 or n.value < 1:
            why = self.last_error() if rc != 0 else "no CUDA device"
            raise CudaUnavailableError(f"{self.path.name}: {why}: the CUDA kernels need an NVIDIA GPU and its driver "
                                       "(libcuda.so.1)")  # fmt: skip
        return n.value

    def selective_scan(self, *, stream: int = 0, dtype: str | int, **kwargs) -> None:
        """Raw pointers (0 = absent), shapes and strides: see ``scan_params``. Asynchronous on ``stream``."""
        self.run_scan(scan_params(**kwargs), dtype, stream)

    def causal_conv1d(self, *, stream: int = 0, dtype: str | int, **kwargs) -> None:
        """Raw pointers (0 = absent), shapes and strides: see ``conv_params``. Asynchronous on ``stream``."""
        self.run_conv(conv_params(**kwargs), dtype, stream)

    def run_scan(self, params: ScanParams, dtype: str | int, stream: int = 0) -> None:
        """One call with a prepared struct (the cheapest way to launch repeatedly, e.g. in a benchmark)."""
        self._check(self.lib.hmx_selective_scan(ctypes.byref(params), _dtype_code(dtype), _p(stream or None)))

    def run_conv(self, params: ConvParams, dtype: str | int, stream: int = 0) -> None:
        self._check(self.lib.hmx_causal_conv1d(ctypes.byref(params), _dtype_code(dtype), _p(stream or None)))

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise KernelError(self.last_error() or f"CUDA kernel call failed with cudaError {rc}")


def scan_params(*, u: int, delta: int, A_log: int, B: int, C: int, y: int, Bt: int, L: int, Di: int, N: int,
                D: int = 0, z: int = 0, delta_bias: int = 0, state_in: int = 0, state_out: int = 0,
                delta_softplus: bool = True, strides: dict[str, tuple[int, int]] | None = None) -> ScanParams:  # fmt: skip
    """HmxScanParams from device pointers (0 = absent). ``strides`` maps u/delta/z/y/B/C/state to
    (batch, time) -- for state (batch, channel) -- strides in elements; missing ones are contiguous."""
    st = {"u": (L * Di, Di), "delta": (L * Di, Di), "z": (L * Di, Di), "y": (L * Di, Di),
          "B": (L * N, N), "C": (L * N, N), "state": (Di * N, N), **(strides or {})}  # fmt: skip
    p = ScanParams(u=u, delta=delta, A_log=A_log, B=B, C=C, D=D or None, z=z or None, delta_bias=delta_bias or None,
                   state_in=state_in or None, state_out=state_out or None, y=y, Bt=Bt, L=L, Di=Di, N=N,
                   delta_softplus=int(bool(delta_softplus)))  # fmt: skip
    for name in ("u", "delta", "z", "y", "B", "C"):
        setattr(p, f"{name}_batch_stride", st[name][0])
        setattr(p, f"{name}_time_stride", st[name][1])
    p.state_batch_stride, p.state_dim_stride = st["state"]
    return p


def conv_params(*, x: int, weight: int, y: int, Bt: int, L: int, Di: int, W: int, bias: int = 0, state_in: int = 0,
                state_out: int = 0, activation: bool = True, strides: dict[str, tuple[int, int]] | None = None) -> ConvParams:  # fmt: skip
    """HmxConvParams from device pointers (0 = absent); ``strides`` maps x/y/state to (batch, time) in elements."""
    st = {"x": (L * Di, Di), "y": (L * Di, Di), "state": ((W - 1) * Di, Di), **(strides or {})}
    p = ConvParams(x=x, weight=weight, bias=bias or None, state_in=state_in or None, state_out=state_out or None, y=y,
                   Bt=Bt, L=L, Di=Di, W=W, activation=int(bool(activation)))  # fmt: skip
    p.x_batch_stride, p.x_time_stride = st["x"]
    p.y_batch_stride, p.y_time_stride = st["y"]
    p.state_batch_stride, p.state_time_stride = st["state"]
    return p


def _dtype_code(dtype: str | int) -> int:
    if isinstance(dtype, int) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise KernelError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


# ----------------------------------------------------------------------------- arrays in, arrays out


def array_dtype(a) -> str:
    """'fp32' / 'fp16' / 'bf16' of an activation array (uint16 and ml_dtypes' bfloat16 hold bf16 bits)."""
    dt = np.dtype(a.dtype)
    if dt == np.float32:
        return "fp32"
    if dt == np.float16:
        return "fp16"
    if dt == np.uint16 or dt.name == "bfloat16":
        return "bf16"
    raise KernelError(f"array dtype {dt}: expected float32, float16, or bf16 bits as uint16")


def selective_scan_arrays(kernels: CudaKernels, u, delta, A_log, B, C, D=None, z=None, delta_bias=None, state=None, *,
                          delta_softplus: bool = True, y=None, state_out=None, stream: int | None = None):  # fmt: skip
    """``reference.selective_scan`` on device arrays: returns ``(y (Bt, L, Di), state_out (Bt, Di, N) fp32)``.

    ``y`` / ``state_out`` may be given (``state_out`` may be ``state``: updated in place)."""
    xp = _array_module(u)
    dtype = array_dtype(u)
    Bt, L, Di = _shape("u", u, 3)
    N = _shape("A_log", A_log, 2)[1]
    u, delta, B, C = (_last_contiguous(xp, a) for a in (u, delta, B, C))
    z = None if z is None else _last_contiguous(xp, z)
    _expect("delta", delta, (Bt, L, Di), dtype)
    _expect("B", B, (Bt, L, N), dtype)
    _expect("C", C, (Bt, L, N), dtype)
    if z is not None:
        _expect("z", z, (Bt, L, Di), dtype)
    A_log = _fp32_contiguous(xp, A_log, "A_log", (Di, N))
    D = None if D is None else _fp32_contiguous(xp, D, "D", (Di,))
    delta_bias = None if delta_bias is None else _fp32_contiguous(xp, delta_bias, "delta_bias", (Di,))
    y = xp.empty((Bt, L, Di), u.dtype) if y is None else y
    state, state_out = _state_pair(xp, state, state_out, (Bt, Di, N))
    _expect("y", y, (Bt, L, Di), dtype, last_contiguous=True)
    strides = {name: _strides(a)[:2] for name, a in (("u", u), ("delta", delta), ("y", y), ("B", B), ("C", C), ("z", z)) if a is not None}
    strides["state"] = _strides(state_out)[:2]
    with _device_of(u):
        kernels.selective_scan(u=_ptr(u), delta=_ptr(delta), A_log=_ptr(A_log), B=_ptr(B), C=_ptr(C), y=_ptr(y),
                               D=_ptr(D), z=_ptr(z), delta_bias=_ptr(delta_bias), state_in=_ptr(state),
                               state_out=_ptr(state_out), Bt=Bt, L=L, Di=Di, N=N, dtype=dtype,
                               delta_softplus=delta_softplus, strides=strides, stream=_stream(xp, stream))  # fmt: skip
    return y, state_out


def causal_conv1d_arrays(kernels: CudaKernels, x, weight, bias=None, state=None, *, activation: bool = True, y=None,
                         state_out=None, stream: int | None = None):  # fmt: skip
    """``reference.causal_conv1d`` on device arrays: returns ``(y (Bt, L, Di), state_out (Bt, W-1, Di) fp32)``."""
    xp = _array_module(x)
    dtype = array_dtype(x)
    Bt, L, Di = _shape("x", x, 3)
    W = _shape("weight", weight, 2)[1]
    x = _last_contiguous(xp, x)
    weight = _fp32_contiguous(xp, weight, "weight", (Di, W))
    bias = None if bias is None else _fp32_contiguous(xp, bias, "bias", (Di,))
    y = xp.empty((Bt, L, Di), x.dtype) if y is None else y
    state, state_out = _state_pair(xp, state, state_out, (Bt, W - 1, Di))
    _expect("y", y, (Bt, L, Di), dtype, last_contiguous=True)
    strides = {"x": _strides(x)[:2], "y": _strides(y)[:2], "state": _strides(state_out)[:2]}
    with _device_of(x):
        kernels.causal_conv1d(x=_ptr(x), weight=_ptr(weight), bias=_ptr(bias), state_in=_ptr(state) if W > 1 else 0,
                              state_out=_ptr(state_out) if W > 1 else 0, y=_ptr(y), Bt=Bt, L=L, Di=Di, W=W,
                              dtype=dtype, activation=activation, strides=strides, stream=_stream(xp, stream))  # fmt: skip
    return y, state_out


def _state_pair(xp, state, state_out, shape: tuple[int, ...]):
    """(state_in, state_out) with one set of strides, as the kernels take: a new state_out is
    contiguous, and a state with other strides is then copied contiguous too."""
    if state is not None:
        _expect("state", state, shape, "fp32", last_contiguous=True)
    if state_out is None:
        state_out = xp.empty(shape, np.float32)
        if state is not None and state.size and _strides(state) != _strides(state_out):
            state = xp.ascontiguousarray(state)
    _expect("state_out", state_out, shape, "fp32", last_contiguous=True)
    if state is not None and state.size and _strides(state) != _strides(state_out):
        raise KernelError(f"state and state_out strides differ ({_strides(state)} vs {_strides(state_out)}): the kernels take one set")
    return state, state_out


def _array_module(a):
    if isinstance(a, np.ndarray):
        return np  # host memory: only the CPU emulator library can use it
    import cupy

    return cupy


def _ptr(a) -> int:
    if a is None:
        return 0
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return int(iface["data"][0])


def _strides(a) -> tuple[int, ...]:
    return tuple(s // a.itemsize for s in a.strides)


def _shape(name: str, a, ndim: int) -> tuple[int, ...]:
    if a.ndim != ndim:
        raise KernelError(f"{name}: expected {ndim} dimensions, got shape {tuple(a.shape)}")
    return tuple(int(s) for s in a.shape)


def _expect(name: str, a, shape: tuple[int, ...], dtype: str, last_contiguous: bool = False) -> None:
    if tuple(a.shape) != shape:
        raise KernelError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
    if array_dtype(a) != dtype:
        raise KernelError(f"{name}: expected {dtype} like the other activations, got {a.dtype}")
    if last_contiguous and a.size and a.shape[-1] > 1 and _strides(a)[-1] != 1:
        raise KernelError(f"{name}: the last axis must be contiguous (element strides {_strides(a)})")


def _last_contiguous(xp, a):
    return a if a.shape[-1] <= 1 or _strides(a)[-1] == 1 else xp.ascontiguousarray(a)


def _fp32_contiguous(xp, a, name: str, shape: tuple[int, ...]):
    if tuple(a.shape) != shape:
        raise KernelError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
    return xp.ascontiguousarray(a, dtype=np.float32)


def _device_of(a):
    import contextlib

    return a.device if hasattr(a, "device") and hasattr(a.device, "__enter__") else contextlib.nullcontext()


def _stream(xp, stream: int | None) -> int:
    if stream is not None:
        return int(stream)
    return 0 if xp is np else int(xp.cuda.get_current_stream().ptr)
