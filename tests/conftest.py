"""Session-wide fixtures: tiny seeded checkpoints and their bundles, built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import MODELS


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["HMEXPORT_CACHE"] = str(tmp_path_factory.mktemp("hmexport-cache"))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from hmexport.models.presets import write_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: write_checkpoint(model_type, config, root / name, seed=7) for name, (model_type, config) in MODELS.items()}


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory) -> dict[str, Path]:
    from hmexport.export.build import BuildOptions, build

    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, ckpt in checkpoints.items():
        build(str(ckpt), root / name, BuildOptions(max_tokens=512, chunk=64, validate=False))
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def fused_bundles(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The same models built with --ops fused (hmexport::SelectiveScan / CausalConv1d)."""
    from hmexport.export.build import BuildOptions, build

    root = tmp_path_factory.mktemp("fused-bundles")
    for name, ckpt in checkpoints.items():
        build(str(ckpt), root / name, BuildOptions(max_tokens=512, chunk=64, validate=False, ops="fused"))
    return {name: root / name for name in checkpoints}


@pytest.fixture(scope="session")
def references(checkpoints):
    from hmexport.models.reference import load_reference

    return {name: load_reference(path) for name, path in checkpoints.items()}
