"""Per-group sensitivity: quantize one group of MatMuls at a time, everything else float32, measure the loss.

Groups are the kinds of site across layers (``layers.*.mixer.in_proj``, ``layers.*.mlp.experts.*.down_proj``,
``lm_head``, ...) and then each layer as a whole. The table (task-accuracy drop, top-1 agreement, KL per
group) is what the defaults of ``--keep`` rest on (docs/quantization.md).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..bundle.io import read_manifest, resolve
from ..bundle.weights import read_header
from .bundle import default_eval_dirs, quantize_bundle
from .passes import QuantOptions, select, tied_head, wants

import onnx


def site_groups(bundle_dir: str | Path, options: QuantOptions) -> tuple[list[str], list[str]]:
    """(kind patterns, layer patterns) covering every quantizable site of the bundle's decoder and vision graphs."""
    manifest = read_manifest(Path(bundle_dir), verify=False)
    weights = set(read_header(resolve(Path(bundle_dir), manifest.weights))[1])
    sites: list[str] = []
    for name, info in manifest.graphs.items():
        if name == "decoder" or (name == "vision" and options.quantize_vision):
            model = onnx.load(str(resolve(Path(bundle_dir), info.file)), load_external_data=False)
            sites += select(model, options.keep, weights).quantize.values()
            if name == "decoder" and tied_head(model, weights) is not None and wants("lm_head", options):
                sites.append("lm_head")  # a tied head, quantized from its own copy (passes.untie_head)
    kinds = sorted({re.sub(r"\.\d+(?=\.|$)", ".*", s) for s in sites})
    layers = sorted({m.group(0) + ".*" for s in sites if (m := re.match(r"layers\.\d+", s))}, key=lambda p: int(p.split(".")[1]))
    return kinds, layers


def sweep(bundle_dir: str | Path, options: QuantOptions, *, eval_dirs: Sequence[str | Path] | None = None, eval_limit: int | None = 200,
          by_layer: bool = True, progress=None) -> dict[str, Any]:
    """Quantize each group alone into a scratch bundle and measure it; returns {"kind": [...], "layer": [...]}."""
    bundle_dir = Path(bundle_dir)
    kinds, layers = site_groups(bundle_dir, options)
    if eval_dirs is None:
        eval_dirs = default_eval_dirs(read_manifest(bundle_dir, verify=False))
    cache: dict = {}
    out: dict[str, Any] = {"precision": options.precision, "eval_dirs": [str(d) for d in eval_dirs], "eval_limit": eval_limit, "kind": [], "layer": []}
    with tempfile.TemporaryDirectory(prefix="hmexport-sensitivity-") as tmp:
        for table, groups in (("kind", kinds), ("layer", layers if by_layer else [])):
            for i, group in enumerate(groups):
                _, report = quantize_bundle(bundle_dir, Path(tmp) / f"{table}{i}", replace(options, only=(group,)), eval_dirs=eval_dirs,
                                            eval_limit=eval_limit, progress=progress, fp32_cache=cache)  # fmt: skip
                out[table].append({"group": group, **_row(report)})
    return out


def _row(report: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"drop": max((s["drop"] for s in report["eval_sets"]), default=None)}
    row["eval_sets"] = {s["eval_set"]: round(s["quantized"], 2) for s in report["eval_sets"]}
    if report["agreement"]:
        row["top1_agreement"] = report["agreement"]["top1_agreement"]
        row["mean_kl"] = report["agreement"]["mean_kl"]
    return row


def format_markdown(result: dict[str, Any]) -> str:
    lines = []
    for table in ("kind", "layer"):
        if not result[table]:
            continue
        lines += [f"| {table} group ({result['precision']} alone) | worst accuracy drop (points) | top-1 agreement | mean KL |", "|---|---:|---:|---:|"]
        for r in result[table]:
            drop = "n/a" if r["drop"] is None else f"{r['drop']:+.1f}"
            lines.append(f"| `{r['group']}` | {drop} | {100 * r.get('top1_agreement', float('nan')):.1f}% | {r.get('mean_kl', float('nan')):.4f} |")
        lines.append("")
    return "\n".join(lines)
