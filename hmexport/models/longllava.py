"""LongLLaVA's native checkpoint (``model_type: llava_jamba``, FreedomIntelligence/LongLLaVA).

One flat config.json: AI21's Jamba fields plus LLaVA's ``mm_*`` fields. The safetensors shards use
AI21's older Jamba key names; the CLIP tower is loaded by name from ``mm_vision_tower``::

    model.embed_tokens.weight, model.final_layernorm.weight, lm_head.weight
    model.layers.{i}.input_layernorm.weight, model.layers.{i}.pre_moe_layernorm.weight
    model.layers.{i}.mamba.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*, .A_log, .D,
        .dt_layernorm.weight, .B_layernorm.weight, .C_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight
    model.layers.{i}.moe.router.weight + moe.experts.{e}.{gate,up,down}_proj.weight   (MoE layers)
    model.layers.{i}.moe.experts.0.{gate,up,down}_proj.weight                       (dense layers)
    model.mm_projector.{0,2}.{weight,bias}                                           (mlp2x_gelu)
    model.vision_tower.vision_tower.vision_model.*     (CLIPVisionModel; only in some saves)

Image path (llava/model/multimodal_encoder/clip_encoder.py): CLIP hidden_states[mm_vision_select_layer]
-> drop CLS ("patch") -> ``resamplePooling: "2d"``: bilinear 24x24 -> 12x12, which at exactly factor 2
is a 2x2 average -> mm_projector -> 144 rows per image. Prompts wrap each ``<image>`` as
``<img><image></img>`` (cli.py) and tokenize the text chunks between images separately.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, UnsupportedModelError, gather
from . import jamba
from .checkpoint import Checkpoint, read_json
from .spec import ModelSpec, VisionSpec

NAME = "longllava"
MODEL_TYPES = ("llava_jamba",)
VISION_TOWER_ENV = "HMEXPORT_VISION_TOWER"  # a local CLIP checkpoint directory, overriding mm_vision_tower
IMAGE_PREFIX, IMAGE_SUFFIX = "<img>", "</img>"  # cli.py: '<image>' -> '<img><image></img>'
TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
# The pooling every SFT stage trained with (SingleImageSFT.sh, MultiImageSFT.sh: --resamplePooling 2d).
# train.py never copies it into config.json, so a checkpoint usually does not say it.
TRAINED_POOLING = "2d"
_POOL = {"2d": 2}


def read_spec(ckpt: Checkpoint) -> ModelSpec:
    return spec_from_config(ckpt.config, str(ckpt.path / "config.json"), tower_config(vision_tower_dir(ckpt)))


def spec_from_config(raw: dict[str, Any], where: str, tower: Any) -> ModelSpec:
    """The Jamba text spec + a VisionSpec; ``tower`` is the CLIPVisionConfig that mm_vision_tower names."""
    problems = []
    supported = {  # field: (native default when absent, values hmexport exports)
        "mm_projector_type": ("linear", ("mlp2x_gelu",)),  # multimodal_projector/builder.py
        "mm_patch_merge_type": ("flat", ("flat",)),
        "mm_vision_select_feature": ("patch", ("patch", "cls_patch")),
        "image_aspect_ratio": ("pad", ("pad", "square")),  # mm_utils.process_images
        "hidden_act": ("silu", ("silu",)),
        "mamba_inner_layernorms": (True, (True,)),  # transformers' Jamba always has the dt/B/C norms
        "mm_use_im_start_end": (False, (False,)),
    }
    values = {key: raw.get(key, default) for key, (default, _) in supported.items()}
    problems += [f"{key}: expected one of {list(ok)}, got {values[key]!r}" for key, (_, ok) in supported.items() if values[key] not in ok]
    layer = raw.get("mm_vision_select_layer")
    if isinstance(layer, bool) or not isinstance(layer, int):
        problems.append(f"mm_vision_select_layer: expected one layer index (LongLLaVA trains with -2), got {layer!r}")
    pool = _pool(raw, where, problems)
    prefix = 1 if values["mm_vision_select_feature"] == "patch" else 0
    if prefix == 0 and pool > 1:
        problems.append("mm_vision_select_feature: 'cls_patch' keeps the CLS token, and a grid of 1 + patches cannot be pooled; expected 'patch'")
    if raw.get("mm_hidden_size", tower.hidden_size) != tower.hidden_size:
        problems.append(f"mm_hidden_size: expected the CLIP tower's hidden_size {tower.hidden_size}, got {raw.get('mm_hidden_size')!r}")
    gather(problems, UnsupportedModelError, f"{where}: ")
    text = jamba.spec_from_config(raw, where)
    # Native prompts carry IMAGE_TOKEN_INDEX = -200, outside the vocabulary; the bundle needs an id
    # it can embed, so image rows are marked with the pad id (its embedding is always replaced).
    image_token = raw.get("image_token_index", text.pad_token_id if text.pad_token_id is not None else 0)
    vision = VisionSpec(
        encoder="clip", image_size=tower.image_size, patch_size=tower.patch_size, feature_layer=layer,
        prefix_tokens=prefix, projector="mlp2x_gelu", image_token_id=int(image_token), pool=pool,
    )  # fmt: skip
    return dataclasses.replace(text, vision=vision)


def _pool(raw: dict[str, Any], where: str, problems: list[str]) -> int:
    value = raw.get("resamplePooling")
    if value is None:
        warnings.warn(
            f"{where}: resamplePooling is not set; using {TRAINED_POOLING!r} (2x2 pooling), what LongLLaVA's SFT stages trained "
            f"with; add \"resamplePooling\": \"{TRAINED_POOLING}\" to config.json to silence this", UserWarning, stacklevel=3,
        )  # fmt: skip
        value = TRAINED_POOLING
    if value not in _POOL:
        problems.append(f"resamplePooling: expected {list(_POOL)} (the released models' 2x2 pooling), got {value!r}")
        return 1
    return _POOL[value]


def text_key(text_arch, spec: ModelSpec, name: str, present: set[str] | None = None) -> str:
    """The native key of a canonical text tensor: Jamba's map with AI21's older names."""
    return jamba.checkpoint_key(spec, name, jamba.AI21_LEGACY)


def vision_tower_dir(ckpt: Checkpoint) -> Path:
    """The CLIP checkpoint directory: $HMEXPORT_VISION_TOWER, else mm_vision_tower as a path (from the
    working directory, as LongLLaVA resolves it, then from the checkpoint directory)."""
    override = os.environ.get(VISION_TOWER_ENV)
    if override:
        path = Path(override)
        if not (path / "config.json").is_file():
            found = "a directory without config.json" if path.is_dir() else "no such directory"
            raise CheckpointError(f"{VISION_TOWER_ENV}={override}: expected a CLIP checkpoint directory "
                                  f"(config.json, preprocessor_config.json, *.safetensors), found {found}")
        return path
    where = ckpt.path / "config.json"
    name = ckpt.config.get("mm_vision_tower", ckpt.config.get("vision_tower"))
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where}: mm_vision_tower: expected the CLIP tower's name or path, got {name!r}; "
                              f"point {VISION_TOWER_ENV} at a local CLIP checkpoint directory")
    for path in (Path(name), ckpt.path / name):
        if (path / "config.json").is_file():
            return path
    held = has_tower_weights(ckpt)
    needs = "config.json and preprocessor_config.json (its weights are in this checkpoint)" if held else \
        "config.json, preprocessor_config.json and weights (this checkpoint does not hold them)"
    raise CheckpointError(
        f"{where}: mm_vision_tower: {name!r} is not a local directory, and LongLLaVA reads the CLIP tower's {needs} from it; "
        f"download that CLIP checkpoint (for the released models openai/clip-vit-large-patch14-336, with model.safetensors) "
        f"and set {VISION_TOWER_ENV}=/path/to/it"
    )


def has_tower_weights(ckpt: Checkpoint) -> bool:
    return any(key.startswith(TOWER_PREFIX) for key in ckpt.shards)


def tower_config(path: Path) -> Any:
    """transformers' CLIPVisionConfig from a CLIPVisionModel or a whole CLIPModel directory."""
    from transformers import CLIPVisionConfig

    config = read_json(path / "config.json")
    if config.get("model_type") not in ("clip", "clip_vision_model"):
        raise UnsupportedModelError(f"{path / 'config.json'}: model_type: expected 'clip' or 'clip_vision_model' "
                                    f"(LongLLaVA's tower is CLIP), got {config.get('model_type')!r}")
    return CLIPVisionConfig.from_pretrained(str(path))


