"""Typed reads of a config.json with errors that name the file and field."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError

_MISSING = object()
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class Config:
    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw, self.where = raw, where

    def _get(self, key: str, default: Any) -> Any:
        value = self.raw.get(key, default)
        if value is _MISSING:
            raise CheckpointError(f"{self.where}: {key}: missing (required)")
        return value

    def int(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{self.where}: {key}: expected a non-negative integer, got {value!r}")
        return value

    def float(self, key: str, default: Any = _MISSING) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{self.where}: {key}: expected a number, got {value!r}")
        return float(value)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise CheckpointError(f"{self.where}: {key}: expected true or false, got {value!r}")
        return value

    def dtype(self) -> str:
        value = self.raw.get("dtype", self.raw.get("torch_dtype", "float32")) or "float32"
        if value not in DTYPES:
            raise CheckpointError(f"{self.where}: dtype: expected one of {', '.join(sorted(DTYPES))}, got {value!r}")
        return DTYPES[value]

    def special_tokens(self) -> dict[str, Any]:
        eos = self.raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return {"bos_token_id": self.raw.get("bos_token_id"), "eos_token_ids": eos_ids, "pad_token_id": self.raw.get("pad_token_id")}
