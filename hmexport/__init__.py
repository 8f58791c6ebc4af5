"""hmexport: export hybrid Mamba + attention (+ MoE) LLMs to ONNX and run them without torch."""

__version__ = "0.1.0"
