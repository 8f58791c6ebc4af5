"""Built-in presets write real Hugging Face checkpoints: transformers loads them, bytes are seeded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from hmexport.errors import HmexportError  # noqa: E402
from hmexport.models import registry  # noqa: E402
from hmexport.bundle.io import sha256_file as file_sha256  # noqa: E402
from hmexport.models.checkpoint import INDEX_FILE, TOKENIZER_FILES  # noqa: E402
from hmexport.models.presets import PRESETS, write_checkpoint, write_preset  # noqa: E402
from hmexport.models.tokenizer import build_tokenizer  # noqa: E402

TINY = ("jamba-tiny", "jamba-tiny-dense", "mamba-tiny")
REQUIRED = ("jamba-tiny", "jamba-tiny-dense", "mamba-tiny", "jamba-small", "mamba-small")
EXPERT_KEY = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("presets")
    return {name: write_preset(name, root / name) for name in TINY}


def _file_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _expected_state(path: Path) -> dict[str, "torch.Tensor"]:
    """The files' tensors in the loaded model's layout: transformers fuses per-expert weights."""
    out, experts = {}, {}
    for key, value in _file_tensors(path).items():
        m = EXPERT_KEY.match(key)
        if m:
            experts.setdefault(m[1], {}).setdefault(m[3], {})[int(m[2])] = value
        else:
            out[key] = value
    for prefix, projs in experts.items():
        stack = {p: torch.stack([projs[p][e] for e in sorted(projs[p])]) for p in projs}
        out[f"{prefix}.gate_up_proj"] = torch.cat([stack["gate_proj"], stack["up_proj"]], dim=1)
        out[f"{prefix}.down_proj"] = stack["down_proj"]
    return out


def test_required_presets_exist():
    assert set(REQUIRED) <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.name == name and preset.model_type in ("jamba", "mamba", "llava", "cobra")


@pytest.mark.parametrize("name", TINY)
def test_transformers_loads_exactly_the_file_weights(tiny, name):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[name])
    state = model.state_dict()
    expected = _expected_state(tiny[name])
    if PRESETS[name].model_type == "mamba":  # tied head: stored once, as the embeddings
        assert "lm_head.weight" not in expected
        expected["lm_head.weight"] = expected["backbone.embeddings.weight"]
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        logits = model(torch.tensor([[1, 40, 41, 42]])).logits
    assert logits.shape == (1, 4, PRESETS[name].config["vocab_size"])
    assert 1.5 < logits.std().item() < 5  # sharpened: greedy decoding must not hinge on 1e-6 noise


@pytest.mark.parametrize("name", TINY)
def test_config_and_generation_config_ids(tiny, name):
    config = json.loads((tiny[name] / "config.json").read_text())
    generation = json.loads((tiny[name] / "generation_config.json").read_text())
    for data in (config, generation):
        assert (data["pad_token_id"], data["bos_token_id"], data["eos_token_id"]) == (0, 1, 2)
    assert generation["do_sample"] is False
    if config["model_type"] == "jamba":
        assert config["use_mamba_kernels"] is False
    tok = Tokenizer.from_file(str(tiny[name] / "tokenizer.json"))
    assert config["vocab_size"] >= tok.get_vocab_size()


@pytest.mark.parametrize("name", TINY)
def test_registry_reads_each_tiny_preset(tiny, name):
    ckpt, spec = registry.load(tiny[name])
    assert spec.arch == PRESETS[name].model_type
    assert spec.num_layers == PRESETS[name].config["num_hidden_layers"]
    weights = registry.read_weights(ckpt, spec)
    assert len(weights) == registry.num_tensors(spec)
    if name == "jamba-tiny":
        assert [layer.mixer for layer in spec.layers] == ["mamba", "attention", "mamba", "attention"]
        assert [layer.mlp for layer in spec.layers] == ["dense", "moe", "dense", "moe"]
    if name == "jamba-tiny-dense":
        assert all(layer.mlp == "dense" for layer in spec.layers)
    if name == "mamba-tiny":
        a_log = weights["layers.0.mixer.A_log"]  # transformers' S4D init survives the sharpening
        np.testing.assert_allclose(a_log[0], np.log(np.arange(1, 9)), rtol=1e-6)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny):
    again = write_preset("jamba-tiny", tmp_path / "again", seed=0)
    other = write_preset("jamba-tiny", tmp_path / "other", seed=1)
    for file in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert file_sha256(again / file) == file_sha256(tiny["jamba-tiny"] / file), file
    assert file_sha256(other / "model.safetensors") != file_sha256(again / "model.safetensors")


def test_mamba_seed_determinism(tmp_path, tiny):
    again = write_preset("mamba-tiny", tmp_path / "again", seed=0)
    other = write_preset("mamba-tiny", tmp_path / "other", seed=7)
    assert file_sha256(again / "model.safetensors") == file_sha256(tiny["mamba-tiny"] / "model.safetensors")
    assert file_sha256(other / "model.safetensors") != file_sha256(again / "model.safetensors")


def test_sharded_checkpoint_has_index_and_loads(tmp_path, tiny):
    config = dict(PRESETS["jamba-tiny"].config)
    out = write_checkpoint("jamba", config, tmp_path / "sharded", shards=3)
    index = json.loads((out / INDEX_FILE).read_text())
    shard_files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shard_files) > 1 and sorted(set(index["weight_map"].values())) == shard_files
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _expected_state(out).items())
    # Same seed and config as the single-file preset: identical tensors, just split differently.
    sharded = registry.read_weights(*registry.load(out))
    single = registry.read_weights(*registry.load(tiny["jamba-tiny"]))
    assert sharded.keys() == single.keys()
    assert all(np.array_equal(sharded[k], single[k]) for k in single)


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(tiny):
    path = tiny["jamba-tiny"]
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = "Hello, world! 123"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert [tok.token_to_id(t) for t in ("<|pad|>", "<|bos|>", "<|eos|>")] == [0, 1, 2]
    assert tok.decode([1, *ids, 2]) == text  # special tokens are skipped
    auto = transformers.AutoTokenizer.from_pretrained(path)
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (0, 1, 2)
    assert auto(text)["input_ids"] == ids
    assert auto.decode(ids) == text
    assert auto.model_max_length == 4096


def test_tokenizer_training_is_deterministic():
    assert build_tokenizer(300).to_str() == build_tokenizer(300).to_str()
    assert build_tokenizer(300).get_vocab_size() == 300


def test_no_tokenizer_means_no_tokenizer_files(tmp_path):
    out = write_checkpoint("mamba", dict(PRESETS["mamba-tiny"].config), tmp_path / "bare", tokenizer_vocab=None)
    assert not any((out / name).exists() for name in TOKENIZER_FILES)
    assert (out / "model.safetensors").is_file()
    assert not registry.load(out)[0].has_tokenizer


def test_non_empty_out_dir_is_refused(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(HmexportError, match="not empty"):
        write_preset("mamba-tiny", out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_preset("mamba-tiny", out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temporary siblings left behind


def test_empty_out_dir_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert (write_preset("mamba-tiny", tmp_path / "empty") / "config.json").is_file()


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hmexport.models.presets.save_tokenizer", broken)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        write_preset("mamba-tiny", tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_unknown_preset_lists_known_names(tmp_path):
    with pytest.raises(HmexportError) as info:
        write_preset("jamba-huge", tmp_path / "x")
    for name in REQUIRED:
        assert name in str(info.value)
    with pytest.raises(HmexportError, match="model_type"):
        write_checkpoint("llama", {}, tmp_path / "y")


def test_vocab_too_small_for_a_tokenizer_is_refused(tmp_path):
    config = {**PRESETS["mamba-tiny"].config, "vocab_size": 128}
    with pytest.raises(HmexportError, match="tokenizer_vocab=None"):
        write_checkpoint("mamba", config, tmp_path / "small")
    assert list(tmp_path.iterdir()) == []
    assert (write_checkpoint("mamba", config, tmp_path / "small", tokenizer_vocab=None) / "config.json").is_file()
