"""Built-in presets: real Hugging Face checkpoint directories with seeded random weights.

Tests, benchmarks and demos need hybrid checkpoints without a download. ``write_checkpoint`` builds
one from any Jamba/Mamba config through transformers itself (so the files are exactly what
``save_pretrained`` writes); ``PRESETS`` names the configs the project uses. Needs torch + transformers
(the ``export`` extra); both are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import HmexportError
from .tokenizer import BOS_ID, EOS_ID, MIN_TOKENIZER_VOCAB, PAD_ID, build_tokenizer, save_tokenizer

# Target std of the logits for RMS-normalised (unit RMS) final hidden states. Default inits give
# ~0.2, so the top two logits of a random model differ by ~1e-3 and greedy decoding flips on 1e-6
# numeric noise; at ~3 the gaps are large enough for exported and reference models to agree.
LOGIT_STD = 3.0
DTYPES = ("float32", "float16", "bfloat16")
# mamba-tiny, 64 random prompts: the argmax equals the last input token 98% of the time at gain 1,
# 8% at gain 4 (the logits still move with the prefix, median top-2 gap ~0.6).
TIED_BRANCH_GAIN = 4.0
_RESIDUAL_OUT = re.compile(r"\.(out_proj|o_proj|down_proj)(\.weight|\.bias)?$")  # writes into the residual stream


class PresetError(HmexportError):
    """A preset name is unknown or a checkpoint cannot be written where asked."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model_type: str  # "jamba" | "mamba"
    config: dict[str, Any]  # config.json fields over transformers' defaults
    tokenizer_vocab: int | None = 512  # None: no tokenizer files
    initializer_range: float | None = None  # None: transformers' default for the model type
    dtype: str = "float32"
    shards: int = 1
    native: str | None = None  # module in hmexport.models whose write_preset_checkpoint writes it (a native release, converted)


_JAMBA_TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
    num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2,
    mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8, max_position_embeddings=4096,
)  # fmt: skip

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("jamba-tiny", "Jamba, 4 layers [MAMA], MoE (4 experts, top-2) on layers 1 and 3, D=64", "jamba", _JAMBA_TINY),
        Preset("jamba-tiny-dense", "jamba-tiny with dense MLPs everywhere (num_experts=1)", "jamba", {**_JAMBA_TINY, "num_experts": 1}),
        Preset(
            "mamba-tiny",
            "Mamba-1, 4 layers, D=64, N=8, tied head",
            "mamba",
            dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, state_size=8, conv_kernel=4, expand=2, time_step_rank=8, tie_word_embeddings=True),
        ),
        Preset(
            "llava-jamba-tiny",
            "LLaVA: tiny CLIP tower (56 px, 14 px patches -> 16 tokens per image) + jamba-tiny; image token id 511",
            "llava",
            dict(text_model_type="jamba", text_config=_JAMBA_TINY, image_token_index=511,
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)),
        ),
        Preset(
            "llava-mamba-tiny",
            "LLaVA: the same CLIP tower + a mamba-tiny text model with an untied head",
            "llava",
            # Untied: transformers' LLaVA ties lm_head to `embed_tokens`, which Mamba names `embeddings`.
            dict(text_model_type="mamba", image_token_index=511,
                 text_config=dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, state_size=8, conv_kernel=4, expand=2, time_step_rank=8, tie_word_embeddings=False),
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)),
        ),
        Preset(
            "cobra-tiny",
            "Cobra: tiny DINOv2 (registers) + SigLIP towers (56 px -> 16 rows per image), 3-layer GELU projector, "
            "3-layer Mamba (V=509 padded to 512, tied); written as a native prismatic release, then converted",
            "cobra", {}, tokenizer_vocab=None, native="cobra_tiny",
        ),
        Preset(
            "jamba-small",
            "Jamba for benchmarks: 8 layers, attention on layer 4, MoE (4 experts, top-2) on odd layers, D=512",
            "jamba",
            dict(
                vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2, expert_layer_offset=1,
                num_experts=4, num_experts_per_tok=2, num_attention_heads=8, num_key_value_heads=2,
                mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=32, max_position_embeddings=4096,
            ),  # fmt: skip
            tokenizer_vocab=8192,
        ),
        Preset(
            "mamba-small",
            "Mamba-1 for benchmarks: 12 layers, D=512, N=16, tied head",
            "mamba",
            dict(vocab_size=8192, hidden_size=512, num_hidden_layers=12, state_size=16, conv_kernel=4, expand=2, tie_word_embeddings=True),
            tokenizer_vocab=8192,
        ),
    )
}


