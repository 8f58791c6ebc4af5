"""Long multi-image contexts: 1 -> 1000 images on a LongLLaVA-shaped small model, runtime vs transformers.

    python -m hmexport.bench.scaling [--images 1,10,100,1000] [--out docs/scaling] [--reference-cap-s 900]

The model (``longllava-small``, written once under $HMEXPORT_CACHE/bench/): a LLaVA-format
checkpoint, Jamba text model with attention on 1 layer in 8 (D=256, 8 layers, 2 K/V heads of 64:
1 KiB of fp32 K/V per token) behind a small CLIP tower at 168 px (12 x 12 patches = 144 rows per
image, LongLLaVA's count). Each point runs in a fresh process so peak RSS (VmHWM) is its own:
vision + prefill time (time to first token), decode latency at that context, peak RSS. The
reference (LlavaForConditionalGeneration, its PyTorch CPU path) runs the same prompt until it no
longer fits (its SDPA causal mask alone is context^2 bytes) or passes the time cap; the JSON says
which. Images are PNG files passed by path (read when their vision batch comes up). The result
ends with the peak-RSS slope between the two largest runs, in bytes per context token, and its
ratio to the plan's K/V bytes per token (issue #5 asks for it within 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TOKENS_PER_IMAGE = 144
TEXT_TOKENS = 32
DECODE_TOKENS = 16
CONFIG = dict(
    text_model_type="jamba", image_token_index=2047,
    text_config=dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=8, attn_layer_period=8, attn_layer_offset=4,
                     expert_layer_period=2, expert_layer_offset=1, num_experts=1, num_experts_per_tok=1, num_attention_heads=4,
                     num_key_value_heads=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=16),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=168, patch_size=14),
)


def cache_dir() -> Path:
    return Path(os.environ.get("HMEXPORT_CACHE", Path.home() / ".cache" / "hmexport")) / "bench"


def prepare(max_images: int) -> tuple[Path, Path]:
    from ..export.build import BuildOptions, build
    from ..models.presets import write_checkpoint

    ckpt, bundle = cache_dir() / "longllava-small", cache_dir() / f"longllava-small-{max_images}"
    if not (ckpt / "config.json").is_file():
        write_checkpoint("llava", CONFIG, ckpt, seed=0, tokenizer_vocab=1024, overwrite=True)
    if not (bundle / "manifest.json").is_file():
        build(str(ckpt), bundle, BuildOptions(max_tokens=max_images * TOKENS_PER_IMAGE + TEXT_TOKENS + DECODE_TOKENS + 64, chunk=512,
                                              validate=False, overwrite=True, ops="fused"))
    return ckpt, bundle


def image_files(n: int) -> list[Path]:
    """n PNG files (168 px) under $HMEXPORT_CACHE/bench/images, written once: scikit-image's photographs
    in turn, each with its own tint so none repeat. The runtime is given their paths and reads each
    file when its vision batch comes up, so no image is held in memory between batches (the bytes of
    1000 PNGs, ~47 MiB, would otherwise add ~330 B per context token to the RSS slope)."""
    import numpy as np
    from PIL import Image

    folder = cache_dir() / "images"
    paths = [folder / f"{i:04d}.png" for i in range(n)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        from skimage import data

        folder.mkdir(parents=True, exist_ok=True)
        photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
        for i in missing:
            a = np.clip(photos[i % 4].astype(np.int16) + (i * 7) % 31 - 15, 0, 255).astype(np.uint8)
            tmp = paths[i].with_suffix(".tmp")
            Image.fromarray(a).resize((168, 168)).save(tmp, format="PNG")
            tmp.replace(paths[i])
    return paths


def _prompt(n: int) -> list[int]:
    return [CONFIG["image_token_index"]] * (n * TOKENS_PER_IMAGE) + list(range(5, 5 + TEXT_TOKENS))


def _peak_rss(key: str = "VmHWM") -> int:
    """VmHWM (peak resident bytes) of this process, or another /proc/self/status field (VmRSS: now)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def worker_runtime(bundle: Path, n: int) -> dict:
    from ..runtime import Bundle

    images = image_files(n)  # paths: read when their batch is needed
    b = Bundle.open(bundle)
    base = _peak_rss()
    session = b.session()
    start = time.perf_counter()
    tokens = session.generate(_prompt(n), images=images, max_new_tokens=DECODE_TOKENS + 1, stop_ids=())
    first = next(tokens)
    ttft = time.perf_counter() - start
    decode_start = time.perf_counter()
    rest = list(tokens)
    decode_ms = (time.perf_counter() - decode_start) / max(len(rest), 1) * 1e3
    return {"images": n, "context": len(_prompt(n)), "ttft_s": ttft, "prefill_tok_s": len(_prompt(n)) / ttft, "decode_ms": decode_ms,
            "peak_rss": _peak_rss(), "rss_after_decode": _peak_rss("VmRSS"), "baseline_rss": base, "tokens": [first] + rest}


