"""``hmexport build``: checkpoint directory or preset -> validated bundle, written atomically."""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..bundle.io import file_infos, staging, write_manifest
from ..bundle.manifest import FORMAT, SCHEMA_VERSION, Generation, LayerState, Limits, Manifest, Provenance, StateTensor, TokenizerInfo
from ..errors import CheckpointError, InputError
from ..models.checkpoint import Checkpoint, read_json
from ..models.registry import num_tensors, read_spec, read_weights
from ..models.spec import ModelSpec
from .decoder import build_decoder, build_embed, state_output_name, state_shapes
from .onnx import WEIGHTS_FILE, write_graphs

Progress = Callable[[str, int | None], Callable[[int], None]]  # (description, total) -> advance(n)


@dataclass(frozen=True)
class BuildOptions:
    max_tokens: int = 4096
    chunk: int = 256
    validate: bool = True
    overwrite: bool = False
    ops: str = "standard"  # "fused": hmexport::SelectiveScan / CausalConv1d in the Mamba layers

    def __post_init__(self) -> None:
        if self.ops not in ("standard", "fused"):
            raise InputError(f"--ops: expected 'standard' or 'fused', got {self.ops!r}")
        if self.max_tokens < 1:
            raise InputError(f"--max-tokens: expected >= 1, got {self.max_tokens}")
        if self.chunk < 1:
            raise InputError(f"--chunk: expected >= 1, got {self.chunk}")


def cache_dir() -> Path:
    return Path(os.environ.get("HMEXPORT_CACHE", Path.home() / ".cache" / "hmexport"))


def resolve_source(source: str) -> tuple[Path, str | None]:
    """A checkpoint directory, or a preset name whose checkpoint is written once into the cache."""
    from ..models.presets import PRESETS, write_preset

    path = Path(source)
    if path.exists():
        return path, None
    if source in PRESETS:
        target = cache_dir() / "presets" / source
        if not (target / "config.json").is_file():
            write_preset(source, target, overwrite=True)
        return target, source
    raise CheckpointError(f"{source}: neither a checkpoint directory nor a preset (presets: {', '.join(sorted(PRESETS))})")


def build(source: str, out: str | Path, options: BuildOptions = BuildOptions(), progress: Progress | None = None) -> Manifest:
    progress = progress or (lambda desc, total: (lambda n: None))
    src, preset = resolve_source(source)
    ckpt = Checkpoint.open(src)
    spec = read_spec(ckpt)
    weights = read_weights(ckpt, spec, progress("reading weights", num_tensors(spec)))
    with staging(Path(out), overwrite=options.overwrite) as stage:
        advance = progress("writing graphs", 3 if spec.vision is not None else 2)
        graphs = [build_embed(spec, weights), build_decoder(spec, weights, ops=options.ops)]
        vision = None
        if spec.vision is not None:
            from ..models.reference import load_reference
            from .vision import build_vision

            graphs.append(build_vision(load_reference(src), spec.vision))
            vision = vision_manifest(ckpt, spec)
        infos = write_graphs(stage, graphs)
        advance(len(graphs))
        tokenizer = None
        if ckpt.has_tokenizer:
            shutil.copyfile(ckpt.path / "tokenizer.json", stage / "tokenizer.json")
            tokenizer = TokenizerInfo(file="tokenizer.json", bos_token_id=spec.bos_token_id, eos_token_ids=list(spec.eos_token_ids), pad_token_id=spec.pad_token_id)
        manifest = Manifest(
            format=FORMAT,
            schema_version=SCHEMA_VERSION,
            model=spec.to_json(),
            precision="fp32",
            limits=Limits(max_tokens=options.max_tokens, prefill_chunk=options.chunk),
            graphs=infos,
            state=state_layout(spec),
            weights=WEIGHTS_FILE,
            files={},
            generation=generation_defaults(ckpt, spec),
            provenance=Provenance(
                source=str(src.resolve()), source_sha256=ckpt.sha256(), tool_version=__version__, preset=preset,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            ),
            tokenizer=tokenizer,
            vision=vision,
        )
        manifest = manifest.with_files(file_infos(stage, [g.file for g in infos.values()] + [WEIGHTS_FILE] + (["tokenizer.json"] if tokenizer else [])))
        write_manifest(stage, manifest)
        if options.validate:
            from .validate import REPORT_FILE, validate

            report = validate(stage, src, progress=progress)
            (stage / REPORT_FILE).write_text(report.dumps(), encoding="utf-8")
            files = dict(manifest.files) | file_infos(stage, [REPORT_FILE])
            manifest = manifest.with_files(files, validation={"file": REPORT_FILE, **report.summary()})
            write_manifest(stage, manifest)
            report.raise_if_failed(str(out))
    return manifest


def vision_manifest(ckpt: Checkpoint, spec: ModelSpec) -> dict:
    """What the runtime needs to turn images into spliced rows: the image token, rows per image, preprocessing,
    and any text the checkpoint's prompt format wraps around each image (LongLLaVA: image_prefix / image_suffix)."""
    from ..models.registry import image_preprocessing
    from ..runtime.images import ImageSpec

    path, pad_to_square, prompt_format = image_preprocessing(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a multimodal checkpoint needs its image processor settings (copy preprocessor_config.json from the original model)")
    preprocess = ImageSpec.from_hf_processor_config(read_json(path), pad_to_square=pad_to_square)
    if preprocess.size != spec.vision.image_size:
        raise CheckpointError(f"{path}: crop/resize size {preprocess.size} does not match vision_config.image_size {spec.vision.image_size}")
    return {"image_token_id": spec.vision.image_token_id, "tokens_per_image": spec.vision.tokens_per_image, "preprocess": preprocess.to_json(), **prompt_format}


def state_layout(spec: ModelSpec) -> list[LayerState]:
    layers = []
    for i, layer in enumerate(spec.layers):
        tensors = []
        for name, shape in state_shapes(spec, i).items():
            kind = "recurrent" if layer.mixer == "mamba" else "kv"
            dims = [d for d in shape if isinstance(d, int)]  # drop batch (and past for K/V: one row)
            tensors.append(StateTensor(name=name, output=state_output_name(name), kind=kind, shape=dims))
        layers.append(LayerState(layer=i, mixer=layer.mixer, tensors=tensors))
    return layers


def generation_defaults(ckpt: Checkpoint, spec: ModelSpec) -> Generation:
    g = ckpt.generation_config
    eos = g.get("eos_token_id", list(spec.eos_token_ids))
    eos = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    return Generation(
        eos_token_ids=[int(e) for e in eos],
        max_new_tokens=int(g.get("max_new_tokens") or 128),
        do_sample=bool(g.get("do_sample", False)),
        temperature=float(g.get("temperature") or 1.0),
        top_k=int(g.get("top_k") or 0),
        top_p=float(g.get("top_p") or 1.0),
    )
