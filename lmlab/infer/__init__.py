"""Inference: generation engine (Hydragen shared-prefix decode), model backends, OpenAI-compatible server."""
from lmlab.infer.backend import Backend, GenerationConfig
from lmlab.infer.backends import load_backend

__all__ = ["Backend", "GenerationConfig", "load_backend"]
