"""The torch-free runtime: numpy + onnxruntime + tokenizers.

    bundle = Bundle.open("bundles/jamba-tiny")
    session = bundle.session()
    for token in session.generate("Hello", max_new_tokens=32):
        ...
"""

from .bundle import Bundle
from .generate import SamplingParams
from .session import Session
from .state import State

__all__ = ["Bundle", "Session", "State", "SamplingParams"]
