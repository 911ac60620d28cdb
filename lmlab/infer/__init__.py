"""Inference: generation engine (Hydragen shared-prefix decode), model backends, OpenAI-compatible server.

The Backend protocol, GenerationConfig and `load_backend` live in `lmlab.backend` (below every process
package); the names are re-exported here for older imports.
"""
from lmlab.backend import Backend, GenerationConfig, load_backend

__all__ = ["Backend", "GenerationConfig", "load_backend"]
