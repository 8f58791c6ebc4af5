"""hmexport's own SSM ops: the contract, numpy references, a C implementation for CPU (loaded into
onnxruntime as custom ops) and CUDA kernels. See docs/formats.md ("Fused ops")."""
