"""fp32 vs int8 / int4 / fp8 bundles of the same model: size, peak memory, speed and accuracy in one run.

    python -m hmexport.bench.precision jamba-small fixtures/kv-jamba [--precisions fp32,int8,int4,fp8] [--out docs/precision]

Each source (a preset or a checkpoint directory; a trained fixture brings its eval set) is built in
fp32 once under $HMEXPORT_CACHE/bench/precision, then quantized to each precision (the accuracy report
comes from ``hmexport quantize``: task accuracy on the eval set, top-1 agreement and KL against fp32).
Speed and peak RSS come from the same child process as ``hmexport bench``'s runtime half (fresh
interpreter per bundle, seeded ids, prefill P tokens then decode n one at a time, median of repeats).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("fp32", "int8", "int4", "fp8")


def cache_dir() -> Path:
    return Path(os.environ.get("HMEXPORT_CACHE", Path.home() / ".cache" / "hmexport")) / "bench" / "precision"


def prepare(source: str, precisions: tuple[str, ...], progress=None, ops: str = "standard") -> dict[str, tuple[Path, dict | None]]:
    """precision -> (bundle dir, accuracy report or None for fp32); the fp32 bundle is built once and
    rebuilt when missing or when the checkpoint it came from has changed (path or weights)."""
    from ..export.build import BuildOptions, build, resolve_source
    from ..models.checkpoint import Checkpoint
    from ..quantize import QuantOptions, quantize_bundle

    name = Path(source).name if Path(source).exists() else source
    root = cache_dir() / (name if ops == "standard" else f"{name}-{ops}")
    fp32 = root / "fp32"
    if not (fp32 / "manifest.json").is_file() or _built_from(fp32) != _fingerprint(Checkpoint.open(resolve_source(source)[0])):
        build(source, fp32, BuildOptions(validate=False, overwrite=True, ops=ops), progress)
    out: dict[str, tuple[Path, dict | None]] = {"fp32": (fp32, None)}
    for p in precisions:
        if p == "fp32":
            continue
        _, report = quantize_bundle(fp32, root / p, QuantOptions(p), overwrite=True, progress=progress)
        out[p] = (root / p, report)
    return out


def _fingerprint(ckpt) -> tuple[str, str]:
    return str(Path(ckpt.path).resolve()), ckpt.sha256()


def _built_from(bundle: Path) -> tuple[str, str] | None:
    prov = json.loads((bundle / "manifest.json").read_text()).get("provenance") or {}
    return prov.get("source"), prov.get("source_sha256")


def run(sources: list[str], precisions: tuple[str, ...], *, prompt_tokens: int = 512, new_tokens: int = 64, repeats: int = 3, threads: int | None = None,
        ops: str = "standard", progress=None) -> dict[str, Any]:
    from ..bundle.io import read_manifest
    from .run import _in_subprocess, _runtime_half, _usable_cpus, _versions
    from .memory import device_info

    threads = threads or _usable_cpus()
    rows = []
    for source in sources:
        bundles = prepare(source, precisions, progress, ops)
        vocab = int(read_manifest(bundles["fp32"][0], verify=False).model["vocab_size"])
        ids = np.random.default_rng(0).integers(3, vocab, size=prompt_tokens + new_tokens).tolist()
        for p in precisions:
            path, report = bundles[p]
            manifest = read_manifest(path, verify=False)
            speed = _in_subprocess(_runtime_half, str(path), ids, prompt_tokens, repeats, threads)
            for k in ("prefill_logits", "decode_logits"):
                speed.pop(k)
            rows.append({
                "source": source, "precision": p, "bundle_bytes": sum(f.bytes for f in manifest.files.values()),
                "weights_bytes": manifest.files[manifest.weights].bytes, "speed": speed, "accuracy": report,
            })  # fmt: skip
    return {
        "schema": "hmexport-bench-precision/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "params": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "threads": threads, "ops": ops},
        "versions": _versions(),
        "device": device_info(),
        "rows": rows,
    }


def format_markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"Prompt {p['prompt_tokens']} tokens, {p['new_tokens']} decoded, median of {p['repeats']}, {p['threads']} threads, --ops {p.get('ops', 'standard')}.",
        "",
        "| model | precision | bundle MB (x fp32) | peak RSS MiB | prefill tok/s | decode ms/token (speed-up) | task accuracy fp32 -> quantized | top-1 agreement | mean KL |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    base: dict[str, dict] = {}
    for r in result["rows"]:
        b = base.setdefault(r["source"], r)
        s, bs = r["speed"], b["speed"]
        decode, decode0 = s["decode_ms_per_token"]["median"], bs["decode_ms_per_token"]["median"]
        acc, agree, kl = "", "", ""
        if r["accuracy"]:
            sets = r["accuracy"]["eval_sets"]
            acc = "; ".join(f"{e['eval_set']} {e['fp32']:.1f}% -> {e['quantized']:.1f}%{'' if e['passed'] else ' (FAIL)'}" for e in sets) or "no eval set"
            if r["accuracy"]["agreement"]:
                agree = f"{100 * r['accuracy']['agreement']['top1_agreement']:.1f}%"
                kl = f"{r['accuracy']['agreement']['mean_kl']:.4f}"
        lines.append(
            f"| {r['source']} | {r['precision']} | {r['bundle_bytes'] / 1e6:.1f} ({r['bundle_bytes'] / b['bundle_bytes']:.2f}x) | "
            f"{s['peak_rss_bytes'] / 2**20:.0f} | {s['prefill_tok_s']['median']:.0f} | {decode:.2f} ({decode0 / decode:.2f}x) | {acc} | {agree} | {kl} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hmexport.bench.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="presets or checkpoint directories (trained fixtures bring their eval sets)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ops", choices=("standard", "fused"), default="standard", help="build the fp32 bundle with these Mamba ops")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    from ..cli.ui import progress_factory

    requested = [p.strip() for p in args.precisions.split(",") if p.strip()]
    precisions = tuple(p for p in PRECISIONS if p in requested)  # fp32 first: the baseline of the ratios
    unknown = [p for p in requested if p not in PRECISIONS]
    if unknown or "fp32" not in precisions:
        parser.error(f"--precisions: expected fp32 and any of {', '.join(PRECISIONS[1:])}, got {args.precisions!r}")
    result = run(args.sources, precisions, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                 threads=args.threads, ops=args.ops, progress=progress_factory())  # fmt: skip
    table = format_markdown(result)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
