"""Compile the CPU ops (ssm_ops.c + the onnxruntime custom-op glue) into one shared library.

Built with the system C compiler (``$CC``, default ``cc``) for this machine (-march=native) into
``$HMEXPORT_CACHE/kernels/cpu-<hash>/``; the hash covers the sources, the compiler and the flags,
so an edit or another machine rebuilds. Written to a temporary name and renamed: concurrent
builds never see a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...errors import HmexportError

SOURCES = ("ssm_ops.c", "ort_ops.c")
HEADERS = ("ssm_ops.h", "ort_abi.h")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c11")
LIBRARY = "libhmexport_cpu.so"


class KernelBuildError(HmexportError):
    """The C compiler is missing or failed on hmexport's CPU ops."""


def cache_root() -> Path:
    return Path(os.environ.get("HMEXPORT_CACHE", Path.home() / ".cache" / "hmexport")) / "kernels"


def library_path(out_dir: Path | None = None) -> Path:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((here / name).read_bytes())
    digest.update(" ".join((_compiler(), *FLAGS)).encode())
    return (out_dir or cache_root() / f"cpu-{digest.hexdigest()[:16]}") / LIBRARY


def build(out_dir: Path | None = None, force: bool = False) -> Path:
    """Return the path of the compiled library, compiling it first when needed."""
    target = library_path(out_dir)
    if target.is_file() and not force:
        return target
    cc = _compiler()
    if shutil.which(cc) is None:
        raise KernelBuildError(f"C compiler {cc!r} not found: install gcc or clang (or set $CC) to use --ops fused on the CPU")
    here = Path(__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *FLAGS, "-o", tmp, *(str(here / s) for s in SOURCES), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise KernelBuildError(f"compiling hmexport's CPU ops failed ({' '.join(cmd)}):\n{tail}")
    os.replace(tmp, target)
    return target


def _compiler() -> str:
    return os.environ.get("CC", "cc")
