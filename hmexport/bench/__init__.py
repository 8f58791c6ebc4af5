"""Benchmarks: the torch-free runtime against the transformers reference, in one run, same ids.

    result = run_bench("bundles/jamba-small", "~/.cache/hmexport/presets/jamba-small")
    print(format_markdown(result))

Importing this package stays light (numpy and the standard library); each measured half imports
its own stack inside a spawned child process.
"""

from .run import format_markdown, run_bench

__all__ = ["run_bench", "format_markdown"]
