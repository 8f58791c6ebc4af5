"""The ``hmexport`` command. Each command parses, calls one library function, prints.

Results go to stdout (``--json`` for machines); progress and logs to stderr. Heavy imports happen
inside commands so ``hmexport --help`` is instant. User errors print as one line (``--debug`` for
the traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import HmexportError
from .ui import console, err_console, progress_factory

app = typer.Typer(
    name="hmexport",
    help="Export hybrid Mamba + attention (+ MoE) LLMs to ONNX bundles and run them without torch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}

BundleArg = Annotated[Path, typer.Argument(help="Bundle directory (written by `hmexport build`).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


@app.command(epilog="Examples:\n\n  hmexport build jamba-tiny --out bundles/jamba-tiny\n\n  hmexport build ./my-jamba-checkpoint --out bundles/my-jamba --max-tokens 8192 --chunk 512")
def build(
    source: Annotated[str, typer.Argument(help="Checkpoint directory (config.json + *.safetensors) or a preset name (see `hmexport presets`).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create.", show_default=False)],
    max_tokens: Annotated[int, typer.Option(help="Context limit: K/V buffers are sized for this many tokens.")] = 4096,
    chunk: Annotated[int, typer.Option(help="Default prefill chunk length (tokens per decoder call).")] = 256,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Check logits and greedy tokens against transformers (needs torch).")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    ops: Annotated[str, typer.Option(help="standard: ONNX ops only (any onnxruntime); fused: hmexport's SelectiveScan / CausalConv1d custom ops (compiled on first use).")] = "standard",
    precision: Annotated[str, typer.Option(help="fp32, or int8 / int4 / fp8: build fp32, then quantize (see `hmexport quantize --help`).")] = "fp32",
    block_size: BlockSizeOpt = 32,
    accuracy_level: AccuracyLevelOpt = 4,
    keep: KeepOpt = None,
    default_keep: DefaultKeepOpt = True,
    int8_blocks: Int8BlocksOpt = None,
    quantize_vision: VisionOpt = True,
    eval_dir: EvalOpt = None,
    calibration: CalibrationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a checkpoint to an ONNX bundle: embed + decoder graphs, weights, tokenizer, manifest."""
    from ..export.build import BuildOptions, build as run_build

    options = BuildOptions(max_tokens=max_tokens, chunk=chunk, validate=validate, overwrite=overwrite, ops=ops)
    if precision != "fp32":
        from ..quantize.bundle import build_quantized

        qopts = _quant_options(precision, block_size, accuracy_level, keep, quantize_vision, default_keep, int8_blocks)
        manifest, report = build_quantized(source, out, options, qopts, eval_dirs=eval_dir, calibration=calibration, progress=progress_factory())
        _print_quantized(out, manifest, report, as_json)
        return
    manifest = run_build(source, out, options, progress_factory())
    if as_json:
        print(json.dumps({"bundle": str(out), "validation": manifest.validation, "files": {k: v.bytes for k, v in manifest.files.items()}}))
        return
    console.print(f"[green]built[/green] {out}  ({sum(f.bytes for f in manifest.files.values()) / 1e6:.1f} MB)")
    if manifest.validation:
        diffs = ", ".join(f"{g} {d:.2e}" for g, d in manifest.validation["max_abs_diff"].items())
        console.print(f"validation passed: max abs diff {diffs}; greedy tokens identical")


