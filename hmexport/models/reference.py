"""The PyTorch reference: transformers' own model class, loaded from the same checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError


def load_reference(path: str | Path):
    """The transformers model in fp32 eval mode, on the CPU (its PyTorch scan path, no mamba-ssm kernels)."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from .checkpoint import Checkpoint
    from .registry import container_for, hf_class_name, read_spec

    ckpt = Checkpoint.open(path)
    # The "falling back to the PyTorch implementation" notices are the point here (that path is the CPU reference).
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    native = getattr(container_for(ckpt), "load_reference", None)
    if native is not None:  # a native layout no transformers class loads: a composition of transformers modules
        return native(ckpt)
    spec = read_spec(ckpt)
    cls = getattr(transformers, hf_class_name(spec))
    try:
        model = cls.from_pretrained(str(ckpt.path), dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for bad checkpoints
        raise CheckpointError(f"{ckpt.path}: transformers could not load the reference model: {exc}") from None
    return model.eval()
