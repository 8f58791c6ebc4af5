"""A session's memory: per Mamba layer its conv window and SSM state, per attention layer its K/V.

Recurrent tensors have two buffers each: the graph reads one and writes the other, then they swap.
K/V buffers are time-major (1, max_tokens, Hkv, Dh): the filled prefix ``[:, :n]`` is one contiguous
block handed to the graph without a copy, and the graph's new rows are written straight into
``[:, n:n+L]``. Buffers come from ``np.zeros`` (calloc), so untouched K/V pages cost no memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bundle.manifest import Manifest, StateTensor


@dataclass
class State:
    tensors: list[StateTensor]
    max_tokens: int
    recurrent: dict[str, np.ndarray]  # name -> current value (1, *shape), float32
    spare: dict[str, np.ndarray]  # name -> the buffer the next step writes
    kv: dict[str, np.ndarray]  # name -> (1, max_tokens, *row)
    length: int = 0  # tokens consumed so far

    @classmethod
    def allocate(cls, manifest: Manifest, max_tokens: int) -> "State":
        tensors = manifest.state_tensors()
        rec = [t for t in tensors if t.kind == "recurrent"]
        return cls(
            tensors=tensors,
            max_tokens=max_tokens,
            recurrent={t.name: np.zeros((1, *t.shape), np.float32) for t in rec},
            spare={t.name: np.zeros((1, *t.shape), np.float32) for t in rec},
            kv={t.name: np.zeros((1, max_tokens, *t.shape), np.float32) for t in tensors if t.kind == "kv"},
        )

    def swap(self) -> None:
        self.recurrent, self.spare = self.spare, self.recurrent

    def reset(self) -> None:
        for buf in self.recurrent.values():
            buf.fill(0.0)
        self.length = 0  # K/V rows past ``length`` are never read, so they need no clearing

    def fork(self) -> "State":
        """An independent copy: recurrent tensors and the filled K/V prefix are copied."""
        other = State(
            tensors=self.tensors,
            max_tokens=self.max_tokens,
            recurrent={k: v.copy() for k, v in self.recurrent.items()},
            spare={k: np.zeros_like(v) for k, v in self.spare.items()},
            kv={k: np.zeros_like(v) for k, v in self.kv.items()},
            length=self.length,
        )
        for k, v in self.kv.items():
            other.kv[k][:, : self.length] = v[:, : self.length]
        return other

    def nbytes(self) -> dict[str, int]:
        return {
            "recurrent": sum(v.nbytes for v in self.recurrent.values()),
            "kv_allocated": sum(v.nbytes for v in self.kv.values()),
            "kv_used": sum(v[:, : self.length].nbytes for v in self.kv.values()),
        }
