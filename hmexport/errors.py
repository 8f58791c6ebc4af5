"""The user-facing errors: one small hierarchy.

Every message says where (file, field), what was expected, what was found, and, where there is
one, what to do next: ``bundle/manifest.json: layers[3].conv_width: expected 4 (config.json), got 3``.
The CLI prints ``str(error)`` as one line; ``--debug`` adds the traceback.
"""

from __future__ import annotations


class HmexportError(Exception):
    """Base of every error a user can cause (bad input, bad files, unsupported models)."""

    exit_code = 2


class CheckpointError(HmexportError):
    """A checkpoint directory is missing a file, has a bad config or bad weights."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint's model_type or architecture is not one hmexport exports."""


class BundleError(HmexportError):
    """A bundle is missing, incomplete, edited, or of an unknown version."""


class InputError(HmexportError):
    """A request to the runtime is invalid (prompt too long, bad ids, missing tokenizer)."""


class ValidationFailed(HmexportError):
    """The exported graphs do not match the reference within tolerance."""

    exit_code = 3


def gather(errors: list[str], exc_type: type[HmexportError], header: str = "") -> None:
    """Raise ``exc_type`` once listing every collected failure, or return when there is none."""
    if not errors:
        return
    if len(errors) == 1:
        raise exc_type(f"{header}{errors[0]}")
    listed = "; ".join(errors)
    raise exc_type(f"{header}{len(errors)} problems: {listed}")
