"""Generation with images: `generate(vlm, images, prompts, gen)` through lmlab's Engine.

Each distinct image (by pixel digest) is encoded and projected once into n image tokens; in the prompt ids
its `<image>` marker becomes the n ids V + slot·n + j (V = the LM's vocabulary), which the engine reads from
its extra-embedding table (lmlab.infer.engine). Equal images get equal ids, so prompts about one image share
that prefix and Hydragen's shared-prefix decode serves them as one: many questions about one image cost one
image prefill. `naive_generate` is the reference: greedy decoding by a full VLM forward per new token.

    vlm = load_vlm("runs/vlm")                                        # lmlab.train.vlm
    generate(vlm, [img, img], ["What is in the picture?", "Where is the cat?"], GenerationConfig())
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from lmlab.backend import GenerationConfig
from lmlab.infer.engine import Engine
from lmlab.models.vlm import IMAGE_MARKER, VLM, encode_prompt


def image_digest(img) -> str:
    from lmlab.vision.cache import image_digest as _d

    return _d(img)


@torch.no_grad()
def image_tokens(vlm: VLM, images: Sequence) -> torch.Tensor:
    """(m, n, d) projected image tokens of PIL images (preprocessed as the VLM was trained)."""
    from lmlab.vision.preprocess import preprocess_batch

    enc = vlm.cfg.encoder
    x = preprocess_batch(list(images), enc.size, enc.mode).to(vlm.projector.fc1.weight.device)
    return vlm.image_tokens(images=x)


def as_prompt(vlm: VLM, text: str, n_images: int) -> str:
    """`text` as is when it carries `<image>` markers, else the VLM's prompt template around it."""
    if IMAGE_MARKER in text or n_images == 0:
        return text
    return vlm.format_prompt(text, n_images)


class ImageTable:
    """Distinct images of one engine call -> slots in the extra-embedding table."""

    def __init__(self, vlm: VLM):
        self.vlm, self.slot, self.pending = vlm, {}, []

    def add(self, img, key: Optional[str] = None) -> int:
        key = key or image_digest(img)
        if key not in self.slot:
            self.slot[key] = len(self.slot)
            self.pending.append(img)
        return self.slot[key]

    def prompt_ids(self, text: str, slots: list[int]) -> list[int]:
        """Ids of a prompt with its k-th `<image>` marker replaced by the ids of image slots[k]."""
        n, V = self.vlm.n_image_tokens, self.vlm.lm.embed.num_embeddings
        if text.count(IMAGE_MARKER) != len(slots):
            raise ValueError(f"prompt has {text.count(IMAGE_MARKER)} {IMAGE_MARKER} markers for {len(slots)} images")
        ids, mask = encode_prompt(self.vlm.tokenizer, text, n, placeholder=-1)
        out, k, j = [], 0, 0
        for t, m in zip(ids, mask):
            if m:
                out.append(V + slots[k] * n + j)
                j += 1
                if j == n:
                    k, j = k + 1, 0
            else:
                out.append(t)
        return out

    def embeddings(self) -> torch.Tensor:
        """(slots·n, d), in slot order."""
        return image_tokens(self.vlm, self.pending).reshape(-1, self.vlm.lm.cfg.d_model)


def _images_per_prompt(images, n_prompts: int) -> list[list]:
    if images is None:
        return [[] for _ in range(n_prompts)]
    rows = [im if isinstance(im, (list, tuple)) else [im] for im in images]
    if len(rows) != n_prompts:
        raise ValueError(f"generate: {len(rows)} images for {n_prompts} prompts (one image, or a list, per prompt)")
    return [list(r) for r in rows]


def generate(vlm: VLM, images, prompts: list[str], gen: Optional[GenerationConfig] = None,
             engine: Optional[Engine] = None, hydragen: Optional[bool] = None) -> list[list[str]]:
    """[[text × gen.n] per prompt]. images[i]: a PIL image (or a list, or [] for text only) for prompts[i];
    a prompt without `<image>` markers is put into the VLM's prompt template."""
    rows = generate_completions(vlm, images, prompts, gen, engine, hydragen)
    return [[c.text for c in row] for row in rows]


def generate_completions(vlm: VLM, images, prompts: list[str], gen: Optional[GenerationConfig] = None,
                         engine: Optional[Engine] = None, hydragen: Optional[bool] = None):
    """Like `generate`, returning the engine's Completion objects (text, ids, finish reason)."""
    gen = gen or GenerationConfig(max_new_tokens=32)
    engine = engine or Engine(vlm.lm, vlm.tokenizer)
    per = _images_per_prompt(images, len(prompts))
    table = ImageTable(vlm)
    ids = []
    for text, imgs in zip(prompts, per):
        slots = [table.add(im) for im in imgs]
        ids.append(table.prompt_ids(as_prompt(vlm, text, len(imgs)), slots))
    extra = table.embeddings() if table.pending else None
    return engine.generate_ids(ids, gen, hydragen=hydragen, extra_embeds=extra)


def request_prompt_ids(vlm: VLM, text: str, n_images: int) -> list[int]:
    """Ids of one request's prompt whose k-th image is named by local slot k (ids V + k·n + j);
    `merge_image_requests` maps them onto one table for a batch of requests."""
    return ImageTable(vlm).prompt_ids(as_prompt(vlm, text, n_images), list(range(n_images)))


def merge_image_requests(vlm: VLM, requests: list[tuple[list[int], list]]) -> tuple[list[list[int]], torch.Tensor]:
    """Requests [(ids with local image slots, [(digest, image)])] -> (ids on one shared table, its embeddings).
    Equal digests share a slot, so their image tokens have equal ids (a shared prefix for Hydragen)."""
    n, V = vlm.n_image_tokens, vlm.lm.embed.num_embeddings
    table = ImageTable(vlm)
    out = []
    for ids, imgs in requests:
        slots = [table.add(img, key) for key, img in imgs]
        out.append([t if t < V else V + slots[(t - V) // n] * n + (t - V) % n for t in ids])
    return out, table.embeddings()


@torch.no_grad()
def naive_generate(vlm: VLM, image, prompt: str, max_new_tokens: int = 16) -> list[int]:
    """Reference: greedy ids for one prompt, recomputing the whole VLM forward for every new token."""
    from lmlab.vision.preprocess import preprocess_batch

    text = as_prompt(vlm, prompt, 1)
    ids, mask = encode_prompt(vlm.tokenizer, text, vlm.n_image_tokens)
    x = preprocess_batch([image], vlm.cfg.encoder.size, vlm.cfg.encoder.mode)
    out: list[int] = []
    for _ in range(max_new_tokens):
        seq = torch.tensor([ids + out])
        m = torch.tensor([mask + [False] * len(out)])
        logits = vlm(seq, m, images=x).logits[0, -1]
        t = int(logits.argmax())
        if t == vlm.tokenizer.eos_id:
            break
        out.append(t)
    return out


__all__ = ["generate", "generate_completions", "naive_generate", "image_tokens", "ImageTable", "as_prompt",
           "request_prompt_ids", "merge_image_requests"]
