"""The memory side of a benchmark: this machine's copy bandwidth, the weight bytes one decode step
must read, and process RSS. Standard library and numpy only (it runs in the parent process, which
must stay free of torch so the two measured halves start from the same clean interpreter).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import Manifest
from ..bundle.weights import read_header

BANDWIDTH_BYTES = 256 << 20  # larger than any last-level cache we expect, so copies stream from DRAM
BANDWIDTH_TRIALS = 7

# ---------------------------------------------------------------------------------------------
# Bandwidth


def copy_bandwidth(nbytes: int = BANDWIDTH_BYTES, trials: int = BANDWIDTH_TRIALS, threads: int = 1) -> dict[str, Any]:
    """Best-of-``trials`` ``np.copyto`` of an ``nbytes`` float32 array, split over ``threads`` threads.

    Bytes moved per copy = 2 * nbytes: every byte of ``src`` is read once and every byte of ``dst``
    written once (256 MiB -> 512 MiB of traffic). A write-allocate cache may also read ``dst``
    before writing it (3 * nbytes on the bus); large copies use non-temporal stores that skip that
    read, and counting 2x keeps the figure comparable with STREAM's "copy" and with a decode step's
    weight reads, so this is a lower bound of the bus traffic and the usual way to quote it.
    """
    n = nbytes // 4
    src = np.ones(n, np.float32)  # touch every page so no trial pays for page faults
    dst = np.zeros(n, np.float32)
    dst[:] = src
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    parts = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
    times = []
    with ThreadPoolExecutor(max_workers=threads) as pool:  # np.copyto releases the GIL for plain copies
        for _ in range(trials):
            t0 = time.perf_counter()
            if threads == 1:
                np.copyto(dst, src)
            else:
                list(pool.map(lambda pair: np.copyto(*pair), parts))
            times.append(time.perf_counter() - t0)
    moved = 2 * nbytes  # read src + write dst
    return {
        "bytes_per_copy": moved,
        "threads": threads,
        "trials": trials,
        "gb_s": moved / min(times) / 1e9,  # best trial: the closest to what the hardware can do
        "median_gb_s": moved / float(np.median(times)) / 1e9,
    }


def measure_bandwidth(threads: int, nbytes: int = BANDWIDTH_BYTES, trials: int = BANDWIDTH_TRIALS) -> dict[str, Any]:
    """Single-threaded and ``threads``-threaded copies; the faster one is the decode bound's bandwidth."""
    single = copy_bandwidth(nbytes, trials, 1)
    multi = copy_bandwidth(nbytes, trials, threads) if threads > 1 else single
    best = max(single["gb_s"], multi["gb_s"])
    return {
        "method": f"np.copyto of {nbytes >> 20} MiB float32, best of {trials}, read+write bytes",
        "gb_s": best,
        "single_thread": single,
        "multi_thread": multi,
    }


# ---------------------------------------------------------------------------------------------
# Weight bytes per decoded token


def weight_bytes(bundle_dir: str | Path, manifest: Manifest) -> dict[str, int]:
    """Bytes of weights one decode step must read, from the weights file's safetensors header.

    ``all``: every tensor. ``active``: what a token really needs: the embedding table contributes
    one row (a gather) unless the head is tied to it (then the head reads all of it), and a MoE
    layer's experts (every tensor under ``layers.i.mlp.experts.``, stacked (E, ...) or one per
    expert) only top_k/E of their bytes. Everything else (mixers, norms, dense MLPs, routers,
    lm_head) is read in full.
    """
    _, header = read_header(Path(bundle_dir) / manifest.weights)
    layers = manifest.model["layers"]
    tied = bool(manifest.model.get("tie_word_embeddings")) and not any(n.startswith("lm_head.weight") for n in header)  # int4: lm_head.weight_Q4
    total = active = 0
    experts: dict[int, int] = {}  # layer -> bytes of all its experts
    for name, h in header.items():
        lo, hi = h["data_offsets"]
        size = hi - lo
        total += size
        parts = name.split(".")
        if name.startswith("embed.weight") and not tied:  # the table, or int4's blocks and scales
            active += size // h["shape"][0]  # one row of (V, ...)
        elif len(parts) > 3 and parts[0] == "layers" and parts[2:4] == ["mlp", "experts"]:
            experts[int(parts[1])] = experts.get(int(parts[1]), 0) + size
        else:
            active += size
    for i, size in experts.items():
        active += size * layers[i]["top_k"] // layers[i]["experts"]
    return {"all": total, "active": active}


def decode_bound(weights: dict[str, int], gb_s: float) -> dict[str, float]:
    """Milliseconds per token if a decode step did nothing but stream its weights at ``gb_s``."""
    return {
        "bandwidth_gb_s": gb_s,
        "active_weight_bytes": weights["active"],
        "all_weight_bytes": weights["all"],
        "active_ms_per_token": weights["active"] / (gb_s * 1e9) * 1e3,
        "all_ms_per_token": weights["all"] / (gb_s * 1e9) * 1e3,
    }


# ---------------------------------------------------------------------------------------------
# Process memory


def rss_now() -> int:
    """Resident set size of this process in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return ru_maxrss()


def peak_rss() -> int:
    """This process's own high-water RSS in bytes: ``VmHWM`` of /proc/self/status where it exists.

    Not ``ru_maxrss`` there: Linux carries the parent's high-water mark into a child across
    fork + exec (the old mm's hiwater is folded into the signal struct's ``maxrss`` at exec), so a
    spawned child of a 600 MiB parent reports >= 600 MiB whatever it does. VmHWM belongs to the
    address space exec created. Elsewhere ``ru_maxrss`` is all there is.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return ru_maxrss()


def ru_maxrss() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


# ---------------------------------------------------------------------------------------------
# Device


def device_info() -> dict[str, Any]:
    import platform

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in (platform.processor(), platform.machine()):
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "fma") if f in value.split()]
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "ram_bytes": ram,
        "platform": platform.platform(),
    }
