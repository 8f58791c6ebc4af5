"""Tests of hmexport's CUDA kernels (a package so its module names cannot clash with other test folders')."""
