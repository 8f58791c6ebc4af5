"""The tiny Cobra release with native names (hmexport/models/cobra_tiny.py), for the Cobra tests."""

from hmexport.models.cobra_tiny import (  # noqa: F401
    BACKBONES, IMAGE_TOKEN, LAYERS, PADDED_VOCAB, TOKENS_PER_IMAGE, VISION_ID, VOCAB, convert, write_replica,
)
