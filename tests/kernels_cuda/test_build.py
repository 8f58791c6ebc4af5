"""The nvcc build: runs wherever nvcc is (CI has it, without a GPU); checks the C ABI exports, the
cache, clear build errors, and the argument checks of the C API (which run before any CUDA call)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from hmexport.errors import HmexportError
from hmexport.kernels_cuda import build as cuda_build
from hmexport.kernels_cuda.binding import CudaKernels, CudaUnavailableError, KernelError, ScanParams


def test_library_exports_the_c_abi(built_library):
    assert built_library.is_file() and built_library.stat().st_size > 0
    assert built_library.name.startswith("libhmexport_cuda-") and built_library.suffix == ".so"
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True, text=True, check=True).stdout
    functions = {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}
    assert set(cuda_build.SYMBOLS) <= functions, f"missing exports: {set(cuda_build.SYMBOLS) - functions}"
    assert all(f.startswith("hmx_") for f in functions), f"unexpected exports: {sorted(f for f in functions if not f.startswith('hmx_'))}"


def test_second_build_comes_from_the_cache(built_library, monkeypatch):
    def no_nvcc(*args, **kwargs):
        raise AssertionError("nvcc ran although the library is cached")

    monkeypatch.setattr(cuda_build.subprocess, "run", no_nvcc)
    assert cuda_build.build(built_library.parent) == built_library


def test_library_name_follows_the_sources_and_arch(tmp_path):
    assert cuda_build.library_path(tmp_path, ("sm_80",)) != cuda_build.library_path(tmp_path, ("sm_80", "sm_90"))
    with pytest.raises(cuda_build.KernelBuildError, match="expected a name like 'sm_90'"):
        cuda_build.library_path(tmp_path, ("compute_80",))


def test_bogus_nvcc_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HMEXPORT_NVCC", "/nonexistent/cuda/bin/nvcc")
    with pytest.raises(cuda_build.KernelBuildError) as err:
        cuda_build.build(tmp_path)
    assert isinstance(err.value, HmexportError)
    message = str(err.value)
    assert "/nonexistent/cuda/bin/nvcc" in message and "$HMEXPORT_NVCC" in message


def test_missing_nvcc_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("HMEXPORT_NVCC", raising=False)
    monkeypatch.setattr(cuda_build.shutil, "which", lambda name: None)
    with pytest.raises(cuda_build.KernelBuildError, match="install the CUDA toolkit"):
        cuda_build.build(tmp_path)


def test_failing_nvcc_shows_its_stderr(tmp_path, monkeypatch):
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'selective_scan_prefill.cu(42): error: fake failure' >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("HMEXPORT_NVCC", str(fake))
    with pytest.raises(cuda_build.KernelBuildError) as err:
        cuda_build.build(tmp_path / "out")
    message = str(err.value)
    assert "fake failure" in message and "selective_scan_prefill.cu" in message and "nvcc failed on" in message
    assert not list((tmp_path / "out").glob("*.so")), "a failed build must not leave a library behind"


def _device_count_ok(lib) -> bool:
    n = ctypes.c_int(0)
    return lib.hmx_device_count(ctypes.byref(n)) == 0 and n.value > 0


def test_loading_without_a_gpu_is_a_clear_error(built_library):
    kernels = CudaKernels.load(built_library, check_device=False)  # static cudart: loads without libcuda
    if _device_count_ok(kernels.lib):
        pytest.skip("this machine has a GPU")
    with pytest.raises(CudaUnavailableError, match="cudaGetDeviceCount: .*need an NVIDIA GPU"):
        CudaKernels.load(built_library)


def test_bad_arguments_are_rejected_with_a_message(built_library):
    kernels = CudaKernels.load(built_library, check_device=False)
    fake = 0x1000  # never dereferenced: the checks run before any launch
    scan = dict(u=fake, delta=fake, A_log=fake, B=fake, C=fake, y=fake, Bt=1, L=8, Di=16, dtype="fp32")
    with pytest.raises(KernelError, match=r"hmx_selective_scan: N = 100: expected 1\.\.64"):
        kernels.selective_scan(**scan, N=100)
    with pytest.raises(KernelError, match="hmx_selective_scan: y is NULL"):
        kernels.selective_scan(**{**scan, "y": 0}, N=16)
    params = ScanParams(u=fake, delta=fake, A_log=fake, B=fake, C=fake, y=fake, Bt=1, L=8, Di=16, N=16)
    assert kernels.lib.hmx_selective_scan(ctypes.byref(params), 7, None) != 0
    assert "dtype 7: expected 0 (fp32), 1 (fp16) or 2 (bf16)" in kernels.last_error()
    with pytest.raises(KernelError, match="dtype 'fp64'"):
        kernels.selective_scan(**{**scan, "dtype": "fp64"}, N=16)
    with pytest.raises(KernelError, match=r"hmx_causal_conv1d: W = 9: expected 1\.\.8"):
        kernels.causal_conv1d(x=fake, weight=fake, y=fake + 64, Bt=1, L=8, Di=16, W=9, dtype="fp16")
    with pytest.raises(KernelError, match="y aliases x"):
        kernels.causal_conv1d(x=fake, weight=fake, y=fake, Bt=1, L=8, Di=16, W=4, dtype="fp16")
    with pytest.raises(KernelError, match=r"L = 0: expected >= 1"):
        kernels.causal_conv1d(x=fake, weight=fake, y=fake + 64, Bt=1, L=0, Di=16, W=4, dtype="bf16")