def worker_reference(ckpt: Path, n: int) -> dict:
    import numpy as np  # noqa: F401
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    from ..models.reference import load_reference
    from .run import _cache_names

    model = load_reference(ckpt)
    processor = AutoImageProcessor.from_pretrained(str(ckpt))
    images = [Image.open(path).convert("RGB") for path in image_files(n)]
    base = _peak_rss()
    ids = torch.tensor([_prompt(n)])
    cache_in, cache_out = _cache_names(model)
    tokens = []
    start = time.perf_counter()
    with torch.no_grad():
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
        tokens.append(int(out.logits[0, -1].argmax()))
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        cache = getattr(out, cache_out)
        for _ in range(DECODE_TOKENS):  # one token per call, from the cache: the reference's own decode path
            out = model(input_ids=torch.tensor([[tokens[-1]]]), **{cache_in: cache}, use_cache=True)
            cache = getattr(out, cache_out)
            tokens.append(int(out.logits[0, -1].argmax()))
        decode_ms = (time.perf_counter() - start) / DECODE_TOKENS * 1e3
    return {"images": n, "context": ids.shape[1], "ttft_s": ttft, "prefill_tok_s": ids.shape[1] / ttft, "decode_ms": decode_ms,
            "peak_rss": _peak_rss(), "baseline_rss": base, "tokens": tokens}


