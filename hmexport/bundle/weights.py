"""The bundle's weights file: standard safetensors, written and memory-mapped with numpy alone.

The ONNX graphs point their initializers into this file as external data (offset, length), so the
same bytes are one safetensors file for tools and the weights of every graph. The header is padded
so the data starts 64-byte aligned; tensors are ordered by item size so each stays aligned.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BundleError

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8, "I8": np.int8}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
# float8 (fp8 bundles): numpy has no such dtype; written from ml_dtypes arrays, read back as their raw
# bits (uint8). onnxruntime cannot take such a buffer as an initializer, so the runtime lets it read
# these tensors itself through the graphs' external-data references (see RAW_BITS).
RAW_BITS = {"F8_E4M3": "float8_e4m3fn"}
_DTYPES.update({code: np.uint8 for code in RAW_BITS})
ALIGN = 64


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> dict[str, tuple[int, int]]:
    """Write ``tensors`` (and string ``metadata``); returns name -> (absolute byte offset in the file, byte length)."""
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict[str, dict] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        array = tensors[name]
        code = _CODES.get(array.dtype) or next((k for k, v in RAW_BITS.items() if array.dtype.name == v), None)
        if code is None:
            raise BundleError(f"{path.name}: tensor {name!r}: dtype {array.dtype} cannot be stored")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    start = 8 + len(raw)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    return {name: (start + h["data_offsets"][0], h["data_offsets"][1] - h["data_offsets"][0]) for name, h in header.items() if name != "__metadata__"}


def _raw_header(path: Path) -> tuple[int, dict]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > size - 8:
            raise BundleError(f"{path}: not a safetensors file (header length {n}, file {size} bytes)")
        try:
            return 8 + n, json.loads(f.read(n))
        except json.JSONDecodeError:
            raise BundleError(f"{path}: corrupt safetensors header") from None


def read_metadata(path: Path) -> dict[str, str]:
    return _raw_header(path)[1].get("__metadata__", {}) or {}


def read_header(path: Path) -> tuple[int, dict[str, dict]]:
    start, header = _raw_header(path)
    header.pop("__metadata__", None)
    return start, header


def load_safetensors(path: Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """name -> array; with ``mmap`` the arrays are read-only views of the file (the OS shares the pages)."""
    start, header = read_header(path)
    if mmap:
        buffer = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        buffer = np.fromfile(path, dtype=np.uint8)
    out = {}
    for name, h in header.items():
        lo, hi = h["data_offsets"]
        if start + hi > buffer.size:
            raise BundleError(f"{path}: tensor {name!r} runs past the end of the file (truncated?)")
        dtype = np.dtype(_DTYPES[h["dtype"]])
        out[name] = buffer[start + lo:start + hi].view(dtype).reshape(h["shape"])
    return out
