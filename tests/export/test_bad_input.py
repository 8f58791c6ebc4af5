"""Bad input gets one clear error naming the problem, and leaves nothing behind (issue #3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hmexport.errors import BundleError, CheckpointError, InputError, UnsupportedModelError
from hmexport.export.build import BuildOptions, build


def _build(src: Path, out: Path):
    return build(str(src), out, BuildOptions(max_tokens=64, chunk=16, validate=False))


def _assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "a staging directory was left behind"


@pytest.fixture
def ckpt_copy(checkpoints, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoints["jamba-moe"], dst)
    return dst


def test_missing_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        _build(ckpt_copy, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_unknown_model_type(ckpt_copy, tmp_path):
    config = json.loads((ckpt_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=r"model_type: expected one of (cobra, )?jamba, llava, (llava_jamba, )?mamba, got 'gpt2'"):
        _build(ckpt_copy, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_truncated_safetensors(ckpt_copy, tmp_path):
    weights = ckpt_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated safetensors file"):
        _build(ckpt_copy, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def _rewrite_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_tensor_with_wrong_shape(ckpt_copy, tmp_path):
    key = "model.layers.0.mamba.A_log"
    _rewrite_weights(ckpt_copy / "model.safetensors", lambda t: t.__setitem__(key, t[key][:, :4].contiguous()))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mamba\.A_log': expected shape \[128, 8\], got \[128, 4\]"):
        _build(ckpt_copy, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_missing_tensor(ckpt_copy, tmp_path):
    key = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_weights(ckpt_copy / "model.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.1\.self_attn\.k_proj\.weight' is missing \(expected shape \[32, 64\]\)"):
        _build(ckpt_copy, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_sharded_checkpoint_builds(tmp_path):
    from helpers import JAMBA_MOE
    from hmexport.models.presets import write_checkpoint

    src = write_checkpoint("jamba", JAMBA_MOE, tmp_path / "sharded", seed=3, shards=3)
    assert (src / "model.safetensors.index.json").is_file()
    manifest = _build(src, tmp_path / "out")
    assert manifest.model["arch"] == "jamba"


def test_existing_out_is_refused(bundles, checkpoints):
    with pytest.raises(BundleError, match="already exists"):
        _build(checkpoints["mamba"], bundles["mamba"])


@pytest.fixture
def bundle_copy(bundles, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundles["jamba-moe"], dst)
    return dst


def test_bundle_with_missing_graph(bundle_copy):
    from hmexport.runtime import Bundle

    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"decoder\.onnx: missing"):
        Bundle.open(bundle_copy)


def test_bundle_with_edited_graph(bundle_copy):
    from hmexport.runtime import Bundle

    with open(bundle_copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"decoder\.onnx: sha256 mismatch"):
        Bundle.open(bundle_copy)


def test_bundle_with_unknown_manifest_version(bundle_copy):
    from hmexport.runtime import Bundle

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"schema_version: expected one of 1, 2, got 99"):
        Bundle.open(bundle_copy)


def test_schema_v1_bundle_still_opens(bundle_copy):
    """Version 2 only added `quantization`: a version-1 manifest reads as is."""
    from hmexport.runtime import Bundle

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["quantization"] is None
    manifest["schema_version"] = 1
    del manifest["quantization"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle.open(bundle_copy).manifest.precision == "fp32"


def test_manifest_unknown_key_and_escaping_path(bundle_copy):
    from hmexport.runtime import Bundle

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["limits"]["max_tokenz"] = 5
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest\.json\.limits: unknown key 'max_tokenz'"):
        Bundle.open(bundle_copy)
    del manifest["limits"]["max_tokenz"]
    manifest["files"]["../outside.onnx"] = manifest["files"]["decoder.onnx"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"must be a relative path inside the bundle"):
        Bundle.open(bundle_copy)


def test_prompt_longer_than_max_tokens(bundles):
    from hmexport.runtime import Bundle

    session = Bundle.open(bundles["jamba-moe"]).session()
    with pytest.raises(InputError, match=r"513 more tokens do not fit: 0 already in context \+ 513 > max_tokens 512"):
        list(session.generate(list(range(3, 516)), max_new_tokens=1))
    with pytest.raises(InputError, match=r"max_tokens 512"):
        list(session.generate(list(range(3, 500)), max_new_tokens=64))
    assert session.length == 0, "a refused request must not consume state"
