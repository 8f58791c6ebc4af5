"""LongLLaVA's native checkpoint (model_type llava_jamba): a tiny replica with the exact native key names
(AI21's older Jamba layout, mm_projector, the CLIP tower under model.vision_tower.vision_tower), sharded
safetensors + index, a CLIP directory named by mm_vision_tower. Checks: key map, spec, missing tower and
pooling fields, then the bundle against the PyTorch reference: vision rows, and greedy tokens with 1 and 3 images.

(One file: tests/models/test_longllava.py beside tests/export/test_longllava.py would collide, since the
test directories are not packages and pytest imports test modules by basename.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_close
from tolerances import FP32_LOGITS

NEW_TOKENS = 32
TOKENS_PER_IMAGE = 16  # 112 px / 14 px patches = 8x8 grid, 2x2-pooled to 4x4
JAMBA = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
    num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2,
    mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
)  # fmt: skip
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=112, patch_size=14)
# What LongLLaVA's train.py leaves in config.json besides AI21's Jamba fields (resamplePooling added by hand).
MM_FIELDS = dict(
    mm_projector_type="mlp2x_gelu", mm_hidden_size=CLIP["hidden_size"], mm_vision_select_layer=-2, mm_vision_select_feature="patch",
    mm_patch_merge_type="flat", image_aspect_ratio="pad", use_mm_proj=True, mm_use_im_start_end=False, mm_use_im_patch_token=False,
    tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, mm_projector_lr=None, tokenizer_padding_side="right",
    tokenizer_model_max_length=4096, resamplePooling="2d",
)  # fmt: skip


# ---------------------------------------------------------------- the native replica


def _native_text_state(model) -> dict[str, torch.Tensor]:
    """transformers' JambaForCausalLM state -> AI21's key names (modeling_jamba.py in LongLLaVA)."""
    out = {}
    F = JAMBA["intermediate_size"]
    for key, value in model.state_dict().items():
        key = key.replace(".pre_ff_layernorm.", ".pre_moe_layernorm.")
        key = key.replace(".mamba.b_layernorm.", ".mamba.B_layernorm.").replace(".mamba.c_layernorm.", ".mamba.C_layernorm.")
        if ".feed_forward.experts.gate_up_proj" in key:  # (E, 2F, D): gate rows first, then up
            base = key.replace(".feed_forward.experts.gate_up_proj", ".moe.experts")
            for e in range(value.shape[0]):
                out[f"{base}.{e}.gate_proj.weight"], out[f"{base}.{e}.up_proj.weight"] = value[e, :F], value[e, F:]
        elif ".feed_forward.experts.down_proj" in key:
            base = key.replace(".feed_forward.experts.down_proj", ".moe.experts")
            for e in range(value.shape[0]):
                out[f"{base}.{e}.down_proj.weight"] = value[e]
        elif ".feed_forward.router." in key:
            out[key.replace(".feed_forward.router.", ".moe.router.")] = value
        elif ".feed_forward." in key:  # a dense layer: one expert, no router
            out[key.replace(".feed_forward.", ".moe.experts.0.")] = value
        else:
            out[key] = value
    return {k: v.contiguous() for k, v in out.items()}


def clip_model(seed: int = 11):
    """A whole CLIPModel, as openai/clip-vit-large-patch14-336 ships (vision_model.* + text_model.*), bf16-exact values."""
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = transformers.CLIPModel(transformers.CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99),
            vision_config=CLIP))  # fmt: skip
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # the checkpoint's copy of the tower is bf16: both copies equal
    return clip


def write_clip_dir(root: Path) -> Path:
    import transformers

    clip_model().save_pretrained(root)
    side = CLIP["image_size"]
    transformers.CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(root)
    return root


def write_native(root: Path, *, tower_dir: str, seed: int = 5, with_tower: bool = True, drop: tuple[str, ...] = ()) -> tuple[Path, object]:
    """A LongLLaVA checkpoint directory: 3 bf16 safetensors shards + index, config.json, tokenizer; returns (dir, source Jamba)."""
    import transformers
    from safetensors.torch import save_file

    from hmexport.models.tokenizer import build_tokenizer, save_tokenizer

    root.mkdir(parents=True)
    config = transformers.JambaConfig(**JAMBA, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = transformers.JambaForCausalLM(config).eval()
        projector = torch.nn.Sequential(torch.nn.Linear(CLIP["hidden_size"], 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
        for name, p in text.named_parameters():
            if "norm" in name or name.endswith(".D"):  # ones at init: a swapped B/C norm would go unseen
                torch.nn.init.uniform_(p, 0.5, 1.5)
    with torch.no_grad():
        head = text.lm_head.weight
        head.mul_(3.0 / (head.std().item() * math.sqrt(head.shape[1])))  # logits std ~3: no greedy near-ties
        for p in (*text.parameters(), *projector.parameters()):
            p.copy_(p.to(torch.bfloat16).float())  # the shards are bf16, like the released ones; keep the source exact
    shards = [_native_text_state(text), {f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}]
    if with_tower:  # a full save of the trained model holds the (frozen) tower too
        tower = clip_model().vision_model.state_dict()
        shards[1].update({f"model.vision_tower.vision_tower.vision_model.{k}": v for k, v in tower.items()})
    layers01 = {k: v for k, v in shards[0].items() if k.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens"))}
    shards = [layers01, {k: v for k, v in shards[0].items() if k not in layers01}, shards[1]]
    weight_map, total = {}, 0
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in shard.items()}, str(root / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        total += sum(v.numel() * 2 for v in shard.values())
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    native = {
        "architectures": ["LlavaJambaForCausalLM"], "model_type": "llava_jamba", **JAMBA, "hidden_act": "silu",
        "rms_norm_eps": 1e-6, "mamba_conv_bias": True, "mamba_proj_bias": False, "mamba_inner_layernorms": True,
        "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "n_ctx": 262144,
        "use_mamba_kernels": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
        **MM_FIELDS, "mm_vision_tower": tower_dir,
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps({k: v for k, v in native.items() if k not in drop}, indent=2))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    save_tokenizer(build_tokenizer(512), root, model_max_length=4096)
    return root, text


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The replica, its bundle (validated against the reference at build time) and the reference."""
    from hmexport.export.build import BuildOptions, build
    from hmexport.models.reference import load_reference

    root = tmp_path_factory.mktemp("longllava")
    clip_dir = write_clip_dir(root / "clip")
    ckpt, source = write_native(root / "ckpt", tower_dir=str(clip_dir))
    build(str(ckpt), root / "bundle", BuildOptions(max_tokens=512, chunk=32, validate=True))
    return {"ckpt": ckpt, "clip": clip_dir, "bundle": root / "bundle", "source": source, "reference": load_reference(ckpt), "root": root}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("coffee", "astronaut", "chelsea", "rocket"):  # 400x600, 512x512, 300x451, 427x640
        paths.append(root / f"{name}.png")
        Image.fromarray(getattr(data, name)()).save(paths[-1])
    return paths


