"""``hmexport validate``: every graph and every greedy token against the transformers reference."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationFailed

REPORT_FILE = "validation.json"
TOLERANCE = {"fp32": 1e-4}  # max abs logit difference per graph (issue #3)
PROMPT_LENGTHS = (1, 17, 64)
CHUNKS = (None, 7)  # None: the whole prompt in one decoder call
NEW_TOKENS = 16


@dataclass
class Report:
    precision: str
    tolerance: float
    graphs: dict[str, float] = field(default_factory=dict)  # graph -> worst max abs diff
    checks: list[dict[str, Any]] = field(default_factory=list)
    generation: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d <= self.tolerance for d in self.graphs.values()) and all(g["match"] for g in self.generation)

    def summary(self) -> dict[str, Any]:
        return {"passed": self.passed, "tolerance": self.tolerance, "max_abs_diff": dict(self.graphs),
                "tokens_match": all(g["match"] for g in self.generation)}

    def dumps(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2) + "\n"

    def raise_if_failed(self, where: str) -> None:
        if self.passed:
            return
        bad = [f"{g}: max abs diff {d:.3g} > {self.tolerance:g}" for g, d in self.graphs.items() if d > self.tolerance]
        bad += [f"greedy tokens differ for a {g['prompt_len']}-token prompt from position {g['first_mismatch']}" for g in self.generation if not g["match"]]
        raise ValidationFailed(f"{where}: validation against the reference failed: " + "; ".join(bad))


def fixed_prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 1234, exclude: tuple[int, ...] = ()) -> list[list[int]]:
    """Seeded prompts over [3, V) (skipping pad/bos/eos where the vocabulary allows) without ``exclude`` (the image token)."""
    rng = np.random.default_rng(seed)
    low = min(3, vocab - 1)
    allowed = np.setdiff1d(np.arange(low, vocab), np.asarray(exclude, dtype=np.int64))
    return [rng.choice(allowed, size=n).tolist() for n in lengths]


def validate(bundle_dir: str | Path, reference_dir: str | Path, *, new_tokens: int = NEW_TOKENS, progress=None) -> Report:
    import torch

    from ..models.reference import load_reference
    from ..runtime import Bundle

    bundle = Bundle.open(bundle_dir)
    model = load_reference(reference_dir)
    precision = bundle.manifest.precision
    report = Report(precision=precision, tolerance=TOLERANCE.get(precision, 1e-4))
    vision = bundle.manifest.vision
    prompts = fixed_prompts(int(bundle.manifest.model["vocab_size"]), exclude=(vision["image_token_id"],) if vision else ())
    advance = progress("validating", len(prompts) * (len(CHUNKS) + 1)) if progress else (lambda n: None)
    if vision:
        _check_vision(report, bundle, model)
    for ids in prompts:
        with torch.no_grad():
            ref_embeds = model.get_input_embeddings()(torch.tensor([ids])).numpy()
            ref_logits = model(torch.tensor([ids])).logits.float().numpy()
        session = bundle.session()
        _record(report, "embed", len(ids), None, session.embed(ids), ref_embeds)
        for chunk in CHUNKS:
            session.reset()
            got = session.prefill_embeds(session.embed(ids), chunk=chunk or len(ids), keep=len(ids))
            _record(report, "decoder", len(ids), chunk, got, ref_logits)
            advance(1)
        report.generation.append(_compare_generation(bundle, model, ids, new_tokens))
        advance(1)
    return report


def _check_vision(report: Report, bundle, model) -> None:
    """The vision graph on seeded pixel batches (1 and 3 images) against the reference's image features."""
    import torch

    from .vision import vision_module

    from ..models.spec import VisionSpec

    spec = VisionSpec(**bundle.manifest.model["vision"])
    module = vision_module(model, spec)
    rng = np.random.default_rng(7)
    for n in (1, 3):
        pixels = rng.standard_normal((n, 3, spec.image_size, spec.image_size)).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(pixels)).numpy()
        got = bundle.sessions["vision"].run(None, {"pixel_values": pixels})[0]
        _record(report, "vision", n, None, got, want)


def _record(report: Report, graph: str, n: int, chunk: int | None, got: np.ndarray, want: np.ndarray) -> None:
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    report.graphs[graph] = max(report.graphs.get(graph, 0.0), diff)
    report.checks.append({"graph": graph, "prompt_len": n, "chunk": chunk, "max_abs_diff": diff})


def _compare_generation(bundle, model, ids: list[int], new_tokens: int) -> dict[str, Any]:
    import torch

    eos = list(bundle.manifest.generation.eos_token_ids)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0)
    want = out[0, len(ids):].tolist()
    got = list(bundle.session().generate(ids, max_new_tokens=new_tokens, stop_ids=tuple(eos)))
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None if len(got) == len(want) else min(len(got), len(want)))
    return {"prompt_len": len(ids), "new_tokens": new_tokens, "match": got == want, "first_mismatch": first, "runtime": got, "reference": want}
