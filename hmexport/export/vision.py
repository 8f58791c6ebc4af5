"""The ``vision`` graph: pixel batch -> image features ready to splice into the text embeddings.

```
pixel_values (I, 3, S, S) -> encoder (CLIP / SigLIP) -> hidden_states[feature_layer] (I, 1 + P, Dv)
  -> drop prefix tokens (CLS) -> [2x2 average pool of the patch grid] -> projector -> (I, T, D)
```
The encoder is transformers' own module traced with torch.onnx.export (standard ops, image count
dynamic); its weights then move into the bundle's shared weights file under ``vision.``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..models.spec import VisionSpec
from .graph import OPSET, Graph


def vision_module(model, vision: VisionSpec):
    """A torch module with explicit steps (no per-image lists, so the batch stays dynamic)."""
    import torch

    own = getattr(model, "vision_module", None)
    if own is not None:  # a composed reference with its own image path (Cobra's two towers)
        return own(vision)

    class VisionEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = model.model.vision_tower
            self.projector = model.model.multi_modal_projector

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[vision.feature_layer]
            patches = hidden[:, vision.prefix_tokens:]  # (I, P, Dv)
            if vision.pool > 1:
                side = vision.image_size // vision.patch_size
                grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
                patches = torch.nn.functional.avg_pool2d(grid, vision.pool).flatten(2).transpose(1, 2)
            return self.projector(patches)  # (I, T, D)

    return VisionEncoder().eval()


def build_vision(model, vision: VisionSpec) -> Graph:
    import torch

    module = vision_module(model, vision)
    sample = torch.zeros(2, 3, vision.image_size, vision.image_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The tracer warns about transformers' shape checks on the fixed image size: expected here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        path = Path(tmp) / "vision.onnx"
        with torch.no_grad():
            torch.onnx.export(module, (sample,), str(path), input_names=["pixel_values"], output_names=["image_features"],
                              dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}}, opset_version=OPSET, dynamo=False)
        traced = onnx.load(str(path))
    return graph_from_onnx(traced, "vision", prefix="vision.")


def graph_from_onnx(model: onnx.ModelProto, name: str, prefix: str) -> Graph:
    """Wrap a traced ONNX model as a Graph whose initializers become shared-file weights named ``prefix + name``."""
    g = Graph(name)
    renamed = {init.name: prefix + init.name for init in model.graph.initializer}
    for init in model.graph.initializer:
        g.weights[renamed[init.name]] = np.ascontiguousarray(numpy_helper.to_array(init))
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"{name}: traced graph has control flow ({node.op_type}); hmexport cannot rename its weights")
        node.input[:] = [renamed.get(i, i) for i in node.input]
        g.nodes.append(node)
    g.inputs.extend(model.graph.input)
    g.outputs.extend(model.graph.output)
    return g
