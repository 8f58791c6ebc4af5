"""Bundles built with --ops fused: recorded in the manifest, refused clearly when the ops are missing."""

from __future__ import annotations

import json
import shutil

import pytest

from hmexport.errors import BundleError
from hmexport.runtime import Bundle


def test_manifest_records_the_custom_domain(fused_bundles, bundles):
    fused = json.loads((fused_bundles["jamba-moe"] / "manifest.json").read_text())
    plain = json.loads((bundles["jamba-moe"] / "manifest.json").read_text())
    assert fused["graphs"]["decoder"]["ops"] == ["hmexport"] and fused["graphs"]["embed"]["ops"] == []
    assert plain["graphs"]["decoder"]["ops"] == []


def test_unknown_custom_domain_is_refused(fused_bundles, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(fused_bundles["mamba"], dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["ops"] = ["com.example"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"custom op domain\(s\) com\.example.*rebuild with --ops standard"):
        Bundle.open(dst)


def test_missing_compiler_is_a_clear_error(fused_bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("HMEXPORT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("CC", "no-such-compiler-hmx")
    with pytest.raises(BundleError, match=r"built with --ops fused.*C compiler 'no-such-compiler-hmx' not found.*--ops standard"):
        Bundle.open(fused_bundles["mamba"])
