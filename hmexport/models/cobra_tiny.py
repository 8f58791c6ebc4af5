"""A tiny Cobra release with the native names (the ``cobra-tiny`` preset and the tests): a prismatic
run directory (config.json + checkpoints/latest-checkpoint.pt, a torch pickle of tensors) and the two
timm towers as safetensors, seeded random weights.

DINOv2 (registers) D=32 and SigLIP D=48, 3 blocks each, 14 px patches at 56 px -> 16 patches per
image; the DINO position grid is stored at 5x5 (its "native" 70 px) so conversion must resample it,
as timm does for the real 518 -> 384 px tower. Mamba D=64, 3 layers, vocabulary 509 padded to 512.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from typing import Any

VISION_ID = "dinosiglip-vit-tiny-56px"
BACKBONES = {
    VISION_ID: {
        "image_size": 56,
        "dino": {"timm_id": "tiny_reg4_dinov2", "num_attention_heads": 2, "layer_norm_eps": 1e-6},
        "siglip": {"timm_id": "tiny_siglip", "num_attention_heads": 2, "layer_norm_eps": 1e-6},
    }
}
TOKENS_PER_IMAGE = 16
VOCAB, PADDED_VOCAB = 509, 512
IMAGE_TOKEN = PADDED_VOCAB - 1
D_TEXT, LAYERS, D_INNER, N_STATE, CONV, DT_RANK = 64, 3, 128, 8, 4, 8


def _lin(g: Any, out: int, inp: int, gain: float = 1.0) -> Any:
    import torch

    return torch.randn(out, inp, generator=g) * (gain / math.sqrt(inp))


def _vit(g: Any, D: int, layers: int, grid: int, dino: bool) -> dict[str, Any]:
    import torch

    t = {
        "patch_embed.proj.weight": torch.randn(D, 3, 14, 14, generator=g) * (1 / math.sqrt(3 * 14 * 14)),
        "patch_embed.proj.bias": torch.randn(D, generator=g) * 0.1,
        "pos_embed": torch.randn(1, grid * grid, D, generator=g) * 0.5,
        "norm.weight": torch.ones(D), "norm.bias": torch.zeros(D),
    }  # fmt: skip
    if dino:
        t["cls_token"] = torch.randn(1, 1, D, generator=g)
        t["reg_token"] = torch.randn(1, 4, D, generator=g)
    else:  # the attention-pool head timm's SigLIP carries and Cobra never uses
        t.update({"attn_pool.latent": torch.randn(1, 1, D, generator=g), "attn_pool.q.weight": _lin(g, D, D), "attn_pool.q.bias": torch.zeros(D)})
    F = 4 * D if dino else 2 * D
    for i in range(layers):
        p = f"blocks.{i}."
        t.update({
            p + "norm1.weight": 1 + 0.1 * torch.randn(D, generator=g), p + "norm1.bias": 0.1 * torch.randn(D, generator=g),
            p + "attn.qkv.weight": _lin(g, 3 * D, D), p + "attn.qkv.bias": 0.1 * torch.randn(3 * D, generator=g),
            p + "attn.proj.weight": _lin(g, D, D), p + "attn.proj.bias": 0.1 * torch.randn(D, generator=g),
            p + "norm2.weight": 1 + 0.1 * torch.randn(D, generator=g), p + "norm2.bias": 0.1 * torch.randn(D, generator=g),
            p + "mlp.fc1.weight": _lin(g, F, D), p + "mlp.fc1.bias": 0.1 * torch.randn(F, generator=g),
            p + "mlp.fc2.weight": _lin(g, D, F), p + "mlp.fc2.bias": 0.1 * torch.randn(D, generator=g),
        })  # fmt: skip
        if dino:
            t[p + "ls1.gamma"] = 0.5 + 0.1 * torch.randn(D, generator=g)
            t[p + "ls2.gamma"] = 0.5 + 0.1 * torch.randn(D, generator=g)
    return t


def _mamba(g: Any) -> dict[str, Any]:
    import torch

    embed = torch.randn(PADDED_VOCAB, D_TEXT, generator=g) * 0.4  # tied head: logits std ~ 0.4 * sqrt(64) ~ 3
    t = {"llm.backbone.embedding.weight": embed, "llm.lm_head.weight": embed, "llm.backbone.norm_f.weight": torch.ones(D_TEXT)}
    dt = torch.exp(torch.rand(D_INNER, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    for i in range(LAYERS):
        p = f"llm.backbone.layers.{i}."
        t.update({
            p + "norm.weight": torch.ones(D_TEXT),
            p + "mixer.in_proj.weight": _lin(g, 2 * D_INNER, D_TEXT),
            p + "mixer.conv1d.weight": torch.randn(D_INNER, 1, CONV, generator=g) * 0.5,
            p + "mixer.conv1d.bias": torch.randn(D_INNER, generator=g) * 0.1,
            p + "mixer.x_proj.weight": _lin(g, DT_RANK + 2 * N_STATE, D_INNER),
            p + "mixer.dt_proj.weight": _lin(g, D_INNER, DT_RANK),
            p + "mixer.dt_proj.bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus, as mamba-ssm initialises
            p + "mixer.A_log": torch.log(torch.arange(1, N_STATE + 1, dtype=torch.float32)).repeat(D_INNER, 1),
            p + "mixer.D": torch.ones(D_INNER),
            p + "mixer.out_proj.weight": _lin(g, D_TEXT, D_INNER, gain=4.0),
        })  # fmt: skip
    return t


def write_replica(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the release under ``root``; returns the paths convert_prismatic takes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    dino, siglip = _vit(g, 32, 3, grid=5, dino=True), _vit(g, 48, 3, grid=4, dino=False)
    save_file(dino, str(root / "dino.safetensors"))
    save_file(siglip, str(root / "siglip.safetensors"))
    Dv = 32 + 48
    projector = {
        "projector.0.weight": _lin(g, 4 * Dv, Dv), "projector.0.bias": 0.1 * torch.randn(4 * Dv, generator=g),
        "projector.2.weight": _lin(g, D_TEXT, 4 * Dv), "projector.2.bias": 0.1 * torch.randn(D_TEXT, generator=g),
        "projector.4.weight": _lin(g, D_TEXT, D_TEXT), "projector.4.bias": 0.1 * torch.randn(D_TEXT, generator=g),
    }  # fmt: skip
    run = root / "cobra-tiny+run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"projector": projector, "llm_backbone": _mamba(g)}}, run / "checkpoints" / "latest-checkpoint.pt")
    config = {"model": {"model_id": "cobra-tiny", "vision_backbone_id": VISION_ID, "llm_backbone_id": "mamba-tiny",
                        "arch_specifier": "no-align+fused-gelu-mlp", "image_resize_strategy": "resize-naive", "llm_max_length": 2048}}
    (run / "config.json").write_text(json.dumps(config, indent=2))
    return {"pickle": run / "checkpoints" / "latest-checkpoint.pt", "config": run / "config.json",
            "dino": root / "dino.safetensors", "siglip": root / "siglip.safetensors"}


def convert(root: Path, seed: int = 0) -> Path:
    """Write the release under ``root / "native"`` and convert it to ``root / "converted"``."""
    from .cobra import convert_prismatic

    paths = write_replica(root / "native", seed)
    return convert_prismatic(paths["pickle"], root / "converted", allow_pickle=True, dino_weights=paths["dino"],
                             siglip_weights=paths["siglip"], backbones=BACKBONES)


def write_preset_checkpoint(out_dir: Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """The converted checkpoint at ``out_dir`` (the native release is written to a scratch folder beside it)."""
    import shutil
    import tempfile

    from .cobra import convert_prismatic

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.native-", dir=out_dir.parent))
    try:
        paths = write_replica(scratch, seed)
        return convert_prismatic(paths["pickle"], out_dir, allow_pickle=True, dino_weights=paths["dino"],
                                 siglip_weights=paths["siglip"], backbones=BACKBONES, overwrite=overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
