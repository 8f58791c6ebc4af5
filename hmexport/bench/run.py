"""``hmexport bench``: the runtime and the transformers reference, measured in one run on the same ids.

```
parent (numpy only)      : manifest, weight bytes, copy bandwidth, seeded ids -> spawn:
  child 1 (onnxruntime)  : Bundle.open -> [warm-up, repeats x (prefill P ids, decode n ids)] -> RSS
  child 2 (torch)        : load_reference -> same loop with transformers' own cache -> RSS
parent                   : medians and spreads, ratios, decode bound, markdown
```
Each half runs in its own freshly spawned interpreter so its peak RSS is its own (torch never shares
an address space with the runtime) and neither inherits the other's thread pools. Both halves use
the same thread count and see the same token ids; decode feeds fixed ids (no sampling) one at a
time, each step reusing the state the previous one returned.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..bundle.io import read_manifest
from ..errors import HmexportError, InputError
from ..models.spec import ModelSpec
from .memory import decode_bound, device_info, measure_bandwidth, peak_rss, rss_now, ru_maxrss, weight_bytes

Progress = Callable[[str, int | None], Callable[[int], None]]  # (description, total) -> advance(n)
SCHEMA = "hmexport-bench/1"
HALVES = ("hmexport", "transformers")
WARMUP = 1
# Environment that changes how the halves' thread pools behave (the children inherit it): recorded
# with the result, because on small VMs OMP_WAIT_POLICY alone swings torch's decode by 10x.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_bench(
    bundle_dir: str | Path,
    reference_dir: str | Path,
    *,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    repeats: int = 3,
    threads: int | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure prefill, time to first token, decode and peak RSS of both; see docs/benchmarks.md.

    Each half runs in a process started with multiprocessing's "spawn", which re-imports the
    caller's main module: call this from under ``if __name__ == "__main__":`` in a script.
    """
    progress = progress or (lambda desc, total: (lambda n: None))
    for name, value in (("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens), ("repeats", repeats)):
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads: expected >= 1, got {threads}")
    threads = threads or _usable_cpus()
    bundle_dir, reference_dir = Path(bundle_dir), Path(reference_dir)
    manifest = read_manifest(bundle_dir, verify=False)  # the runtime half verifies when it opens the bundle
    limit = manifest.limits.max_tokens
    if prompt_tokens + new_tokens > limit:
        raise InputError(
            f"{bundle_dir}: {prompt_tokens} prompt + {new_tokens} new tokens > the bundle's max_tokens {limit}; "
            f"pass fewer tokens or rebuild with a larger --max-tokens"
        )
    spec = ModelSpec.from_json(manifest.model, f"{bundle_dir}/manifest.json: model")
    ids = np.random.default_rng(seed).integers(3, spec.vocab_size, size=prompt_tokens + new_tokens).tolist()  # 0..2: pad/bos/eos

    advance = progress("memory bandwidth", 1)
    bandwidth = measure_bandwidth(threads)
    advance(1)
    bound = decode_bound(weight_bytes(bundle_dir, manifest), bandwidth["gb_s"])
    args = (ids, prompt_tokens, repeats, threads)
    advance = progress("hmexport runtime", 1)
    ours = _in_subprocess(_runtime_half, str(bundle_dir), *args)
    advance(1)
    advance = progress("transformers reference", 1)
    theirs = _in_subprocess(_reference_half, str(reference_dir), *args)
    advance(1)

    halves = {"hmexport": ours, "transformers": theirs}
    agreement = {k: float(np.max(np.abs(np.asarray(ours.pop(k)) - np.asarray(theirs.pop(k))))) for k in ("prefill_logits", "decode_logits")}
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": {
            "bundle": str(bundle_dir.resolve()),
            "reference": str(reference_dir.resolve()),
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "warmup": WARMUP,
            "threads": threads,
            "seed": seed,
            "prefill_chunk": manifest.limits.prefill_chunk,
            "max_tokens": limit,
        },
        "model": {
            "description": spec.describe(),
            "preset": manifest.provenance.preset,
            "precision": manifest.precision,
            "weights_file_bytes": (bundle_dir / manifest.weights).stat().st_size,
        },
        "versions": _versions(),
        "device": device_info(),
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "bandwidth": bandwidth,
        "bound": bound,
        **halves,
        "ratios": _ratios(ours, theirs),
        "decode_vs_bound": {h: halves[h]["decode_ms_per_token"]["median"] / bound["active_ms_per_token"] for h in HALVES},
        "decode_vs_all_bound": {h: halves[h]["decode_ms_per_token"]["median"] / bound["all_ms_per_token"] for h in HALVES},
        "agreement": {f"{k}_max_abs_diff": v for k, v in agreement.items()},
    }