def write_preset(name: str, out_dir: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    preset = PRESETS.get(name)
    if preset is None:
        raise PresetError(f"preset {name!r}: unknown; expected one of {', '.join(PRESETS)}")
    if preset.native is not None:  # not a transformers model: its own writer
        import importlib

        return importlib.import_module(f".{preset.native}", __package__).write_preset_checkpoint(Path(out_dir), seed=seed, overwrite=overwrite)
    config = dict(preset.config)
    if preset.initializer_range is not None:
        config["initializer_range"] = preset.initializer_range
    return write_checkpoint(
        preset.model_type, config, Path(out_dir), seed=seed, tokenizer_vocab=preset.tokenizer_vocab,
        shards=preset.shards, dtype=preset.dtype, overwrite=overwrite,
    )  # fmt: skip


def write_checkpoint(
    model_type: str,
    config: dict[str, Any],
    out_dir: str | Path,
    *,
    seed: int = 0,
    tokenizer_vocab: int | None = 512,
    shards: int = 1,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a seeded random ``model_type`` checkpoint with ``config`` to ``out_dir``; returns ``out_dir``.

    The tokenizer gets at most min(tokenizer_vocab, vocab_size) tokens so every id it emits has an
    embedding. ``shards > 1`` writes about that many safetensors files plus model.safetensors.index.json.
    The directory appears complete or not at all: everything is written to a hidden sibling first.
    """
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise PresetError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if shards < 1:
        raise PresetError(f"shards: expected a positive integer, got {shards!r}")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PresetError(f"{out_dir}: already exists and is not empty; pick another directory or pass overwrite=True")
    model = _build_model(model_type, config, seed)
    text_config = model.config.get_text_config()
    if tokenizer_vocab is not None and min(tokenizer_vocab, text_config.vocab_size) < MIN_TOKENIZER_VOCAB:
        raise PresetError(
            f"tokenizer_vocab: a byte-level tokenizer needs at least {MIN_TOKENIZER_VOCAB} ids, got "
            f"min(tokenizer_vocab={tokenizer_vocab}, vocab_size={text_config.vocab_size}); pass tokenizer_vocab=None for no tokenizer"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _save(model, tmp, shards, dtype)
        if model_type == "llava":
            _save_image_processor(model, tmp)
        if tokenizer_vocab is not None:
            tok = build_tokenizer(min(tokenizer_vocab, text_config.vocab_size))
            save_tokenizer(tok, tmp, model_max_length=getattr(text_config, "max_position_embeddings", None) or 4096)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _build_model(model_type: str, overrides: dict[str, Any], seed: int) -> Any:
    import torch
    import transformers

    if model_type == "llava":
        return _build_llava(overrides, seed)
    classes = {"jamba": ("JambaConfig", "JambaForCausalLM"), "mamba": ("MambaConfig", "MambaForCausalLM")}
    if model_type not in classes:
        raise PresetError(f"model_type: expected one of {', '.join(classes)} or llava, got {model_type!r}")
    config_cls, model_cls = (getattr(transformers, n) for n in classes[model_type])
    fields = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, **overrides}
    fields.pop("use_mamba_kernels", None)
    config = config_cls(**fields)
    if model_type == "jamba":
        # Set after construction: passing it warns that it is deprecated, but config.json should still
        # say false so older transformers never reach for the CUDA-only kernels.
        config.use_mamba_kernels = False
    with torch.random.fork_rng(devices=[]):  # seed without disturbing the caller's RNG stream
        torch.manual_seed(seed)
        model = model_cls(config)
    _sharpen_logits(model)
    model.eval()
    return model


def _build_llava(fields: dict[str, Any], seed: int) -> Any:
    """LlavaForConditionalGeneration over a Jamba/Mamba text model and a CLIP vision tower.

    ``fields``: text_model_type, text_config, vision_config (CLIPVisionConfig fields), image_token_index.
    """
    import torch
    import transformers

    text_type = fields["text_model_type"]
    text_cls = {"jamba": transformers.JambaConfig, "mamba": transformers.MambaConfig}[text_type]
    text = text_cls(**{"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, **fields["text_config"]})
    vision = transformers.CLIPVisionConfig(**fields["vision_config"])
    config = transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=fields["image_token_index"],
                                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                      tie_word_embeddings=text.tie_word_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlavaForConditionalGeneration(config)
    _sharpen_logits(model)
    return model.eval()


def _save_image_processor(model: Any, out_dir: Path) -> None:
    """A CLIP image processor config sized for the tower (what LLaVA checkpoints ship)."""
    from transformers import CLIPImageProcessor

    side = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(out_dir)


def _sharpen_logits(model: Any) -> None:
    """Multiply the LM head by one factor so logits have std ~LOGIT_STD.

    A tied head is the embedding matrix, and a random tied model mostly predicts its input token
    (the token's own embedding dominates the residual stream). There every residual branch output
    (out_proj, o_proj, down_proj) is scaled by the same factor, which keeps the function and only
    scales the logits (each block reads through an RMS norm), times TIED_BRANCH_GAIN so the mixers,
    not the input token, decide the argmax. Mamba's A_log, D and dt_proj.bias are left untouched.
    """
    import torch

    head = model.get_output_embeddings().weight
    std = head.detach().double().std().item()
    # 3 significant digits: the factor (and so the file bytes) cannot hinge on float summation order.
    factor = float(f"{LOGIT_STD / (std * math.sqrt(head.shape[1])):.3g}")
    scales = [(head, factor)]
    if head is model.get_input_embeddings().weight:
        scales += [(p, factor * TIED_BRANCH_GAIN) for name, p in model.named_parameters() if _RESIDUAL_OUT.search(name)]
    with torch.no_grad():
        for p, scale in scales:
            p.mul_(scale)


def _save(model: Any, out_dir: Path, shards: int, dtype: str) -> None:
    import torch
    from transformers import GenerationConfig

    model.to(getattr(torch, dtype))
    config = model.config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    kwargs: dict[str, Any] = {}
    if shards > 1:
        unique = {p.data_ptr(): p for p in model.state_dict().values()}.values()  # a tied head is stored once
        total = sum(p.numel() * p.element_size() for p in unique)
        kwargs["max_shard_size"] = max(1, math.ceil(total / shards))
    with _quiet_progress():
        model.save_pretrained(out_dir, safe_serialization=True, **kwargs)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _replace(new: Path, out_dir: Path) -> None:
    """Move ``new`` to ``out_dir``; an existing ``out_dir`` (empty, or overwrite was asked) is removed."""
    if out_dir.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / "dir")  # rename first: out_dir is never a half-deleted mix
        new.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out_dir.exists():
            out_dir.unlink()
        new.rename(out_dir)
