"""A saved (or in-memory) VLM behind the Backend protocol, so `lmlab eval` runs VLM tasks on it the same way it
runs them on `lmlab serve --model DIR` through the "openai:" backend.

    lmlab eval --task vlm_suite --model vlm:runs/vlm-tiny
    lmlab eval --task vlm_suite --model openai:http://127.0.0.1:8000/v1#vlm-tiny    (the same VLM, served)

Chat messages carry OpenAI vision content parts, exactly what the server accepts:
[{"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]; as
in the server, the VLM answers the last user message's text with every image of the conversation in its prompt
template (lmlab.infer.vlm.as_prompt). Plain-text prompts run on the VLM's language model alone.
"""
from __future__ import annotations

import base64
import io
from typing import Optional

from lmlab.backend import GenerationConfig
from lmlab.config import ConfigError
from lmlab.registry import BACKENDS


def image_data_url(img) -> str:
    """A PIL image as a base64 PNG data: URL (what the server and this backend read)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_data_url(url) -> "object":
    """The RGB PIL image of a base64 data: URL; ValueError naming what is wrong otherwise."""
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ValueError("image_url: expected a base64 data URL (data:image/<type>;base64,...)")
    try:
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True))).convert("RGB")
    except Exception as e:
        raise ValueError(f"image_url: not a decodable image ({type(e).__name__})") from None


def split_conversation(conv: list[dict]) -> tuple[str, list]:
    """(last user message's text, every image of the conversation in order)."""
    text, images = "", []
    for m in conv:
        c = m.get("content")
        parts = [{"type": "text", "text": c}] if isinstance(c, str) else list(c or [])
        texts = []
        for p in parts:
            if p.get("type") == "text":
                texts.append(p.get("text", ""))
            elif p.get("type") == "image_url":
                iu = p.get("image_url")
                images.append(read_data_url(iu.get("url") if isinstance(iu, dict) else iu))
            else:
                raise ValueError(f"content part of type {p.get('type')!r}; expected text or image_url")
        if m.get("role") == "user":
            text = "".join(texts)
    return text, images


@BACKENDS.register("vlm")
class VLMBackend:
    """A VLM (lmlab.models.vlm.VLM) answering chat requests with images through lmlab.infer.vlm.generate."""

    def __init__(self, vlm, name: str = "vlm", hydragen: bool = True):
        from lmlab.infer.engine import Engine

        self.vlm, self.name = vlm, name
        self.tokenizer = vlm.tokenizer
        self.engine = Engine(vlm.lm, vlm.tokenizer, hydragen=hydragen)

    @classmethod
    def from_spec(cls, spec: str, **kw) -> "VLMBackend":
        from pathlib import Path

        from lmlab.train.vlm import is_vlm_dir, load_vlm

        if not is_vlm_dir(spec):
            raise ConfigError(f"vlm backend {spec!r}: not a saved VLM directory (no vlm.json + vlm_config.yaml)")
        return cls(load_vlm(spec), name=Path(spec).name, **kw)

    def chat(self, conversations: list[list[dict]], gen: GenerationConfig, stream=None) -> list[list[str]]:
        from lmlab.infer.vlm import generate

        texts, images = zip(*[split_conversation(c) for c in conversations]) if conversations else ((), ())
        return generate(self.vlm, list(images), list(texts), gen, engine=self.engine)

    def generate(self, prompts: list[str], gen: GenerationConfig, stream=None) -> list[list[str]]:
        """Raw completions of text-only prompts (or prompts with `<image>` markers and no images: an error)."""
        return self.engine.generate(prompts, gen, stream)

    def logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        ctx = [self.tokenizer.encode(p) for p in prompts]
        tgt = [self.tokenizer.encode(c) for c in continuations]
        return [sum(x) for x in self.engine.token_logprobs(ctx, tgt)]

    def score(self, texts: list[str]) -> list[float]:
        ids = [self.tokenizer.encode(t) for t in texts]
        return [sum(x) for x in self.engine.token_logprobs([i[:1] for i in ids], [i[1:] for i in ids])]


def vlm_backend(vlm, name: Optional[str] = None) -> VLMBackend:
    """A Backend over an in-memory VLM (e.g. one just trained by an experiment)."""
    return VLMBackend(vlm, name=name or getattr(vlm.cfg, "name", "vlm"))


__all__ = ["VLMBackend", "vlm_backend", "image_data_url", "read_data_url", "split_conversation"]