# ---------------------------------------------------------------------------------------------
# The two halves (each runs in a spawned child; module-level so they pickle)


def _runtime_half(bundle_dir: str, ids: list[int], prompt_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    rss_start = rss_now()
    from ..runtime import Bundle

    rss_base = rss_now()
    t0 = time.perf_counter()
    bundle = Bundle.open(bundle_dir, threads=threads)  # includes the sha256 check of every file
    session = bundle.session()
    load_s = time.perf_counter() - t0
    prompt, new = ids[:prompt_tokens], ids[prompt_tokens:]

    def one_run() -> tuple[float, float, np.ndarray, np.ndarray]:
        session.reset()
        t0 = time.perf_counter()
        first = session.prefill(prompt)
        int(np.argmax(first))  # the first token exists once it is picked
        t1 = time.perf_counter()
        for tok in new:
            logits = session.decode(tok)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, first.copy(), logits.copy()  # decode's logits are a reused buffer

    out = _timed_runs(one_run, repeats, prompt_tokens, len(new))
    return {**out, "load_s": load_s, "prefill_chunk": session.chunk, **_rss(rss_start, rss_base)}


def _reference_half(reference_dir: str, ids: list[int], prompt_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    rss_start = rss_now()
    import torch
    import transformers

    from ..models.checkpoint import Checkpoint
    from ..models.reference import load_reference
    from ..models.registry import ARCHITECTURES, read_spec

    torch.set_num_threads(threads)
    # transformers imports modeling code lazily: pull the model's in now so the baseline holds it.
    getattr(transformers, ARCHITECTURES[read_spec(Checkpoint.open(reference_dir)).arch].HF_CLASS)
    rss_base = rss_now()
    t0 = time.perf_counter()
    model = load_reference(reference_dir)
    load_s = time.perf_counter() - t0
    cache_in, cache_out = _cache_names(model)
    prompt = torch.tensor([ids[:prompt_tokens]], dtype=torch.long)  # (1, P)
    new = [torch.tensor([[t]], dtype=torch.long) for t in ids[prompt_tokens:]]  # n x (1, 1)

    def one_run() -> tuple[float, float, np.ndarray, np.ndarray]:
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(prompt, use_cache=True, logits_to_keep=1)  # the runtime computes only the last row too
            first = out.logits[0, -1]
            int(first.argmax())
            t1 = time.perf_counter()
            cache = getattr(out, cache_out)
            for tok in new:  # one id per call: the step must come from the cache, not a re-read of the prefix
                out = model(tok, **{cache_in: cache}, use_cache=True)
                cache = getattr(out, cache_out)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1, first.numpy().copy(), out.logits[0, -1].numpy().copy()

    out = _timed_runs(one_run, repeats, prompt_tokens, len(new))
    return {**out, "load_s": load_s, "torch_threads": torch.get_num_threads(), **_rss(rss_start, rss_base)}


def _cache_names(model) -> tuple[str, str]:
    """(forward kwarg, output attribute) of the model's cache: ``cache`` in transformers 5.24;
    ``past_key_values`` (Jamba) or ``cache_params`` (Mamba) before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values", "cache_params"):
        if name in params:
            return name, name
    raise TypeError(f"{type(model).__name__}.forward takes none of cache, past_key_values, cache_params")


def _timed_runs(one_run: Callable, repeats: int, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        one_run()
    runs = [one_run() for _ in range(repeats)]
    prefill = [r[0] for r in runs]
    decode = [r[1] for r in runs]
    return {
        "prefill_tok_s": _spread([prompt_tokens / s for s in prefill]),
        "ttft_ms": _spread([s * 1e3 for s in prefill]),
        "decode_tok_s": _spread([new_tokens / s for s in decode]),
        "decode_ms_per_token": _spread([s * 1e3 / new_tokens for s in decode]),
        "runs_s": [{"prefill": p, "decode": d} for p, d in zip(prefill, decode)],
        "prefill_logits": runs[-1][2].tolist(),
        "decode_logits": runs[-1][3].tolist(),
    }


def _rss(rss_start: int, rss_base: int) -> dict[str, int]:
    """RSS at child start, after imports (the baseline), and the child's own peak (see peak_rss)."""
    peak = peak_rss()
    return {
        "rss_start_bytes": rss_start,
        "rss_baseline_bytes": rss_base,
        "peak_rss_bytes": peak,
        "peak_over_baseline_bytes": peak - rss_base,
        "ru_maxrss_bytes": ru_maxrss(),  # includes the parent's high-water mark on Linux; kept for reference
    }


# ---------------------------------------------------------------------------------------------
# Parent-side helpers


def _in_subprocess(fn: Callable, *args: Any) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise HmexportError(
                f"bench: the process running {fn.__name__.strip('_').replace('_', ' ')} died (its traceback, if any, is above): "
                "killed for memory, or run_bench was called from a script without an `if __name__ == \"__main__\":` guard "
                "(spawned children re-import the main module)"
            ) from None


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


RATIO_KEYS = ("prefill_tok_s", "ttft_ms", "decode_tok_s", "decode_ms_per_token", "peak_rss_bytes", "peak_over_baseline_bytes")


def _value(half: dict[str, Any], key: str) -> float:
    v = half[key]
    return v["median"] if isinstance(v, dict) else v


def _ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """hmexport / transformers of each median (or single value): >1 is faster for tok/s, slower for ms and bytes."""
    return {k: _value(ours, k) / _value(theirs, k) for k in RATIO_KEYS}


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"hmexport": __version__, "python": platform.python_version()}
    for dist in ("onnxruntime", "torch", "transformers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ---------------------------------------------------------------------------------------------
# Markdown


def format_markdown(result: dict[str, Any]) -> str:
    p, b, d, m = result["params"], result["bound"], result["device"], result["model"]
    ours, theirs, ratios = result["hmexport"], result["transformers"], result["ratios"]
    mib = 1 << 20

    def spread(half: dict, key: str, fmt: str) -> str:
        s = half[key]
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"

    rows = [
        ("prefill tok/s", spread(ours, "prefill_tok_s", ".0f"), spread(theirs, "prefill_tok_s", ".0f"), ratios["prefill_tok_s"]),
        ("time to first token, ms", spread(ours, "ttft_ms", ".1f"), spread(theirs, "ttft_ms", ".1f"), ratios["ttft_ms"]),
        ("decode tok/s", spread(ours, "decode_tok_s", ".1f"), spread(theirs, "decode_tok_s", ".1f"), ratios["decode_tok_s"]),
        ("decode ms/token", spread(ours, "decode_ms_per_token", ".2f"), spread(theirs, "decode_ms_per_token", ".2f"), ratios["decode_ms_per_token"]),
        ("peak RSS, MiB", f"{ours['peak_rss_bytes'] / mib:.0f}", f"{theirs['peak_rss_bytes'] / mib:.0f}", ratios["peak_rss_bytes"]),
        (
            "peak RSS over baseline, MiB",
            f"{ours['peak_over_baseline_bytes'] / mib:.0f}",
            f"{theirs['peak_over_baseline_bytes'] / mib:.0f}",
            ratios["peak_over_baseline_bytes"],
        ),
        ("load, s", f"{ours['load_s']:.2f}", f"{theirs['load_s']:.2f}", ours["load_s"] / theirs["load_s"]),
    ]
    lines = [
        f"{m['description']} ({m['precision']}); prompt {p['prompt_tokens']} tokens (chunk {p['prefill_chunk']}), "
        f"{p['new_tokens']} decoded, median (min–max) of {p['repeats']} after {p['warmup']} warm-up, {p['threads']} thread{'s' if p['threads'] != 1 else ''}",
        f"{d['cpu']}, {d['usable_cpus']} CPUs, {(d['ram_bytes'] or 0) / (1 << 30):.0f} GiB RAM"
        + "".join(f", {k}={v}" for k, v in result.get("env", {}).items()),
        "",
        "| metric | hmexport | transformers | ratio |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {a} | {t} | {r:.2f} |" for name, a, t, r in rows),
        "",
        f"- memory bandwidth: {b['bandwidth_gb_s']:.1f} GB/s ({result['bandwidth']['method']})",
        f"- decode bound, active weights: {b['active_weight_bytes'] / mib:.1f} MiB/token -> {b['active_ms_per_token']:.2f} ms/token",
        f"- decode bound, all weights: {b['all_weight_bytes'] / mib:.1f} MiB/token -> {b['all_ms_per_token']:.2f} ms/token",
        "- measured decode / active bound: "
        + ", ".join(f"{h} {result['decode_vs_bound'][h]:.2f}x" for h in HALVES)
        + "; / all-weights bound: "
        + ", ".join(f"{h} {result['decode_vs_all_bound'][h]:.2f}x" for h in HALVES),
        "- logits max |hmexport - transformers|: "
        f"prefill {result['agreement']['prefill_logits_max_abs_diff']:.2g}, last decode step {result['agreement']['decode_logits_max_abs_diff']:.2g}",
    ]
    return "\n".join(lines) + "\n"
