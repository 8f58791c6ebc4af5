"""Cobra's PyTorch reference: transformers modules composed the way prismatic composes timm's.

```
pixels (I, 3, S, S) in [0, 1]
  -> (x - DINO mean) / std -> Dinov2WithRegistersModel -> hidden_states[-2] -> drop CLS + registers -> (I, P, Dd)
  -> (x - 0.5) / 0.5       -> SiglipVisionModel        -> hidden_states[-2]                         -> (I, P, Ds)
  -> concat channels, DINO first (I, P, Dd + Ds) -> Linear GELU Linear GELU Linear -> (I, P, D)
rows of every image, in order, then the text embeddings -> MambaForCausalLM
```
hidden_states[-2] is the output of block L-2 (0-based), what prismatic takes with timm's
``get_intermediate_layers(n={L - 2})`` (no final norm). timm's towers use exact GELU; transformers'
SigLIP defaults to the tanh approximation, so ``hidden_act="gelu"`` is set here. timm DINOv2 adds
no position to CLS (``no_embed_class``): its transformers position row 0 is zero.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .cobra import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD


def dino_state_dict(t: dict[str, Any], layers: int) -> dict[str, Any]:
    """timm ``vit_*_reg4_dinov2`` keys -> transformers Dinov2WithRegistersModel keys."""
    import torch

    pos = t["pos_embed"]  # (1, P, D): patches only
    out = {
        "embeddings.cls_token": t["cls_token"],
        "embeddings.register_tokens": t["reg_token"],
        "embeddings.mask_token": torch.zeros(1, pos.shape[-1]),
        "embeddings.position_embeddings": torch.cat([torch.zeros(1, 1, pos.shape[-1]), pos], dim=1),
        "embeddings.patch_embeddings.projection.weight": t["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": t["patch_embed.proj.bias"],
        "layernorm.weight": t["norm.weight"],
        "layernorm.bias": t["norm.bias"],
    }
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        out.update(_qkv(t, src, dst + "attention.", ("q_proj", "k_proj", "v_proj")))
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.o_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = t[f"{src}{a}.weight"], t[f"{src}{a}.bias"]
        out[f"{dst}layer_scale1.lambda1"], out[f"{dst}layer_scale2.lambda1"] = t[f"{src}ls1.gamma"], t[f"{src}ls2.gamma"]
    return out


def siglip_state_dict(t: dict[str, Any], layers: int) -> dict[str, Any]:
    """timm ``vit_*_siglip_*`` keys -> transformers SiglipVisionModel keys (no pooling head)."""
    p = ""  # transformers 5 SiglipVisionModel keys (4.x prefixed them with "vision_model.")
    out = {
        p + "embeddings.patch_embedding.weight": t["patch_embed.proj.weight"],
        p + "embeddings.patch_embedding.bias": t["patch_embed.proj.bias"],
        p + "embeddings.position_embedding.weight": t["pos_embed"][0],
        p + "post_layernorm.weight": t["norm.weight"],
        p + "post_layernorm.bias": t["norm.bias"],
    }
    for i in range(layers):
        src, dst = f"blocks.{i}.", f"{p}encoder.layers.{i}."
        out.update(_qkv(t, src, dst + "self_attn.", ("q_proj", "k_proj", "v_proj")))
        for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = t[f"{src}{a}.weight"], t[f"{src}{a}.bias"]
    return out


def _qkv(t: dict[str, Any], src: str, dst: str, names: tuple[str, str, str]) -> dict[str, Any]:
    # timm's fused qkv rows are [q (all heads) | k | v]: reshape(B, N, 3, H, Dh) in Attention.forward.
    out = {}
    for kind in ("weight", "bias"):
        for name, part in zip(names, t[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)):
            out[f"{dst}{name}.{kind}"] = part
    return out


def _build(config: dict[str, Any]):
    import torch
    import transformers as T

    S = config["image_size"]
    d, s, txt = config["dino_config"], config["siglip_config"], config["text_config"]
    dino = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=d["hidden_size"], num_hidden_layers=d["num_hidden_layers"], num_attention_heads=d["num_attention_heads"],
        mlp_ratio=_ratio(d), image_size=S, patch_size=d["patch_size"],
        num_register_tokens=d["num_register_tokens"], layer_norm_eps=d["layer_norm_eps"], hidden_act="gelu", attn_implementation="eager",
    ))  # fmt: skip
    siglip = T.SiglipVisionModel(T.SiglipVisionConfig(
        hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"], image_size=S, patch_size=s["patch_size"], layer_norm_eps=s["layer_norm_eps"],
        hidden_act="gelu", vision_use_head=False, attn_implementation="eager",
    ))  # fmt: skip
    Dv, D = d["hidden_size"] + s["hidden_size"], txt["hidden_size"]
    projector = torch.nn.Sequential(torch.nn.Linear(Dv, 4 * Dv), torch.nn.GELU(), torch.nn.Linear(4 * Dv, D), torch.nn.GELU(), torch.nn.Linear(D, D))
    fields = {k: v for k, v in txt.items() if k != "model_type"}
    text = T.MambaForCausalLM(T.MambaConfig(**fields))
    return dino, siglip, projector, text


def _ratio(d: dict[str, Any]) -> int:
    ratio, rest = divmod(d["intermediate_size"], d["hidden_size"])
    if rest:  # transformers' DINOv2 sizes its MLP as hidden_size * an integer mlp_ratio
        raise CheckpointError(f"dino_config: intermediate_size {d['intermediate_size']} is not a multiple of hidden_size {d['hidden_size']}")
    return ratio


class CobraReference:
    """The whole model in fp32 on the CPU; the surface hmexport's build and validate use
    (``get_input_embeddings``, ``__call__(ids).logits``, ``generate``, ``vision_module``)."""

    def __init__(self, config: dict[str, Any], tensors: dict[str, Any]) -> None:
        import torch

        self.config = config
        self.dino, self.siglip, self.projector, self.language_model = _build(config)
        d_layers, s_layers = config["dino_config"]["num_hidden_layers"], config["siglip_config"]["num_hidden_layers"]
        pick = lambda prefix: {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        try:
            _load(self.dino, dino_state_dict(pick("vision.dino."), d_layers), "vision.dino")
            _load(self.siglip, siglip_state_dict(pick("vision.siglip."), s_layers), "vision.siglip")
            _load(self.projector, pick("projector."), "projector")
            text = pick("language_model.")
            text["lm_head.weight"] = text["backbone.embeddings.weight"]
            _load(self.language_model, text, "language_model")
        except KeyError as exc:
            raise CheckpointError(f"cobra checkpoint: tensor {exc.args[0]!r} is missing") from None
        # The tower always runs at its own image size, where no interpolation is wanted; transformers
        # would interpolate anyway while tracing (its early return skips under torch.jit tracing).
        self.dino.embeddings.interpolate_pos_encoding = lambda embeddings, height, width: self.dino.embeddings.position_embeddings
        self.register_tokens = 1 + config["dino_config"]["num_register_tokens"]
        self.norms = {name: (torch.tensor(m).view(1, 3, 1, 1), torch.tensor(sd).view(1, 3, 1, 1))
                      for name, m, sd in (("dino", DINO_MEAN, DINO_STD), ("siglip", SIGLIP_MEAN, SIGLIP_STD))}
        for module in (self.dino, self.siglip, self.projector, self.language_model):
            module.eval()

    @classmethod
    def from_checkpoint(cls, ckpt) -> "CobraReference":
        from safetensors.torch import load_file

        tensors: dict[str, Any] = {}
        for file in sorted(set(ckpt.shards.values())):
            tensors.update({k: v.float() for k, v in load_file(str(file)).items()})
        return cls(ckpt.config, tensors)

    # --- vision ---
    def image_features(self, pixel_values):
        """(I, 3, S, S) pixels in [0, 1] (resized, rescaled, not normalised) -> (I, P, D)."""
        import torch

        (dm, ds), (sm, ss) = self.norms["dino"], self.norms["siglip"]
        dino = self.dino((pixel_values - dm) / ds, output_hidden_states=True).hidden_states[-2][:, self.register_tokens:]
        siglip = self.siglip((pixel_values - sm) / ss, output_hidden_states=True).hidden_states[-2]
        return self.projector(torch.cat([dino, siglip], dim=-1))  # (I, P, D)

    def vision_module(self, vision=None):
        """A torch module pixel_values -> image_features for export/vision.py to trace."""
        import torch

        ref = self

        class FusedVision(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.dino, self.siglip, self.projector = ref.dino, ref.siglip, ref.projector

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return ref.image_features(pixel_values)

        return FusedVision().eval()

    # --- text ---
    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def __call__(self, input_ids=None, **kwargs):
        return self.language_model(input_ids=input_ids, **kwargs)

    def generate(self, input_ids, **kwargs):
        return self.language_model.generate(input_ids, **kwargs)

    def generate_with_images(self, pixel_values, input_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy tokens after [every image's rows, in order] + the text embeddings (Cobra's layout)."""
        import torch

        with torch.no_grad():
            rows = self.image_features(pixel_values).reshape(1, -1, self.language_model.config.hidden_size)
            text = self.get_input_embeddings()(torch.tensor([input_ids]))
            embeds = torch.cat([rows, text], dim=1)
            out = self.language_model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                               max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                                               eos_token_id=None, pad_token_id=0)
        return out[0, -max_new_tokens:].tolist()


def _load(module, state: dict[str, Any], where: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"cobra checkpoint: {where}: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}")
