"""A loaded bundle: verified manifest, weights mapped once, one onnxruntime session per graph.

Every graph's initializers live in one safetensors file. It is memory-mapped once and each tensor
handed to every session with ``SessionOptions.add_initializer``, so graphs that use the same
weight (the embedding table of a tied head) read the same bytes, and sessions created from one
Bundle share all weights.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle.io import read_manifest, resolve
from ..bundle.manifest import Manifest
from ..bundle.weights import RAW_BITS, load_safetensors, read_header
from ..errors import BundleError, InputError

# Graphs whose input shapes change on every call: the decoder's past K/V grow by each chunk or token.
# onnxruntime's memory pattern (one arena block per run, planned per distinct set of input shapes)
# then never repeats and fragments the CPU arena: blocks of new sizes stop fitting, and the arena
# adds regions of twice the size each time. Measured on longllava-small with 144K tokens of text:
# RSS beyond the K/V stayed at 264 MiB from 7.5K tokens on without the pattern, and rose
# 267 -> 351 MiB with it (new regions at 23K, 51K, 103K tokens: ~680 B per token on top of the
# 1024 B of K/V), at the same speed. Graphs fed fixed shapes (vision batches) keep the pattern.
CHANGING_SHAPE_GRAPHS = frozenset({"decoder"})


class Bundle:
    def __init__(self, root: Path, manifest: Manifest, sessions: dict[str, ort.InferenceSession], weights: dict[str, np.ndarray], tokenizer) -> None:
        self.root = root
        self.manifest = manifest
        self.sessions = sessions
        self.weights = weights  # read-only views of the mapped weights file; keep alive with the sessions
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, threads: int | None = None, spin: bool = True) -> "Bundle":
        root = Path(path)
        manifest = read_manifest(root, verify=verify)
        custom_ops = _custom_op_libraries(manifest)
        weights_path = resolve(root, manifest.weights)
        weights = load_safetensors(weights_path)
        raw = {name for name, h in read_header(weights_path)[1].items() if h["dtype"] in RAW_BITS}  # fp8: onnxruntime reads these itself
        values = {name: ort.OrtValue.ortvalue_from_numpy(np.asarray(arr)) for name, arr in weights.items() if name not in raw}
        sessions = {}
        for name, info in manifest.graphs.items():
            options = session_options(threads, spin)
            if manifest.precision == "fp8":
                # onnxruntime's CPU provider has no fp8 GEMM; by default it keeps each weight's
                # DequantizeLinear in the graph (a QDQ unit) and dequantizes every weight on every call:
                # 128 ms per jamba-small decode step. Without the QDQ transformations the weight DQs fold
                # to float32 constants at load (same numbers; the activations' Q/DQ still run): 11.8 ms.
                options.add_session_config_entry("session.disable_quant_qdq", "1")
            if name in CHANGING_SHAPE_GRAPHS:
                options.enable_mem_pattern = False  # see CHANGING_SHAPE_GRAPHS
            for library in custom_ops:
                options.register_custom_ops_library(str(library))
            for key, value in values.items():
                options.add_initializer(key, value)
            try:
                sessions[name] = ort.InferenceSession(str(resolve(root, info.file)), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BundleError(f"{root / info.file}: onnxruntime could not load the graph: {exc}") from None
        _release_resident_pages(weights)
        bundle = cls(root, manifest, sessions, weights, _load_tokenizer(root, manifest))
        bundle._ort_values = values  # the sessions borrow these buffers
        return bundle

    def session(self, **kwargs):
        from .session import Session

        return Session(self, **kwargs)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError(f"{self.root}: this bundle has no tokenizer (its checkpoint had no tokenizer.json); pass token ids with --input-ids instead of --prompt")
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
    """Threading shared by every hmexport session: ``threads`` intra-op threads (None: onnxruntime's
    default, one per physical core).

    Worker threads spin between the ops of a run (a decode step is ~500 small ops: parking and waking a
    worker around each one cost a jamba-small int4 step 3.9 ms instead of 2.9 on 2 cores) and stop
    as soon as the run returns (``session.force_spinning_stop``), so an idle session (the embed graph
    between decoder calls, a second bundle in the process) burns no CPU. ``spin=False`` parks them
    between ops as well: for a process that shares its cores with other busy work.
    """
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _release_resident_pages(weights: dict[str, np.ndarray]) -> None:
    """Drop this process's resident copy of the mapped weights once the sessions exist.

    onnxruntime prepacks MatMul/Gemm weights into its own buffers while creating a session, so
    afterwards the mapped originals are read only by a few small ops (the embedding Gather, norms),
    which fault their pages back in from the page cache on demand. Without this the weights are
    resident twice: measured on jamba-small, 618 MiB -> 390 MiB RSS after a decode, same speed.
    """
    mapped = {id(m): m for m in (_memmap_of(a) for a in weights.values()) if m is not None}
    for m in mapped.values():
        handle = getattr(m, "_mmap", None)
        if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
            handle.madvise(mmap.MADV_DONTNEED)


def _memmap_of(array: np.ndarray) -> np.memmap | None:
    while array is not None and not isinstance(array, np.memmap):
        array = array.base
    return array


BUILTIN_DOMAINS = {"com.microsoft"}  # contrib ops every onnxruntime build has (MatMulNBits of int4 bundles)


def _custom_op_libraries(manifest: Manifest) -> list[Path]:
    """The custom-op libraries the graphs need (``ops`` in the manifest), compiled on first use."""
    needed = sorted({op for g in manifest.graphs.values() for op in g.ops} - BUILTIN_DOMAINS)
    unknown = [op for op in needed if op != "hmexport"]
    if unknown:
        raise BundleError(f"bundle needs custom op domain(s) {', '.join(unknown)}, which this runtime does not provide; rebuild with --ops standard")
    if not needed:
        return []
    from ..kernels.cpu.build import KernelBuildError, build

    try:
        return [build()]
    except KernelBuildError as exc:
        raise BundleError(f"this bundle was built with --ops fused and needs hmexport's CPU ops library, which could not be built: {exc}; "
                          f"rebuild the bundle with --ops standard to run without a C compiler") from None


def _load_tokenizer(root: Path, manifest: Manifest):
    if manifest.tokenizer is None:
        return None
    from tokenizers import Tokenizer

    path = resolve(root, manifest.tokenizer.file)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception subclass
        raise BundleError(f"{path}: could not load the tokenizer: {exc}") from None


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