def _run_worker(kind: str, path: Path, n: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "hmexport.bench.scaling", "--worker", kind, "--path", str(path), "--n", str(n)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"images": n, "skipped": f"passed the {timeout:.0f} s time cap"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return {"images": n, "skipped": f"failed (exit {done.returncode}): {tail[0][:200]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(counts: list[int], reference_cap_s: float, reference_max_context: int) -> dict:
    from ..bundle.io import read_manifest

    ckpt, bundle = prepare(max(counts))
    image_files(max(counts))  # written once, before any measured process starts
    kv_per_token = read_manifest(bundle).kv_bytes_per_token()
    results = {"model": "longllava-small", "kv_bytes_per_token": kv_per_token, "tokens_per_image": TOKENS_PER_IMAGE, "runtime": [], "reference": []}
    for n in counts:
        r = _run_worker("runtime", bundle, n, 3600)
        results["runtime"].append(r)
        print(f"runtime   {n:5d} images: {json.dumps({k: v for k, v in r.items() if k != 'tokens'})}", file=sys.stderr)
        context = n * TOKENS_PER_IMAGE + TEXT_TOKENS
        if context > reference_max_context:
            ref = {"images": n, "skipped": f"does not fit: its causal mask alone needs {context ** 2 / 2**30:.1f} GiB at {context} tokens"}
        else:
            ref = _run_worker("reference", ckpt, n, reference_cap_s)
        if "tokens" in ref and "tokens" in r:
            ref["tokens_match_runtime"] = ref["tokens"] == r["tokens"]
        results["reference"].append(ref)
        print(f"reference {n:5d} images: {json.dumps({k: v for k, v in ref.items() if k != 'tokens'})}", file=sys.stderr)
    ok = [r for r in results["runtime"] if "peak_rss" in r]
    if len(ok) >= 2:
        a, b = ok[-2], ok[-1]
        slope = (b["peak_rss"] - a["peak_rss"]) / (b["context"] - a["context"])
        results["rss_slope_between_images"] = [a["images"], b["images"]]
        results["rss_slope_bytes_per_token"] = slope
        results["rss_slope_vs_kv"] = slope / kv_per_token
        results["rss_slope_within_10pct_of_kv"] = abs(slope / kv_per_token - 1) <= 0.10
    return results


def markdown(r: dict) -> str:
    lines = ["| images | context tokens | hmexport TTFT s | hmexport decode ms | hmexport peak RSS MiB | transformers TTFT s | transformers decode ms | transformers peak RSS MiB | tokens match |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rt, ref in zip(r["runtime"], r["reference"]):
        cells = [str(rt["images"]), f"{rt.get('context', 0):,}"]
        cells += [f"{rt['ttft_s']:.2f}", f"{rt['decode_ms']:.1f}", f"{rt['peak_rss'] / 2**20:.0f}"] if "peak_rss" in rt else [rt.get("skipped", "?")] * 3
        cells += [f"{ref['ttft_s']:.2f}", f"{ref['decode_ms']:.1f}", f"{ref['peak_rss'] / 2**20:.0f}"] if "peak_rss" in ref else [ref.get("skipped", "?"), "", ""]
        cells.append({True: "yes", False: "NO"}.get(ref.get("tokens_match_runtime"), "-"))
        lines.append("| " + " | ".join(cells) + " |")
    if "rss_slope_bytes_per_token" in r:
        lo, hi = r.get("rss_slope_between_images", ["?", "?"])
        verdict = "within" if abs(r["rss_slope_vs_kv"] - 1) <= 0.10 else "NOT within"
        lines.append(f"\nPeak-RSS slope from {lo} to {hi} images: {r['rss_slope_bytes_per_token']:.0f} B per context token; "
                     f"the plan's K/V is {r['kv_bytes_per_token']} B per token: ratio {r['rss_slope_vs_kv']:.3f}, {verdict} 10%.")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for side, style in (("runtime", "o-"), ("reference", "s--")):
        pts = [x for x in r[side] if "peak_rss" in x]
        if not pts:
            continue
        n = [x["images"] for x in pts]
        ax1.plot(n, [x["peak_rss"] / 2**20 for x in pts], style, label="hmexport" if side == "runtime" else "transformers")
        ax2.plot(n, [x["ttft_s"] for x in pts], style, label=("hmexport" if side == "runtime" else "transformers") + " TTFT")
        ax2.plot(n, [x["decode_ms"] / 1e3 for x in pts], style[0] + ":", label=("hmexport" if side == "runtime" else "transformers") + " decode/token")
    if "rss_slope_between_images" in r:  # what the plan predicts: the smaller run's peak + K/V of the extra tokens
        lo, hi = ([x for x in r["runtime"] if x["images"] == n and "peak_rss" in x][0] for n in r["rss_slope_between_images"])
        n = np.geomspace(lo["images"], hi["images"], 50)  # linear in tokens, so curved on the log axis
        grown = (n - lo["images"]) * r["tokens_per_image"] * r["kv_bytes_per_token"]
        ax1.plot(n, (lo["peak_rss"] + grown) / 2**20, "k:", label="+ K/V per token (plan)")
    for ax, title, unit in ((ax1, "peak RSS", "MiB"), (ax2, "latency", "s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("images in context (144 tokens each)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="1,10,100,1000")
    parser.add_argument("--out", default="docs/scaling")
    parser.add_argument("--reference-cap-s", type=float, default=900)
    parser.add_argument("--reference-max-context", type=int, default=60_000, help="skip the reference above this many tokens (mask memory)")
    parser.add_argument("--worker", choices=["runtime", "reference"])
    parser.add_argument("--path")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.worker:
        fn = worker_runtime if args.worker == "runtime" else worker_reference
        print(json.dumps(fn(Path(args.path), args.n)))
        return
    result = run([int(x) for x in args.images.split(",")], args.reference_cap_s, args.reference_max_context)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
