"""The architecture table: model_type -> the module that reads its config and names its weights.

One architecture, one file; generic code looks architectures up here, never by ``if arch == ...``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from ..errors import UnsupportedModelError
from . import cobra, jamba, llava, longllava, mamba
from .checkpoint import Checkpoint
from .spec import ModelSpec
from .weights import load_weights, tensor_shapes

ARCHITECTURES: dict[str, ModuleType] = {m.NAME: m for m in (jamba, mamba)}
# Containers wrap a text architecture (their spec's ``arch`` names it) with a vision side.
# A container may define read_spec(ckpt) / load_reference(ckpt) / image_preprocessing(ckpt) when config.json
# alone does not describe it (LongLLaVA names its CLIP tower by path).
CONTAINERS: dict[str, ModuleType] = {llava.NAME: llava, longllava.NAME: longllava, cobra.NAME: cobra}
_BY_MODEL_TYPE = {t: m for m in (*ARCHITECTURES.values(), *CONTAINERS.values()) for t in m.MODEL_TYPES}


def architecture_for(config: dict, where: str) -> ModuleType:
    model_type = config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise UnsupportedModelError(f"{where}: model_type: expected one of {known}, got {model_type!r}")
    return _BY_MODEL_TYPE[model_type]


def read_spec(ckpt: Checkpoint) -> ModelSpec:
    where = str(ckpt.path / "config.json")
    module = architecture_for(ckpt.config, where)
    if hasattr(module, "read_spec"):
        return module.read_spec(ckpt)
    if module in CONTAINERS.values():
        return module.spec_from_config(ckpt.config, where, text_architecture=lambda raw, w: architecture_for(raw, w).spec_from_config(raw, w))
    return module.spec_from_config(ckpt.config, where)


def hf_class_name(spec: ModelSpec) -> str:
    return llava.HF_CLASS if spec.vision is not None else ARCHITECTURES[spec.arch].HF_CLASS


def read_weights(ckpt: Checkpoint, spec: ModelSpec, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    arch = ARCHITECTURES[spec.arch]
    if spec.vision is not None:
        container = container_for(ckpt)
        present = ckpt.keys()
        return load_weights(spec, ckpt, lambda name: container.text_key(arch, spec, name, present), progress)
    return load_weights(spec, ckpt, lambda name: arch.checkpoint_key(spec, name), progress)


def container_for(ckpt: Checkpoint) -> ModuleType:
    return architecture_for(ckpt.config, str(ckpt.path / "config.json"))


def image_preprocessing(ckpt: Checkpoint) -> tuple[Path, bool, dict]:
    """(preprocessor_config.json, pad to square, extra manifest ``vision`` fields) of a multimodal checkpoint."""
    hook = getattr(container_for(ckpt), "image_preprocessing", None)
    return hook(ckpt) if hook else (ckpt.path / "preprocessor_config.json", False, {})


def num_tensors(spec: ModelSpec) -> int:
    return len(tensor_shapes(spec))


def load(path: str | Path) -> tuple[Checkpoint, ModelSpec]:
    ckpt = Checkpoint.open(path)
    return ckpt, read_spec(ckpt)
