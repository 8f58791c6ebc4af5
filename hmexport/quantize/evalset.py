"""Evaluation and calibration sets: ``eval.jsonl`` / ``calib.jsonl`` as the trained fixtures write them.

One JSON object per line::

    {"task": "kv", "input_ids": [1, 17, ...], "answer_ids": [42], "images": ["images/00012.png"]}

``input_ids`` are exactly what the model is fed (image tokens already expanded), ``answer_ids`` the
target continuation judged by greedy exact match, ``images`` paths relative to the file (may be
absent or empty). Calibration files may omit ``task`` and ``answer_ids``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

EVAL_FILE = "eval.jsonl"
CALIB_FILE = "calib.jsonl"


@dataclass(frozen=True)
class Example:
    task: str
    input_ids: list[int]
    answer_ids: list[int]
    images: list[Path]


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: Path
    examples: list[Example]

    @property
    def tasks(self) -> list[str]:
        return sorted({e.task for e in self.examples})


def eval_dir_of(path: str | Path) -> Path:
    """A fixture checkpoint directory (holding ``eval/``) or the eval directory itself."""
    path = Path(path)
    if (path / "eval" / EVAL_FILE).is_file():
        return path / "eval"
    if (path / EVAL_FILE).is_file():
        return path
    raise InputError(f"{path}: no {EVAL_FILE} here or in {path / 'eval'}; expected a trained checkpoint directory with eval/eval.jsonl (docs/quantization.md)")


def load_eval_set(path: str | Path, limit: int | None = None) -> EvalSet:
    directory = eval_dir_of(path)
    name = directory.parent.name if directory.name == "eval" else directory.name
    return EvalSet(name=name, path=directory, examples=read_examples(directory / EVAL_FILE, need_answers=True, limit=limit))


def read_examples(path: Path, need_answers: bool, limit: int | None = None) -> list[Example]:
    if not path.is_file():
        raise InputError(f"{path}: not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            ids = _int_list(row.get("input_ids"), f"{where}: input_ids", allow_empty=False)
            answer = _int_list(row.get("answer_ids", []), f"{where}: answer_ids", allow_empty=not need_answers)
            images = row.get("images") or []
            if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                raise InputError(f"{where}: images: expected a list of paths, got {images!r}")
            resolved = [path.parent / i for i in images]
            missing = [str(p) for p in resolved if not p.is_file()]
            if missing:
                raise InputError(f"{where}: images: file(s) not found: {', '.join(missing[:3])}")
            out.append(Example(task=str(row.get("task", "all")), input_ids=ids, answer_ids=answer, images=resolved))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise InputError(f"{path}: holds no examples")
    return out


def _int_list(value, where: str, allow_empty: bool) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"{where}: expected a list of token ids (integers), got {str(value)[:60]}")
    if not value and not allow_empty:
        raise InputError(f"{where}: expected at least one token id, got []")
    return value