def native_pixels(clip_dir: Path, paths: list[Path]) -> torch.Tensor:
    """mm_utils.process_images with image_aspect_ratio 'pad': expand2square in the mean colour, then the CLIP processor."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(str(clip_dir))
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        side = max(image.size)
        square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in processor.image_mean))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        out.append(processor.preprocess(square, return_tensors="pt")["pixel_values"][0])
    return torch.stack(out)


def native_ids(ckpt: Path, text: str, image_token: int) -> list[int]:
    """cli.py + mm_utils.tokenizer_image_token: wrap each <image>, encode the chunks separately (no special
    tokens), IMAGE_TOKEN_INDEX between them; here already expanded to the image's rows."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(ckpt / "tokenizer.json"))
    if "</img>" not in text:
        text = text.replace("<image>", "<img><image></img>")
    chunks = [tok(chunk, add_special_tokens=False).input_ids for chunk in text.split("<image>")]
    ids = chunks[0]
    for chunk in chunks[1:]:
        ids = ids + [image_token] * TOKENS_PER_IMAGE + chunk
    return ids


# ---------------------------------------------------------------- checkpoint reading


def test_native_keys_are_read_exactly(native):
    from hmexport.models import longllava, registry
    from hmexport.models.checkpoint import Checkpoint
    from hmexport.models.weights import tensor_shapes

    ckpt = Checkpoint.open(native["ckpt"])
    keys = ckpt.keys()
    for key in ("model.layers.0.moe.experts.0.gate_proj.weight", "model.layers.1.moe.router.weight", "model.layers.3.moe.experts.3.down_proj.weight",
                "model.layers.0.mamba.B_layernorm.weight", "model.layers.2.mamba.dt_layernorm.weight", "model.layers.1.pre_moe_layernorm.weight",
                "model.layers.1.self_attn.o_proj.weight", "model.final_layernorm.weight", "model.mm_projector.2.bias",
                "model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"):  # fmt: skip
        assert key in keys, key
    spec = registry.read_spec(ckpt)
    assert spec.describe() == "jamba: 4 layers [MAMA], D=64, V=512, 2 MoE MLPs"
    assert (spec.vision.feature_layer, spec.vision.prefix_tokens, spec.vision.pool, spec.vision.tokens_per_image) == (-2, 1, 2, TOKENS_PER_IMAGE)
    read = set()
    for name, shape in tensor_shapes(spec).items():
        if ".mlp.experts." in name:
            prefix, proj = name.rsplit(".experts.", 1)
            read |= {longllava.text_key(None, spec, f"{prefix}.experts.{e}.{proj}.weight") for e in range(shape[0])}
        else:
            read.add(longllava.text_key(None, spec, name))
    text_keys = {k for k in keys if not k.startswith((longllava.TOWER_PREFIX, longllava.PROJECTOR_PREFIX))}
    assert read == text_keys, f"unread: {sorted(text_keys - read)[:5]}, missing: {sorted(read - text_keys)[:5]}"


