"""Acceptance (issues #3, #6): greedy 64 tokens identical to transformers' generate, for Jamba with
MoE, Jamba dense and Mamba-1, prompt lengths 1, 17 and 300, prefill chunk lengths 1, 7 and 64, with
standard ONNX ops and with hmexport's fused ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import MODELS, assert_close
from tolerances import CHUNKING_FP32, FP32_LOGITS

NEW_TOKENS = 64
PROMPT_LENGTHS = (1, 17, 300)
CHUNKS = (1, 7, 64)
_reference_cache: dict = {}


def _prompt(n: int) -> list[int]:
    return np.random.default_rng(n).integers(3, 512, size=n).tolist()


def _reference_tokens(model, name: str, n: int) -> list[int]:
    key = (name, n)
    if key not in _reference_cache:
        ids = torch.tensor([_prompt(n)])
        model.generation_config.eos_token_id = None  # compare all 64 tokens: neither side stops early
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=0)
        _reference_cache[key] = out[0, n:].tolist()
    return _reference_cache[key]


@pytest.fixture(scope="module")
def opened(bundles, fused_bundles):
    from hmexport.runtime import Bundle

    out = {(name, "standard"): Bundle.open(path) for name, path in bundles.items()}
    out.update({(name, "fused"): Bundle.open(path) for name, path in fused_bundles.items()})
    return out


@pytest.mark.parametrize("ops", ["standard", "fused"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("n", PROMPT_LENGTHS)
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_tokens_identical(opened, references, name, n, chunk, ops):
    want = _reference_tokens(references[name], name, n)
    got = list(opened[name, ops].session(chunk=chunk).generate(_prompt(n), max_new_tokens=NEW_TOKENS, stop_ids=()))
    assert len(want) == NEW_TOKENS
    mismatch = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert got == want, f"{name} ({ops} ops), prompt {n}, chunk {chunk}: first mismatch at {mismatch}: got {got[mismatch]}, want {want[mismatch]}"


@pytest.mark.parametrize("ops", ["standard", "fused"])
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_per_position_match(opened, references, name, ops):
    ids = _prompt(300)
    with torch.no_grad():
        want = references[name](torch.tensor([ids])).logits.numpy()
    session = opened[name, ops].session()
    whole = session.prefill_embeds(session.embed(ids), chunk=300, keep=300)
    assert_close(f"{name} ({ops}) decoder logits", whole, want, FP32_LOGITS)
    session.reset()
    chunked = session.prefill_embeds(session.embed(ids), chunk=7, keep=300)
    assert_close(f"{name} chunked vs whole", chunked, whole, CHUNKING_FP32)


@pytest.mark.parametrize("name", list(MODELS))
def test_embed_graph_matches(opened, references, name):
    ids = _prompt(17)
    with torch.no_grad():
        want = references[name].get_input_embeddings()(torch.tensor([ids])).numpy()
    assert_close(f"{name} embed", opened[name, "standard"].session().embed(ids), want, 0.0)
