"""``hmexport.bench``: one tiny run of both halves, checked for shape and arithmetic, never for speed."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hmexport.bench import format_markdown, run_bench  # noqa: E402
from hmexport.bench.run import RATIO_KEYS  # noqa: E402
from hmexport.bundle.weights import read_header  # noqa: E402
from hmexport.errors import InputError  # noqa: E402
from tolerances import FP32_LOGITS  # noqa: E402

PROMPT, NEW = 32, 4
HALVES = ("hmexport", "transformers")
TIMED = ("prefill_tok_s", "ttft_ms", "decode_tok_s", "decode_ms_per_token")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, Path]:
    from hmexport.export.build import BuildOptions, build

    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HMEXPORT_CACHE", str(root / "cache"))
        build("jamba-tiny", root / "jamba-tiny", BuildOptions(max_tokens=256, chunk=32, validate=False))
        result = run_bench(root / "jamba-tiny", root / "cache" / "presets" / "jamba-tiny", prompt_tokens=PROMPT, new_tokens=NEW, repeats=1)
    return result, root / "jamba-tiny"


def _numbers(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_structure(bench):
    result, _ = bench
    for key in ("schema", "date", "params", "model", "versions", "device", "bandwidth", "bound", *HALVES, "ratios", "decode_vs_bound", "agreement"):
        assert key in result, f"result: missing {key!r}; has {sorted(result)}"
    want = {"prompt_tokens": PROMPT, "new_tokens": NEW, "repeats": 1, "warmup": 1, "prefill_chunk": 32, "max_tokens": 256}
    assert {k: result["params"][k] for k in want} == want
    assert result["params"]["threads"] >= 1
    assert set(result["versions"]) == {"hmexport", "onnxruntime", "torch", "transformers", "numpy", "python"}
    assert all(result["versions"].values()), result["versions"]
    for key in ("cpu", "usable_cpus", "ram_bytes"):
        assert result["device"][key], f"device.{key}: {result['device'][key]!r}"
    assert "jamba" in result["model"]["description"]
    for half in HALVES:
        for key in TIMED:
            s = result[half][key]
            assert s["min"] <= s["median"] <= s["max"], f"{half}.{key}: {s}"
        assert len(result[half]["runs_s"]) == 1


def test_every_number_positive_and_finite(bench):
    result, _ = bench
    for path, value in _numbers({k: v for k, v in result.items() if k not in ("params", "agreement")}):
        assert math.isfinite(value) and value > 0, f"result{path} = {value!r}: expected a positive finite number"


def test_ratios_are_the_quotients(bench):
    result, _ = bench
    ours, theirs = result["hmexport"], result["transformers"]
    for key in RATIO_KEYS:
        a, b = (h[key]["median"] if isinstance(h[key], dict) else h[key] for h in (ours, theirs))
        assert result["ratios"][key] == pytest.approx(a / b, rel=1e-12), f"ratios.{key}"
    bound = result["bound"]
    for half in HALVES:
        ms = result[half]["decode_ms_per_token"]["median"]
        assert result["decode_vs_bound"][half] == pytest.approx(ms / bound["active_ms_per_token"], rel=1e-12)
        assert result["decode_vs_all_bound"][half] == pytest.approx(ms / bound["all_ms_per_token"], rel=1e-12)
    gb_s = result["bandwidth"]["gb_s"]
    assert bound["bandwidth_gb_s"] == gb_s
    assert bound["all_ms_per_token"] == pytest.approx(bound["all_weight_bytes"] / (gb_s * 1e9) * 1e3, rel=1e-12)


def test_weight_bytes(bench):
    """jamba-tiny: all tensors; active = all - the embedding table + one row - half of each MoE layer's experts (top-2 of 4)."""
    result, bundle = bench
    _, header = read_header(bundle / "weights.safetensors")
    size = {k: h["data_offsets"][1] - h["data_offsets"][0] for k, h in header.items()}
    experts = sum(v for k, v in size.items() if ".mlp.experts." in k)
    assert experts > 0
    V, D = header["embed.weight"]["shape"]
    want = sum(size.values()) - size["embed.weight"] + D * 4 - experts // 2
    assert result["bound"]["all_weight_bytes"] == sum(size.values())
    assert result["bound"]["active_weight_bytes"] == want


def test_both_halves_compute_the_same_logits(bench):
    """The reference's decode steps feed one id with its cache: a cache-less step would not match the runtime."""
    result, _ = bench
    for key, diff in result["agreement"].items():
        assert 0 <= diff <= FP32_LOGITS, f"agreement.{key} = {diff:.3g} > {FP32_LOGITS}"


def test_markdown(bench):
    result, _ = bench
    text = format_markdown(result)
    assert "| metric | hmexport | transformers | ratio |" in text
    for row in ("prefill tok/s", "time to first token", "decode tok/s", "decode ms/token", "peak RSS"):
        assert f"| {row}" in text, f"markdown: no {row!r} row:\n{text}"
    assert "decode bound, active weights" in text and "memory bandwidth" in text


def test_too_many_tokens_is_an_input_error(bench):
    _, bundle = bench
    with pytest.raises(InputError, match="max_tokens 256"):
        run_bench(bundle, bundle, prompt_tokens=250, new_tokens=10)


def test_import_is_torch_free():
    code = "import sys, hmexport.bench; bad = [m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules]; sys.exit(', '.join(bad) or None)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"importing hmexport.bench pulled in {proc.stderr.strip()}"
