"""State snapshots on disk: a session's whole memory (conv windows, SSM states, the filled K/V
prefix) as a safetensors file, tied to the bundle it came from.

A shared prefix (a system prompt, a set of images) is prefilled once, saved, and every later
question starts from it. The file records the sha256 of the bundle's decoder graph and weights;
loading it into any other bundle is refused, because the state would mean nothing there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle.weights import load_safetensors, read_metadata, write_safetensors
from ..errors import InputError
from .state import State

FORMAT = "hmexport-state"
VERSION = "1"


def bundle_identity(bundle) -> dict[str, str]:
    m = bundle.manifest
    return {"decoder_sha256": m.files[m.graphs["decoder"].file].sha256, "weights_sha256": m.files[m.weights].sha256}


def save_state(bundle, state: State, path: str | Path) -> Path:
    """Write ``state`` (recurrent tensors and K/V rows [0, length)) to ``path`` atomically."""
    path = Path(path)
    tensors: dict[str, np.ndarray] = {name: value for name, value in state.recurrent.items()}
    tensors.update({name: np.ascontiguousarray(buf[:, : state.length]) for name, buf in state.kv.items()})
    metadata = {"format": FORMAT, "version": VERSION, "length": str(state.length), **bundle_identity(bundle)}
    tmp = path.with_name(f".{path.name}.partial")
    write_safetensors(tmp, tensors, metadata)
    tmp.replace(path)
    return path


def load_state(bundle, path: str | Path, max_tokens: int | None = None) -> State:
    """A State for ``bundle`` filled from ``path``; refused if the file came from another bundle."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: state snapshot not found")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: not an hmexport state snapshot (metadata format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise InputError(f"{path}: snapshot version {meta.get('version')!r}, expected {VERSION}")
    want = bundle_identity(bundle)
    for key, value in want.items():
        if meta.get(key) != value:
            raise InputError(f"{path}: snapshot was taken from a different bundle ({key} {str(meta.get(key))[:12]}..., this bundle {value[:12]}...); "
                             "a state only continues the model that produced it")
    length = int(meta["length"])
    state = State.allocate(bundle.manifest, max_tokens or bundle.manifest.limits.max_tokens)
    if length > state.max_tokens:
        raise InputError(f"{path}: snapshot holds {length} tokens, more than max_tokens {state.max_tokens}")
    tensors = load_safetensors(path, mmap=False)
    expected = set(state.recurrent) | set(state.kv)
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise InputError(f"{path}: snapshot tensors do not match the bundle's state layout (missing {missing}, unexpected {extra})")
    for name, buf in state.recurrent.items():
        _copy(path, name, buf, tensors[name])
    for name, buf in state.kv.items():
        _copy(path, name, buf[:, :length], tensors[name])
    state.length = length
    return state


def _copy(path: Path, name: str, dst: np.ndarray, src: np.ndarray) -> None:
    if src.shape != dst.shape:
        raise InputError(f"{path}: tensor {name!r}: expected shape {list(dst.shape)}, got {list(src.shape)}")
    dst[...] = src
