"""LLaVA-format checkpoints (transformers' LlavaForConditionalGeneration): a CLIP or SigLIP vision
tower, a 2-layer GELU projector, and a Jamba or Mamba text model under ``language_model.``."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..errors import UnsupportedModelError
from .hfconfig import Config
from .spec import ModelSpec, VisionSpec

NAME = "llava"
MODEL_TYPES = ("llava",)
HF_CLASS = "LlavaForConditionalGeneration"
_ENCODERS = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


def spec_from_config(raw: dict[str, Any], where: str, text_architecture: Callable[[dict, str], ModelSpec]) -> ModelSpec:
    c = Config(raw, where)
    text_raw, vision_raw = raw.get("text_config"), raw.get("vision_config")
    if not isinstance(text_raw, dict) or not isinstance(vision_raw, dict):
        raise UnsupportedModelError(f"{where}: a llava config needs text_config and vision_config objects")
    vtype = vision_raw.get("model_type")
    if vtype not in _ENCODERS:
        raise UnsupportedModelError(f"{where}: vision_config.model_type: expected one of {', '.join(_ENCODERS)}, got {vtype!r}")
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise UnsupportedModelError(f"{where}: vision_feature_select_strategy: expected 'default' or 'full', got {strategy!r}")
    act = raw.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise UnsupportedModelError(f"{where}: projector_hidden_act: expected 'gelu', got {act!r}")
    layer = raw.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise UnsupportedModelError(f"{where}: vision_feature_layer: expected one layer index, got {layer!r}")
    v = Config(vision_raw, f"{where}: vision_config")
    # transformers' LLaVA drops the first token under "default" whatever the tower (CLIP's CLS; a
    # SigLIP tower has none, which is why SigLIP checkpoints use "full").
    vision = VisionSpec(
        encoder=_ENCODERS[vtype], image_size=v.int("image_size"), patch_size=v.int("patch_size"), feature_layer=layer,
        prefix_tokens=1 if strategy == "default" else 0, projector="mlp2x_gelu", image_token_id=c.int("image_token_index"),
    )
    text = text_architecture(text_raw, f"{where}: text_config")
    return dataclasses.replace(text, vision=vision)


def text_key(text_arch, spec: ModelSpec, name: str, present: set[str]) -> str:
    """The checkpoint key of a text tensor: LLaVA files store the text model as ``language_model.``
    + its own layout with the base model under ``model.`` (Mamba's ``backbone.`` too), or, in newer
    files, ``model.language_model.`` + the base model's keys; the first present wins."""
    key = text_arch.checkpoint_key(spec, name)
    base, _, rest = key.partition(".")
    if base not in ("model", "backbone"):  # lm_head
        candidates = [f"language_model.{key}", key]
    else:
        candidates = [f"language_model.model.{rest}", f"language_model.{key}", f"model.language_model.{rest}"]
    return next((c for c in candidates if c in present), candidates[0])
