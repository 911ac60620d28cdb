"""Vision-language model (LLaVA family): image encoder -> projector -> image tokens spliced into the LM's
sequence at an `<image>` marker; the config of a VLM and its training stages.

Notation: b = batch, t = tokens, m = images in the batch, n = image tokens per image (the encoder's grid,
row-major), c = encoder channels, d = LM width, v = vocabulary.

    F = encoder(x)                   (m, n, c)     frozen encoders are cached (lmlab.vision.cache)
    P = projector(F)                 (m, n, d)     linear: W F + b;  mlp: W₂ GELU(W₁ F + b₁) + b₂ (LLaVA-1.5)
    E = embed(ids)                   (b, t, d)
    E[image_mask] = P (row-major)    image_mask (b, t) bool: true on the n positions of each `<image>` marker,
                                                  filled in order (batch row, then position)
    logits = LM(E)                   (b, t, v)     loss on answer tokens only (targets -100 elsewhere)

The image mask travels with the batch ("image_mask"); it is also Partial LoRA's token mask (InternLM-
XComposer2: the LoRA update only on image tokens), so `VLM.forward` sets it for the LM's adapters. A prompt
names its images with the literal text `<image>`: `encode_prompt` splits on it, encodes the text pieces and
puts n placeholder positions per marker, so any tokenizer works (lmlab's byte tokenizer, SmolLM2's).
`naive_build_batch` builds the same batch one sample at a time by concatenating embeddings; tests compare.

Training stages (`VLMConfig.stages`, run by lmlab.train.vlm.train_vlm): which parts train (projector, lm,
encoder), steps, LR schedule, PEFT on the LM (lora | partial_lora) and MoE-tuning (sparse upcycling of the
LM, MoE-LLaVA: every other FFN, top-2 of E=4, capacity 1.5, balance loss 0.01).

    align:     train [projector]                     (LLaVA stage 1)
    finetune:  train [projector, lm]  (+ peft)       (stage 2; full, LoRA or Partial LoRA)
    moe:       train [projector, lm], moe: {...}     (MoE-LLaVA stage 3)
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lmlab.config import ConfigError, ModelConfig, _Base, resolve_vocab_size
from lmlab.nn.peft import peft_context

IMAGE_MARKER = "<image>"
PARTS = ("projector", "lm", "encoder")


# ------------------------------------------------------------------------------------------------ config
class EncoderSpec(_Base):
    """encoder: a VISION_ENCODERS name, how images reach its square input, and whether it trains."""

    name: str = Field("mobilenet_v2", description="VISION_ENCODERS name (lmlab list vision_encoders)")
    mode: Literal["resize", "letterbox", "crop"] = "resize"
    size: int = Field(128, ge=8, description="input side S in pixels")
    frozen: bool = Field(True, description="frozen encoders are cached on disk and never train")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the encoder class")
    cache_dir: Optional[str] = Field(None, description="feature cache (default: $LMLAB_DATA/vlm_features)")


class ProjectorSpec(_Base):
    kind: Literal["linear", "mlp"] = "mlp"


class LMSpec(_Base):
    """Exactly one of: `pretrained` (smollm2, an HF Llama dir or a GGUF file, through lmlab's import) or
    `model` (an lmlab decoder from scratch with the byte tokenizer; vocab_size left out = 257)."""

    pretrained: Optional[str] = None
    model: Optional[ModelConfig] = None

    @model_validator(mode="after")
    def _one(self) -> "LMSpec":
        if (self.pretrained is None) == (self.model is None):
            raise ValueError("give exactly one of lm.pretrained (e.g. smollm2) or lm.model (an lmlab decoder)")
        return self


class SceneDataSpec(_Base):
    """Synthetic scenes (lmlab.data.scenes): train scenes [0, n_train) and evaluation scenes of `eval_split`."""

    seed: int = 0
    n_train: int = Field(200, ge=1)
    n_eval: int = Field(50, ge=1)
    eval_split: Literal["train", "heldout"] = "heldout"
    questions_per_scene: Optional[int] = Field(4, ge=1, description="None = every question")
    kinds: Optional[list[Literal["exists", "count", "region", "relation", "group", "text", "caption"]]] = None
    image_size: int = Field(128, ge=32)
    objects_per_scene: list[int] = Field(default_factory=lambda: [1, 3], min_length=2, max_length=2)
    background: Literal["plain", "photo", "mixed"] = "plain"
    words: bool = False
    vocab: Optional[list[str]] = Field(None, description="object names (default: all 45)")


class MoETuningSpec(_Base):
    """MoE-LLaVA's MoE-tuning: sparse upcycling of the LM's FFNs."""

    n_experts: int = Field(4, ge=2)
    top_k: int = Field(2, ge=1)
    capacity_factor: Optional[float] = Field(1.5, gt=0, description="None = dropless")
    aux_weight: float = Field(0.01, ge=0, description="load-balancing loss weight")
    every_other: bool = True
    router: str = "topk_softmax_tc"


class StageSpec(_Base):
    """One training stage: which parts train, for how long, at what LR; PEFT and MoE-tuning options."""

    name: str = "stage"
    train: list[Literal["projector", "lm", "encoder"]] = Field(default_factory=lambda: ["projector"], min_length=1)
    steps: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)
    schedule: str = "cosine"
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    peft: dict[str, Any] = Field(default_factory=dict, description="{method: lora|partial_lora, r, alpha, ...}")
    moe: Optional[MoETuningSpec] = None
    log_interval: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "StageSpec":
        method = self.peft.get("method", "none" if not self.peft else None)
        if method not in ("none", "lora", "partial_lora"):
            raise ValueError(f"peft.method={method!r}; choose none, lora or partial_lora")
        if method != "none" and "lm" not in self.train:
            raise ValueError("peft adapts the LM: put lm in train")
        if self.moe is not None and "lm" not in self.train:
            raise ValueError("moe-tuning trains the upcycled LM: put lm in train")
        if self.moe is not None and method != "none":
            raise ValueError("moe-tuning and peft in one stage are not supported")
        return self


class VLMConfig(_Base):
    """A VLM and how to train it. Load with `lmlab.config.load_config(path, overrides, model=VLMConfig)`."""

    _section: ClassVar[str] = ""
    name: str = "vlm"
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    projector: ProjectorSpec = Field(default_factory=ProjectorSpec)
    lm: LMSpec = Field(default_factory=lambda: LMSpec(model=ModelConfig(d_model=64, n_layer=2, n_head=4,
                                                                         max_seq_len=256)))
    data: SceneDataSpec = Field(default_factory=SceneDataSpec)
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec(name="align")], min_length=1)
    prompt: str = Field(IMAGE_MARKER + "\nQuestion: {question}\nAnswer:", description="needs <image> and {question}")
    out_dir: Optional[str] = None
    seed: int = 0
    device: str = "cpu"

    @model_validator(mode="after")
    def _check(self) -> "VLMConfig":
        if IMAGE_MARKER not in self.prompt or "{question}" not in self.prompt:
            raise ValueError(f"prompt must contain {IMAGE_MARKER} and {{question}}")
        return self


# --------------------------------------------------------------------------------------------- tokenizer
class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 and EOS = 256: the tokenizer of from-scratch VLM language models."""

    eos_id, bos_id, vocab_size, add_bos = 256, None, 257, False
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------- modules
class Projector(nn.Module):
    """Encoder features (…, c) -> LM embeddings (…, d): linear, or the 2-layer GELU MLP of LLaVA-1.5."""

    def __init__(self, in_dim: int, d_model: int, kind: str = "mlp"):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"projector kind={kind!r}; choose linear or mlp")
        self.kind = kind
        self.fc1 = nn.Linear(in_dim, d_model)
        self.fc2 = nn.Linear(d_model, d_model) if kind == "mlp" else None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.fc1(f)
        return self.fc2(F.gelu(x)) if self.fc2 is not None else x


