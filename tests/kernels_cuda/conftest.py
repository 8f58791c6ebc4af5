"""Fixtures for the CUDA kernel tests: the nvcc-built library, the CPU-emulator build, a GPU backend."""

from __future__ import annotations

import pytest

from hmexport.kernels_cuda import build as cuda_build
from hmexport.kernels_cuda.binding import CudaKernels, CudaUnavailableError

from . import cases, emulator


def _nvcc_or_skip() -> str:
    try:
        return cuda_build.find_nvcc()
    except cuda_build.KernelBuildError as e:
        pytest.skip(f"nvcc not available: {e}")


@pytest.fixture(scope="session")
def built_library(tmp_path_factory):
    """The real nvcc build (all architectures), once per session; skipped without nvcc."""
    _nvcc_or_skip()
    return cuda_build.build(tmp_path_factory.mktemp("cuda-kernels"))


@pytest.fixture(scope="session")
def emu_backend(tmp_path_factory) -> cases.Backend:
    if emulator.compiler() is None:
        pytest.skip("no C++ compiler (g++ or $CXX) for the CPU SIMT emulator")
    if emulator.cuda_include() is None:
        pytest.skip("no CUDA headers (cuda_fp16.h) for the CPU SIMT emulator")
    path = emulator.build_emulator(tmp_path_factory.mktemp("cuda-emulator"))
    return cases.numpy_backend(CudaKernels.load(path))


@pytest.fixture(scope="session")
def gpu_backend(built_library) -> cases.Backend:
    cupy = pytest.importorskip("cupy", reason="the GPU tests move arrays with CuPy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        pytest.skip(f"no CUDA device: {e}")
    try:
        kernels = CudaKernels.load(built_library)
    except CudaUnavailableError as e:
        pytest.skip(str(e))
    return cases.cupy_backend(kernels)
