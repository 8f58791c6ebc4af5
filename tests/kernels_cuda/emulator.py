"""Build the CUDA kernel sources for the CPU SIMT emulator (emu/simt_emulator.h) with g++.

The library has the same C ABI as the nvcc build, takes host pointers, and runs each block's
threads as std::threads: slow, but it checks indexing, chunking, padding and the warp reductions
on machines without a GPU (CI). Needs a C++20 compiler and the CUDA headers (for dim3, __half).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hmexport.kernels_cuda import build as cuda_build

EMU = Path(__file__).parent / "emu"
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-pthread", "-fvisibility=hidden", "-DHMX_SIMT_EMULATOR", "-x", "c++")


def cuda_include() -> Path | None:
    """The CUDA toolkit's include directory (next to nvcc), or None."""
    roots = []
    try:
        roots.append(Path(cuda_build.find_nvcc()).resolve().parent.parent)
    except cuda_build.KernelBuildError:
        pass
    roots += [Path(p) for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if p]
    for root in roots:
        for inc in (root / "include", root / "targets" / "x86_64-linux" / "include"):
            if (inc / "cuda_fp16.h").is_file():
                return inc
    return None


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def build_emulator(out_dir: Path) -> Path:
    cxx, inc = compiler(), cuda_include()
    assert cxx and inc, "callers skip when g++ or the CUDA headers are missing"
    here = cuda_build.HERE
    digest = hashlib.sha256()
    for path in cuda_build.source_files():
        digest.update(path.read_bytes())
    digest.update((EMU / "simt_emulator.h").read_bytes())
    target = Path(out_dir) / f"libhmexport_cuda_emu-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    objects = [target.parent / (Path(s).stem + ".emu.o") for s in cuda_build.SOURCES]
    cmds = [[cxx, *FLAGS, f"-I{EMU}", f"-I{inc}", "-c", str(here / s), "-o", str(o)] for s, o in zip(cuda_build.SOURCES, objects)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(cmds), os.cpu_count() or 1))) as pool:
        results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), cmds))
    for cmd, done in zip(cmds, results):
        if done.returncode != 0:
            raise RuntimeError(f"emulator build failed: {' '.join(cmd)}\n{done.stderr[-4000:]}")
    tmp = target.with_suffix(".tmp")
    link = [cxx, "-shared", "-pthread", "-o", str(tmp), *map(str, objects)]
    done = subprocess.run(link, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"emulator link failed: {' '.join(link)}\n{done.stderr[-4000:]}")
    os.replace(tmp, target)
    return target
