"""Bundle directories: atomic writes, integrity checks, paths confined to the bundle.

A bundle is written into a staging directory beside its destination and renamed into place only
once complete, so a failed build leaves nothing behind. Opening a bundle checks the manifest
schema, that every named file is inside the bundle (no ``..``, no absolute paths, no symlinks out)
and that its sha256 matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import BundleError
from .manifest import MANIFEST, FileInfo, Manifest


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_infos(root: Path, names: list[str]) -> dict[str, FileInfo]:
    return {name: FileInfo(sha256=sha256_file(root / name), bytes=(root / name).stat().st_size) for name in sorted(names)}


def write_manifest(root: Path, manifest: Manifest) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(manifest.dumps(), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


@contextlib.contextmanager
def staging(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh directory next to ``dest``; on success it replaces ``dest``, on failure it is removed."""
    dest = Path(dest)
    if dest.exists() and not overwrite and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest}: already exists; choose another --out or pass --overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(stage, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve(root: Path, name: str) -> Path:
    """``root/name``, refusing absolute paths, ``..`` and symlinks that leave the bundle."""
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise BundleError(f"{root / MANIFEST}: file name {name!r} must be a relative path inside the bundle")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{root / MANIFEST}: {name!r} resolves outside the bundle ({path.resolve()})")
    return path


def read_manifest(root: Path, verify: bool = True) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        hint = " (a build may have failed or still be running)" if root.is_dir() else ""
        raise BundleError(f"{path}: not found; {root} is not an hmexport bundle{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    manifest = Manifest.from_json(data, str(path))
    if verify:
        verify_files(root, manifest)
    return manifest


def verify_files(root: Path, manifest: Manifest) -> None:
    """Every file the manifest names exists inside the bundle with its recorded sha256; all failures at once."""
    problems = []
    named = {g.file for g in manifest.graphs.values()} | {manifest.weights}
    if manifest.tokenizer:
        named.add(manifest.tokenizer.file)
    for name in sorted(named - set(manifest.files)):
        problems.append(f"{name}: used but not listed in files")
    for name, info in manifest.files.items():
        path = resolve(root, name)
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        got = sha256_file(path)
        if got != info.sha256:
            problems.append(f"{name}: sha256 mismatch (expected {info.sha256[:12]}..., got {got[:12]}...): the file was edited or corrupted")
    if problems:
        raise BundleError(f"{root}: bundle integrity check failed: " + "; ".join(problems) + "; rebuild the bundle")
