"""State snapshots: fork / restore / save / load continue exactly like a fresh prefill; other bundles refused."""

from __future__ import annotations

import pytest

from hmexport.errors import InputError
from hmexport.runtime import Bundle

PREFIX, QUESTION = [5, 9, 44, 123, 301, 7, 7, 88, 42, 500, 3, 19, 77, 65], [12, 13, 14]


@pytest.mark.parametrize("name", ["jamba-moe", "mamba"])
def test_saved_prefix_continues_like_a_fresh_prefill(bundles, tmp_path, name):
    bundle = Bundle.open(bundles[name])
    fresh = list(bundle.session().generate(PREFIX + QUESTION, max_new_tokens=12, stop_ids=()))
    prefix = bundle.session()
    prefix.prefill(PREFIX)
    prefix.save_state(tmp_path / "prefix.safetensors")
    snap = prefix.snapshot()

    loaded = bundle.session()
    loaded.load_state(tmp_path / "prefix.safetensors")
    assert loaded.length == len(PREFIX)
    assert list(loaded.generate(QUESTION, max_new_tokens=12, stop_ids=())) == fresh

    restored = bundle.session()
    for _ in range(2):  # the snapshot is reusable
        restored.restore(snap)
        assert list(restored.generate(QUESTION, max_new_tokens=12, stop_ids=())) == fresh


def test_snapshot_from_another_bundle_is_refused(bundles, tmp_path):
    source = Bundle.open(bundles["jamba-moe"]).session()
    source.prefill(PREFIX)
    source.save_state(tmp_path / "s.safetensors")
    other = Bundle.open(bundles["jamba-dense"]).session()
    with pytest.raises(InputError, match="snapshot was taken from a different bundle"):
        other.load_state(tmp_path / "s.safetensors")
    with pytest.raises(InputError, match="not found"):
        other.load_state(tmp_path / "missing.safetensors")
