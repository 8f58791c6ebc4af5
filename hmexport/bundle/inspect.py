"""``hmexport inspect``: a bundle's manifest with the derived numbers (state bytes per token and per layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import read_manifest


def describe(root: Path) -> dict[str, Any]:
    m = read_manifest(Path(root), verify=True)
    per_layer = []
    for layer in m.state:
        kv = sum(_nbytes(t.shape) for t in layer.tensors if t.kind == "kv")
        rec = sum(_nbytes(t.shape) for t in layer.tensors if t.kind == "recurrent")
        per_layer.append({"layer": layer.layer, "mixer": layer.mixer, "kv_bytes_per_token": kv, "recurrent_bytes": rec})
    kv_token = m.kv_bytes_per_token()
    return {
        "bundle": str(root),
        "model": m.model,
        "precision": m.precision,
        "limits": {"max_tokens": m.limits.max_tokens, "prefill_chunk": m.limits.prefill_chunk},
        "graphs": {name: {"file": g.file, "inputs": [vars(t) for t in g.inputs], "outputs": [vars(t) for t in g.outputs]} for name, g in m.graphs.items()},
        "state": {
            "kv_bytes_per_token": kv_token,
            "recurrent_bytes": m.recurrent_bytes(),
            "kv_bytes_at_max_tokens": kv_token * m.limits.max_tokens,
            "layers": per_layer,
        },
        "files": {name: {"bytes": f.bytes, "sha256": f.sha256} for name, f in m.files.items()},
        "total_bytes": sum(f.bytes for f in m.files.values()),
        "tokenizer": m.tokenizer.file if m.tokenizer else None,
        "generation": vars(m.generation),
        "provenance": vars(m.provenance),
        "validation": m.validation,
        "vision": m.vision,
        "quantization": m.quantization,
    }


def render(info: dict[str, Any]) -> str:
    model, st = info["model"], info["state"]
    plan = "".join("A" if layer["mixer"] == "attention" else "M" for layer in model["layers"])
    lines = [
        f"bundle     {info['bundle']}  ({_mb(info['total_bytes'])}, {info['precision']})",
        f"model      {model['arch']}: {len(model['layers'])} layers [{plan}], D={model['hidden_size']}, V={model['vocab_size']}",
        f"limits     max_tokens {info['limits']['max_tokens']}, prefill chunk {info['limits']['prefill_chunk']}",
        f"state      K/V {st['kv_bytes_per_token']:,} B/token ({_mb(st['kv_bytes_at_max_tokens'])} at max_tokens); recurrent {st['recurrent_bytes']:,} B (constant)",
    ]
    for layer in st["layers"]:
        lines.append(f"  layer {layer['layer']:3d} {layer['mixer']:9s} K/V {layer['kv_bytes_per_token']:8,} B/token   recurrent {layer['recurrent_bytes']:10,} B")
    for name, g in info["graphs"].items():
        lines.append(f"graph      {name} ({g['file']}): {len(g['inputs'])} inputs, {len(g['outputs'])} outputs")
        for t in g["inputs"][:3] + g["outputs"][:3]:
            lines.append(f"  {t['name']:20s} {t['dtype']:8s} {t['shape']}")
    for name, f in info["files"].items():
        lines.append(f"file       {name:22s} {_mb(f['bytes']):>10s}  sha256 {f['sha256'][:16]}")
    lines.append(f"tokenizer  {info['tokenizer'] or 'none (use --input-ids)'}")
    if info.get("vision"):
        v, pre = info["vision"], info["vision"]["preprocess"]
        lines.append(f"vision     {model['vision']['encoder']} {pre['size']}px -> {v['tokens_per_image']} rows per image (image token id {v['image_token_id']}); "
                     f"resize {pre['resample']}, pad to square: {pre['pad_to_square']}")
    prov = info["provenance"]
    lines.append(f"source     {prov['preset'] or prov['source']}  sha256 {prov['source_sha256'][:16]}  hmexport {prov['tool_version']}")
    if info["validation"]:
        v = info["validation"]
        lines.append(f"validation {'passed' if v['passed'] else 'FAILED'}: max abs diff {v['max_abs_diff']}, tokens match {v['tokens_match']}")
    q = info.get("quantization")
    if q:
        graphs = ", ".join(f"{g} {v['quantized']} MatMuls" + (f" (kept float32: {', '.join(v['kept'])})" if v["kept"] else "") for g, v in q["graphs"].items())
        lines.append(f"quantized  {q['precision']}" + (f", block {q['block_size']}, accuracy_level {q['accuracy_level']}" if "block_size" in q else "") + f": {graphs}"
                     + (f"; embedding {q['embedding']}" if "embedding" in q else ""))  # fmt: skip
        acc = q.get("accuracy") or {}
        sets = "; ".join(f"{name} {v['fp32']:.1f}% -> {v['quantized']:.1f}%" for name, v in acc.get("eval_sets", {}).items()) or "no eval set"
        verdict = {True: "passed", False: "FAILED", None: "not judged"}[acc.get("passed")]
        extra = f"; top-1 agreement {100 * acc['top1_agreement']:.1f}%, mean KL {acc['mean_kl']:.4f}" if "top1_agreement" in acc else ""
        lines.append(f"accuracy   {verdict} (limit {acc.get('threshold_points', '?')} points): {sets}{extra}")
    return "\n".join(lines)


def _nbytes(shape: list[int]) -> int:
    n = 4
    for d in shape:
        n *= d
    return n


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
