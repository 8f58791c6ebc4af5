"""``hmexport quantize``: an fp32 bundle -> an int8 / int4 / fp8 bundle with its accuracy report.

The source bundle is read, never changed. Each graph is loaded with its weights, its weight-MatMuls
rewritten (passes.py), and the result written like a build: graphs + one shared weights file into a
staging directory moved into place when complete. The accuracy report (accuracy.py) against the
source bundle is stored as ``accuracy.json`` and summarised in the manifest's ``quantization``.
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from .. import __version__
from ..bundle.io import file_infos, read_manifest, resolve, staging, write_manifest
from ..bundle.manifest import Manifest
from ..bundle.weights import read_header
from ..errors import InputError
from .accuracy import measure, prompts_from
from .evalset import CALIB_FILE, EvalSet, Example, load_eval_set, read_examples
from .passes import EMBED_SITE, QuantOptions, check_patterns, is_wide, quantize_embedding, quantize_model, reads, select, tied_head, untie_head, wants

ACCURACY_FILE = "accuracy.json"
CALIBRATION_PROMPTS = (16, 64, 256)  # token counts of the seeded prompts used when no calibration file is given


def default_eval_dirs(manifest: Manifest) -> list[Path]:
    """The eval set shipped with the source checkpoint (the trained fixtures keep one in ``eval/``), as
    long as that checkpoint is still the one the bundle was built from: a retrained checkpoint's eval
    set says nothing about this bundle's model."""
    from ..errors import CheckpointError
    from ..models.checkpoint import Checkpoint

    source = Path(manifest.provenance.source)
    candidate = source / "eval"
    if not (candidate / "eval.jsonl").is_file():
        return []
    try:
        now = Checkpoint.open(source).sha256()
    except CheckpointError:
        return [candidate]  # weights gone: nothing to compare, the eval set is what the source shipped
    if now != manifest.provenance.source_sha256:
        raise InputError(f"{source}: changed since the bundle was built (checkpoint sha256 {now[:16]}, bundle built from "
                         f"{manifest.provenance.source_sha256[:16]}); its eval/ may not belong to this model. Rebuild the "
                         "bundle, or pass --eval DIR to measure on that set anyway")  # fmt: skip
    return [candidate]


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    options: QuantOptions,
    *,
    eval_dirs: Sequence[str | Path] | None = None,
    calibration: str | Path | None = None,
    eval_limit: int | None = None,
    overwrite: bool = False,
    progress=None,
    fp32_cache: dict | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Quantize bundle ``src`` into ``out``; returns (manifest, accuracy report).

    ``eval_dirs`` None: the source checkpoint's ``eval/`` when it has one. ``calibration`` (fp8): a
    JSONL of prompts (+ images); default the eval set's ``calib.jsonl``, else seeded token prompts.
    """
    from ..runtime import Bundle

    progress = progress or (lambda desc, total: (lambda n: None))
    src = Path(src)
    manifest = read_manifest(src)
    if manifest.precision != "fp32":
        raise InputError(f"{src}: precision is {manifest.precision}; quantize the fp32 bundle it was made from")
    eval_sets = [load_eval_set(d, limit=eval_limit) for d in (default_eval_dirs(manifest) if eval_dirs is None else eval_dirs)]
    weight_names = set(read_header(resolve(src, manifest.weights))[1])
    advance = progress("loading graphs", len(manifest.graphs))
    models = {}
    for name, info in manifest.graphs.items():
        models[name] = onnx.load(str(resolve(src, info.file)), load_external_data=True)
        advance(1)
    targets = [n for n in models if n == "decoder" or (n == "vision" and options.quantize_vision)]
    tied = tied_head(models["decoder"], weight_names) is not None
    if tied and wants("lm_head", options):
        untie_head(models["decoder"], weight_names)
    selections = {n: select(models[n], options.keep, weight_names, options.only) for n in targets}
    all_sites = [s for sel in selections.values() for s in (*sel.quantize.values(), *sel.keep.values())] + (["lm_head"] if tied else [])
    check_patterns(options.wide, all_sites, option="--int8-blocks")
    check_patterns(options.keep, all_sites + ([EMBED_SITE] if options.precision == "int4" else []))
    # int4 also stores the embedding table in 4-bit blocks, unless kept, or still read by another graph
    # (a tied head left float32 by --keep lm_head)
    embed_quantized = (options.precision == "int4" and "embed" in models and wants(EMBED_SITE, options)
                       and not any(reads(models[n], "embed.weight") for n in models if n != "embed")
                       and quantize_embedding(models["embed"], options.block_size))  # fmt: skip
    reference = Bundle.open(src, verify=False)
    calibrate = None
    if options.precision == "fp8":
        samples = calibration_samples(reference, calibration, eval_sets)
        from ..runtime.bundle import _custom_op_libraries

        libraries = _custom_op_libraries(manifest)  # --ops fused graphs need hmexport's op library to run
        calibrate = lambda model, names, graph: activation_amax(model, names, calibration_feeds(reference, samples, graph), libraries)  # noqa: E731
    advance = progress(f"quantizing ({options.precision})", len(targets))
    for name in targets:
        cal = (lambda model, names, _n=name: calibrate(model, names, _n)) if calibrate else None
        models[name] = quantize_model(models[name], selections[name], options, cal)
        advance(1)
    with staging(Path(out), overwrite=overwrite) as stage:
        from ..export.onnx import write_models

        infos = write_models(stage, models, external=weight_names)
        extra = []
        if manifest.tokenizer:
            shutil.copyfile(resolve(src, manifest.tokenizer.file), stage / manifest.tokenizer.file)
            extra.append(manifest.tokenizer.file)
        summary = {
            **options.describe(),
            "graphs": {n: {"quantized": len(s.quantize), "kept": sorted(set(s.keep.values())),
                           **({"int8_blocks": sorted({v for v in s.quantize.values() if is_wide(v, options)})} if options.precision == "int4" else {})}
                       for n, s in selections.items()},  # fmt: skip
            "embedding": f"int4 blocks of {options.block_size} (GatherBlockQuantized)" if embed_quantized else "float32",
            "float32": ("" if embed_quantized else "embedding, ") + "norms, conv1d, A_log, D, dt bias, SSM and conv state, attention over K/V"
                       + ("" if options.quantize_vision else ", vision graph"),  # fmt: skip
            "source": {"bundle": str(src.resolve()), "weights_sha256": manifest.files[manifest.weights].sha256},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool_version": __version__,
        }
        new = replace(manifest, precision=options.precision, graphs=infos, validation=None, quantization=summary)
        new = new.with_files(file_infos(stage, [g.file for g in infos.values()] + [manifest.weights] + extra))
        write_manifest(stage, new)
        quantized = Bundle.open(stage)
        vocab = int(manifest.model["vocab_size"])
        fallback = lambda: _seeded_prompts(vocab, manifest)  # noqa: E731
        report = measure(quantized, reference, eval_sets, options.precision, agreement_prompts=prompts_from(eval_sets, fallback), progress=progress, fp32_cache=fp32_cache)
        report["eval_dirs"] = [str(es.path.resolve()) for es in eval_sets]
        (stage / ACCURACY_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        new = new.with_files(dict(new.files) | file_infos(stage, [ACCURACY_FILE]), quantization=summary | {"accuracy": _summary(report)})
        write_manifest(stage, new)
        del quantized
    return new, report


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"file": ACCURACY_FILE, "passed": report["passed"], "threshold_points": report["threshold_points"]}
    out["eval_sets"] = {s["eval_set"]: {"fp32": round(s["fp32"], 2), "quantized": round(s["quantized"], 2), "n": s["n"]} for s in report["eval_sets"]}
    if report["agreement"]:
        out["top1_agreement"] = round(report["agreement"]["top1_agreement"], 4)
        out["mean_kl"] = round(report["agreement"]["mean_kl"], 6)
    return out


def _seeded_prompts(vocab: int, manifest: Manifest) -> list[list[int]]:
    from ..export.validate import fixed_prompts

    vision = manifest.vision
    return fixed_prompts(vocab, lengths=(8, 32, 64, 128), seed=99, exclude=(vision["image_token_id"],) if vision else ())


def calibration_samples(bundle, calibration: str | Path | None, eval_sets: Sequence[EvalSet]) -> list[Example]:
    if calibration is not None:
        return read_examples(Path(calibration), need_answers=False)
    for es in eval_sets:
        if (es.path / CALIB_FILE).is_file():
            return read_examples(es.path / CALIB_FILE, need_answers=False)
    if bundle.manifest.vision is not None:
        raise InputError(f"{bundle.root}: fp8 needs calibration images for the vision graph: pass --calibration FILE.jsonl (prompts with images, "
                         f"format in docs/quantization.md) or --no-quantize-vision")
    return [Example("calibration", ids, [], []) for ids in _seeded_prompts(int(bundle.manifest.model["vocab_size"]), bundle.manifest)]


def calibration_feeds(bundle, samples: Sequence[Example], graph: str) -> list[dict[str, np.ndarray]]:
    """Inputs of ``graph`` for each calibration sample: the whole prompt from a zero state (decoder), the images (vision)."""
    if graph == "vision":
        from ..runtime.images import ImageSpec, load_image, preprocess

        spec = ImageSpec.from_json(bundle.manifest.vision["preprocess"])
        return [{"pixel_values": preprocess([load_image(str(p)) for p in s.images], spec)} for s in samples if s.images]
    feeds = []
    inputs = bundle.manifest.graphs[graph].inputs
    for s in samples:
        session = bundle.session()
        _, embeds = session.prompt_embeds(s.input_ids, [str(p) for p in s.images])
        feed: dict[str, np.ndarray] = {"inputs_embeds": embeds.astype(np.float32), "logits_to_keep": np.array([embeds.shape[1]], np.int64)}
        for t in inputs:
            if t.name not in feed:
                feed[t.name] = np.zeros([0 if d == "past" else 1 if d == "batch" else d for d in t.shape], np.float32)
        feeds.append(feed)
    return feeds


def activation_amax(model: onnx.ModelProto, names: list[str], feeds: list[dict[str, np.ndarray]], libraries: Sequence[Path] = ()) -> dict[str, float]:
    """Largest |x| of each named tensor of ``model`` over the calibration feeds (the tensors made graph outputs)."""
    import onnxruntime as ort

    if not feeds:
        raise InputError("fp8 calibration: no calibration samples for this graph (give prompts with images for a vision graph)")
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # observe the tensors as named
    options.log_severity_level = 3
    for library in libraries:
        options.register_custom_ops_library(str(library))
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for feed in feeds:
        values = session.run(names, feed)
        for n, v in zip(names, values):
            amax[n] = max(amax[n], float(np.max(np.abs(v))) if v.size else 0.0)
    return amax


def build_quantized(source: str, out: str | Path, build_options, options: QuantOptions, *, eval_dirs=None, calibration=None, progress=None) -> tuple[Manifest, dict[str, Any]]:
    """``hmexport build --precision``: the fp32 bundle in a scratch directory beside ``out``, then quantized into ``out``."""
    import tempfile

    from ..export.build import build

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.fp32-", dir=out.parent) as tmp:
        build(source, Path(tmp) / "fp32", replace(build_options, overwrite=False), progress)
        return quantize_bundle(Path(tmp) / "fp32", out, options, eval_dirs=eval_dirs, calibration=calibration, overwrite=build_options.overwrite, progress=progress)


def revalidate(bundle_dir: str | Path, *, eval_dirs: Sequence[str | Path] | None = None, fp32_bundle: str | Path | None = None, progress=None) -> dict[str, Any]:
    """Measure a quantized bundle's accuracy report again, against its fp32 source bundle.

    The reference is ``fp32_bundle``, else the bundle it was quantized from when it is still there with
    the same weights, else a fresh fp32 build of the checkpoint named in the manifest's provenance.
    """
    import tempfile

    from ..runtime import Bundle

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    q = manifest.quantization
    if not q:
        raise InputError(f"{bundle_dir}: not a quantized bundle (precision {manifest.precision})")
    if eval_dirs is None:
        stored = json.loads(resolve(bundle_dir, ACCURACY_FILE).read_text(encoding="utf-8")) if ACCURACY_FILE in manifest.files else {}
        eval_dirs = [d for d in stored.get("eval_dirs", []) if Path(d).is_dir()]
    eval_sets = [load_eval_set(d) for d in eval_dirs]
    quantized = Bundle.open(bundle_dir)
    prompts = prompts_from(eval_sets, lambda: _seeded_prompts(int(manifest.model["vocab_size"]), manifest))
    with tempfile.TemporaryDirectory(prefix="hmexport-fp32-") as tmp:
        ref_dir = _reference_bundle(manifest, fp32_bundle, Path(tmp), progress)
        return measure(quantized, Bundle.open(ref_dir), eval_sets, manifest.precision, agreement_prompts=prompts, progress=progress) | {"eval_dirs": [str(es.path.resolve()) for es in eval_sets]}


def _reference_bundle(manifest: Manifest, given: str | Path | None, scratch: Path, progress) -> Path:
    if given is not None:
        ref = read_manifest(Path(given))
        if ref.precision != "fp32":
            raise InputError(f"--fp32-bundle {given}: precision is {ref.precision}, expected fp32")
        return Path(given)
    source = Path(manifest.quantization["source"]["bundle"])
    if (source / "manifest.json").is_file():
        ref = read_manifest(source, verify=False)
        if ref.files.get(ref.weights) and ref.files[ref.weights].sha256 == manifest.quantization["source"]["weights_sha256"]:
            return source
    from ..export.build import BuildOptions, build

    checkpoint = manifest.provenance.source
    if not Path(checkpoint).is_dir():
        raise InputError(f"the fp32 bundle this was quantized from ({source}) and its checkpoint ({checkpoint}) are gone; pass --fp32-bundle")
    build(checkpoint, scratch / "fp32", BuildOptions(max_tokens=manifest.limits.max_tokens, chunk=manifest.limits.prefill_chunk, validate=False), progress)
    return scratch / "fp32"