def image_preprocessing(ckpt: Checkpoint) -> tuple[Path, bool, dict[str, Any]]:
    """(processor config, pad to square, prompt fields for the manifest): builder.py takes the image
    processor from the tower; process_images pads with the mean colour unless image_aspect_ratio is 'square'."""
    pad = ckpt.config.get("image_aspect_ratio", "pad") == "pad"
    return vision_tower_dir(ckpt) / "preprocessor_config.json", pad, {"image_prefix": IMAGE_PREFIX, "image_suffix": IMAGE_SUFFIX}


def load_reference(ckpt: Checkpoint):
    """The PyTorch reference: transformers' JambaForCausalLM and CLIPVisionModel, a 2-layer GELU
    projector and the native pooling, loaded from the native keys through ``text_key``."""
    import torch
    import transformers

    from .registry import read_weights

    spec = read_spec(ckpt)
    weights = read_weights(ckpt, spec)
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "attn_layer_period", "attn_layer_offset", "expert_layer_period", "expert_layer_offset", "num_experts",
              "num_experts_per_tok", "mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_dt_rank", "mamba_conv_bias",
              "mamba_proj_bias", "rms_norm_eps", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")  # fmt: skip
    config = transformers.JambaConfig(**{k: ckpt.config[k] for k in fields if k in ckpt.config})
    config.use_mamba_kernels = False  # set after construction: passing it only warns that it is deprecated
    with torch.device("meta"):  # no random init of a model about to be overwritten; Jamba has no buffers
        text = transformers.JambaForCausalLM(config)
    text.load_state_dict(_jamba_state(spec, weights), strict=True, assign=True)
    if spec.tie_word_embeddings:
        text.tie_weights()
    tower_dir = vision_tower_dir(ckpt)
    tower = transformers.CLIPVisionModel(tower_config(tower_dir))
    tower.load_state_dict(_tensors(_tower_source(ckpt, tower_dir), _shapes(tower)), strict=True)
    D, Dv = spec.hidden_size, tower.config.hidden_size
    projector = torch.nn.Sequential(torch.nn.Linear(Dv, D), torch.nn.GELU(), torch.nn.Linear(D, D))
    projector.load_state_dict(_tensors((ckpt, PROJECTOR_PREFIX), _shapes(projector)), strict=True)
    return _reference_class()(text, tower, projector, spec.vision).float().eval()


