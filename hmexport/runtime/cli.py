"""What ``hmexport run`` does, in the runtime (no torch): parse the prompt, generate, stream text."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

from ..errors import InputError
from .bundle import Bundle
from .generate import SamplingParams


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(f"--input-ids: expected comma-separated integers such as 1,17,42, got {text!r}") from None
    if not ids:
        raise InputError("--input-ids: no token ids given")
    return ids


def run_prompt(bundle_dir: Path, *, prompt: str | None, input_ids: str | None, max_new_tokens: int, ignore_eos: bool, temperature: float,
               top_k: int, top_p: float, seed: int | None, chunk: int | None, stream: TextIO | None, images: list[Path] = ()) -> dict:
    if (prompt is None) == (input_ids is None):
        raise InputError("give exactly one of --prompt TEXT or --input-ids 1,2,3")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                            stop_ids=() if ignore_eos else None)
    bundle = Bundle.open(bundle_dir)
    session = bundle.session(chunk=chunk)
    out: list[int] = []
    shown = ""
    start = time.perf_counter()
    first = None
    tokens = session.generate(prompt if prompt is not None else parse_ids(input_ids), params, images=list(images))
    prompt_len = 0
    for token in tokens:
        if first is None:  # the first token comes right after the prefill, before any decode step
            first, prompt_len = time.perf_counter(), session.length
        out.append(token)
        if stream is not None:
            shown = _stream(bundle, out, shown, stream)
    end = time.perf_counter()
    prefill_s = (first or end) - start
    decode_s = end - (first or end)
    return {
        "token_ids": out,
        "text": bundle.decode(out),
        "prompt_tokens": prompt_len,
        "prefill_tok_s": prompt_len / prefill_s if prefill_s > 0 else 0.0,
        "decode_tok_s": (len(out) - 1) / decode_s if decode_s > 0 and len(out) > 1 else 0.0,
    }


def _stream(bundle: Bundle, ids: list[int], shown: str, stream: TextIO) -> str:
    """Print what the new token adds; hold back an incomplete UTF-8 sequence; ids when there is no tokenizer."""
    if bundle.tokenizer is None:
        stream.write(f"{ids[-1]} ")
        stream.flush()
        return shown
    text = bundle.decode(ids)
    if text.endswith("\ufffd") or not text.startswith(shown):
        return shown
    stream.write(text[len(shown):])
    stream.flush()
    return text
