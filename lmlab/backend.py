"""The one small interface every model backend shares (local lmlab model, HF/GGUF model, OpenAI-compatible
endpoint), so WRAP, judges, verifiers, evals and RLHF can use any of them.

    backend = load_backend("smollm2")                      # embedded SmolLM2-135M-Instruct (GGUF)
    backend = load_backend("hf:/path/to/llama_dir")        # local HF dir (or a hub id when online)
    backend = load_backend("lmlab:/path/to/checkpoint")    # an lmlab checkpoint dir
    backend = load_backend("openai:http://127.0.0.1:8000/v1#model-name")

    backend.generate(["prompt", ...], GenerationConfig(max_new_tokens=64, n=4))  -> [[str × n], ...]
    backend.chat([[{"role": "user", "content": "hi"}], ...], gen)                -> [[str × n], ...]
    backend.logprobs(["prompt"], ["continuation"])  -> [sum log p(continuation | prompt)]
    backend.score(["text"])                         -> [sum log p(text)] (rolling, whole text)

Implementations (lmlab/infer/backend_impls.py) register in `lmlab.registry.BACKENDS` under their scheme name
("lmlab", "hf", "openai"). This module sits at the bottom of the package: data, align and eval code take a
Backend object without importing lmlab.infer; `load_backend` finds the implementation through the registry,
which imports lmlab.infer only when a spec is resolved.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    n: int = 1                        # samples per prompt
    seed: Optional[int] = None


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], gen: GenerationConfig) -> list[list[str]]: ...

    def chat(self, conversations: list[list[dict]], gen: GenerationConfig) -> list[list[str]]: ...

    def logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]: ...

    def score(self, texts: list[str]) -> list[float]: ...


def load_backend(spec: "str | Backend", **kwargs) -> Backend:
    """'smollm2' | 'lmlab:PATH' | 'hf:PATH_OR_ID' | 'PATH.gguf' | 'openai:URL#MODEL' -> a Backend.
    A Backend object passes through unchanged."""
    from lmlab.config import ConfigError
    from lmlab.registry import BACKENDS

    if not isinstance(spec, str):
        if isinstance(spec, Backend):
            return spec
        raise ConfigError(f"backend: expected a spec string or a Backend, got {type(spec).__name__}")
    if spec == "smollm2":
        return BACKENDS.get("lmlab").from_spec("smollm2", **kwargs)
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in BACKENDS and not scheme.startswith(("http", "/")):
        if not rest:
            raise ConfigError(f"backend {spec!r}: nothing after '{scheme}:'")
        return BACKENDS.get(scheme).from_spec(rest, **kwargs)
    if spec.endswith(".gguf") or (Path(spec) / "config.json").exists():
        return BACKENDS.get("hf").from_spec(spec, **kwargs)
    if Path(spec).exists():
        return BACKENDS.get("lmlab").from_spec(spec, **kwargs)
    raise ConfigError(f"backend {spec!r}: unknown; use smollm2, lmlab:PATH, hf:PATH, openai:URL#MODEL "
                      f"(registered schemes: {', '.join(BACKENDS.names())})")
