"""hmexport quantize on the tiny seeded models: graphs, weights, what stays float32, errors, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
import pytest

from hmexport.bundle.weights import read_header
from hmexport.errors import InputError, ValidationFailed
from hmexport.quantize import QuantOptions, default_keep, quantize_bundle
from hmexport.runtime import Bundle

PRECISIONS = ("int8", "int4", "fp8")
# Quantized tensors per precision, as the weights file's safetensors dtype.
STORED = {"int8": "I8", "int4": "U8", "fp8": "F8_E4M3"}
# Bound on mean |logit diff| / std(fp32 logits) over a 40-token prompt. Measured on these seeded models
# (jamba-moe / jamba-dense / mamba): int8 0.011 / 0.010 / 0.038, fp8 0.045 / 0.036 / 0.088, int4 (block 32)
# 0.092 / 0.080 / 0.198 (tied head quantized). A wrong scale or axis gives ~1; no quantization at all gives 0.
LOGIT_BOUND = {"int8": 0.08, "fp8": 0.15, "int4": 0.3}


@pytest.fixture(scope="module")
def quantized(bundles, tmp_path_factory) -> dict[tuple[str, str], tuple]:
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for model in bundles:
        for precision in PRECISIONS:
            manifest, report = quantize_bundle(bundles[model], root / f"{model}-{precision}", QuantOptions(precision), eval_dirs=[])
            out[model, precision] = (root / f"{model}-{precision}", manifest, report)
    return out


def _logits(path, ids):
    session = Bundle.open(path).session()
    return session.prefill_embeds(session.embed(ids), keep=len(ids))[0]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", ["jamba-moe", "jamba-dense", "mamba"])
def test_quantized_bundle_runs_close_to_fp32(bundles, quantized, model, precision):
    path, manifest, report = quantized[model, precision]
    assert manifest.precision == precision
    ids = np.random.default_rng(3).integers(3, 500, 40).tolist()
    want, got = _logits(bundles[model], ids), _logits(path, ids)
    assert np.all(np.isfinite(got))
    assert 0 < np.mean(np.abs(got - want)) / want.std() < LOGIT_BOUND[precision]
    agreement = report["agreement"]
    assert agreement["tokens"] == 4 * 16 and 0 <= agreement["mean_kl"] and 0.5 <= agreement["top1_agreement"] <= 1
    assert report["passed"] is None and report["eval_sets"] == []  # no eval set: nothing judged
    stored = json.loads((path / "accuracy.json").read_text())
    assert stored["agreement"] == agreement and manifest.quantization["accuracy"]["file"] == "accuracy.json"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_weights_quantized_and_float32_kept(bundles, quantized, precision):
    path, manifest, _ = quantized["jamba-moe", precision]
    _, header = read_header(path / "weights.safetensors")
    dtypes = {name: h["dtype"] for name, h in header.items()}
    # every expert, projection and the head stored quantized; no float32 copy of them left (fp8 keeps the
    # Mamba out_proj; int4 gives layer 0 8-bit blocks)
    sites = ["layers.0.mixer.in_proj", "layers.0.mlp.down_proj", "layers.2.mixer.in_proj", "layers.1.mixer.q_proj", "layers.1.mlp.experts.3.down_proj", "lm_head"]
    sites += ["layers.2.mixer.out_proj"] if precision != "fp8" else []
    for site in sites:
        q = [n for n in dtypes if n.startswith(site + ".weight") and n != site + ".weight" and dtypes[n] == STORED[precision]]
        assert q, f"{site}: no {STORED[precision]} tensor in {sorted(n for n in dtypes if n.startswith(site))}"
        assert site + ".weight" not in dtypes
    # float32 by default: norms, conv, A_log, D, dt bias, router; the embedding, x_proj and dt_proj but in int4
    selective = ("embed.weight", "layers.0.mixer.x_proj.weight", "layers.2.mixer.dt_proj.weight")
    for name in ("layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.conv1d.weight", "layers.0.mixer.dt_proj.bias", "layers.1.mlp.router.weight",
                 *(selective if precision != "int4" else ())):
        assert dtypes.get(name) == "F32", f"{name}: {dtypes.get(name)}"
    embed_ops = [n.op_type for n in onnx.load(str(path / "embed.onnx"), load_external_data=False).graph.node]
    if precision == "int4":  # the table in 4-bit blocks, read by the lookup
        assert "embed.weight" not in dtypes and dtypes["embed.weight_Q4"] == "U8" and embed_ops[0] == "GatherBlockQuantized"
        assert manifest.quantization["embedding"].startswith("int4") and manifest.graphs["embed"].ops == ["com.microsoft"]
    else:
        assert embed_ops[0] == "Gather" and manifest.quantization["embedding"] == "float32"
    graph = onnx.load(str(path / "decoder.onnx"), load_external_data=False).graph
    router = [n for n in graph.node if n.name.endswith("/router")]
    assert [n.op_type for n in router] == ["MatMul", "MatMul"]
    kept = set(manifest.quantization["graphs"]["decoder"]["kept"])
    routers = {"layers.1.mlp.router", "layers.3.mlp.router"}
    selective = {"layers.0.mixer.dt_proj", "layers.0.mixer.x_proj", "layers.2.mixer.dt_proj", "layers.2.mixer.x_proj"}
    extra = {"int8": selective, "int4": set(), "fp8": selective | {"layers.0.mixer.out_proj", "layers.2.mixer.out_proj"}}[precision]
    assert kept == routers | extra
    for name in extra:
        assert dtypes.get(name + ".weight") == "F32", name
    if precision == "int4":
        assert manifest.graphs["decoder"].ops == ["com.microsoft"] and manifest.quantization["block_size"] == 32
        wide = manifest.quantization["graphs"]["decoder"]["int8_blocks"]
        assert wide == ["layers.0.mixer.dt_proj", "layers.0.mixer.in_proj", "layers.0.mixer.out_proj", "layers.0.mixer.x_proj", "layers.0.mlp.down_proj",
                        "layers.0.mlp.gate_up_proj", "layers.2.mixer.dt_proj", "layers.2.mixer.x_proj"]
        assert all(site + ".weight_Q8" in dtypes for site in wide) and "layers.2.mixer.in_proj.weight_Q4" in dtypes
        bits = {helper.get_attribute_value(a) for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
        assert bits == {4, 8}
        assert sum(n.op_type == "MatMulNBits" for n in graph.node) == manifest.quantization["graphs"]["decoder"]["quantized"]


def test_keep_patterns_leave_sites_in_float32(bundles, tmp_path):
    manifest, _ = quantize_bundle(bundles["jamba-moe"], tmp_path / "q", QuantOptions("int8", keep=("*.router", "lm_head", "layers.2.*")), eval_dirs=[])
    _, header = read_header(tmp_path / "q" / "weights.safetensors")
    assert header["lm_head.weight"]["dtype"] == "F32" and header["layers.2.mixer.in_proj.weight"]["dtype"] == "F32"
    assert header["layers.0.mixer.in_proj.weight_quantized"]["dtype"] == "I8" and header["layers.0.mixer.x_proj.weight_quantized"]["dtype"] == "I8"
    assert "lm_head" in manifest.quantization["graphs"]["decoder"]["kept"]


def test_int4_block_size_and_size(bundles, tmp_path):
    sizes = {}
    for block in (16, 64):
        quantize_bundle(bundles["jamba-moe"], tmp_path / f"b{block}", QuantOptions("int4", block_size=block), eval_dirs=[])
        sizes[block] = (tmp_path / f"b{block}" / "weights.safetensors").stat().st_size
        graph = onnx.load(str(tmp_path / f"b{block}" / "decoder.onnx"), load_external_data=False).graph
        blocks = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
        assert blocks == {block}
    assert sizes[16] > sizes[64]  # four times the scales


def test_errors(bundles, quantized, tmp_path):
    with pytest.raises(InputError, match="--keep 'layers.9\\*': matches no quantizable MatMul"):
        quantize_bundle(bundles["jamba-moe"], tmp_path / "a", QuantOptions("int8", keep=("layers.9*",)), eval_dirs=[])
    with pytest.raises(InputError, match="precision is int8; quantize the fp32 bundle"):
        quantize_bundle(quantized["jamba-moe", "int8"][0], tmp_path / "b", QuantOptions("int4"), eval_dirs=[])
    with pytest.raises(InputError, match="--precision: expected one of int8, int4, fp8, got 'int3'"):
        QuantOptions("int3")
    with pytest.raises(InputError, match="--block-size"):
        QuantOptions("int4", block_size=48)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _fp32_answers(bundle_dir, tmp_path, n=24, length=30) -> None:
    """An eval set the fp32 bundle gets 100% right by construction: its own greedy continuations."""
    session = Bundle.open(bundle_dir).session()
    rng = np.random.default_rng(11)
    lines = []
    for i in range(n):
        ids = rng.integers(3, 500, length).tolist()
        session.reset()
        answer = list(session.generate(ids, max_new_tokens=3, stop_ids=()))
        lines.append(json.dumps({"task": "echo" if i % 2 else "copy", "input_ids": ids, "answer_ids": answer, "images": []}))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.jsonl").write_text("\n".join(lines) + "\n")


def test_accuracy_drop_beyond_threshold_fails(bundles, tmp_path):
    """A random tiny model in int4 flips many greedy tokens: the report, quantize and validate all say so."""
    from hmexport.quantize.accuracy import raise_if_failed
    from hmexport.quantize.bundle import revalidate

    _fp32_answers(bundles["jamba-moe"], tmp_path)
    manifest, report = quantize_bundle(bundles["jamba-moe"], tmp_path / "q", QuantOptions("int4", block_size=128), eval_dirs=[tmp_path])
    (s,) = report["eval_sets"]
    assert s["fp32"] == 100.0 and s["n"] == 24 and set(s["tasks"]) == {"copy", "echo"}
    assert s["drop"] > 2 and not s["passed"] and report["passed"] is False
    assert manifest.quantization["accuracy"]["passed"] is False
    with pytest.raises(ValidationFailed, match="int4 loses more task accuracy than allowed"):
        raise_if_failed(report, "q")
    again = revalidate(tmp_path / "q")  # eval dir recorded in accuracy.json, fp32 bundle recorded in the manifest
    assert again["eval_sets"][0]["quantized"] == s["quantized"] and again["passed"] is False


@pytest.fixture(scope="module")
def llava_bundle(tmp_path_factory):
    from hmexport.export.build import BuildOptions, build

    out = tmp_path_factory.mktemp("llava") / "bundle"
    build("llava-jamba-tiny", out, BuildOptions(max_tokens=512, chunk=64, validate=False))
    return out


def _photos(tmp_path, n=3):
    from PIL import Image
    from skimage import data

    paths = []
    for i, image in enumerate([data.astronaut(), data.coffee(), data.chelsea()][:n]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    return paths


def test_multimodal_bundle_quantizes_vision_graph(llava_bundle, tmp_path):
    manifest = json.loads((llava_bundle / "manifest.json").read_text())
    token, per = manifest["vision"]["image_token_id"], manifest["vision"]["tokens_per_image"]
    photos = _photos(tmp_path)
    rows = [{"input_ids": [1, *[token] * per, 5, 6], "images": photos[:1]}, {"input_ids": [1, *[token] * (2 * per), 9], "images": photos[1:]}]
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="fp8 needs calibration images for the vision graph"):
        quantize_bundle(llava_bundle, tmp_path / "nocal", QuantOptions("fp8"), eval_dirs=[])
    for precision in PRECISIONS:
        out = tmp_path / precision
        manifest, _ = quantize_bundle(llava_bundle, out, QuantOptions(precision), calibration=tmp_path / "calib.jsonl", eval_dirs=[])
        vision = manifest.quantization["graphs"]["vision"]
        assert vision["quantized"] == 8 and vision["kept"] == []
        session = Bundle.open(out).session()
        tokens = list(session.generate("a <image> b", images=[str(tmp_path / photos[0])], max_new_tokens=4, stop_ids=()))
        assert len(tokens) == 4
    kept, _ = quantize_bundle(llava_bundle, tmp_path / "kept", QuantOptions("int8", keep=("*.router", "vision.tower.*")), eval_dirs=[])
    assert kept.quantization["graphs"]["vision"]["quantized"] == 2  # the projector's two linears
    assert "vision.tower.encoder.layers.0.mlp.fc1" in kept.quantization["graphs"]["vision"]["kept"]
    whole, _ = quantize_bundle(llava_bundle, tmp_path / "fp32-vision", QuantOptions("int8", quantize_vision=False), eval_dirs=[])
    assert "vision" not in whole.quantization["graphs"]


def test_sensitivity_sweep_covers_every_group(bundles, tmp_path):
    from hmexport.quantize.sensitivity import format_markdown, site_groups, sweep

    options = QuantOptions("int4", keep=())
    kinds, layers = site_groups(bundles["jamba-moe"], options)
    assert "layers.*.mlp.router" in kinds and "layers.*.mlp.experts.*.down_proj" in kinds and "lm_head" in kinds
    assert layers == ["layers.0.*", "layers.1.*", "layers.2.*", "layers.3.*"]
    _fp32_answers(bundles["jamba-moe"], tmp_path, n=8)
    result = sweep(bundles["jamba-moe"], options, eval_dirs=[tmp_path], eval_limit=8)
    assert [r["group"] for r in result["kind"]] == kinds and [r["group"] for r in result["layer"]] == layers
    for row in result["kind"] + result["layer"]:
        assert row["drop"] is not None and 0 <= row["top1_agreement"] <= 1 and row["mean_kl"] >= 0
    head = next(r for r in result["kind"] if r["group"] == "lm_head")
    router = next(r for r in result["kind"] if r["group"] == "layers.*.mlp.router")
    assert head["mean_kl"] > router["mean_kl"]  # 512 x 64 head at 4 bits vs a 64 x 4 router
    assert "| `lm_head` |" in format_markdown(result)


def test_tied_head_is_quantized_from_its_own_copy(bundles, quantized, tmp_path):
    """Mamba's head reads the embedding table (Gemm transB=1): quantized as a MatMul over a transposed copy;
    the embedding lookup gets its own 4-bit table; --keep lm_head leaves the tie alone, and so the table float32."""
    path, manifest, _ = quantized["mamba", "int4"]
    graph = onnx.load(str(path / "decoder.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node if n.name.startswith("/lm_head/") and n.op_type in ("Gemm", "MatMul", "MatMulNBits")] == ["MatMulNBits"]
    assert "embed.weight" not in {t.name for t in graph.initializer}
    _, header = read_header(path / "weights.safetensors")
    assert header["embed.weight_Q4"]["dtype"] == "U8" and header["lm_head.weight_Q4"]["dtype"] == "U8" and "embed.weight" not in header
    kept, _ = quantize_bundle(bundles["mamba"], tmp_path / "k", QuantOptions("int4", keep=(*default_keep("int4"), "lm_head")), eval_dirs=[])
    graph = onnx.load(str(tmp_path / "k" / "decoder.onnx"), load_external_data=False).graph
    assert [n.op_type for n in graph.node if n.name.startswith("/lm_head/") and n.op_type in ("Gemm", "MatMul", "MatMulNBits")] == ["Gemm"]
    assert kept.quantization["graphs"]["decoder"]["quantized"] == manifest.quantization["graphs"]["decoder"]["quantized"] - 1
    assert kept.quantization["embedding"] == "float32"  # the decoder's head still reads the float32 table


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_ops_bundles_quantize(fused_bundles, tmp_path, precision):
    """--ops fused graphs (hmexport::SelectiveScan / CausalConv1d): shape inference stops at the custom
    nodes (int8 needs the default tensor type) and fp8 calibration must load the op library."""
    manifest, report = quantize_bundle(fused_bundles["jamba-moe"], tmp_path / "q", QuantOptions(precision), eval_dirs=[])
    assert manifest.graphs["decoder"].ops[-1] == "hmexport" and report["agreement"]["top1_agreement"] >= 0.5
    ids = np.random.default_rng(3).integers(3, 500, 40).tolist()
    got, want = _logits(tmp_path / "q", ids), _logits(fused_bundles["jamba-moe"], ids)
    assert 0 < np.mean(np.abs(got - want)) / want.std() < LOGIT_BOUND[precision]


def test_eval_set_of_a_retrained_checkpoint_is_refused(tmp_path):
    """The default eval set is the source checkpoint's eval/; once that checkpoint changes it may belong to
    another model, so quantize refuses it (an explicit --eval still measures on it)."""
    import shutil
    from pathlib import Path

    from hmexport.export.build import BuildOptions, build

    ckpt = tmp_path / "kv-mamba"
    shutil.copytree(Path(__file__).resolve().parents[2] / "fixtures" / "kv-mamba", ckpt)
    build(str(ckpt), tmp_path / "fp32", BuildOptions(validate=False))
    _, report = quantize_bundle(tmp_path / "fp32", tmp_path / "a", QuantOptions("int8"), eval_limit=8)
    assert report["eval_sets"][0]["eval_set"] == "kv-mamba"

    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + "\n")  # any change to config or weights
    with pytest.raises(InputError, match="changed since the bundle was built"):
        quantize_bundle(tmp_path / "fp32", tmp_path / "b", QuantOptions("int8"), eval_limit=8)
    _, report = quantize_bundle(tmp_path / "fp32", tmp_path / "c", QuantOptions("int8"), eval_dirs=[ckpt], eval_limit=8)
    assert report["eval_sets"][0]["n"] == 8
    assert not (tmp_path / "b").exists()


def test_int8_blocks_option(bundles, tmp_path):
    """--int8-blocks: a pattern that matches nothing is refused; other precisions refuse it; --no-default-keep
    leaves every int4 site at 4 bits."""
    with pytest.raises(InputError, match="--int8-blocks 'layers.9.*': matches no quantizable MatMul"):
        quantize_bundle(bundles["jamba-moe"], tmp_path / "a", QuantOptions("int4", wide=("layers.9.*",)), eval_dirs=[])
    with pytest.raises(InputError, match="only for --precision int4"):
        QuantOptions("int8", wide=("layers.0.*",))
    manifest, _ = quantize_bundle(bundles["jamba-moe"], tmp_path / "b", QuantOptions("int4", keep=(), wide=()), eval_dirs=[])
    assert manifest.quantization["graphs"]["decoder"]["int8_blocks"] == [] and not (tmp_path / "a").exists()


def test_int4_embedding_lookup_matches_its_blocks(bundles, tmp_path):
    """The 4-bit table dequantizes to within half a step of every float32 row; --keep embed leaves it float32."""
    from hmexport.bundle.weights import load_safetensors

    src = bundles["jamba-moe"]
    fp32 = Bundle.open(src).session().embed(np.arange(64))
    quantize_bundle(src, tmp_path / "q", QuantOptions("int4"), eval_dirs=[])
    q = Bundle.open(tmp_path / "q").session().embed(np.arange(64))
    table = load_safetensors(Path(src) / "weights.safetensors")["embed.weight"][:64]
    step = np.abs(table.reshape(64, -1, 32)).max(-1) / 7  # one scale per block of 32
    assert np.all(np.abs(q[0] - fp32[0]).reshape(64, -1, 32) <= step[..., None] / 2 + 1e-6)
    assert not np.array_equal(q, fp32)
    from hmexport.bench.memory import weight_bytes
    from hmexport.bundle.io import read_manifest

    _, header = read_header(tmp_path / "q" / "weights.safetensors")
    table = sum(header[n]["data_offsets"][1] - header[n]["data_offsets"][0] for n in ("embed.weight_Q4", "embed.weight_scales"))
    all_but_table = weight_bytes(tmp_path / "q", read_manifest(tmp_path / "q"))["all"] - table
    rows = header["embed.weight_Q4"]["shape"][0]
    assert weight_bytes(tmp_path / "q", read_manifest(tmp_path / "q"))["active"] < all_but_table + 2 * table // rows + 1  # one row of blocks, not the table
    manifest, _ = quantize_bundle(src, tmp_path / "k", QuantOptions("int4", keep=("*.router", "embed")), eval_dirs=[])
    assert manifest.quantization["embedding"] == "float32"
    assert read_header(tmp_path / "k" / "weights.safetensors")[1]["embed.weight"]["dtype"] == "F32"
