"""Token sampling and the streaming generation loop (prefill, then decode one token at a time)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """Greedy when ``temperature`` is 0 (the default); otherwise softmax sampling after top-k / top-p."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None  # None: the bundle's EOS ids; () never stops early

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature: expected >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k: expected >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p: expected 0 < top_p <= 1, got {self.top_p}")

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from logits (V,)."""
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < scores.size:
        cut = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores < cut, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]  # smallest set reaching top_p
        mask = np.zeros_like(probs)
        mask[keep] = probs[keep]
        probs = mask / mask.sum()
    return int(rng.choice(probs.size, p=probs))


def generate_tokens(session, prompt_ids: Sequence[int], params: SamplingParams, prefill: Callable[[], np.ndarray] | None = None) -> Iterator[int]:
    """``prefill``, when given, runs the prompt (images spliced in) and returns the last logits."""
    rng = np.random.default_rng(params.seed)
    stop = set(params.stop_ids or ())
    logits = session.prefill(prompt_ids) if prefill is None else prefill()
    for i in range(params.max_new_tokens):
        token = sample(logits, params, rng)
        yield token
        if token in stop or i + 1 == params.max_new_tokens:
            return
        logits = session.decode(token)