def _jamba_state(spec: ModelSpec, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Canonical tensors -> transformers' JambaForCausalLM keys (experts fused as gate_up_proj (E, 2F, D))."""
    import torch

    state = {}
    for name, value in weights.items():
        if ".mlp.experts." in name:
            prefix, proj = name.rsplit(".mlp.experts.", 1)
            layer = prefix.split(".")[1]
            if proj == "up_proj":
                continue
            key = f"model.layers.{layer}.feed_forward.experts.{'gate_up_proj' if proj == 'gate_proj' else proj}"
            if proj == "gate_proj":
                value = np.concatenate([value, weights[f"{prefix}.mlp.experts.up_proj"]], axis=1)
        else:
            key = jamba.checkpoint_key(spec, name)
            value = value.reshape(value.shape[0], 1, -1) if name.endswith("conv1d.weight") else value
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def _tower_source(ckpt: Checkpoint, tower_dir: Path) -> tuple[Checkpoint, str]:
    """Where the CLIP weights come from: this checkpoint when it holds them (what the model was trained
    with, frozen or not), else the tower directory (a CLIPModel or a CLIPVisionModel save)."""
    if has_tower_weights(ckpt):
        return ckpt, TOWER_PREFIX
    source = Checkpoint.open(tower_dir)
    for prefix in ("vision_model.", ""):
        if f"{prefix}embeddings.class_embedding" in source.shards:
            return source, prefix
    raise CheckpointError(f"{tower_dir}: expected CLIP vision weights (vision_model.embeddings.class_embedding, ...), found none")


def _shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _tensors(source: tuple[Checkpoint, str], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    import torch

    ckpt, prefix = source
    out, errors = {}, []
    for key, shape in shapes.items():
        try:
            out[key] = torch.from_numpy(ckpt.tensor(prefix + key, shape))
        except CheckpointError as exc:
            errors.append(str(exc))
    gather(errors, CheckpointError)
    return out


@functools.cache
def _reference_class():
    import torch

    class LongLLaVAReference(torch.nn.Module):
        """LlavaJambaForCausalLM's inference path. ``model.vision_tower`` / ``model.multi_modal_projector``
        are what export/vision.py traces; ``image_features`` pools as the native code does (bilinear)."""

        def __init__(self, language_model, tower, projector, vision: VisionSpec) -> None:
            super().__init__()
            self.language_model = language_model
            self.model = torch.nn.Module()
            self.model.vision_tower = tower
            self.model.multi_modal_projector = projector
            self.vision = vision

        def forward(self, input_ids, **kwargs):
            return self.language_model(input_ids=input_ids, **kwargs)

        def get_input_embeddings(self):
            return self.language_model.get_input_embeddings()

        def generate(self, input_ids=None, **kwargs):
            return self.language_model.generate(input_ids, **kwargs)

        def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
            """(I, 3, S, S) -> (I, T, D): CLIPVisionTower.forward with resamplePooling '2d', then mm_projector."""
            v = self.vision
            hidden = self.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[v.feature_layer]
            patches = hidden[:, v.prefix_tokens:]  # (I, P, Dv)
            if v.pool > 1:
                side = v.image_size // v.patch_size
                grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)  # (I, Dv, side, side)
                grid = torch.nn.functional.interpolate(grid, size=(side // v.pool, side // v.pool), mode="bilinear", align_corners=False)
                patches = grid.flatten(2).transpose(1, 2)
            return self.model.multi_modal_projector(patches)

        def generate_with_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int, **kwargs) -> list[int]:
            """Greedy tokens for (1, L) ids whose image-token runs take the images' rows, in order."""
            embeds = self.get_input_embeddings()(input_ids).clone()  # (1, L, D)
            features = self.image_features(pixel_values)
            rows = (input_ids[0] == self.vision.image_token_id).nonzero().flatten()
            if rows.numel() != features.shape[0] * features.shape[1]:
                raise ValueError(f"{rows.numel()} image token positions but {features.shape[0]} x {features.shape[1]} image rows")
            embeds[0, rows] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
            out = self.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                               do_sample=False, **kwargs)
            return out[0].tolist()  # inputs_embeds only: the new tokens alone

    return LongLLaVAReference
