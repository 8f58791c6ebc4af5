"""Cobra end to end: converted tiny replica -> bundle; the fused vision graph matches the reference
and greedy tokens equal the reference's (image rows before the text) with 1 and 3 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cobra_replica as replica  # noqa: E402
from helpers import assert_close  # noqa: E402
from tolerances import FP32_LOGITS  # noqa: E402

NEW_TOKENS = 32
TEXT_IDS = [40, 41, 42, 300, 17]


@pytest.fixture(scope="module")
def cobra(tmp_path_factory):
    """(converted checkpoint, bundle, manifest) with the build's own validation on."""
    from hmexport.export.build import BuildOptions, build

    root = tmp_path_factory.mktemp("cobra")
    ckpt = replica.convert(root, seed=3)
    manifest = build(str(ckpt), root / "bundle", BuildOptions(max_tokens=512, chunk=32, validate=True))
    return ckpt, root / "bundle", manifest


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("cobra-images")
    rng = np.random.default_rng(0)
    arrays = [data.astronaut(), rng.integers(0, 256, (33, 200, 3), dtype=np.uint8), data.coffee()]
    paths = [root / f"img{i}.{'png' if i % 2 else 'jpg'}" for i in range(len(arrays))]
    for path, a in zip(paths, arrays):
        Image.fromarray(a).save(path)
    return paths


def _pixels(paths: list[Path]) -> "torch.Tensor":
    """Cobra's resize-naive transform, before normalisation: Pillow bicubic to 56 x 56, ToTensor (float32 / 255)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB").resize((56, 56), Image.Resampling.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)


def test_build_validates_against_the_reference(cobra):
    _, _, manifest = cobra
    assert manifest.validation["passed"], manifest.validation
    assert manifest.vision["tokens_per_image"] == replica.TOKENS_PER_IMAGE and manifest.vision["image_token_id"] == replica.IMAGE_TOKEN


def test_vision_graph_matches_reference(cobra, images):
    from hmexport.models.reference import load_reference
    from hmexport.runtime import Bundle
    from hmexport.runtime.multimodal import image_features

    ckpt, bundle_dir, _ = cobra
    with torch.no_grad():
        want = load_reference(ckpt).image_features(_pixels(images)).numpy()
    got = image_features(Bundle.open(bundle_dir), images)
    assert_close("cobra fused vision features", got, want, FP32_LOGITS)


@pytest.mark.parametrize("n_images", [1, 3])
def test_greedy_tokens_identical_with_images(cobra, images, n_images):
    from hmexport.models.reference import load_reference
    from hmexport.runtime import Bundle

    ckpt, bundle_dir, _ = cobra
    want = load_reference(ckpt).generate_with_images(_pixels(images[:n_images]), TEXT_IDS, NEW_TOKENS)
    ids = [replica.IMAGE_TOKEN] * (replica.TOKENS_PER_IMAGE * n_images) + TEXT_IDS
    got = list(Bundle.open(bundle_dir).session().generate(ids, images=images[:n_images], max_new_tokens=NEW_TOKENS, stop_ids=()))
    assert got == want, f"{n_images} images: first mismatch at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)}"
    text_only = list(Bundle.open(bundle_dir).session().generate(TEXT_IDS, max_new_tokens=NEW_TOKENS, stop_ids=()))
    assert got != text_only, "the images must change the continuation"
