"""Cobra (arXiv 2403.14520, github.com/h-zhao1997/cobra), a prismatic-layout VLM: DINOv2 + SigLIP
towers fused per patch, a 3-layer GELU projector, a pure Mamba-1 text model with a tied head.

The native release is one torch pickle, ``checkpoints/latest-checkpoint.pt``:
``{"model": {"projector": {projector.{0,2,4}.{weight,bias}}, "llm_backbone": {llm.backbone.embedding.weight,
llm.backbone.layers.{i}.{norm.weight, mixer.*}, llm.backbone.norm_f.weight, llm.lm_head.weight}}}``
(mamba-ssm's MambaLMHeadModel names under the backbone wrapper's ``llm``; the head is the embedding),
beside a ``config.json`` whose ``model`` object names the towers (``vision_backbone_id``), the
resize strategy and the LLM id. The vision towers are not in the pickle: they are timm's pretrained
``vit_large_patch14_reg4_dinov2.lvd142m`` and ``vit_so400m_patch14_siglip_384``, frozen.

``convert_prismatic`` turns pickle + config + the two timm safetensors files into a checkpoint
directory hmexport reads like any other (config.json ``model_type: cobra``, model.safetensors,
preprocessor_config.json). It runs only when asked (``allow_pickle=True``), with
``torch.load(weights_only=True)``; nothing here ever unpickles at build or run time.

Converted layout (model.safetensors):
    language_model.backbone.{embeddings.weight, layers.{i}.*, norm_f.weight}  transformers' MambaForCausalLM names
    projector.{0,2,4}.{weight,bias}                                           as in the pickle
    vision.dino.<timm key>     DINOv2 with registers; pos_embed resampled to the model's image size
    vision.siglip.<timm key>   SigLIP SO400M (attention-pool head dropped: Cobra never uses it)

Image preprocessing: "resize-naive" stretches the image to S x S (bicubic, Pillow) for both towers,
so one (I, 3, S, S) tensor in [0, 1] feeds the vision graph and each tower's normalisation (ImageNet
mean/std for DINOv2, 0.5/0.5 for SigLIP) runs inside the graph. preprocessor_config.json therefore
says "resize to S x S, rescale, do not normalise". "letterbox" pads with a different colour per
tower and is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, UnsupportedModelError, gather
from .hfconfig import Config
from .spec import ModelSpec, VisionSpec

NAME = "cobra"
MODEL_TYPES = ("cobra",)
HF_CLASS = None  # no transformers class: the reference is a composition (cobra_reference.py)
PROJECTOR = "fused_mlp3x_gelu"  # Linear(Dv, 4 Dv) GELU Linear(4 Dv, D) GELU Linear(D, D); prismatic "fused-gelu-mlp"
RESIZE_STRATEGIES = ("resize-naive",)

DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm pretrained_cfg of the DINOv2 tower
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# What the weights cannot tell: head counts (and the normalisation) per prismatic vision_backbone_id.
VISION_BACKBONES: dict[str, dict[str, Any]] = {
    "dinosiglip-vit-so-384px": {
        "image_size": 384,
        "dino": {"timm_id": "vit_large_patch14_reg4_dinov2.lvd142m", "num_attention_heads": 16, "layer_norm_eps": 1e-6},
        "siglip": {"timm_id": "vit_so400m_patch14_siglip_384", "num_attention_heads": 16, "layer_norm_eps": 1e-6},
    },
}
# GPT-NeoX tokenizer ids of Cobra's mamba-2.8b(-zephyr) LLMs (cobra/models/mamba/configuration_mamba.py defaults).
MAMBA_SPECIAL_TOKENS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}


# --- reading a converted checkpoint -------------------------------------------------------------

def spec_from_config(raw: dict[str, Any], where: str, text_architecture: Callable[[dict, str], ModelSpec]) -> ModelSpec:
    c = Config(raw, where)
    strategy = raw.get("image_resize_strategy")
    if strategy not in RESIZE_STRATEGIES:
        raise UnsupportedModelError(f"{where}: image_resize_strategy: expected one of {', '.join(RESIZE_STRATEGIES)}, got {strategy!r}")
    text_raw = raw.get("text_config")
    if not isinstance(text_raw, dict) or text_raw.get("model_type") != "mamba":
        raise UnsupportedModelError(f"{where}: text_config: expected a mamba text config, got {text_raw!r:.80}")
    for tower in ("dino_config", "siglip_config"):
        if not isinstance(raw.get(tower), dict):
            raise CheckpointError(f"{where}: {tower}: expected an object (written by hmexport's Cobra converter), got {raw.get(tower)!r}")
    vision = VisionSpec(
        # The fused tower drops its own prefix tokens (DINO's CLS + registers) before the concat.
        encoder="dinosiglip", image_size=c.int("image_size"), patch_size=c.int("patch_size"), feature_layer=-2,
        prefix_tokens=0, projector=PROJECTOR, image_token_id=c.int("image_token_index"),
    )
    text = text_architecture(text_raw, f"{where}: text_config")
    if not text.tie_word_embeddings:
        raise UnsupportedModelError(f"{where}: text_config.tie_word_embeddings: expected true (Cobra ties its head), got false")
    return dataclasses.replace(text, vision=vision)


def text_key(text_arch, spec: ModelSpec, name: str, present: set[str]) -> str:
    return "language_model." + text_arch.checkpoint_key(spec, name)


def load_reference(ckpt):
    from .cobra_reference import CobraReference

    return CobraReference.from_checkpoint(ckpt)


# --- converting the native release ---------------------------------------------------------------

def convert_prismatic(
    pickle_path: str | Path,
    out_dir: str | Path,
    *,
    allow_pickle: bool,
    dino_weights: str | Path,
    siglip_weights: str | Path,
    config_path: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    backbones: dict[str, dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Prismatic pickle + its config.json + the two timm towers (safetensors) -> a checkpoint directory.

    ``config_path`` defaults to ``config.json`` two levels above the pickle (prismatic run layout:
    ``<run>/config.json``, ``<run>/checkpoints/latest-checkpoint.pt``). ``tokenizer_dir``, when given,
    supplies tokenizer.json (the pickle names its LLM only by hub id).
    """
    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    if not allow_pickle:
        raise CheckpointError(
            f"{pickle_path}: a prismatic (Cobra) checkpoint is a torch pickle, and hmexport never unpickles implicitly; "
            "convert it once to safetensors by passing allow_pickle=True (it is read with torch.load(weights_only=True), "
            "which loads tensors and plain containers only)"
        )
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: already exists and is not empty; pick another directory or pass overwrite=True")
    config_path = Path(config_path) if config_path is not None else pickle_path.parent.parent / "config.json"
    from .checkpoint import read_json

    run_config = read_json(config_path)
    model_cfg = run_config.get("model", run_config)
    backbones = VISION_BACKBONES if backbones is None else backbones
    vision_id, strategy, arch = model_cfg.get("vision_backbone_id"), model_cfg.get("image_resize_strategy"), model_cfg.get("arch_specifier", "")
    problems = []
    if vision_id not in backbones:
        problems.append(f"model.vision_backbone_id: expected one of {', '.join(backbones)}, got {vision_id!r}")
    if strategy not in RESIZE_STRATEGIES:
        problems.append(f"model.image_resize_strategy: expected one of {', '.join(RESIZE_STRATEGIES)}, got {strategy!r} "
                        "(letterbox pads each tower with its own mean colour, which one pixel input cannot carry)")
    if not str(arch).endswith("fused-gelu-mlp"):
        problems.append(f"model.arch_specifier: expected a '...fused-gelu-mlp' projector, got {arch!r}")
    gather(problems, UnsupportedModelError, f"{config_path}: ")

    native = _load_pickle(pickle_path)
    backbone = backbones[vision_id]
    S = int(backbone["image_size"])
    dino, dino_cfg = _tower(dino_weights, "dino", backbone["dino"], S, DINO_MEAN, DINO_STD)
    siglip, siglip_cfg = _tower(siglip_weights, "siglip", backbone["siglip"], S, SIGLIP_MEAN, SIGLIP_STD)
    if dino_cfg["patch_size"] != siglip_cfg["patch_size"]:
        raise CheckpointError(f"{dino_weights}, {siglip_weights}: patch sizes differ ({dino_cfg['patch_size']} vs {siglip_cfg['patch_size']}); "
                              "the towers' patches are concatenated one to one")
    text, text_config = _text_tensors(native["llm_backbone"], pickle_path)
    Dv, D = dino_cfg["hidden_size"] + siglip_cfg["hidden_size"], text_config["hidden_size"]
    projector = _projector_tensors(native["projector"], Dv, D, pickle_path)

    tensors = {**text, **projector, **{f"vision.dino.{k}": v for k, v in dino.items()}, **{f"vision.siglip.{k}": v for k, v in siglip.items()}}
    V = text_config["vocab_size"]
    config = {
        "model_type": NAME,
        "prismatic": model_cfg,
        "image_size": S,
        "patch_size": dino_cfg["patch_size"],
        "image_resize_strategy": strategy,
        # Cobra has no image token: image rows go before the text. hmexport marks them with the last
        # (padding) row of the vocabulary, which no tokenizer id reaches when the vocab was padded.
        "image_token_index": V - 1,
        "projector": PROJECTOR,
        "dino_config": dino_cfg,
        "siglip_config": siglip_cfg,
        "text_config": text_config,
    }
    preprocessor = {  # the runtime resizes and rescales; each tower's normalisation is inside the vision graph
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": S, "width": S}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": False, "do_center_crop": False,
    }
    _write_dir(out_dir, tensors, config, preprocessor, tokenizer_dir)
    return out_dir


