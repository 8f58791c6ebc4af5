"""The CPU implementation of hmexport's fused ops (C, OpenMP) and its onnxruntime custom-op glue."""