def encode_prompt(tok, prompt: str, n_image: int, placeholder: int = 0) -> tuple[list[int], list[bool]]:
    """Ids of a prompt whose `<image>` markers each become `n_image` placeholder positions, and the image
    mask of those positions. The text between markers is encoded piece by piece."""
    ids: list[int] = []
    mask: list[bool] = []
    for i, piece in enumerate(prompt.split(IMAGE_MARKER)):
        if i:
            ids += [placeholder] * n_image
            mask += [True] * n_image
        t = tok.encode(piece) if piece else []
        ids += t
        mask += [False] * len(t)
    if getattr(tok, "add_bos", False) and getattr(tok, "bos_id", None) is not None:
        ids, mask = [tok.bos_id] + ids, [False] + mask
    return ids, mask


def encode_example(tok, prompt: str, answer: str, n_image: int) -> tuple[list[int], list[bool], list[int]]:
    """(input ids, image mask, targets) of prompt + " answer" + EOS, shifted for next-token prediction:
    targets are -100 except where the next token belongs to the answer (or is the final EOS)."""
    p_ids, p_mask = encode_prompt(tok, prompt, n_image)
    a_ids = tok.encode(" " + answer) + [tok.eos_id]
    full = p_ids + a_ids
    targets = [-100] * (len(p_ids) - 1) + a_ids
    return full[:-1], p_mask + [False] * (len(a_ids) - 1), targets


