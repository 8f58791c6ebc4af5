"""The CUDA kernels' own sources, compiled with g++ for the CPU SIMT emulator, against the numpy
references (not marked gpu: CI runs these). Small shapes, but every code path: each (states per
thread, threads per channel) configuration, odd channel counts, partial passes and warps, L == 1
(step kernels), every optional input, chunked runs, aliasing. What they cannot show is in
emu/simt_emulator.h; test_kernels_gpu.py repeats the sweep at full size on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from hmexport.kernels_cuda.binding import KernelError, causal_conv1d_arrays, selective_scan_arrays

from .cases import (STATE_TOL, TOL, ConvCase, ScanCase, assert_close, check_conv, check_conv_chunking_exact, check_scan,
                    check_scan_chunking_exact, conv_inputs, conv_reference, scan_inputs, scan_reference, split)  # fmt: skip

DTYPES = ("fp32", "fp16", "bf16")


@pytest.mark.parametrize("L", [1, 3, 7, 64, 130])
@pytest.mark.parametrize("Di", [1, 37, 130])
def test_scan_shapes(emu_backend, L, Di):
    check_scan(emu_backend, ScanCase(2, L, Di, 16))


# Every prefill configuration: N <= 4, 8, 16, 32 (one state per thread), <= 64 (two); and the
# step kernel's G = next power of two >= N, including N that are not powers of two.
@pytest.mark.parametrize("N", [1, 2, 4, 5, 8, 12, 16, 17, 32, 33, 64])
@pytest.mark.parametrize("L", [1, 70])
def test_scan_state_sizes(emu_backend, N, L):
    check_scan(emu_backend, ScanCase(1, L, 37, N))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("L", [1, 67])
def test_scan_dtypes(emu_backend, dtype, L):
    check_scan(emu_backend, ScanCase(2, L, 37, 16, dtype))


@pytest.mark.parametrize("flags", range(32))
@pytest.mark.parametrize("L", [1, 20])
def test_scan_optional_inputs(emu_backend, flags, L):
    D, z, bias, state, softplus = (bool(flags >> i & 1) for i in range(5))
    check_scan(emu_backend, ScanCase(1, L, 37, 16, D=D, z=z, delta_bias=bias, state=state, softplus=softplus))


@pytest.mark.parametrize("chunks", [[100, 200], split(300, 64), [1, 1, 1, 2, 1, 294], [299, 1]], ids=["100+200", "64s", "steps", "299+1"])
def test_scan_chunked_equals_one_run(emu_backend, chunks):
    check_scan(emu_backend, ScanCase(2, 300, 37, 16), chunks)


def test_scan_prefill_chunks_are_bit_exact(emu_backend):
    check_scan_chunking_exact(emu_backend, ScanCase(2, 300, 37, 16, "bf16"), [100, 137, 63])


def test_scan_output_may_alias_u(emu_backend):
    case = ScanCase(1, 70, 37, 16)
    kernel_in, _ = scan_inputs(case)
    want, _ = selective_scan_arrays(emu_backend.kernels, *(kernel_in[k] for k in ("u", "delta", "A_log", "B", "C", "D", "z", "delta_bias", "state")))
    u = kernel_in["u"].copy()
    got, _ = selective_scan_arrays(emu_backend.kernels, u, *(kernel_in[k] for k in ("delta", "A_log", "B", "C", "D", "z", "delta_bias", "state")), y=u)
    assert got is u and (got == want).all()


@pytest.mark.parametrize("L", [1, 2, 3, 7, 64, 130])
@pytest.mark.parametrize("Di", [1, 37, 130])
def test_conv_shapes(emu_backend, L, Di):
    check_conv(emu_backend, ConvCase(2, L, Di, 4))


@pytest.mark.parametrize("W", range(1, 9))
@pytest.mark.parametrize("L", [1, 2, 70])
def test_conv_widths(emu_backend, W, L):
    check_conv(emu_backend, ConvCase(1, L, 37, W))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", range(8))
@pytest.mark.parametrize("L", [1, 5])
def test_conv_dtypes_and_optional_inputs(emu_backend, dtype, flags, L):
    bias, state, activation = (bool(flags >> i & 1) for i in range(3))
    check_conv(emu_backend, ConvCase(2, L, 37, 4, dtype, bias=bias, state=state, activation=activation))


@pytest.mark.parametrize("chunks", [[100, 200], split(300, 64), [1, 2, 1, 296], [2, 1, 297], [299, 1]], ids=["100+200", "64s", "steps", "short", "299+1"])
def test_conv_chunked_equals_one_run(emu_backend, chunks):
    check_conv(emu_backend, ConvCase(2, 300, 37, 4), chunks)


def test_conv_chunks_are_bit_exact(emu_backend):
    check_conv_chunking_exact(emu_backend, ConvCase(2, 300, 37, 4, "fp16"), [2, 100, 3, 195])


def test_array_wrapper_names_the_bad_input(emu_backend):
    kernel_in, _ = scan_inputs(ScanCase(1, 4, 8, 4))
    args = [kernel_in[k] for k in ("u", "delta", "A_log", "B", "C")]
    with pytest.raises(KernelError, match=r"B: expected shape \(1, 4, 4\), got \(1, 3, 4\)"):
        selective_scan_arrays(emu_backend.kernels, *args[:3], args[3][:, :3], args[4])
    with pytest.raises(KernelError, match="delta: expected fp32 like the other activations, got float16"):
        selective_scan_arrays(emu_backend.kernels, args[0], args[1].astype("float16"), *args[2:])


def test_scan_strided_views(emu_backend):
    """u/delta/z/B/C as column slices of wider tensors (time stride > width), the state a
    non-contiguous slice of a (Bt, 2 Di, N) cache updated in place, y written into a wider buffer."""
    case = ScanCase(2, 70, 37, 16)
    kernel_in, ref_in = scan_inputs(case)
    wide = lambda a: np.concatenate([a, np.zeros_like(a)], axis=-1)[..., : a.shape[-1]]  # noqa: E731
    cache = np.zeros((case.Bt, 2 * case.Di, case.N), np.float32)
    state = cache[:, 1::2]
    state[...] = kernel_in["state"]
    y_buf = np.full((case.Bt, case.L, 2 * case.Di), np.nan, np.float32)
    y, s = selective_scan_arrays(emu_backend.kernels, wide(kernel_in["u"]), wide(kernel_in["delta"]), kernel_in["A_log"],
                                 wide(kernel_in["B"]), wide(kernel_in["C"]), kernel_in["D"], wide(kernel_in["z"]),
                                 kernel_in["delta_bias"], state, state_out=state, y=y_buf[..., 5:5 + case.Di])  # fmt: skip
    want_y, want_s = scan_reference(ref_in)
    assert s is state and np.isnan(y_buf[..., :5]).all() and np.isnan(y_buf[..., 5 + case.Di:]).all()
    assert_close("strided scan y", y, want_y, TOL["fp32"])
    assert_close("strided scan state", cache[:, 1::2], want_s, STATE_TOL)
    assert (cache[:, 0::2] == 0).all()


def test_conv_strided_views(emu_backend):
    case = ConvCase(2, 70, 37, 4)
    kernel_in, ref_in = conv_inputs(case)
    x = np.concatenate([kernel_in["x"], kernel_in["x"]], axis=-1)[..., : case.Di]
    cache = np.zeros((case.Bt, 2 * (case.W - 1), case.Di), np.float32)
    state = cache[:, ::2]
    state[...] = kernel_in["state"]
    y, s = causal_conv1d_arrays(emu_backend.kernels, x, kernel_in["weight"], kernel_in["bias"], state, state_out=state)
    want_y, want_s = conv_reference(ref_in)
    assert_close("strided conv y", y, want_y, TOL["fp32"])
    assert_close("strided conv state", cache[:, ::2], want_s, STATE_TOL)
    assert (cache[:, 1::2] == 0).all()
