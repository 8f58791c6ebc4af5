"""Benchmark hmexport's CUDA kernels on a GPU (a script, not a test): median time and achieved GB/s.

    python tests/kernels_cuda/bench_kernels.py [--dtype fp16] [--iters 50] [--json out.json] [--compare]

Each kernel runs ``--warmup`` times, then ``--iters`` times between CUDA events; we report the
median and the spread (min..max), and GB/s = bytes moved / median time, with the byte counts below.
``--compare`` also times mamba-ssm's ``selective_scan_fn`` and causal-conv1d's
``causal_conv1d_fn`` when they import (they need torch; only this script may use it). They take
channel-major (Bt, Di, L) inputs, so they are timed in their own layout, on the same shapes.

Napkin math (es = bytes per activation element: 4 fp32, 2 fp16/bf16):
  scan prefill : read u, delta, z (3 Bt L Di es) + B, C (2 Bt L N es), write y (Bt L Di es),
                 state in + out (2 Bt Di N 4), A_log (Di N 4), D + delta_bias (2 Di 4).
                 Mamba-1 2.8B layer (Di = 5120, N = 16), Bt = 1, L = 2048, fp16: 84 MB ->
                 ~25 us at 3.35 TB/s (H100 SXM). exp2 count is Bt L Di N (168 M here): ~50 us at
                 one MUFU op per SM quarter per clock, so expect compute to matter at fp16.
  scan step    : read u, delta, z (3 Bt Di es) + B, C (2 Bt N es), write y (Bt Di es),
                 state in + out (2 Bt Di N 4) -- the state dominates, A_log (Di N 4) next.
  conv prefill : read x (Bt L Di es), write y (Bt L Di es), weight (Di W 4), bias (Di 4),
                 state in + out (2 Bt (W-1) Di 4).   conv step: the same with L = 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hmexport.kernels_cuda.binding import CudaKernels, conv_params, scan_params  # noqa: E402

ES = {"fp32": 4, "fp16": 2, "bf16": 2}
NP_DTYPE = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}  # bf16 as its bits
# (Bt, L, Di): Mamba-1 130M..2.8B channel counts (d_inner = 2 * d_model), prefill and decode.
SCAN_SHAPES = [(1, 512, 2048), (1, 2048, 2048), (1, 8192, 2048), (4, 2048, 2048), (8, 512, 2048),
               (1, 2048, 5120), (4, 2048, 5120), (8, 2048, 5120), (1, 8192, 5120),
               (1, 1, 2048), (8, 1, 2048), (1, 1, 5120), (8, 1, 5120), (64, 1, 5120)]  # fmt: skip
N_STATE, W = 16, 4


def scan_bytes(Bt: int, L: int, Di: int, N: int, es: int) -> int:
    return 4 * Bt * L * Di * es + 2 * Bt * L * N * es + 2 * Bt * Di * N * 4 + Di * N * 4 + 2 * Di * 4


def conv_bytes(Bt: int, L: int, Di: int, W: int, es: int) -> int:
    return 2 * Bt * L * Di * es + Di * W * 4 + Di * 4 + 2 * Bt * (W - 1) * Di * 4


def time_it(cupy, fn, warmup: int, iters: int, reps: int = 10) -> dict:
    """Per-call seconds: ``reps`` back-to-back calls between two events, ``iters`` times. Several
    calls per event pair keep the GPU queue full, so tiny kernels are not timed as launch overhead."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3 / reps)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def random_act(cupy, shape, dtype: str, scale: float = 1.0):
    x = cupy.random.standard_normal(shape, dtype=cupy.float32) * scale
    if dtype == "bf16":
        return (x.view(cupy.uint32) >> 16).astype(cupy.uint16)  # truncation is fine for timing
    return x.astype(NP_DTYPE[dtype])


def bench_ours(cupy, kernels, dtype: str, warmup: int, iters: int) -> list[dict]:
    rows, ptr = [], lambda a: a.data.ptr
    stream = cupy.cuda.get_current_stream().ptr
    for Bt, L, Di in SCAN_SHAPES:
        es = ES[dtype]
        u, delta, z = (random_act(cupy, (Bt, L, Di), dtype, s) for s in (1.0, 0.5, 1.0))
        B, C = (random_act(cupy, (Bt, L, N_STATE), dtype) for _ in range(2))
        A_log = cupy.log(cupy.random.uniform(1, 16, (Di, N_STATE)).astype(cupy.float32))
        D = cupy.ones(Di, cupy.float32)
        bias = cupy.full(Di, -3.0, cupy.float32)
        state = cupy.zeros((Bt, Di, N_STATE), cupy.float32)
        y = cupy.empty_like(u)
        # the state is updated in place, as a decoder would
        p = scan_params(u=ptr(u), delta=ptr(delta), A_log=ptr(A_log), B=ptr(B), C=ptr(C), y=ptr(y), D=ptr(D), z=ptr(z),
                        delta_bias=ptr(bias), state_in=ptr(state), state_out=ptr(state), Bt=Bt, L=L, Di=Di, N=N_STATE)  # fmt: skip
        t = time_it(cupy, lambda: kernels.run_scan(p, dtype, stream), warmup, iters)
        rows.append(report("hmx selective_scan", dtype, Bt, L, Di, scan_bytes(Bt, L, Di, N_STATE, es), t))

        weight = cupy.random.standard_normal((Di, W), dtype=cupy.float32)
        cstate = cupy.zeros((Bt, W - 1, Di), cupy.float32)
        pc = conv_params(x=ptr(u), weight=ptr(weight), y=ptr(y), bias=ptr(D), state_in=ptr(cstate), state_out=ptr(cstate),
                         Bt=Bt, L=L, Di=Di, W=W)  # fmt: skip
        t = time_it(cupy, lambda: kernels.run_conv(pc, dtype, stream), warmup, iters)
        rows.append(report("hmx causal_conv1d", dtype, Bt, L, Di, conv_bytes(Bt, L, Di, W, es), t))
        del u, delta, z, B, C, y
    return rows


