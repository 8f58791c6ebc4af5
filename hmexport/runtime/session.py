"""One conversation on a loaded Bundle: its own State, chunked prefill, single-token decode.

Sessions on one Bundle share the onnxruntime sessions (and so the weights), never state.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..bundle.plan import ACTIVATION_BUDGET, SCORE_COPIES
from .generate import SamplingParams, generate_tokens
from .state import State

_F32 = np.float32


class Session:
    def __init__(self, bundle, *, max_tokens: int | None = None, chunk: int | None = None, state: State | None = None) -> None:
        limits = bundle.manifest.limits
        if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
            raise InputError(f"max_tokens: expected 1..{limits.max_tokens} (the bundle's limit), got {max_tokens}")
        if chunk is not None and chunk < 1:
            raise InputError(f"chunk: expected a positive chunk length, got {chunk}")
        self.bundle = bundle
        self.chunk = chunk or limits.prefill_chunk
        self.state = state or State.allocate(bundle.manifest, max_tokens or limits.max_tokens)
        self._embed = bundle.sessions["embed"]
        self._decoder = bundle.sessions["decoder"]
        self._bound_state, self._bindings = None, {}  # see _binding
        self._vocab = int(self._decoder.get_outputs()[0].shape[-1])
        self._keep_one = np.ones(1, np.int64)
        self._logits_one = np.zeros((1, 1, self._vocab), _F32)
        self._kv_tensors = [t for t in self.state.tensors if t.kind == "kv"]
        self._row_bytes = {t.name: int(np.prod(t.shape)) * 4 for t in self._kv_tensors}
        attention = bundle.manifest.model.get("attention")
        self._score_bytes_per_row = SCORE_COPIES * 4 * attention["num_heads"] if attention else 0

    @property
    def length(self) -> int:
        return self.state.length

    def embed(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids -> (1, L, D) embeddings (the embed graph)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        vocab = self._vocab
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise InputError(f"token id {bad} is out of range: expected 0..{vocab - 1} (the model's vocabulary)")
        return self._embed.run(None, {"input_ids": ids})[0]

    def check_room(self, n: int) -> None:
        if self.state.length + n > self.state.max_tokens:
            raise InputError(
                f"{n} more tokens do not fit: {self.state.length} already in context + {n} > max_tokens {self.state.max_tokens}; "
                f"shorten the prompt or rebuild the bundle with a larger --max-tokens"
            )

    def check_memory(self, n: int) -> None:
        """Refuse, before any compute, a request whose K/V growth and peak activations exceed free memory."""
        from ..bundle.plan import PlanInputs, activation_bytes

        available = available_memory()
        if available is None:
            return
        plan = PlanInputs.from_manifest(self.bundle.manifest, self.chunk)
        kv = plan.kv_bytes_per_token * n
        peak = activation_bytes(plan, self.state.length + n)
        if kv + peak > available:
            raise InputError(
                f"{n} more tokens need ~{(kv + peak) / 2**30:.2f} GiB (K/V {n} x {plan.kv_bytes_per_token} B = {kv / 2**30:.2f} GiB "
                f"+ peak activations {peak / 2**30:.2f} GiB at chunk {self.chunk}) but {available / 2**30:.2f} GiB are available; "
                f"use a smaller --chunk, fewer images or a shorter prompt (hmexport plan shows the arithmetic)"
            )

    def forward(self, embeds: np.ndarray, keep: int = 1) -> np.ndarray:
        """Run one decoder call on (1, L, D) embeddings; returns logits (1, keep, V) and advances the state."""
        x = np.ascontiguousarray(embeds, dtype=_F32)
        L, P = x.shape[1], self.state.length
        self.check_room(L)
        st = self.state
        b = self._binding(st)
        b.bind_input("inputs_embeds", "cpu", 0, _F32, x.shape, x.ctypes.data)
        for t in self._kv_tensors:  # K/V of one head: the filled prefix in, the new rows written in place after it
            buf, row = st.kv[t.name], t.shape
            b.bind_input(t.name, "cpu", 0, _F32, (P, *row), buf.ctypes.data)
            b.bind_output(t.output, "cpu", 0, _F32, (L, *row), buf.ctypes.data + P * self._row_bytes[t.name])
        logits = self._logits_one
        if keep != 1:
            keep_arr, logits = np.array([keep], np.int64), np.zeros((1, keep, self._vocab), _F32)
            b.bind_input("logits_to_keep", "cpu", 0, np.int64, keep_arr.shape, keep_arr.ctypes.data)
            b.bind_output("logits", "cpu", 0, _F32, logits.shape, logits.ctypes.data)
        try:
            self._decoder.run_with_iobinding(b)
        finally:
            if keep != 1:
                self._bind_one_logit(b)
        st.swap()
        st.length += L
        return logits

    def _binding(self, st: State):
        """The decoder's IOBinding for the state's current parity, with the recurrent tensors (read one
        buffer, write its spare), logits_to_keep = 1 and the logits bound once: a decode step then
        rebinds only its embeddings and the K/V views (~40 binding calls of ~3.5 us each -> ~10)."""
        if self._bound_state is not st:  # a new State (restore, load_state): its buffers are new
            self._bound_state, self._bindings = st, {}
        b = self._bindings.get(id(st.recurrent))
        if b is None:
            b = self._decoder.io_binding()
            for t in st.tensors:
                if t.kind == "recurrent":
                    cur, nxt = st.recurrent[t.name], st.spare[t.name]
                    b.bind_input(t.name, "cpu", 0, _F32, cur.shape, cur.ctypes.data)
                    b.bind_output(t.output, "cpu", 0, _F32, nxt.shape, nxt.ctypes.data)
            self._bind_one_logit(b)
            self._bindings[id(st.recurrent)] = b  # the two dicts alternate; both stay alive in st
        return b

    def _bind_one_logit(self, b) -> None:
        b.bind_input("logits_to_keep", "cpu", 0, np.int64, self._keep_one.shape, self._keep_one.ctypes.data)
        b.bind_output("logits", "cpu", 0, _F32, self._logits_one.shape, self._logits_one.ctypes.data)

    def prefill_embeds(self, embeds: np.ndarray, chunk: int | None = None, keep: int = 1) -> np.ndarray:
        """Feed (1, T, D) embeddings in chunks, state carried across; logits of the last ``keep`` positions."""
        T = embeds.shape[1]
        if T == 0:
            raise InputError("the prompt is empty: give at least one token")
        self.check_room(T)
        parts = []
        start = 0
        while start < T:
            end = min(start + self.step(chunk), T)
            want = max(0, keep - (T - end))  # positions of this chunk among the last ``keep``
            out = self.forward(embeds[:, start:end], keep=min(max(want, 1), end - start))
            if want:
                parts.append(out[:, -want:].copy())
            start = end
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def step(self, chunk: int | None = None) -> int:
        """Tokens for the next decoder call: the chunk, shrunk once the attention scores of a chunk
        (chunk x H x context x ~5 float32 intermediates) would pass ``ACTIVATION_BUDGET``, so prefill
        memory stays flat however long the context grows."""
        want = chunk or self.chunk
        if not self._score_bytes_per_row:
            return want
        context = self.state.length + want
        return max(1, min(want, ACTIVATION_BUDGET // (self._score_bytes_per_row * context)))

    def prefill(self, ids: Sequence[int], chunk: int | None = None) -> np.ndarray:
        """Prompt ids -> logits (V,) of the last position; each chunk is embedded on its own, so a long
        prompt never holds all its embeddings at once."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            raise InputError("the prompt is empty: give at least one token")
        self.check_room(len(ids))
        start, logits = 0, None
        while start < len(ids):
            end = min(start + self.step(chunk), len(ids))
            logits = self.forward(self.embed(ids[start:end]))
            start = end
        return logits[0, -1].copy()  # forward reuses its output buffer

    def decode(self, token: int) -> np.ndarray:
        """One token in -> logits (V,) for the next."""
        return self.forward(self.embed([token]))[0, -1].copy()  # forward reuses its output buffer

    def prompt_embeds(self, prompt: Sequence[int] | str, images: Sequence = ()) -> tuple[list[int], np.ndarray]:
        """Prompt (text with ``<image>`` placeholders, or expanded ids) + images -> (ids, (1, L, D) embeddings)."""
        from .multimodal import expand_prompt, image_features, splice

        ids = expand_prompt(self.bundle, prompt, len(images))
        self.check_room(len(ids))
        embeds = self.embed(ids)
        if images:
            embeds = splice(embeds, ids, image_features(self.bundle, images), self.bundle.manifest.vision["image_token_id"])
        return ids, embeds

    def generate(self, prompt: Sequence[int] | str, params: SamplingParams | None = None, *, images: Sequence = (), **kwargs) -> Iterator[int]:
        """Stream new token ids: prefill the prompt (and images), then sample and decode until a stop id or the budget."""
        params = params or SamplingParams(**kwargs)
        if params.stop_ids is None:
            params = params.replace(stop_ids=tuple(self.bundle.manifest.generation.eos_token_ids))
        if images:
            from .multimodal import expand_prompt, stream_prefill

            ids = expand_prompt(self.bundle, prompt, len(images))
            prefill = lambda: stream_prefill(self, ids, images, self.chunk)  # noqa: E731
        else:
            from .multimodal import expand_prompt

            ids = expand_prompt(self.bundle, prompt, 0)
            prefill = None
        self.check_room(len(ids) + max(params.max_new_tokens - 1, 0))
        self.check_memory(len(ids) + params.max_new_tokens)
        return generate_tokens(self, ids, params, prefill)

    def fork(self) -> "Session":
        """A new session continuing from a copy of this one's state (a shared prefix prefilled once)."""
        return Session(self.bundle, max_tokens=self.state.max_tokens, chunk=self.chunk, state=self.state.fork())

    def snapshot(self) -> State:
        """A copy of the whole state (recurrent tensors and the filled K/V prefix)."""
        return self.state.fork()

    def restore(self, state: State) -> None:
        """Continue from ``state`` (copied: the snapshot stays reusable)."""
        if state.tensors != self.state.tensors:
            raise InputError("this state belongs to a bundle with another state layout")
        self.state = state.fork()

    def save_state(self, path) -> None:
        from .snapshot import save_state

        save_state(self.bundle, self.state, path)

    def load_state(self, path) -> None:
        """Continue from a snapshot file; refused unless it was saved from this bundle."""
        from .snapshot import load_state

        self.state = load_state(self.bundle, path, self.state.max_tokens)

    def reset(self) -> None:
        self.state.reset()


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
