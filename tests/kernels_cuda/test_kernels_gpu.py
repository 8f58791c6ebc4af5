"""The CUDA kernels on a GPU against hmexport.kernels.reference, at full size.

Marked ``gpu``; skipped without CuPy, a GPU or nvcc (see conftest.gpu_backend). Tolerances are
cases.TOL / cases.STATE_TOL, with where they come from. The CPU-emulator twin of this sweep is
test_emulator.py (small shapes, runs on CI)."""

from __future__ import annotations

import pytest

from .cases import (ConvCase, ScanCase, check_conv, check_conv_chunking_exact, check_scan, check_scan_chunking_exact,
                    split)  # fmt: skip

pytestmark = pytest.mark.gpu

DTYPES = ("fp32", "fp16", "bf16")
W = 4
LENGTHS = (1, W - 1, 7, 64, 1000, 4096)
CHANNELS = (1, 37, 512, 1024 + 7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [4, 16])
@pytest.mark.parametrize("Di", CHANNELS)
@pytest.mark.parametrize("L", LENGTHS)
def test_scan_sweep(gpu_backend, L, Di, N, dtype):
    check_scan(gpu_backend, ScanCase(2, L, Di, N, dtype))


@pytest.mark.parametrize("N", [1, 5, 8, 12, 17, 32, 33, 64])
@pytest.mark.parametrize("L", [1, 1000])
def test_scan_other_state_sizes(gpu_backend, N, L):
    check_scan(gpu_backend, ScanCase(1, L, 1031, N))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", range(32))
@pytest.mark.parametrize("L", [1, 1000])
def test_scan_optional_inputs(gpu_backend, flags, L, dtype):
    D, z, bias, state, softplus = (bool(flags >> i & 1) for i in range(5))
    check_scan(gpu_backend, ScanCase(2, L, 1031, 16, dtype, D=D, z=z, delta_bias=bias, state=state, softplus=softplus))


CHUNKINGS = {"1000+3096": [1000, 3096], "64s": split(4096, 64), "steps+prefill": [1] * 8 + [4088], "prefill+step": [4095, 1]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_scan_chunked_matches_reference(gpu_backend, chunks, dtype):
    check_scan(gpu_backend, ScanCase(2, 4096, 1031, 16, dtype), chunks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunks", [[1000, 3096], split(4096, 64), [1000, 37, 3059]], ids=["1000+3096", "64s", "odd"])
def test_scan_prefill_chunks_are_bit_exact(gpu_backend, chunks, dtype):
    check_scan_chunking_exact(gpu_backend, ScanCase(2, 4096, 1031, 16, dtype), chunks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Di", CHANNELS)
@pytest.mark.parametrize("L", LENGTHS)
def test_conv_sweep(gpu_backend, L, Di, dtype):
    check_conv(gpu_backend, ConvCase(2, L, Di, W, dtype))


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("L", [1, 2, 1000])
def test_conv_widths(gpu_backend, width, L):
    check_conv(gpu_backend, ConvCase(2, L, 1031, width))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flags", range(8))
@pytest.mark.parametrize("L", [1, 1000])
def test_conv_optional_inputs(gpu_backend, flags, L, dtype):
    bias, state, activation = (bool(flags >> i & 1) for i in range(3))
    check_conv(gpu_backend, ConvCase(2, L, 1031, W, dtype, bias=bias, state=state, activation=activation))


CONV_CHUNKINGS = {**CHUNKINGS, "shorter-than-W": [2, 1, 4093]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunks", CONV_CHUNKINGS.values(), ids=CONV_CHUNKINGS.keys())
def test_conv_chunked_matches_reference(gpu_backend, chunks, dtype):
    check_conv(gpu_backend, ConvCase(2, 4096, 1031, W, dtype), chunks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_prefill_chunks_are_bit_exact(gpu_backend, dtype):
    check_conv_chunking_exact(gpu_backend, ConvCase(2, 4096, 1031, W, dtype), [1000, 2, 3094])
