"""Compile hmexport's CUDA kernels into one shared library with nvcc.

The library (``libhmexport_cuda-<hash>.so``) goes to ``out_dir`` or ``$HMEXPORT_CACHE/kernels``
(default ``~/.cache/hmexport/kernels``); the hash covers the sources, the flags and the target
architectures, so an edit rebuilds. The CUDA runtime is linked statically: the library needs only
the driver (libcuda) at run time, and loads without it (cudaGetDeviceCount then reports the
missing driver). Each translation unit compiles in its own nvcc process, in parallel, then one
link; the result is written under a temporary name and renamed, so concurrent builds never see a
half-written library.

    python -m hmexport.kernels_cuda.build [--verbose] [--out DIR]   # prints the path and the time
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import HmexportError

HERE = Path(__file__).parent
SOURCES = (
    "api.cu",
    "selective_scan/selective_scan_prefill.cu",
    "selective_scan/selective_scan_step.cu",
    "causal_conv1d/causal_conv1d_prefill.cu",
    "causal_conv1d/causal_conv1d_step.cu",
)
# -fvisibility=hidden: only the HMX_API functions are exported (not the static runtime's symbols).
FLAGS = ("-O3", "-std=c++17", "-lineinfo", "-Xcompiler", "-fPIC,-fvisibility=hidden")
LINK_FLAGS = ("-shared", "-cudart", "static")
ARCH = ("sm_80", "sm_90")
LIBRARY = "libhmexport_cuda"
# C ABI symbols the library must export (tests check them with nm).
SYMBOLS = (
    "hmx_abi_version", "hmx_scan_params_size", "hmx_conv_params_size",
    "hmx_selective_scan", "hmx_causal_conv1d", "hmx_device_count", "hmx_last_error",
)  # fmt: skip


class KernelBuildError(HmexportError):
    """nvcc is missing or failed on hmexport's CUDA kernels."""


def cache_root() -> Path:
    return Path(os.environ.get("HMEXPORT_CACHE", Path.home() / ".cache" / "hmexport")) / "kernels"


def gencode_flags(arch: tuple[str, ...] = ARCH) -> list[str]:
    """SASS for each ``sm_XY``, plus PTX of the newest so later GPUs can JIT-compile it."""
    flags = []
    for a in arch:
        if not a.startswith("sm_") or not a[3:].isdigit():
            raise KernelBuildError(f"kernels_cuda build: arch {a!r}: expected a name like 'sm_90'")
        flags += ["-gencode", f"arch=compute_{a[3:]},code={a}"]
    newest = max(arch, key=lambda a: int(a[3:]))[3:]
    return [*flags, "-gencode", f"arch=compute_{newest},code=compute_{newest}"]


def source_files() -> list[Path]:
    """Every CUDA source and header here (all of them feed the hash, listed in SOURCES or not)."""
    return sorted(p for p in HERE.rglob("*") if p.suffix in (".cu", ".cuh", ".h"))


def library_path(out_dir: Path | str | None = None, arch: tuple[str, ...] = ARCH) -> Path:
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.relative_to(HERE).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(" ".join((*FLAGS, *LINK_FLAGS, *gencode_flags(tuple(arch)))).encode())
    return Path(out_dir or cache_root()) / f"{LIBRARY}-{digest.hexdigest()[:16]}.so"


def find_nvcc(nvcc: str | None = None) -> str:
    """``nvcc`` argument, else ``$HMEXPORT_NVCC``, else PATH, ``$CUDA_HOME/bin``, /usr/local/cuda/bin."""
    explicit = nvcc or os.environ.get("HMEXPORT_NVCC")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise KernelBuildError(f"kernels_cuda build: nvcc {explicit!r} (from {'the nvcc argument' if nvcc else '$HMEXPORT_NVCC'}) "
                                   "does not exist or is not executable: point it at the CUDA toolkit's bin/nvcc")  # fmt: skip
        return found
    candidates = [shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(shutil.which(str(Path(home) / "bin" / "nvcc")))
    for c in candidates:
        if c:
            return c
    raise KernelBuildError("kernels_cuda build: nvcc not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin: "
                           "install the CUDA toolkit (12.0 or later) or set $HMEXPORT_NVCC to its bin/nvcc")  # fmt: skip


def build(out_dir: Path | str | None = None, arch: tuple[str, ...] = ARCH, verbose: bool = False,
          force: bool = False, nvcc: str | None = None) -> Path:  # fmt: skip
    """Return the path of the compiled library, compiling it first when it is missing (or ``force``)."""
    arch = tuple(arch)
    target = library_path(out_dir, arch)
    if target.is_file() and not force:
        return target
    nvcc = find_nvcc(nvcc)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as tmp:
        objects = [Path(tmp) / (Path(s).stem + ".o") for s in SOURCES]
        commands = [[nvcc, *FLAGS, *gencode_flags(arch), "-c", str(HERE / s), "-o", str(o)] for s, o in zip(SOURCES, objects)]
        with ThreadPoolExecutor(max_workers=max(1, min(len(commands), os.cpu_count() or 1))) as pool:
            results = list(pool.map(lambda cmd: _run(cmd, verbose), commands))
        failed = [(cmd, done) for cmd, done in zip(commands, results) if done.returncode != 0]
        if failed:
            cmd, done = failed[0]
            names = ", ".join(Path(c[c.index("-c") + 1]).name for c, _ in failed)
            raise KernelBuildError(f"kernels_cuda build: nvcc failed on {names} ({' '.join(cmd)}):\n{_tail(done)}")
        linked = Path(tmp) / "lib.so"
        link = [nvcc, *LINK_FLAGS, *gencode_flags(arch), "-o", str(linked), *map(str, objects)]
        done = _run(link, verbose)
        if done.returncode != 0:
            raise KernelBuildError(f"kernels_cuda build: linking failed ({' '.join(link)}):\n{_tail(done)}")
        os.replace(linked, target)
    if verbose:
        print(f"built {target} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return target


def _run(cmd: list[str], verbose: bool) -> subprocess.CompletedProcess:
    if verbose:
        print(" ".join(cmd), file=sys.stderr)
    try:
        return subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:  # not executable, vanished between the lookup and the run
        raise KernelBuildError(f"kernels_cuda build: cannot run {cmd[0]!r}: {e}: install the CUDA toolkit or set $HMEXPORT_NVCC") from e


def _tail(done: subprocess.CompletedProcess, lines: int = 20) -> str:
    text = (done.stderr.strip() or done.stdout.strip() or f"(no output, exit status {done.returncode})").splitlines()
    return "\n".join(text[-lines:])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hmexport.kernels_cuda.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output directory (default: $HMEXPORT_CACHE/kernels)")
    parser.add_argument("--arch", default=",".join(ARCH), help="comma-separated, e.g. sm_80,sm_90")
    parser.add_argument("--force", action="store_true", help="rebuild even when the library exists")
    parser.add_argument("--verbose", action="store_true", help="print the nvcc commands")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = build(args.out, tuple(args.arch.split(",")), verbose=args.verbose, force=args.force)
    except HmexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{path}  ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