def collate(examples: list[tuple[list[int], list[bool], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into {"input_ids", "image_mask", "targets"} (b, t) tensors."""
    T = max(len(e[0]) for e in examples)
    b = len(examples)
    ids = torch.full((b, T), pad_id, dtype=torch.long)
    mask = torch.zeros(b, T, dtype=torch.bool)
    tgt = torch.full((b, T), -100, dtype=torch.long)
    for i, (x, m, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(m)] = torch.tensor(m)
        tgt[i, :len(y)] = torch.tensor(y)
    return {"input_ids": ids, "image_mask": mask, "targets": tgt}


def splice(embeds: torch.Tensor, image_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """embeds (b, t, d) with the positions of image_mask (b, t) replaced, in row-major order, by
    image_tokens (m, n, d) (m·n must equal the mask's count)."""
    d = embeds.shape[-1]
    flat = image_tokens.reshape(-1, d)
    if int(image_mask.sum()) != flat.shape[0]:
        raise ValueError(f"image mask has {int(image_mask.sum())} positions for {flat.shape[0]} image tokens")
    return embeds.masked_scatter(image_mask.unsqueeze(-1), flat.to(embeds.dtype))


class VLM(nn.Module):
    """encoder -> projector -> LM (an lmlab Decoder). `tokenizer` and `cfg` ride along (not modules)."""

    def __init__(self, encoder: nn.Module, projector: Projector, lm: nn.Module, tokenizer, cfg: VLMConfig,
                 n_image_tokens: int):
        super().__init__()
        self.encoder, self.projector, self.lm = encoder, projector, lm
        self.tokenizer, self.cfg, self.n_image_tokens = tokenizer, cfg, n_image_tokens

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(m, 3, S, S) preprocessed images -> (m, n, c)."""
        return self.encoder(images)

    def image_tokens(self, images: Optional[torch.Tensor] = None,
                     features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(m, n, d) projected image tokens from images or precomputed (cached) features."""
        if features is None:
            if images is None:
                raise ValueError("VLM: give images or features")
            features = self.image_features(images)
        return self.projector(features.to(self.projector.fc1.weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, image_mask: torch.Tensor, images=None, features=None):
        """(b, t, d) LM input embeddings with the image tokens spliced in."""
        emb = self.lm.embed(input_ids)
        if not bool(image_mask.any()):
            return emb
        return splice(emb, image_mask, self.image_tokens(images, features))

    def forward(self, input_ids: torch.Tensor, image_mask: torch.Tensor, images: Optional[torch.Tensor] = None,
                features: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None, **kw):
        """DecoderOutput of the LM on the spliced sequence; Partial LoRA adapters see image_mask."""
        emb = self.embed_inputs(input_ids, image_mask, images, features)
        with peft_context(self.lm, {"lora_mask": image_mask}):
            return self.lm(input_ids, targets=targets, embeds=emb, **kw)

    def format_prompt(self, question: str, n_images: int = 1) -> str:
        """The config's prompt template around `question`, with n_images `<image>` markers."""
        markers = "\n".join([IMAGE_MARKER] * n_images)
        return self.cfg.prompt.replace(IMAGE_MARKER, markers, 1).replace("{question}", question)


def naive_build_batch(vlm: VLM, prompts: list[str], answers: list[str], features: torch.Tensor,
                      pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference for collate + embed_inputs, one sample at a time: embed each text piece, project the sample's
    image, concatenate [text, image, text, ..., answer], pad. Returns (embeds, image_mask, targets).
    features: (b, n, c), one image per prompt (one `<image>` marker each)."""
    tok, n = vlm.tokenizer, vlm.n_image_tokens
    rows, masks, tgts = [], [], []
    for b, (p, a) in enumerate(zip(prompts, answers)):
        pieces = p.split(IMAGE_MARKER)
        assert len(pieces) == 2, "one image per prompt"
        before, after = tok.encode(pieces[0]) if pieces[0] else [], tok.encode(pieces[1])
        ans = tok.encode(" " + a) + [tok.eos_id]
        if getattr(tok, "add_bos", False) and tok.bos_id is not None:
            before = [tok.bos_id] + before
        img = vlm.projector(features[b:b + 1].to(vlm.projector.fc1.weight.dtype))[0]      # (n, d)
        emb = vlm.lm.embed
        parts = [emb(torch.tensor(before, dtype=torch.long)), img, emb(torch.tensor(after + ans[:-1], dtype=torch.long))]
        rows.append(torch.cat(parts))
        masks.append([False] * len(before) + [True] * n + [False] * (len(after) + len(ans) - 1))
        prompt_len = len(before) + n + len(after)
        tgts.append([-100] * (prompt_len - 1) + ans)
    T = max(r.shape[0] for r in rows)
    d = rows[0].shape[1]
    pad = vlm.lm.embed(torch.tensor([pad_id]))[0]
    E = torch.stack([torch.cat([r, pad.expand(T - r.shape[0], d)]) for r in rows])
    M = torch.tensor([m + [False] * (T - len(m)) for m in masks])
    Y = torch.tensor([t + [-100] * (T - len(t)) for t in tgts])
    return E, M, Y


# ------------------------------------------------------------------------------------------------ build
def build_lm(spec: LMSpec, device: str = "cpu"):
    """(Decoder, tokenizer): SmolLM2 / an HF checkpoint through lmlab's import, or a fresh lmlab decoder with
    the byte tokenizer."""
    if spec.pretrained is not None:
        from lmlab.models.hf import load_pretrained

        lm, tok = load_pretrained(spec.pretrained)
        return lm.train(), tok
    from lmlab.models.decoder import Decoder

    tok = ByteTokenizer()
    return Decoder(resolve_vocab_size(spec.model, tok.vocab_size)), tok


def build_encoder_for(spec: EncoderSpec) -> nn.Module:
    from lmlab.vision import build_encoder

    try:
        return build_encoder(spec.name, frozen=spec.frozen, **spec.args)
    except TypeError as e:
        raise ConfigError(f"config: encoder.args: {e}") from None


def build_vlm(cfg: VLMConfig, lm: Optional[nn.Module] = None, tokenizer=None) -> VLM:
    """A fresh VLM from its config: encoder (pretrained weights where the encoder has them), a new projector,
    the LM from `cfg.lm` (or the given `lm` + `tokenizer`). Seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    enc = build_encoder_for(cfg.encoder)
    if lm is None:
        lm, tokenizer = build_lm(cfg.lm)
    with torch.no_grad():
        was = enc.training
        n = enc.eval()(torch.zeros(1, 3, cfg.encoder.size, cfg.encoder.size)).shape[1]
        enc.train(was)
    proj = Projector(enc.out_dim, lm.cfg.d_model, cfg.projector.kind)
    return VLM(enc, proj, lm, tokenizer, cfg, n)


def set_trainable(vlm: VLM, parts: list[str]) -> None:
    """requires_grad on the named parts only (a frozen encoder stays frozen; PEFT-adapted LMs keep their
    adapters trainable and base weights frozen)."""
    for name in PARTS:
        mod = getattr(vlm, name)
        on = name in parts and not (name == "encoder" and getattr(mod, "frozen", False))
        if name == "lm" and on and getattr(mod, "peft", None) is not None and mod.peft.method != "none":
            for pn, p in mod.named_parameters():
                p.requires_grad_("lora_" in pn)
            continue
        for p in mod.parameters():
            p.requires_grad_(on)


@torch.no_grad()
def modality_expert_load(vlm: VLM, image_mask: torch.Tensor) -> dict[str, float]:
    """Fraction of each modality's routed assignments that went to each expert, per MoE layer, from the
    routers' last forward (run the VLM on a batch first): {"moe/L{i}/image/load/{e}": ..., ".../text/...": ...}.
    Needs token-choice routing over the whole batch (group="batch", MoE-LLaVA's setting)."""
    out: dict[str, float] = {}
    flat = image_mask.reshape(-1)
    for i, blk in enumerate(vlm.lm.blocks):
        r = getattr(blk.ffn, "_last", None)
        if r is None or not hasattr(r, "token") or r.token.shape[0] != 1:
            continue
        tok, exp, valid = r.token[0], r.expert[0], r.valid[0].bool()
        is_img = flat[tok]
        for name, sel in (("image", is_img & valid), ("text", ~is_img & valid)):
            cnt = torch.bincount(exp[sel], minlength=r.n_experts).float()
            frac = cnt / cnt.sum().clamp(min=1)
            out.update({f"moe/L{i}/{name}/load/{e}": float(v) for e, v in enumerate(frac)})
    return out


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["VLMConfig", "EncoderSpec", "ProjectorSpec", "LMSpec", "SceneDataSpec", "StageSpec", "MoETuningSpec",
           "ByteTokenizer", "Projector", "VLM", "IMAGE_MARKER", "encode_prompt", "encode_example", "collate",
           "splice", "naive_build_batch", "build_lm", "build_vlm", "set_trainable", "modality_expert_load"]
