"""Quantized bundles: int8 (dynamic), int4 (weight-only, MatMulNBits), fp8 e4m3 (QDQ), with accuracy reports."""

from .accuracy import THRESHOLDS
from .bundle import quantize_bundle
from .passes import DEFAULT_KEEP, PRECISIONS, QuantOptions, default_keep

__all__ = ["DEFAULT_KEEP", "PRECISIONS", "THRESHOLDS", "QuantOptions", "default_keep", "quantize_bundle"]
