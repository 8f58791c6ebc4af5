"""ModelSpec: what hmexport needs to know about a hybrid decoder, independent of where it came from.

Dimension letters used everywhere: B batch, L length, D model width, Di Mamba inner width,
N SSM state size, W conv width, H query heads, Hkv key/value heads, Dh head dim, E experts,
F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError


def _check_fields(cls: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{where}: unknown field(s) {', '.join(unknown)}; expected only {', '.join(sorted(known))}")


@dataclass(frozen=True)
class MambaSpec:
    """One Mamba-1 mixer's shape. Jamba adds RMS norms on dt, B and C (``dt_bc_norm``)."""

    d_inner: int  # Di
    d_state: int  # N
    d_conv: int  # W
    dt_rank: int
    conv_bias: bool = True
    proj_bias: bool = False
    dt_bc_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("d_inner", "d_state", "d_conv", "dt_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise CheckpointError(f"mamba.{name}: expected a positive integer, got {value!r}")


@dataclass(frozen=True)
class AttentionSpec:
    num_heads: int  # H
    num_kv_heads: int  # Hkv
    head_dim: int  # Dh

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise CheckpointError(
                f"attention: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )


@dataclass(frozen=True)
class LayerSpec:
    """One decoder layer: a mixer followed by an MLP (``mlp='none'`` for pure Mamba blocks)."""

    mixer: str  # "mamba" | "attention"
    mlp: str = "none"  # "dense" | "moe" | "none"
    experts: int = 0  # E, moe only
    top_k: int = 0  # moe only

    def __post_init__(self) -> None:
        if self.mixer not in ("mamba", "attention"):
            raise CheckpointError(f"layer mixer: expected 'mamba' or 'attention', got {self.mixer!r}")
        if self.mlp not in ("dense", "moe", "none"):
            raise CheckpointError(f"layer mlp: expected 'dense', 'moe' or 'none', got {self.mlp!r}")
        if self.mlp == "moe" and not (1 <= self.top_k <= self.experts):
            raise CheckpointError(f"layer moe: expected 1 <= top_k <= experts, got top_k={self.top_k}, experts={self.experts}")


@dataclass(frozen=True)
class VisionSpec:
    """The image side of a LLaVA-style model: encoder -> feature layer -> drop prefix tokens ->
    optional 2x2 average pooling of the patch grid -> projector -> ``tokens_per_image`` rows of D."""

    encoder: str  # "clip" | "siglip" | "dinosiglip" (Cobra: two towers fused per patch, prefix tokens dropped inside)
    image_size: int
    patch_size: int
    feature_layer: int  # index into the encoder's hidden_states (negative counts from the end)
    prefix_tokens: int  # leading tokens dropped (CLIP's CLS: 1; SigLIP: 0)
    projector: str  # "mlp2x_gelu"
    image_token_id: int
    pool: int = 1  # 2: average each 2x2 block of the patch grid (LongLLaVA)

    def __post_init__(self) -> None:
        if self.encoder not in ("clip", "siglip", "dinosiglip"):  # dinosiglip: Cobra's fused towers (models/cobra.py)
            raise CheckpointError(f"vision encoder: expected 'clip', 'siglip' or 'dinosiglip', got {self.encoder!r}")
        if self.image_size % self.patch_size or (self.image_size // self.patch_size) % self.pool:
            raise CheckpointError(f"vision: image_size {self.image_size} must be a multiple of patch_size {self.patch_size} x pool {self.pool}")
        if self.pool > 1 and self.prefix_tokens != self.leading_tokens:
            raise CheckpointError(f"vision: pooling needs exactly the patch grid: drop {self.leading_tokens} leading token(s), got {self.prefix_tokens}")

    @property
    def leading_tokens(self) -> int:
        """Tokens before the patches in the encoder's output: CLIP's CLS; SigLIP has none."""
        return 1 if self.encoder == "clip" else 0

    @property
    def tokens_per_image(self) -> int:
        side = self.image_size // self.patch_size
        if self.pool > 1:
            return (side // self.pool) ** 2
        return side * side + self.leading_tokens - self.prefix_tokens


@dataclass(frozen=True)
class ModelSpec:
    """A hybrid decoder: embeddings, layers, final norm, LM head."""

    arch: str  # key into the architecture table (models/registry.py)
    vocab_size: int  # V
    hidden_size: int  # D
    intermediate_size: int  # F (dense and per-expert MLP width)
    norm_eps: float
    layers: tuple[LayerSpec, ...]
    mamba: MambaSpec | None = None
    attention: AttentionSpec | None = None
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # dtype of the checkpoint's weights
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    vision: VisionSpec | None = None  # set for LLaVA-style multimodal checkpoints

    def __post_init__(self) -> None:
        if not self.layers:
            raise CheckpointError("config: the model has no layers")
        if any(layer.mixer == "mamba" for layer in self.layers) and self.mamba is None:
            raise CheckpointError("config: Mamba layers present but no Mamba dimensions")
        if any(layer.mixer == "attention" for layer in self.layers) and self.attention is None:
            raise CheckpointError("config: attention layers present but no attention dimensions")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_indices(self, mixer: str) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if layer.mixer == mixer]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "spec") -> "ModelSpec":
        _check_fields(cls, data, where)
        data = dict(data)
        data["layers"] = tuple(_sub(LayerSpec, layer, f"{where}.layers[{i}]") for i, layer in enumerate(data["layers"]))
        if data.get("mamba") is not None:
            data["mamba"] = _sub(MambaSpec, data["mamba"], f"{where}.mamba")
        if data.get("attention") is not None:
            data["attention"] = _sub(AttentionSpec, data["attention"], f"{where}.attention")
        data["eos_token_ids"] = tuple(data.get("eos_token_ids", ()))
        if data.get("vision") is not None:
            data["vision"] = _sub(VisionSpec, data["vision"], f"{where}.vision")
        return cls(**data)

    def describe(self) -> str:
        plan = "".join("A" if layer.mixer == "attention" else "M" for layer in self.layers)
        moe = sum(layer.mlp == "moe" for layer in self.layers)
        return f"{self.arch}: {self.num_layers} layers [{plan}], D={self.hidden_size}, V={self.vocab_size}, {moe} MoE MLPs"


def _sub(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected an object, got {type(data).__name__}")
    _check_fields(cls, data, where)
    return cls(**data)


def dumps(spec: ModelSpec) -> str:
    return json.dumps(spec.to_json(), indent=2)
