"""What a quantized bundle loses, measured with the runtime itself against its fp32 source bundle.

- task accuracy on the trained fixtures' eval sets (greedy exact match of the answer tokens), fp32 and
  quantized, and the drop in percentage points against the precision's threshold;
- top-1 agreement with fp32 over generated tokens: fp32 greedily generates ``new_tokens`` after each
  prompt, then both bundles score that same sequence (teacher forcing) and their argmaxes are compared;
- the mean KL(fp32 || quantized) of the next-token distributions at those positions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ValidationFailed
from .evalset import EvalSet, Example

THRESHOLDS = {"int8": 1.0, "int4": 2.0, "fp8": 1.0}  # largest allowed task-accuracy drop, percentage points
AGREEMENT_PROMPTS = 32
NEW_TOKENS = 16

Advance = Callable[[int], None]


def task_accuracy(bundle, examples: Sequence[Example], advance: Advance = lambda n: None) -> dict[str, list[int]]:
    """task -> [correct, total]; each example prefilled from a fresh state, then greedy for len(answer) tokens."""
    session = bundle.session()
    out: dict[str, list[int]] = {}
    for ex in examples:
        session.reset()
        got = list(session.generate(ex.input_ids, images=[str(p) for p in ex.images], max_new_tokens=len(ex.answer_ids), stop_ids=()))
        tally = out.setdefault(ex.task, [0, 0])
        tally[0] += int(got == ex.answer_ids)
        tally[1] += 1
        advance(1)
    return out


def agreement(quantized, reference, prompts: Sequence[tuple[list[int], list[str]]], new_tokens: int = NEW_TOKENS, advance: Advance = lambda n: None) -> dict[str, Any]:
    """Top-1 agreement and mean KL(reference || quantized) over the reference's greedy continuations."""
    ref, q = reference.session(), quantized.session()
    agree, kls = [], []
    for ids, images in prompts:
        ref.reset()
        generated = list(ref.generate(ids, images=images, max_new_tokens=new_tokens, stop_ids=()))
        sequence = list(ids) + generated[:-1]
        logits = []
        for s in (ref, q):
            s.reset()
            _, embeds = s.prompt_embeds(sequence, images)
            logits.append(s.prefill_embeds(embeds, keep=len(generated))[0])
        p, lq = _log_softmax(logits[0]), _log_softmax(logits[1])
        agree.extend((logits[0].argmax(-1) == logits[1].argmax(-1)).tolist())
        kls.extend(np.sum(np.exp(p) * (p - lq), axis=-1).tolist())
        advance(1)
    return {"prompts": len(prompts), "tokens": len(agree), "top1_agreement": float(np.mean(agree)), "mean_kl": float(np.mean(kls))}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def eval_report(name: str, fp32: dict[str, list[int]], quantized: dict[str, list[int]], threshold: float) -> dict[str, Any]:
    def pct(t: dict[str, list[int]]) -> float:
        correct, total = (sum(v[i] for v in t.values()) for i in (0, 1))
        return 100.0 * correct / total

    tasks = {task: {"n": fp32[task][1], "fp32": 100.0 * fp32[task][0] / fp32[task][1], "quantized": 100.0 * quantized[task][0] / quantized[task][1]} for task in sorted(fp32)}
    a, b = pct(fp32), pct(quantized)
    return {"eval_set": name, "n": sum(v[1] for v in fp32.values()), "fp32": a, "quantized": b, "drop": a - b, "threshold": threshold, "passed": a - b <= threshold, "tasks": tasks}


def measure(quantized, reference, eval_sets: Sequence[EvalSet], precision: str, *, agreement_prompts: Sequence[tuple[list[int], list[str]]] = (),
            progress=None, fp32_cache: dict | None = None) -> dict[str, Any]:
    """The full accuracy report of ``quantized`` against its fp32 ``reference`` bundle (both runtime Bundles).
    ``fp32_cache`` (a dict kept by the caller) holds the reference's tallies across calls with the same sets."""
    progress = progress or (lambda desc, total: (lambda n: None))
    threshold = THRESHOLDS[precision]
    cache = {} if fp32_cache is None else fp32_cache
    sets = []
    for es in eval_sets:
        key = (str(es.path), len(es.examples))
        advance = progress(f"eval {es.name}", (1 if key in cache else 2) * len(es.examples))
        fp32 = cache[key] if key in cache else cache.setdefault(key, task_accuracy(reference, es.examples, advance))
        sets.append(eval_report(es.name, fp32, task_accuracy(quantized, es.examples, advance), threshold))
    agree = agreement(quantized, reference, agreement_prompts, advance=progress("top-1 agreement", len(agreement_prompts))) if agreement_prompts else None
    return {"precision": precision, "threshold_points": threshold, "eval_sets": sets, "agreement": agree, "passed": all(s["passed"] for s in sets) if sets else None}


def prompts_from(eval_sets: Sequence[EvalSet], fallback: Callable[[], list[list[int]]], per_set: int = AGREEMENT_PROMPTS) -> list[tuple[list[int], list[str]]]:
    """Agreement prompts: the first examples of each eval set, or ``fallback()`` token prompts without one."""
    if not eval_sets:
        return [(ids, []) for ids in fallback()]
    return [(ex.input_ids, [str(p) for p in ex.images]) for es in eval_sets for ex in es.examples[:per_set]]


def raise_if_failed(report: dict[str, Any], where: str) -> None:
    bad = [f"{s['eval_set']}: {s['quantized']:.1f}% vs fp32 {s['fp32']:.1f}% (drop {s['drop']:.1f} points > {s['threshold']:g})" for s in report["eval_sets"] if not s["passed"]]
    if bad:
        raise ValidationFailed(f"{where}: {report['precision']} loses more task accuracy than allowed: " + "; ".join(bad) + "; keep more layers in float32 with --keep (docs/quantization.md)")


def format_report(report: dict[str, Any]) -> list[str]:
    lines = []
    for s in report["eval_sets"]:
        verdict = "ok" if s["passed"] else "FAILED"
        lines.append(f"{s['eval_set']:16s} n={s['n']:4d}  fp32 {s['fp32']:5.1f}%  {report['precision']} {s['quantized']:5.1f}%  drop {s['drop']:+.1f} points (limit {s['threshold']:g})  {verdict}")
        for task, t in s["tasks"].items():
            lines.append(f"  {task:14s} n={t['n']:4d}  fp32 {t['fp32']:5.1f}%  {report['precision']} {t['quantized']:5.1f}%")
    if report.get("agreement"):
        a = report["agreement"]
        lines.append(f"top-1 agreement with fp32 {100 * a['top1_agreement']:.1f}% over {a['tokens']} generated tokens ({a['prompts']} prompts); mean KL {a['mean_kl']:.4f}")
    if not report["eval_sets"]:
        lines.append("no eval set: task accuracy not measured (pass --eval DIR: a trained checkpoint with eval/eval.jsonl; docs/quantization.md)")
    return lines