def test_reference_text_model_is_the_source_model(native):
    ids = torch.tensor([[5, 77, 300, 41, 9, 250]])
    with torch.no_grad():
        got = native["reference"](ids).logits
        want = native["source"](input_ids=ids).logits
    assert_close("reference vs source Jamba logits", got.numpy(), want.numpy(), 1e-5)


def test_missing_pooling_field_defaults_to_trained_2d_with_a_warning(native, tmp_path):
    from hmexport.errors import UnsupportedModelError
    from hmexport.models import registry
    from hmexport.models.checkpoint import Checkpoint

    ckpt = Checkpoint.open(native["ckpt"])
    config = {k: v for k, v in ckpt.config.items() if k != "resamplePooling"}
    with pytest.warns(UserWarning, match="resamplePooling is not set; using '2d'"):
        spec = registry.read_spec(Checkpoint(ckpt.path, config, ckpt.shards))
    assert spec.vision.pool == 2 and spec.vision.tokens_per_image == TOKENS_PER_IMAGE
    with pytest.raises(UnsupportedModelError, match=r"resamplePooling: expected \['2d'\].*got '1d'"):
        registry.read_spec(Checkpoint(ckpt.path, {**config, "resamplePooling": "1d"}, ckpt.shards))


def test_missing_vision_tower_gives_a_clear_error_and_the_env_override_works(native, photos, monkeypatch):
    from hmexport.errors import CheckpointError
    from hmexport.models import longllava, registry
    from hmexport.models.checkpoint import Checkpoint
    from hmexport.models.reference import load_reference

    monkeypatch.delenv(longllava.VISION_TOWER_ENV, raising=False)
    ckpt, _ = write_native(native["root"] / "no-tower", tower_dir="./models/clip_vit_large_patch14_336", with_tower=False)
    with pytest.raises(CheckpointError, match=r"config.json: mm_vision_tower: './models/clip_vit_large_patch14_336' is not a local directory.*"
                                              r"weights \(this checkpoint does not hold them\).*set HMEXPORT_VISION_TOWER=/path/to/it"):
        load_reference(ckpt)
    held = Checkpoint.open(native["ckpt"])
    held.config = {**held.config, "mm_vision_tower": "openai/clip-vit-large-patch14-336"}
    with pytest.raises(CheckpointError, match=r"reads the CLIP tower's config.json and preprocessor_config.json \(its weights are in this checkpoint\)"):
        registry.read_spec(held)
    monkeypatch.setenv(longllava.VISION_TOWER_ENV, str(native["root"] / "nowhere"))
    with pytest.raises(CheckpointError, match="HMEXPORT_VISION_TOWER=.*nowhere: expected a CLIP checkpoint directory"):
        load_reference(ckpt)
    monkeypatch.setenv(longllava.VISION_TOWER_ENV, str(native["clip"]))
    model = load_reference(ckpt)  # the tower's weights now come from the CLIP directory (the same seed)
    pixels = native_pixels(native["clip"], photos[:2])
    with torch.no_grad():
        assert_close("tower from the CLIP dir", model.image_features(pixels).numpy(), native["reference"].image_features(pixels).numpy(), 1e-6)


# ---------------------------------------------------------------- the bundle against the reference


def test_vision_rows_match_the_reference(native, photos):
    from hmexport.runtime import Bundle
    from hmexport.runtime.multimodal import image_features

    bundle = Bundle.open(native["bundle"])
    assert bundle.manifest.validation["passed"], bundle.manifest.validation
    assert bundle.manifest.vision["preprocess"]["pad_to_square"] is True
    with torch.no_grad():
        want = native["reference"].image_features(native_pixels(native["clip"], photos)).numpy()  # bilinear, as LongLLaVA pools
    assert_close("LongLLaVA vision rows", image_features(bundle, photos), want, FP32_LOGITS)


@pytest.mark.parametrize("n_images", [1, 3])
def test_greedy_tokens_identical_with_images(native, photos, n_images):
    from hmexport.runtime import Bundle

    bundle = Bundle.open(native["bundle"])
    token = bundle.manifest.vision["image_token_id"]
    images = photos[:1] if n_images == 1 else photos[1:]
    prompt = "Describe <image> in one line." if n_images == 1 else "First <image>, then <image> and <image>: what changed?"
    ids = native_ids(native["ckpt"], prompt, token)
    session = bundle.session()
    assert session.prompt_embeds(prompt, images)[0] == ids, "the runtime must expand <image> as LongLLaVA's cli.py does"
    with torch.no_grad():
        want = native["reference"].generate_with_images(torch.tensor([ids]), native_pixels(native["clip"], images), NEW_TOKENS,
                                                        min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    got = list(session.generate(prompt, images=images, max_new_tokens=NEW_TOKENS, stop_ids=()))
    assert got == want, f"{n_images} images: first mismatch at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)}"
