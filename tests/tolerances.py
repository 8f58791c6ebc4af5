"""Every numeric tolerance the tests use, with where it comes from."""

# fp32 graphs vs transformers: issue #3 ("logits max abs diff per graph <= 1e-4 (fp32)").
FP32_LOGITS = 1e-4
# The same graph run in different prefill chunkings: only float reassociation differs.
CHUNKING_FP32 = 1e-5
# hmexport's CPU ops vs their float32 numpy references: a polynomial exp (~2 ulp) and a different
# summation order over N; measured worst 6e-7 relative (6e-5 on an output of 104) up to L = 4096.
CPU_OPS_FP32 = (2e-5, 2e-6)  # (atol, rtol)
