"""scripts/train_fixtures.py --smoke writes checkpoints + eval sets that build, quantize and report through the
harness, and writes the same bytes when run again (the committed fixtures are checked in tests/fixtures/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hmexport.export.build import BuildOptions, build
from hmexport.quantize import QuantOptions, quantize_bundle

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_fixtures.py"


def train(out: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--smoke", *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "matches transformers" in r.stdout  # the training scan kernel was checked against transformers'


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fixtures")
    train(out)
    assert sorted(p.name for p in out.iterdir()) == ["kv-jamba", "kv-mamba", "shapes-llava"]  # no partial directories
    return out


@pytest.mark.parametrize("name", ["kv-jamba", "kv-mamba", "shapes-llava"])
def test_smoke_fixture_builds_and_quantizes_with_its_eval_set(smoke, tmp_path, name):
    ckpt = smoke / name
    assert (ckpt / "eval" / "eval.jsonl").is_file() and (ckpt / "eval" / "calib.jsonl").is_file()
    build(str(ckpt), tmp_path / "fp32", BuildOptions(validate=False))
    manifest, report = quantize_bundle(tmp_path / "fp32", tmp_path / "fp8", QuantOptions("fp8"))  # eval/ found through the manifest's source
    (es,) = report["eval_sets"]
    assert es["eval_set"] == name and es["n"] > 0 and set(es["tasks"]) and manifest.quantization["accuracy"]["eval_sets"][name]["n"] == es["n"]
    if name == "shapes-llava":
        assert manifest.quantization["graphs"]["vision"]["quantized"] > 0  # calibrated on calib.jsonl's images


def test_training_is_deterministic(smoke, tmp_path):
    train(tmp_path, "--only", "kv-mamba")
    for rel in ("model.safetensors", "eval/eval.jsonl", "eval/calib.jsonl"):
        assert (tmp_path / "kv-mamba" / rel).read_bytes() == (smoke / "kv-mamba" / rel).read_bytes(), rel
