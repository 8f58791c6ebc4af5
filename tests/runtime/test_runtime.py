"""The torch-free runtime: imports, weight sharing, state ownership, fork/reset, sampling, K/V in place."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hmexport.errors import InputError
from hmexport.runtime import Bundle, SamplingParams
from hmexport.runtime.generate import sample


def test_runtime_import_does_not_load_torch_or_transformers():
    code = "import sys, hmexport.runtime, hmexport.bundle.io; bad = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"hmexport.runtime imported {done.stdout.strip()}"


@pytest.fixture(scope="module")
def jamba(bundles):
    return Bundle.open(bundles["jamba-moe"])


PROMPT = [5, 9, 44, 123, 301, 7, 7, 88, 42, 500, 3, 19]


def test_two_sessions_share_weights_not_state(jamba):
    a, b = jamba.session(), jamba.session()
    assert a._decoder is b._decoder  # one onnxruntime session, one copy of the weights
    expected = list(jamba.session().generate(PROMPT, max_new_tokens=8, stop_ids=()))
    a.prefill(PROMPT)
    assert b.length == 0 and all(not v.any() for v in b.state.recurrent.values())
    assert list(b.generate(PROMPT, max_new_tokens=8, stop_ids=())) == expected
    for key in a.state.kv:
        assert not np.shares_memory(a.state.kv[key], b.state.kv[key])


def test_tied_head_weights_are_one_buffer(bundles):
    import onnx

    uses = {g: {i.name for i in onnx.load(str(bundles["mamba"] / f"{g}.onnx"), load_external_data=False).graph.initializer} for g in ("embed", "decoder")}
    assert "embed.weight" in uses["embed"] & uses["decoder"]  # Gather in one graph, the tied head's Gemm in the other
    bundle = Bundle.open(bundles["mamba"])
    assert not [n for n in bundle.weights if n.startswith("lm_head")], "a tied head must not be stored twice"
    assert isinstance(bundle.weights["embed.weight"].base, np.memmap) or bundle.weights["embed.weight"].base is not None


def test_fork_continues_like_a_fresh_prefill(jamba):
    base = jamba.session()
    base.prefill(PROMPT[:8])
    fork = base.fork()
    continued = list(fork.generate(PROMPT[8:], max_new_tokens=10, stop_ids=()))
    fresh = list(jamba.session().generate(PROMPT, max_new_tokens=10, stop_ids=()))
    assert continued == fresh
    assert base.length == 8, "generating on the fork must not touch the original"


def test_reset_gives_the_same_output_again(jamba):
    session = jamba.session()
    first = list(session.generate(PROMPT, max_new_tokens=6, stop_ids=()))
    session.reset()
    assert session.length == 0
    assert list(session.generate(PROMPT, max_new_tokens=6, stop_ids=())) == first


def test_kv_rows_are_written_in_place(jamba):
    session = jamba.session()
    buffers = {k: v for k, v in session.state.kv.items()}
    session.prefill(PROMPT)
    session.decode(11)
    n = len(PROMPT) + 1
    for name, buf in session.state.kv.items():
        assert buf is buffers[name], "the K/V buffer must never be reallocated"
        assert np.abs(buf[0, :n]).reshape(n, -1).sum(axis=1).min() > 0, f"{name}: a filled row is empty"
        assert not buf[0, n:].any(), f"{name}: rows past the context were written"


def test_sampling_is_seeded_and_top_k_one_is_greedy(jamba):
    greedy = list(jamba.session().generate(PROMPT, max_new_tokens=8, stop_ids=()))
    top1 = list(jamba.session().generate(PROMPT, max_new_tokens=8, stop_ids=(), temperature=0.8, top_k=1, seed=1))
    assert top1 == greedy
    a = list(jamba.session().generate(PROMPT, max_new_tokens=12, stop_ids=(), temperature=1.5, seed=3))
    b = list(jamba.session().generate(PROMPT, max_new_tokens=12, stop_ids=(), temperature=1.5, seed=3))
    assert a == b


def test_top_p_keeps_the_smallest_set():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {sample(logits, SamplingParams(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert picks == {0, 1}


def test_stop_ids_end_generation(jamba):
    first = list(jamba.session().generate(PROMPT, max_new_tokens=5, stop_ids=()))
    stopped = list(jamba.session().generate(PROMPT, max_new_tokens=5, stop_ids=(first[1],)))
    assert stopped == first[: first.index(first[1]) + 1]


def test_bad_requests(jamba):
    session = jamba.session()
    with pytest.raises(InputError, match="token id 9999 is out of range: expected 0..511"):
        session.prefill([1, 9999])
    with pytest.raises(InputError, match="top_p: expected 0 < top_p <= 1, got 1.5"):
        SamplingParams(top_p=1.5)
    with pytest.raises(InputError, match="prompt is empty"):
        session.prefill([])
    with pytest.raises(InputError, match="max_tokens: expected 1..512"):
        jamba.session(max_tokens=10_000)


def test_request_over_free_memory_is_refused_with_the_arithmetic(jamba, monkeypatch):
    from hmexport.runtime import session as session_module

    monkeypatch.setattr(session_module, "available_memory", lambda: 10_000)
    session = jamba.session()
    with pytest.raises(InputError, match=r"more tokens need ~.* GiB \(K/V .* \+ peak activations .* at chunk 64\) but 0\.00 GiB are available"):
        session.generate(PROMPT, max_new_tokens=8)
    assert session.length == 0


def test_chunk_shrinks_under_the_activation_budget_without_changing_tokens(jamba, monkeypatch):
    from hmexport.runtime import session as session_module

    expected = list(jamba.session(chunk=64).generate(PROMPT * 20, max_new_tokens=6, stop_ids=()))
    monkeypatch.setattr(session_module, "ACTIVATION_BUDGET", 400_000)
    session = jamba.session(chunk=64)
    assert session.step() == 64 and (session.state.length == 0)
    session.state.length = 200
    assert session.step() < 64, "a long context must shrink the chunk"
    session.state.length = 0
    assert list(session.generate(PROMPT * 20, max_new_tokens=6, stop_ids=())) == expected


def test_threading_spins_only_inside_a_run():
    from hmexport.runtime.bundle import session_options

    spinning, parked = session_options(2), session_options(spin=False)
    assert spinning.intra_op_num_threads == 2 and parked.intra_op_num_threads == 0
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert parked.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for options in (spinning, parked):  # idle sessions never burn CPU
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
