"""The architecture table: model_type -> the module that reads its config and names its weights.

One architecture, one file; generic code looks architectures up here, never by ``if arch == ...``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from ..errors import UnsupportedModelError
from . import jamba, mamba
from .checkpoint import Checkpoint
from .spec import ModelSpec
from .weights import load_weights, tensor_shapes

ARCHITECTURES: dict[str, ModuleType] = {m.NAME: m for m in (jamba, mamba)}
_BY_MODEL_TYPE = {t: m for m in ARCHITECTURES.values() for t in m.MODEL_TYPES}


def architecture_for(config: dict, where: str) -> ModuleType:
    model_type = config.get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise UnsupportedModelError(f"{where}: model_type: expected one of {known}, got {model_type!r}")
    return _BY_MODEL_TYPE[model_type]


def read_spec(ckpt: Checkpoint) -> ModelSpec:
    where = str(ckpt.path / "config.json")
    return architecture_for(ckpt.config, where).spec_from_config(ckpt.config, where)


def read_weights(ckpt: Checkpoint, spec: ModelSpec, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    arch = ARCHITECTURES[spec.arch]
    return load_weights(spec, ckpt, lambda name: arch.checkpoint_key(spec, name), progress)


def num_tensors(spec: ModelSpec) -> int:
    return len(tensor_shapes(spec))


def load(path: str | Path) -> tuple[Checkpoint, ModelSpec]:
    ckpt = Checkpoint.open(path)
    return ckpt, read_spec(ckpt)