BlockSizeOpt = Annotated[int, typer.Option(help="int4: weights per quantization block (16, 32, 64, 128, 256).")]
AccuracyLevelOpt = Annotated[int, typer.Option(help="int4: onnxruntime MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute (fastest on CPU).")]
KeepOpt = Annotated[Optional[list[str]], typer.Option("--keep", help="Keep MatMuls whose site matches this pattern in float32 (fnmatch over weight names without .weight, e.g. 'lm_head', 'layers.1*'); repeatable; added to the defaults.")]
DefaultKeepOpt = Annotated[bool, typer.Option("--default-keep/--no-default-keep", help="The defaults: float32 for the MoE router; int8 and fp8 also keep the Mamba mixers' x_proj and dt_proj (fp8 also their out_proj); int4 gives the first decoder layer and the x_proj / dt_proj 8-bit blocks (docs/quantization.md).")]
Int8BlocksOpt = Annotated[Optional[list[str]], typer.Option("--int8-blocks", metavar="PATTERN", help="int4: give these sites (fnmatch, repeatable) 8-bit blocks instead of 4 (MatMulNBits bits=8); default: layers.0.*, layers.*.mixer.x_proj, layers.*.mixer.dt_proj.", show_default=False)]
EvalOpt = Annotated[Optional[list[Path]], typer.Option("--eval", help="Trained fixture (or its eval/ directory) to measure task accuracy on; repeatable (default: the source checkpoint's eval/ if it has one).")]
VisionOpt = Annotated[bool, typer.Option("--quantize-vision/--no-quantize-vision", help="Also quantize the vision graph's MatMuls (multimodal bundles).")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(help="fp8: JSONL of calibration prompts (+ images), eval-set format (default: the eval set's calib.jsonl, else seeded prompts).")]


def _quant_options(precision: str, block_size: int, accuracy_level: int, keep: list[str] | None, vision: bool = True, defaults: bool = True,
                   int8_blocks: list[str] | None = None):  # fmt: skip
    from ..quantize import QuantOptions, default_keep
    from ..quantize.passes import default_wide

    patterns = [*(default_keep(precision) if defaults else ()), *(keep or [])]
    wide = [*(default_wide(precision) if defaults else ()), *(int8_blocks or [])]
    return QuantOptions(precision=precision, block_size=block_size, accuracy_level=accuracy_level, keep=tuple(dict.fromkeys(patterns)), quantize_vision=vision,
                        wide=tuple(dict.fromkeys(wide)))  # fmt: skip


def _print_quantized(out: Path, manifest, report: dict, as_json: bool) -> None:
    from ..quantize.accuracy import format_report, raise_if_failed

    if as_json:
        print(json.dumps({"bundle": str(out), "quantization": manifest.quantization, "accuracy": report, "files": {k: v.bytes for k, v in manifest.files.items()}}))
    else:
        graphs = ", ".join(f"{g}: {v['quantized']} MatMuls" for g, v in manifest.quantization["graphs"].items())
        console.print(f"[green]quantized[/green] {out}  ({manifest.precision}; {graphs}; {sum(f.bytes for f in manifest.files.values()) / 1e6:.1f} MB)")
        for line in format_report(report):
            console.print(line)
    raise_if_failed(report, str(out))