def _load_pickle(path: Path) -> dict[str, dict]:
    import pickle

    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a torch checkpoint of tensors (weights_only load refused it: {str(exc).splitlines()[0]})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(k), dict) for k in ("projector", "llm_backbone")):
        found = sorted(model) if isinstance(model, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected {{'model': {{'projector': ..., 'llm_backbone': ...}}}} (a prismatic checkpoint), found {found}")
    return model


def _tower(path, kind: str, known: dict[str, Any], S: int, mean, std) -> tuple[dict, dict]:
    """timm-named tower weights (unused heads dropped, DINO's pos_embed resampled to S) and their config."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: expected the timm tower as .safetensors (timm's hub repos ship model.safetensors)")
    try:
        raw = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    tensors = {k: v.float() for k, v in raw.items() if not k.startswith(("attn_pool.", "head.", "fc_norm."))}
    needed = ["patch_embed.proj.weight", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"]
    if kind == "dino":
        needed += ["cls_token", "reg_token", "blocks.0.ls1.gamma"]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise CheckpointError(f"{path}: expected timm {kind} tower keys, missing {', '.join(missing)}")
    Dv, _, P, _ = tensors["patch_embed.proj.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("blocks."))
    H = int(known["num_attention_heads"])
    if Dv % H:
        raise CheckpointError(f"{path}: width {Dv} is not a multiple of num_attention_heads {H}")
    if S % P:
        raise CheckpointError(f"{path}: image size {S} is not a multiple of the patch size {P}")
    if kind == "dino":
        tensors["pos_embed"] = resample_pos_embed(tensors["pos_embed"], S // P)
    elif tensors["pos_embed"].shape[1] != (S // P) ** 2:
        raise CheckpointError(f"{path}: pos_embed: expected {(S // P) ** 2} positions for {S} px, got {tensors['pos_embed'].shape[1]}")
    config = {
        "timm_id": known.get("timm_id"), "hidden_size": int(Dv), "num_hidden_layers": layers, "num_attention_heads": H,
        "intermediate_size": int(tensors["blocks.0.mlp.fc1.weight"].shape[0]), "patch_size": int(P),
        "layer_norm_eps": float(known.get("layer_norm_eps", 1e-6)), "image_mean": list(mean), "image_std": list(std),
    }
    if kind == "dino":
        config["num_register_tokens"] = int(tensors["reg_token"].shape[1])
    return tensors, config


def resample_pos_embed(pos, side: int):
    """(1, n*n, D) patch position embeddings -> (1, side*side, D): what timm does when a model is
    created at another img_size (layers/pos_embed.py resample_abs_pos_embed: bicubic, antialias,
    in float32; DINOv2 has no class position, ``no_embed_class``)."""
    import torch

    n = math.isqrt(pos.shape[1])
    if n * n != pos.shape[1]:
        raise CheckpointError(f"pos_embed: expected a square grid of positions, got {pos.shape[1]}")
    if n == side:
        return pos
    D = pos.shape[-1]
    grid = pos.float().reshape(1, n, n, D).permute(0, 3, 1, 2)  # (1, D, n, n)
    grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, side * side, D).contiguous()


def _text_tensors(state: dict, where: Path) -> tuple[dict, dict]:
    """mamba-ssm names (under ``llm.``) -> transformers' MambaForCausalLM names (under ``language_model.``)."""
    errors, out = [], {}
    embed = state.get("llm.backbone.embedding.weight")
    if embed is None:
        raise CheckpointError(f"{where}: llm_backbone: llm.backbone.embedding.weight is missing (expected mamba-ssm's MambaLMHeadModel names)")
    for key, value in state.items():
        if key == "llm.backbone.embedding.weight":
            out["language_model.backbone.embeddings.weight"] = value
        elif key == "llm.lm_head.weight":
            if value.shape != embed.shape or not bool((value == embed).all()):
                errors.append("llm.lm_head.weight: expected the tied embedding (Cobra ties its head), got a different tensor")
        elif key.startswith(("llm.backbone.layers.", "llm.backbone.norm_f.")):
            out["language_model." + key.removeprefix("llm.")] = value
        else:
            errors.append(f"{key}: unexpected key")
    gather(errors, CheckpointError, f"{where}: llm_backbone: ")
    V, D = embed.shape
    layers = 1 + max((int(k.split(".")[3]) for k in out if ".layers." in k), default=-1)
    if layers < 1:
        raise CheckpointError(f"{where}: llm_backbone: no llm.backbone.layers.* tensors")
    p = "language_model.backbone.layers.0.mixer."
    try:
        Di, N = out[p + "A_log"].shape
        R = out[p + "dt_proj.weight"].shape[1]
        W = out[p + "conv1d.weight"].shape[-1]
    except KeyError as exc:
        raise CheckpointError(f"{where}: llm_backbone: {exc.args[0].replace('language_model.', 'llm.')} is missing") from None
    config = {
        "model_type": "mamba", "vocab_size": int(V), "hidden_size": int(D), "num_hidden_layers": layers, "intermediate_size": int(Di),
        "expand": max(1, int(Di) // int(D)), "state_size": int(N), "conv_kernel": int(W), "time_step_rank": int(R),
        "use_conv_bias": p + "conv1d.bias" in out, "use_bias": p + "in_proj.bias" in out, "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True, **MAMBA_SPECIAL_TOKENS,
    }
    return {k: v.float().contiguous() for k, v in out.items()}, config


def _projector_tensors(state: dict, Dv: int, D: int, where: Path) -> dict:
    shapes = {"projector.0.weight": (4 * Dv, Dv), "projector.0.bias": (4 * Dv,), "projector.2.weight": (D, 4 * Dv),
              "projector.2.bias": (D,), "projector.4.weight": (D, D), "projector.4.bias": (D,)}
    errors = [f"{k}: unexpected key" for k in state if k not in shapes]
    for key, shape in shapes.items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            errors.append(f"{key}: expected shape {list(shape)}, got {'missing' if got is None else list(got)}")
    gather(errors, CheckpointError, f"{where}: projector: ")
    return {k: state[k].float().contiguous() for k in shapes}


def _write_dir(out_dir: Path, tensors: dict, config: dict, preprocessor: dict, tokenizer_dir) -> None:
    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")
        if tokenizer_dir is not None:
            shutil.copyfile(Path(tokenizer_dir) / "tokenizer.json", tmp / "tokenizer.json")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