def bench_reference_libraries(cupy, dtype: str, warmup: int, iters: int) -> list[dict]:
    """mamba-ssm and causal-conv1d, channel-major, when importable (both need torch)."""
    try:
        import torch
    except ImportError:
        print("--compare: torch is not installed; skipped", file=sys.stderr)
        return []
    tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    rows = []
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as e:
        print(f"--compare: mamba_ssm not importable ({e}); skipped", file=sys.stderr)
        selective_scan_fn = None
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError as e:
        print(f"--compare: causal_conv1d not importable ({e}); skipped", file=sys.stderr)
        causal_conv1d_fn = None
    # torch runs on its current stream; events on CuPy's null stream order with torch's default stream
    timer = lambda fn: time_it(cupy, fn, warmup, iters)  # noqa: E731
    for Bt, L, Di in SCAN_SHAPES:
        es = ES[dtype]
        u, delta, z = (torch.randn(Bt, Di, L, device="cuda", dtype=tdt) for _ in range(3))
        B, C = (torch.randn(Bt, N_STATE, L, device="cuda", dtype=tdt) for _ in range(2))
        A = -torch.rand(Di, N_STATE, device="cuda") * 15 - 1
        D = torch.ones(Di, device="cuda")
        bias = torch.full((Di,), -3.0, device="cuda")
        if selective_scan_fn is not None:
            t = timer(lambda: selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True))
            rows.append(report("mamba_ssm selective_scan_fn (B,D,L)", dtype, Bt, L, Di, scan_bytes(Bt, L, Di, N_STATE, es), t))
        if causal_conv1d_fn is not None:
            w = torch.randn(Di, W, device="cuda", dtype=tdt)
            t = timer(lambda: causal_conv1d_fn(u, w, None, activation="silu"))
            rows.append(report("causal_conv1d_fn (B,D,L)", dtype, Bt, L, Di, conv_bytes(Bt, L, Di, W, es), t))
    return rows


def report(name: str, dtype: str, Bt: int, L: int, Di: int, nbytes: int, t: dict) -> dict:
    gbs = nbytes / t["median_s"] / 1e9
    print(f"{name:38s} {dtype} Bt={Bt:<3d} L={L:<5d} Di={Di:<5d} {t['median_s'] * 1e6:9.1f} us "
          f"({t['min_s'] * 1e6:.1f}..{t['max_s'] * 1e6:.1f})  {gbs:8.1f} GB/s")  # fmt: skip
    return {"kernel": name, "dtype": dtype, "Bt": Bt, "L": L, "Di": Di, "N": N_STATE, "W": W, "bytes": nbytes, "GBps": gbs, **t}


def device_info(cupy) -> dict:
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    info = {"name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "cupy": cupy.__version__, "python": platform.python_version()}  # fmt: skip
    try:  # peak DRAM bandwidth = 2 (DDR) * memory clock * bus width
        clock_khz = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrMemoryClockRate, 0)
        bus_bits = cupy.cuda.runtime.deviceGetAttribute(cupy.cuda.runtime.cudaDevAttrGlobalMemoryBusWidth, 0)
        info["peak_GBps"] = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
    except Exception as e:  # attribute names differ across CuPy / CUDA versions; the peak is optional
        info["peak_GBps"] = f"unknown ({e})"
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=sorted(ES))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the results, versions and device here")
    parser.add_argument("--compare", action="store_true", help="also time mamba-ssm / causal-conv1d if importable")
    parser.add_argument("--library", type=Path, help="a built libhmexport_cuda-*.so (default: build or use the cache)")
    args = parser.parse_args()

    import cupy

    kernels = CudaKernels.load(args.library)
    info = device_info(cupy)
    print(f"device: {info['name']}  peak DRAM: {info['peak_GBps']} GB/s  library: {kernels.path}")
    rows = bench_ours(cupy, kernels, args.dtype, args.warmup, args.iters)
    if args.compare:
        rows += bench_reference_libraries(cupy, args.dtype, args.warmup, args.iters)
    if args.json:
        args.json.write_text(json.dumps({"device": info, "library": str(kernels.path), "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
