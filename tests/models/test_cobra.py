"""Cobra's native release (prismatic pickle + timm towers) -> a safetensors checkpoint, only on request."""

from __future__ import annotations

import argparse
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

import cobra_replica as replica  # noqa: E402
from hmexport.errors import CheckpointError, UnsupportedModelError  # noqa: E402
from hmexport.models.cobra import convert_prismatic  # noqa: E402


@pytest.fixture()
def native(tmp_path):
    return replica.write_replica(tmp_path / "native")


def _convert(paths, out, **kwargs):
    kwargs.setdefault("allow_pickle", True)
    return convert_prismatic(paths["pickle"], out, dino_weights=paths["dino"], siglip_weights=paths["siglip"], backbones=replica.BACKBONES, **kwargs)


def test_pickle_is_refused_without_the_flag(native, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("torch.load must not run without allow_pickle")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CheckpointError, match=r"torch pickle.*never unpickles implicitly.*allow_pickle=True"):
        _convert(native, tmp_path / "out", allow_pickle=False)
    assert not (tmp_path / "out").exists()


def test_conversion_writes_a_checkpoint_hmexport_reads(native, tmp_path):
    from hmexport.models.registry import load, read_weights

    out = _convert(native, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["vision.dino.pos_embed"].shape == (1, 16, 32), "DINO positions resampled from 5x5 to the 4x4 grid"
    assert not any(k.startswith("vision.siglip.attn_pool.") for k in tensors), "SigLIP's unused pooling head is dropped"
    assert "language_model.lm_head.weight" not in tensors and "language_model.backbone.embeddings.weight" in tensors
    ckpt, spec = load(out)
    assert (spec.arch, spec.vocab_size, spec.tie_word_embeddings, spec.num_layers) == ("mamba", replica.PADDED_VOCAB, True, replica.LAYERS)
    assert (spec.vision.encoder, spec.vision.tokens_per_image, spec.vision.image_token_id) == ("dinosiglip", 16, replica.IMAGE_TOKEN)
    weights = read_weights(ckpt, spec)
    native_sd = torch.load(native["pickle"], weights_only=True)["model"]["llm_backbone"]
    assert (weights["embed.weight"] == native_sd["llm.backbone.embedding.weight"].numpy()).all()
    assert (weights["layers.2.mixer.A_log"] == native_sd["llm.backbone.layers.2.mixer.A_log"].numpy()).all()
    config = json.loads((out / "config.json").read_text())
    assert config["prismatic"]["vision_backbone_id"] == replica.VISION_ID and config["dino_config"]["num_register_tokens"] == 4


def test_pickle_with_objects_is_refused(native, tmp_path):
    native_sd = torch.load(native["pickle"], weights_only=True)
    native_sd["model"]["projector"]["evil"] = argparse.Namespace(x=1)  # not a tensor: weights_only refuses to rebuild it
    torch.save(native_sd, native["pickle"])
    with pytest.raises(CheckpointError, match="weights_only load refused it"):
        _convert(native, tmp_path / "out")


def test_unsupported_layouts_are_named(native, tmp_path):
    config = json.loads(native["config"].read_text())
    config["model"]["image_resize_strategy"] = "letterbox"
    native["config"].write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="image_resize_strategy: expected one of resize-naive, got 'letterbox'"):
        _convert(native, tmp_path / "out")


def test_untied_head_is_refused(native, tmp_path):
    data = torch.load(native["pickle"], weights_only=True)
    llm = data["model"]["llm_backbone"]
    llm["llm.lm_head.weight"] = llm["llm.lm_head.weight"].clone() + 1
    torch.save(data, native["pickle"])
    with pytest.raises(CheckpointError, match="llm.lm_head.weight: expected the tied embedding"):
        _convert(native, tmp_path / "out")


def test_reference_towers_match_timm(native, tmp_path):
    """The transformers composition and its key map against timm's own models (skipped without timm)."""
    timm = pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    from hmexport.models.cobra import DINO_MEAN, DINO_STD
    from hmexport.models.reference import load_reference

    ref = load_reference(_convert(native, tmp_path / "out"))
    # The architectures' own arguments (timm vit_large_patch14_reg4_dinov2, vit_so400m_patch14_siglip_384), tiny widths.
    dino = VisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=3, num_heads=2, init_values=1e-5, reg_tokens=4, no_embed_class=True, num_classes=0)
    siglip = VisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=3, num_heads=2, mlp_ratio=2, class_token=False, global_pool="map", num_classes=0)
    sd = load_file(str(native["dino"]))
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=(4, 4), num_prefix_tokens=0)
    dino.load_state_dict(sd)
    siglip.load_state_dict(load_file(str(native["siglip"])), strict=False)
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(DINO_MEAN).view(1, 3, 1, 1), torch.tensor(DINO_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        a = dino.eval().get_intermediate_layers((x - mean) / std, n={1})[0]
        b = siglip.eval().get_intermediate_layers((x - 0.5) / 0.5, n={1})[0]
        want = ref.projector(torch.cat([a, b], dim=-1))
        got = ref.image_features(x)
    assert (got - want).abs().max().item() < 1e-5


def test_cobra_tiny_preset_is_the_converted_replica(tmp_path):
    from hmexport.models.presets import write_preset
    from hmexport.models.registry import load

    out = write_preset("cobra-tiny", tmp_path / "preset", seed=5)
    again = replica.convert(tmp_path / "direct", seed=5)
    got, want = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)
    _, spec = load(out)
    assert spec.vision.encoder == "dinosiglip" and not any(p.name.startswith(".") for p in tmp_path.iterdir())
