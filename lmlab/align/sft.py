"""Supervised fine-tuning on chat data: chat template, loss on assistant tokens only, mask-respecting packing,
and gradient accumulation that is exactly invariant to how a batch is split.

Notation: n = examples, t = tokens, labels = token id where the loss applies, −100 elsewhere.

Masking: every message is rendered segment by segment (role header, content, end marker) and each segment
is tokenised on its own, so the boundary between "prompt" and "assistant" tokens is exact. Only the
assistant's content and its end marker carry labels.
Normalisation: the loss of an optimizer step is Σ token losses / (number of labelled tokens in the *whole*
step), so batch 8 × accumulation 1 and batch 1 × accumulation 8 give the same gradient (TRL's invariant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.nn.peft import peft_context

IGNORE = -100


@dataclass
class ChatTemplate:
    """Plain-text template for lmlab tokenizers (HF tokenizers use their own chat template)."""
    header: str = "<|{role}|>\n"
    end: str = "\n"
    generation_header: str = "<|assistant|>\n"


def tokenize_chat(messages: Sequence[dict], encode: Callable[[str], list[int]], eos_id: Optional[int] = None,
                  template: ChatTemplate = ChatTemplate()) -> tuple[list[int], list[int]]:
    """-> (ids, labels). Assistant content (+ its end marker and EOS) is labelled; everything else −100."""
    ids, labels = [], []
    for m in messages:
        head = encode(template.header.format(role=m["role"]))
        body = encode(m["content"]) + encode(template.end)
        if m["role"] == "assistant" and eos_id is not None:
            body = body + [eos_id]
        ids += head + body
        labels += [IGNORE] * len(head) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
    return ids, labels


def tokenize_chat_hf(messages: Sequence[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Same contract with a Hugging Face tokenizer's chat template: the assistant span of message i is the
    difference between rendering messages[:i+1] and messages[:i] with the generation prompt."""
    def render(msgs, gen):
        if not msgs:
            return []
        out = tokenizer.apply_chat_template(list(msgs), tokenize=True, add_generation_prompt=gen)
        return list(out["input_ids"] if hasattr(out, "keys") else out)   # transformers ≥5 returns a dict

    ids = list(render(messages, False))
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], True))
        end = len(render(messages[:i + 1], False))
        labels[start:end] = ids[start:end]
    return ids, labels


def pack(examples: Sequence[tuple[list[int], list[int]]], seq_len: int, pad_id: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (ids, labels) examples into rows of seq_len; returns input_ids (r, seq_len) and
    targets (r, seq_len) where targets[i, j] = label of the token after position j (−100 = no loss).
    Labels travel with their tokens, so packing never puts loss on a prompt token."""
    ids = np.concatenate([np.asarray(e[0], np.int64) for e in examples])
    lab = np.concatenate([np.asarray(e[1], np.int64) for e in examples])
    w = seq_len + 1
    n = -(-len(ids) // seq_len)
    total = n * seq_len + 1
    ids = np.pad(ids, (0, total - len(ids)), constant_values=pad_id)
    lab = np.pad(lab, (0, total - len(lab)), constant_values=IGNORE)
    starts = np.arange(n) * seq_len
    x = np.stack([ids[s:s + seq_len] for s in starts])
    y = np.stack([lab[s + 1:s + w] for s in starts])
    return x, y


def pad_examples(examples: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One example per row, right-padded: (input_ids (n, t), targets (n, t)) with shifted labels."""
    t = max(len(e[0]) for e in examples) - 1
    x = torch.full((len(examples), t), pad_id, dtype=torch.long)
    y = torch.full((len(examples), t), IGNORE, dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        x[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, :len(lab) - 1] = torch.tensor(lab[1:])
    return x, y


def sft_loss_sum(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Σ cross-entropy over labelled targets, and their count."""
    logits = model(input_ids).logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def sft_step(model, optimizer, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
             grad_clip: float = 0.0) -> float:
    """One optimizer step over accumulated micro-batches, normalised by the step's total labelled tokens."""
    n_tok = sum(int((y != IGNORE).sum()) for _, y in micro_batches)
    optimizer.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        # Partial LoRA (when the model has it) adapts only the positions that produce assistant tokens.
        with peft_context(model, {"lora_mask": y != IGNORE}):
            s, _ = sft_loss_sum(model, x, y)
        (s / max(n_tok, 1)).backward()
        total += s.item()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return total / max(n_tok, 1)


def train_sft(model, input_ids: torch.Tensor, targets: torch.Tensor, *, steps: int, batch_size: int = 8,
              grad_accum: int = 1, lr: float = 1e-3, seed: int = 0, log=None) -> list[float]:
    """batch_size sequences per optimizer step, split into grad_accum micro-batches."""
    if batch_size % grad_accum:
        raise ValueError(f"train_sft: batch_size={batch_size} must be divisible by grad_accum={grad_accum}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    mb = batch_size // grad_accum
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(input_ids), (batch_size,), generator=g)
        micro = [(input_ids[idx[i:i + mb]], targets[idx[i:i + mb]]) for i in range(0, batch_size, mb)]
        losses.append(sft_step(model, opt, micro, grad_clip=1.0))
        if log:
            log({"step": step, "loss": losses[-1]})
    return losses
