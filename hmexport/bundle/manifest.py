"""The bundle manifest: the contract between build time and run time (docs/formats.md).

Versioned; validated on load (an unknown key or a wrong type is an error naming it); every file it
names carries a sha256 checked when the bundle is opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import BundleError
from . import schema

FORMAT = "hmexport-bundle"
SCHEMA_VERSION = 2  # 2: quantized bundles (`quantization`, precisions int8/int4/fp8, com.microsoft ops, F8_E4M3 weights)
READABLE_VERSIONS = (1, 2)  # a v1 manifest is a v2 manifest without `quantization`: read as is
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "int8")


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output; dims are ints or symbolic names (batch, seq, past, kept)."""

    name: str
    dtype: str
    shape: list[Any]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class GraphInfo:
    file: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: list[str] = field(default_factory=list)  # op domains the graph needs beyond standard ONNX


@dataclass(frozen=True)
class StateTensor:
    """One state tensor of one layer. ``kind`` is ``recurrent`` (fixed size, replaced every step)
    or ``kv`` (grows by one row per token; ``shape`` is one row, the buffer is (B, max_tokens, *shape))."""

    name: str  # graph input
    output: str  # graph output: the new value (recurrent) or the new rows (kv)
    kind: str
    shape: list[int]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in ("recurrent", "kv"):
            raise ValueError(f"kind: expected 'recurrent' or 'kv', got {self.kind!r}")


@dataclass(frozen=True)
class LayerState:
    layer: int
    mixer: str
    tensors: list[StateTensor]


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class TokenizerInfo:
    file: str
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None


@dataclass(frozen=True)
class Limits:
    max_tokens: int
    prefill_chunk: int

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.prefill_chunk < 1:
            raise ValueError(f"expected max_tokens and prefill_chunk >= 1, got {self.max_tokens} and {self.prefill_chunk}")


@dataclass(frozen=True)
class Generation:
    eos_token_ids: list[int] = field(default_factory=list)
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class Provenance:
    source: str
    source_sha256: str
    tool_version: str
    preset: str | None = None
    created: str = ""


@dataclass(frozen=True)
class Manifest:
    format: str
    schema_version: int
    model: dict[str, Any]  # the ModelSpec, as JSON
    precision: str
    limits: Limits
    graphs: dict[str, GraphInfo]
    state: list[LayerState]
    weights: str  # the shared weights file (safetensors) that the graphs' external data points into
    files: dict[str, FileInfo]
    generation: Generation
    provenance: Provenance
    tokenizer: TokenizerInfo | None = None
    validation: dict[str, Any] | None = None  # summary; the full report is the file it names
    vision: dict[str, Any] | None = None  # image_token_id, tokens_per_image, preprocess (runtime.images.ImageSpec)
    quantization: dict[str, Any] | None = None  # quantized bundles: options, what was kept, source, accuracy report summary

    def to_json(self) -> dict[str, Any]:
        return schema.to_json(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> "Manifest":
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: format: expected {FORMAT!r}, got {data.get('format')!r}; is this an hmexport bundle?")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise BundleError(
                f"{where}: schema_version: expected one of {', '.join(map(str, READABLE_VERSIONS))}, got {version!r}; rebuild the bundle with this hmexport "
                f"or open it with the hmexport version that wrote it ({data.get('provenance', {}).get('tool_version', '?')})"
            )
        return schema.from_json(cls, data, where)

    def with_files(self, files: dict[str, FileInfo], **changes: Any) -> "Manifest":
        return replace(self, files=files, **changes)

    def state_tensors(self) -> list[StateTensor]:
        return [t for layer in self.state for t in layer.tensors]

    def kv_bytes_per_token(self, batch: int = 1) -> int:
        return batch * sum(_nbytes(t) for t in self.state_tensors() if t.kind == "kv")

    def recurrent_bytes(self, batch: int = 1) -> int:
        return batch * sum(_nbytes(t) for t in self.state_tensors() if t.kind == "recurrent")


_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "uint8": 1, "int8": 1}


def _nbytes(t: StateTensor) -> int:
    n = _ITEMSIZE[t.dtype]
    for d in t.shape:
        n *= d
    return n
