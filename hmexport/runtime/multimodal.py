"""Images into a prompt: placeholders -> image token runs, pixels -> the vision graph, rows spliced.

Text prompts mark images with ``<image>``; with no placeholder the images go before the text.
Where the manifest's ``vision`` has ``image_prefix`` / ``image_suffix`` (LongLLaVA: ``<img>``, ``</img>``),
each ``<image>`` is wrapped in them as text first, unless the prompt already holds a suffix (LongLLaVA's
cli.py rule); the text between images is then encoded chunk by chunk, as its ``tokenizer_image_token`` does.
Token-id prompts arrive already expanded, as transformers' processors produce them:
``tokens_per_image`` copies of the image token id per image, in order (wrapper tokens included).
Every check (counts, decoding, sizes) runs before any graph does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from .images import ImageSpec, load_image, preprocess

PLACEHOLDER = "<image>"
VISION_BATCH = 8  # images per vision-graph call: bounds activation memory however many images


def expand_prompt(bundle, prompt: str | Sequence[int], n_images: int) -> list[int]:
    vision = bundle.manifest.vision
    if n_images and vision is None:
        raise InputError(f"{bundle.root}: this bundle has no vision graph, but {n_images} image(s) were given")
    if vision is None:
        return bundle.encode(prompt) if isinstance(prompt, str) else list(prompt)
    token, per_image = vision["image_token_id"], vision["tokens_per_image"]
    if not isinstance(prompt, str):
        ids = list(prompt)
        found = sum(1 for i in ids if i == token)
        if found != n_images * per_image:
            raise InputError(f"the prompt ids hold {found} image tokens (id {token}), expected {n_images} image(s) x {per_image} = {n_images * per_image}")
        return ids
    found = prompt.count(PLACEHOLDER)
    if found and found != n_images:
        raise InputError(f"the prompt has {found} {PLACEHOLDER} placeholder(s) but {n_images} image(s) were given")
    prompt = prompt if found else PLACEHOLDER * n_images + prompt
    prefix, suffix = vision.get("image_prefix", ""), vision.get("image_suffix", "")
    if (prefix or suffix) and not (suffix and suffix in prompt):
        prompt = prompt.replace(PLACEHOLDER, prefix + PLACEHOLDER + suffix)
    parts = prompt.split(PLACEHOLDER)
    ids: list[int] = bundle.encode(parts[0]) if parts[0] else []
    for part in parts[1:]:
        ids += [token] * per_image + (bundle.encode(part) if part else [])
    return ids


def image_features(bundle, images: Sequence) -> np.ndarray:
    """Decode and preprocess every image first (fail before compute), then the vision graph in batches."""
    spec = ImageSpec.from_json(bundle.manifest.vision["preprocess"])
    pixels = preprocess([load_image(image) for image in images], spec)  # (I, 3, S, S)
    session = bundle.sessions["vision"]
    parts = [session.run(None, {"pixel_values": pixels[i:i + VISION_BATCH]})[0] for i in range(0, len(pixels), VISION_BATCH)]
    return np.concatenate(parts, axis=0)  # (I, T, D)


def splice(embeds: np.ndarray, ids: Sequence[int], features: np.ndarray, image_token_id: int) -> np.ndarray:
    """Replace the image-token rows of (1, L, D) embeddings by the images' feature rows, in order."""
    rows = np.flatnonzero(np.asarray(ids) == image_token_id)
    flat = features.reshape(-1, features.shape[-1])
    if rows.size != flat.shape[0]:
        raise InputError(f"{rows.size} image token positions but {flat.shape[0]} image feature rows")
    out = embeds.copy()
    out[0, rows] = flat
    return out


def stream_prefill(session, ids: Sequence[int], images: Sequence, chunk: int) -> np.ndarray:
    """Prefill ``ids`` chunk by chunk, splicing image rows as they come: each chunk embeds only its own
    tokens and runs the vision graph only for images it needs, a batch of VISION_BATCH at a time, so
    memory is weights + K/V + one chunk + one image batch however many images the prompt holds.
    Every image is decoded once up front (a bad file fails before any compute), then again per batch.
    Returns the last position's logits (V,)."""
    vision = session.bundle.manifest.vision
    spec = ImageSpec.from_json(vision["preprocess"])
    for image in images:
        load_image(image)
    ids = np.asarray(ids, dtype=np.int64)
    rows = np.flatnonzero(ids == vision["image_token_id"])  # image k owns rows[k*T:(k+1)*T]
    per_image = vision["tokens_per_image"]
    vision_session = session.bundle.sessions["vision"]
    batch_start, batch = -1, None
    logits = None
    start = 0
    while start < len(ids):
        end = min(start + session.step(chunk), len(ids))
        embeds = session.embed(ids[start:end])
        for r in np.flatnonzero((rows >= start) & (rows < end)):
            k = int(r) // per_image
            if k // VISION_BATCH != batch_start:
                batch_start = k // VISION_BATCH
                group = images[batch_start * VISION_BATCH:(batch_start + 1) * VISION_BATCH]
                batch = vision_session.run(None, {"pixel_values": preprocess([load_image(g) for g in group], spec)})[0]
            embeds[0, rows[r] - start] = batch[k % VISION_BATCH, int(r) % per_image]
        logits = session.forward(embeds)
        start = end
    return logits[0, -1].copy()
