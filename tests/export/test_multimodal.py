"""Acceptance (issue #4, LLaVA format): greedy tokens identical to LlavaForConditionalGeneration.generate
with 1, 3 and 8 images, Jamba and Mamba text models, real photographs and generated images; the
vision graph matches the reference's image features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_close
from tolerances import FP32_LOGITS

NEW_TOKENS = 32
TEXT_IDS = [40, 41, 42, 300, 17]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """name -> (checkpoint dir, bundle dir) for the two LLaVA presets."""
    from hmexport.export.build import BuildOptions, build
    from hmexport.models.presets import write_preset

    root = tmp_path_factory.mktemp("llava")
    out = {}
    for name in ("llava-jamba-tiny", "llava-mamba-tiny"):
        ckpt = write_preset(name, root / f"{name}-ckpt", seed=3)
        build(str(ckpt), root / name, BuildOptions(max_tokens=512, chunk=32, validate=False))
        out[name] = (ckpt, root / name)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Eight image files: scikit-image's sample photographs and generated images, mixed formats."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    arrays += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 61), (33, 200), (128, 128))]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(root / f"img{i}.{'jpg' if i % 2 else 'png'}")
        Image.fromarray(a).save(paths[-1])
    gray = root / "gray.png"
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8), mode="L").save(gray)
    return paths + [gray]


def _reference(ckpt: Path, images: list[Path]):
    from PIL import Image
    from transformers import AutoImageProcessor

    from hmexport.models.reference import load_reference

    processor = AutoImageProcessor.from_pretrained(str(ckpt))
    pixels = processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")["pixel_values"]
    return load_reference(ckpt), pixels


@pytest.mark.parametrize("n_images", [1, 3, 8])
@pytest.mark.parametrize("name", ["llava-jamba-tiny", "llava-mamba-tiny"])
def test_greedy_tokens_identical_with_images(llava, photos, name, n_images):
    from hmexport.runtime import Bundle

    ckpt, bundle_dir = llava[name]
    images = photos[:n_images] if n_images != 3 else [photos[0], photos[5], photos[7]]  # photo, generated, grayscale
    model, pixels = _reference(ckpt, images)
    model.generation_config.eos_token_id = None
    ids = [511] * (16 * n_images) + TEXT_IDS
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    want = out[0, len(ids):].tolist()
    got = list(Bundle.open(bundle_dir).session().generate(ids, images=images, max_new_tokens=NEW_TOKENS, stop_ids=()))
    assert got == want, f"{name}, {n_images} images: first mismatch at {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"


@pytest.mark.parametrize("name", ["llava-jamba-tiny", "llava-mamba-tiny"])
def test_vision_graph_matches_reference(llava, photos, name):
    from hmexport.runtime import Bundle
    from hmexport.runtime.multimodal import image_features

    ckpt, bundle_dir = llava[name]
    model, pixels = _reference(ckpt, photos[:4])
    with torch.no_grad():
        want = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default")
    want = want.pooler_output if hasattr(want, "pooler_output") else want
    want = torch.stack(list(want)) if isinstance(want, (list, tuple)) else want
    got = image_features(Bundle.open(bundle_dir), photos[:4])
    assert_close(f"{name} vision features", got, want.reshape(got.shape).numpy(), FP32_LOGITS)


def test_placeholders_expand_and_count_mismatch_is_refused(llava, photos):
    from hmexport.errors import InputError
    from hmexport.runtime import Bundle

    bundle = Bundle.open(llava["llava-jamba-tiny"][1])
    session = bundle.session()
    ids, _ = session.prompt_embeds("Look: <image> and <image>!", photos[:2])
    assert ids.count(511) == 32 and ids[:len(bundle.encode("Look: "))] == bundle.encode("Look: ")
    ids, _ = session.prompt_embeds("no placeholder", photos[:1])
    assert ids[:16] == [511] * 16, "without placeholders the images go before the text"
    with pytest.raises(InputError, match="2 <image> placeholder\\(s\\) but 1 image\\(s\\)"):
        session.generate("a <image> b <image>", images=photos[:1])
    with pytest.raises(InputError, match="hold 16 image tokens \\(id 511\\), expected 2 image\\(s\\) x 16 = 32"):
        session.generate([511] * 16 + [5], images=photos[:2])
    assert session.length == 0, "nothing may run before the checks"