@app.command(epilog="Examples:\n\n  hmexport quantize bundles/kv-jamba --precision int8 --out bundles/kv-jamba-int8\n\n  hmexport quantize bundles/kv-jamba --precision int4 --block-size 32 --out bundles/kv-jamba-int4\n\n  hmexport quantize bundles/kv-jamba --precision fp8 --keep lm_head --out bundles/kv-jamba-fp8")
def quantize(
    bundle: BundleArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Quantized bundle directory to create.", show_default=False)],
    precision: Annotated[str, typer.Option(help="int8 (per-channel weights, dynamic activations), int4 (weight-only, blockwise MatMulNBits) or fp8 (e4m3 weights and activations, calibrated QDQ).", show_default=False)],
    block_size: BlockSizeOpt = 32,
    accuracy_level: AccuracyLevelOpt = 4,
    keep: KeepOpt = None,
    default_keep: DefaultKeepOpt = True,
    int8_blocks: Int8BlocksOpt = None,
    quantize_vision: VisionOpt = True,
    eval_dir: EvalOpt = None,
    calibration: CalibrationOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize an fp32 bundle; measures task accuracy, top-1 agreement and KL against it and stores the report.

    Exits 3 (the bundle is still written) when the task accuracy drops more than the precision's limit:
    int8 1 point, int4 2 points, fp8 1 point.
    """
    from ..quantize import quantize_bundle

    options = _quant_options(precision, block_size, accuracy_level, keep, quantize_vision, default_keep, int8_blocks)
    manifest, report = quantize_bundle(bundle, out, options, eval_dirs=eval_dir, calibration=calibration, overwrite=overwrite, progress=progress_factory())
    _print_quantized(out, manifest, report, as_json)


@app.command(epilog="Example:\n\n  hmexport sensitivity bundles/kv-jamba --precision int4 --eval fixtures/kv-jamba")
def sensitivity(
    bundle: BundleArg,
    precision: Annotated[str, typer.Option(help="int8, int4 or fp8.", show_default=False)],
    block_size: BlockSizeOpt = 32,
    accuracy_level: AccuracyLevelOpt = 4,
    eval_dir: EvalOpt = None,
    limit: Annotated[int, typer.Option(help="Eval examples per set and group (the sweep quantizes and measures once per group).")] = 200,
    by_layer: Annotated[bool, typer.Option("--by-layer/--no-by-layer", help="Also one group per layer.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Quantize one group of MatMuls at a time (the default-kept ones included), the rest float32, and measure each group's loss."""
    from ..quantize import QuantOptions
    from ..quantize.sensitivity import format_markdown, sweep

    options = QuantOptions(precision=precision, block_size=block_size, accuracy_level=accuracy_level, keep=())
    result = sweep(bundle, options, eval_dirs=eval_dir, eval_limit=limit, by_layer=by_layer, progress=progress_factory())
    print(json.dumps(result) if as_json else format_markdown(result))


@app.command(epilog="Examples:\n\n  hmexport run bundles/jamba-tiny --prompt 'The weather today' --max-new-tokens 32\n\n  hmexport run bundles/jamba-tiny --input-ids 1,17,42 --ignore-eos --json\n\n  hmexport run bundles/llava-jamba-tiny --image a.jpg --image b.png --prompt 'Compare <image> and <image>.'")
def run(
    bundle: BundleArg,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text (needs the bundle's tokenizer).")] = None,
    input_ids: Annotated[Optional[str], typer.Option("--input-ids", help="Prompt as comma-separated token ids (image tokens already expanded).")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", help="An image file (repeatable); `<image>` in the prompt marks where each goes, else images come first.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    ignore_eos: Annotated[bool, typer.Option(help="Do not stop at end-of-sequence tokens.")] = False,
    temperature: Annotated[float, typer.Option(help="0 = greedy; > 0 samples.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Random seed for sampling.")] = None,
    chunk: Annotated[Optional[int], typer.Option(help="Prefill chunk length (default: the bundle's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate from a bundle; tokens stream to the terminal as they come (greedy unless sampling options are given)."""
    from ..runtime.cli import run_prompt

    result = run_prompt(bundle, prompt=prompt, input_ids=input_ids, images=image or [], max_new_tokens=max_new_tokens, ignore_eos=ignore_eos,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, chunk=chunk, stream=None if as_json else sys.stdout)
    if as_json:
        print(json.dumps(result))
    else:
        print()
        n = len(result["token_ids"])
        decode = f", decode {result['decode_tok_s']:.1f} tok/s" if n > 1 else ""  # the first token comes from the prefill
        err_console.print(f"[dim]{n} tokens; prefill {result['prefill_tok_s']:.0f} tok/s{decode}[/dim]")


@app.command(epilog="Example:\n\n  hmexport inspect bundles/jamba-tiny")
def inspect(bundle: BundleArg, as_json: JsonOpt = False) -> None:
    """Show a bundle's manifest: graphs, state layout, bytes per token and per layer, file sizes."""
    from ..bundle.inspect import describe, render

    info = describe(bundle)
    print(json.dumps(info, indent=2) if as_json else render(info))


@app.command(epilog="Example:\n\n  hmexport validate bundles/jamba-tiny --reference ~/.cache/hmexport/presets/jamba-tiny")
def validate(
    bundle: BundleArg,
    reference: Annotated[Optional[Path], typer.Option(help="Checkpoint directory of the reference (default: the source recorded in the manifest).")] = None,
    new_tokens: Annotated[int, typer.Option(help="Greedy tokens compared per prompt.")] = 16,
    eval_dir: EvalOpt = None,
    fp32_bundle: Annotated[Optional[Path], typer.Option(help="Quantized bundles: the fp32 bundle to compare with (default: the one it was quantized from, else rebuilt from its checkpoint).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare every graph's outputs and greedy generation with the transformers model; non-zero exit on failure.

    A quantized bundle is measured instead against its fp32 bundle: task accuracy on the eval sets,
    top-1 agreement and KL; it fails when the accuracy drops more than its precision allows.
    """
    from ..bundle.io import read_manifest
    from ..export.validate import validate as run_validate

    if read_manifest(bundle).quantization:
        from ..quantize.accuracy import format_report, raise_if_failed
        from ..quantize.bundle import revalidate

        report = revalidate(bundle, eval_dirs=eval_dir, fp32_bundle=fp32_bundle, progress=progress_factory())
        if as_json:
            print(json.dumps(report))
        else:
            for line in format_report(report):
                console.print(line)
            verdict = {True: "[green]passed[/green]", False: "[red]FAILED[/red]", None: "[yellow]no task accuracy measured[/yellow]"}[report["passed"]]
            console.print(f"{verdict} ({report['precision']}: task accuracy within {report['threshold_points']:g} points of fp32)")
        raise_if_failed(report, str(bundle))
        return
    ref = reference or Path(read_manifest(bundle).provenance.source)
    report = run_validate(bundle, ref, new_tokens=new_tokens, progress=progress_factory())
    if as_json:
        print(report.dumps())
    else:
        for check in report.checks:
            chunk = check["chunk"] or "whole"
            what = "images" if check["graph"] == "vision" else "prompt"
            console.print(f"{check['graph']:8s} {what} {check['prompt_len']:4d} chunk {chunk!s:>5s}  max abs diff {check['max_abs_diff']:.2e}")
        for g in report.generation:
            console.print(f"greedy   prompt {g['prompt_len']:4d}  {len(g['runtime'])} tokens  {'identical' if g['match'] else 'DIFFER at ' + str(g['first_mismatch'])}")
        verdict = "[green]passed[/green]" if report.passed else "[red]FAILED[/red]"
        console.print(f"{verdict} (tolerance {report.tolerance:g} on logits)")
    report.raise_if_failed(str(bundle))


@app.command(epilog="Example:\n\n  hmexport bench bundles/jamba-small --reference ~/.cache/hmexport/presets/jamba-small")
def bench(
    bundle: BundleArg,
    reference: Annotated[Optional[Path], typer.Option(help="Checkpoint directory of the reference (default: the manifest's source).")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length for the prefill measurement.")] = 512,
    new_tokens: Annotated[int, typer.Option(help="Tokens decoded one at a time.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed repeats after one warm-up.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="Threads for both sides (default: all cores).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prefill and decode speed and peak memory of the runtime vs the transformers reference, measured in one run."""
    from ..bench import format_markdown, run_bench
    from ..bundle.io import read_manifest

    ref = reference or Path(read_manifest(bundle).provenance.source)
    result = run_bench(bundle, ref, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats, threads=threads, progress=progress_factory())
    print(json.dumps(result, indent=2) if as_json else format_markdown(result))


kernels_app = typer.Typer(help="Build hmexport's own SSM ops (CPU custom-op library; CUDA kernels).", no_args_is_help=True)
app.add_typer(kernels_app, name="kernels")


@kernels_app.command("build", epilog="Examples:\n\n  hmexport kernels build\n\n  hmexport kernels build --cuda --out build/kernels")
def kernels_build(
    cuda: Annotated[bool, typer.Option("--cuda/--no-cuda", help="Also compile the CUDA kernels with nvcc (sm_80 + sm_90).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Directory for the libraries (default: the hmexport cache).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if an up-to-date library exists.")] = False,
) -> None:
    """Compile the CPU custom-op library (and with --cuda the CUDA kernels); prints the library paths."""
    from ..kernels.cpu.build import build as build_cpu

    print(build_cpu(out, force=force))
    if cuda:
        from ..kernels_cuda.build import build as build_cuda

        print(build_cuda(out, verbose=False))


@app.command(epilog="Examples:\n\n  hmexport plan bundles/llava-jamba-tiny --images 1000 --prompt-tokens 200\n\n  hmexport plan longllava-9b --images 1000 --device-memory 80GB")
def plan(
    source: Annotated[str, typer.Argument(help="A bundle directory, or a full-size shape: longllava-9b, cobra-3.5b.", show_default=False)],
    images: Annotated[int, typer.Option(help="Images in the context.")] = 0,
    prompt_tokens: Annotated[int, typer.Option(help="Text tokens in the prompt.")] = 0,
    new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 128,
    chunk: Annotated[Optional[int], typer.Option(help="Prefill chunk length (default: the bundle's, 512 for shapes).")] = None,
    device_memory: Annotated[Optional[str], typer.Option(help="Memory available, e.g. 80GB or 24GiB; reports the largest image count that fits.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Memory for N images + T tokens: weights, K/V, Mamba state, peak activations; the largest N that fits."""
    from ..bundle.plan import PlanInputs, plan as run_plan, render, spec_state_bytes
    from ..errors import InputError

    if Path(source).is_dir():
        from ..bundle.io import read_manifest

        inputs = PlanInputs.from_manifest(read_manifest(Path(source)), chunk)
    else:
        from ..models.shapes import SHAPES

        if source not in SHAPES:
            raise InputError(f"{source}: neither a bundle directory nor a known shape ({', '.join(SHAPES)})")
        shape = SHAPES[source]
        kv, rec = spec_state_bytes(shape.model, shape.dtype)
        inputs = PlanInputs.from_spec(shape.model, weights_bytes=shape.weights_bytes, kv_bytes_per_token=kv, recurrent_bytes=rec,
                                      tokens_per_image=shape.tokens_per_image, max_tokens=None, chunk=chunk or 512, fused=True)
    result = run_plan(inputs, images, prompt_tokens, new_tokens, _parse_bytes(device_memory) if device_memory else None)
    print(json.dumps(result, indent=2) if as_json else render(result))


def _parse_bytes(text: str) -> int:
    import re

    from ..errors import InputError

    match = re.fullmatch(r"\s*([0-9.]+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*", text, re.IGNORECASE)
    if not match:
        raise InputError(f"--device-memory: expected a size such as 80GB or 24GiB, got {text!r}")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    return int(float(match.group(1)) * units[(match.group(2) or "B").lower()])


convert_app = typer.Typer(help="Convert native checkpoints that are not safetensors (explicit opt-in).", no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@convert_app.command("cobra", epilog="Example:\n\n  hmexport convert cobra cobra+3b/checkpoints/latest-checkpoint.pt --out cobra-3b --dino-weights dinov2.safetensors --siglip-weights siglip.safetensors --allow-pickle")
def convert_cobra(
    pickle_path: Annotated[Path, typer.Argument(help="Cobra's prismatic checkpoint (latest-checkpoint.pt).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write (safetensors).", show_default=False)],
    dino_weights: Annotated[Path, typer.Option(help="timm DINOv2-L/14 with registers, as safetensors.", show_default=False)],
    siglip_weights: Annotated[Path, typer.Option(help="timm SigLIP SO400M/14-384, as safetensors.", show_default=False)],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Required: open the pickle with torch.load(weights_only=True).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="The run's config.json (default: next to the checkpoints/ folder).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="A directory with tokenizer.json to copy.")] = None,
    backbones: Annotated[Optional[Path], typer.Option(help="JSON overriding the vision towers' shapes (for non-standard releases).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
) -> None:
    """Convert Cobra's pickle + timm towers into a safetensors checkpoint directory `hmexport build` reads."""
    from ..errors import InputError
    from ..models.cobra import convert_prismatic

    if not allow_pickle:
        raise InputError(f"{pickle_path}: Cobra's checkpoint is a torch pickle and hmexport never unpickles implicitly; "
                         f"pass --allow-pickle to convert it once (read with torch.load(weights_only=True): tensors and plain containers only)")
    towers = json.loads(backbones.read_text()) if backbones else None
    path = convert_prismatic(pickle_path, out, allow_pickle=allow_pickle, dino_weights=dino_weights, siglip_weights=siglip_weights,
                             config_path=config, tokenizer_dir=tokenizer, backbones=towers, overwrite=overwrite)
    print(path)


@app.command()
def presets() -> None:
    """List the built-in presets (seeded random checkpoints; no download)."""
    from ..models.presets import PRESETS

    for name, preset in PRESETS.items():
        console.print(f"[bold]{name:18s}[/bold] {preset.description}")


def main() -> None:
    try:
        app()
    except HmexportError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
