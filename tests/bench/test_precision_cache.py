"""bench.precision reuses its cached fp32 bundle only while the checkpoint it was built from is unchanged."""

from __future__ import annotations

import json
import shutil

from helpers import MAMBA

from hmexport.bench.precision import prepare
from hmexport.models.presets import write_checkpoint


def _source_sha(bundle) -> str:
    return json.loads((bundle / "manifest.json").read_text())["provenance"]["source_sha256"]


def test_changed_checkpoint_rebuilds_the_cached_fp32_bundle(tmp_path):
    ckpt = tmp_path / "model"  # the cache is keyed by the directory's name
    write_checkpoint("mamba", MAMBA, ckpt, seed=1)
    fp32, _ = prepare(str(ckpt), ("fp32",))["fp32"]
    first = _source_sha(fp32)
    built = (fp32 / "manifest.json").stat().st_mtime_ns
    assert prepare(str(ckpt), ("fp32",))["fp32"][0] == fp32 and (fp32 / "manifest.json").stat().st_mtime_ns == built  # reused

    shutil.rmtree(ckpt)
    write_checkpoint("mamba", MAMBA, ckpt, seed=2)  # retrained: same path, other weights
    fp32, _ = prepare(str(ckpt), ("fp32",))["fp32"]
    assert _source_sha(fp32) != first
