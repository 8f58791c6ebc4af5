"""Every numeric tolerance the tests use, with where it comes from."""

# fp32 graphs vs transformers: issue #3 ("logits max abs diff per graph <= 1e-4 (fp32)").
FP32_LOGITS = 1e-4
# The same graph run in different prefill chunkings: only float reassociation differs.
CHUNKING_FP32 = 1e-5
