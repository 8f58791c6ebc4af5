"""hmexport's CUDA kernels: the selective scan and the causal conv1d of Mamba-1, time-major.

``selective_scan/`` and ``causal_conv1d/`` hold each op's header (parameter struct, launch
constants, the I/O contract as its first comment), its prefill ``.cu`` and its one-step ``.cu``;
``api.cu`` is the C ABI (``hmx.h``), ``build.py`` compiles everything with nvcc into one shared
library, ``binding.py`` loads it with ctypes (no torch). The numpy references they are tested
against are ``hmexport.kernels.reference``.
"""
