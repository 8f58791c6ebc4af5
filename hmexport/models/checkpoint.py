"""A Hugging Face checkpoint directory: config.json, safetensors (single or sharded), tokenizer files.

Weights are read through safetensors only; a pickle is never opened here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.io import sha256_file
from ..errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class Checkpoint:
    """A checkpoint directory, its config and a key -> shard map of its tensors."""

    path: Path
    config: dict[str, Any]
    shards: dict[str, Path]  # tensor key -> file
    generation_config: dict[str, Any] = field(default_factory=dict)
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint directory (expected a folder with config.json and *.safetensors)")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: missing; a Hugging Face checkpoint directory needs its config.json")
        config = read_json(config_path)
        generation = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
        return cls(path=path, config=config, shards=_index_shards(path), generation_config=generation)

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.json").is_file()

    def keys(self) -> set[str]:
        return set(self.shards)

    def tensor(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor ``key`` as float32 numpy, checked against ``shape``."""
        file = self.shards.get(key)
        if file is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} is missing (expected shape {list(shape)})")
        handle = self._open(file)
        got = tuple(handle.get_slice(key).get_shape())
        if got != tuple(shape):
            raise CheckpointError(f"{file}: tensor {key!r}: expected shape {list(shape)}, got {list(got)}")
        try:
            value = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for bad data
            raise CheckpointError(f"{file}: tensor {key!r} could not be read ({exc})") from None
        return value.float().numpy() if hasattr(value, "float") else np.asarray(value, dtype=np.float32)

    def _open(self, file: Path) -> Any:
        if file not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[file] = safe_open(str(file), framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc}); is it truncated?") from None
        return self._handles[file]

    def sha256(self) -> str:
        """One digest over config.json and every weight file, in name order (the build's provenance)."""
        digest = hashlib.sha256()
        for file in sorted({self.path / "config.json", *self.shards.values()}):
            digest.update(file.name.encode())
            digest.update(bytes.fromhex(sha256_file(file)))
        return digest.hexdigest()


def _index_shards(path: Path) -> dict[str, Path]:
    index_path = path / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: weight_map: expected a non-empty object, got {weight_map!r}")
        shards: dict[str, Path] = {}
        for key, name in weight_map.items():
            file = (path / name).resolve()
            if file.parent != path.resolve():
                raise CheckpointError(f"{index_path}: weight_map[{key!r}]: {name!r} points outside the checkpoint")
            if not file.is_file():
                raise CheckpointError(f"{index_path}: weight_map[{key!r}]: shard {name} is missing")
            shards[key] = file
        return shards
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(pickles)}: pickles are not loaded; convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{path}: no *.safetensors weights{hint}")
    shards = {}
    for file in files:
        for key in _safetensors_keys(file):
            shards[key] = file
    return shards


def _safetensors_keys(file: Path) -> list[str]:
    """Keys from the safetensors header, with the header and file size checked (a truncated file fails here)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CheckpointError(f"{file}: truncated safetensors file (header says {n} bytes, file has {size - 8})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{file}: corrupt safetensors header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{file}: truncated safetensors file: expected {8 + n + end} bytes, got {size}")
    return [k for k in header if k != "__metadata__"]
