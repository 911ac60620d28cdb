"""Direct preference optimisation (DPO) and small variants (IPO, hinge); Direct Principle Feedback pairs.

Notation: b = pairs in a batch, t = tokens. π = policy, π_ref = frozen reference.
Per pair the only inputs are four sequence log-probs (summed over completion tokens):
    Δ = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]
    sigmoid (DPO, Rafailov et al. 2023, eq. 7):  −log σ(β·Δ)           (label smoothing ε: conservative DPO)
    hinge   (SLiC):                              max(0, 1 − β·Δ)
    IPO     (Azar et al. 2023, eq. 17):          (Δ̄ − 1/(2β))²  with Δ̄ the per-token-averaged log ratios
                                                  (TRL's normalisation, confirmed with the IPO authors)
Each variant is a PreferenceLoss registered by name in lmlab.registry.ALIGN_ALGOS (`loss_type`).
Reference log-probs are precomputed once (`precompute_ref_logps`), so the reference never sits in memory
next to the policy during training.

Direct Principle Feedback (Castricato et al. 2024): for a response that mentions a forbidden entity, ask
any backend for a critique and then a revision; DPO on (revision ≻ original). `RuleReviser` is a deterministic
backend that rewrites the sentences mentioning the entity (quick runs, tests); `response_kl` measures what else
the policy changed (KL to the SFT policy on prompts without the entity).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from lmlab.align.algorithms import algorithm
from lmlab.registry import ALIGN_ALGOS, RegistryError


class PreferenceLoss:
    """A DPO-family loss per pair from the chosen and rejected log-ratios (the dpo stage's `dpo.loss_type`)."""

    stage = "dpo"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        self.beta, self.label_smoothing = beta, label_smoothing

    def __call__(self, chosen_lr: torch.Tensor, rejected_lr: torch.Tensor, chosen_len: Optional[torch.Tensor] = None,
                 rejected_len: Optional[torch.Tensor] = None) -> torch.Tensor:
        """chosen_lr / rejected_lr: (b,) log π − log π_ref summed over completion tokens; lens: (b,) tokens."""
        raise NotImplementedError


@ALIGN_ALGOS.register("sigmoid")
class SigmoidLoss(PreferenceLoss):
    """DPO (Rafailov et al. 2023): −log σ(β·Δ); label smoothing ε gives conservative DPO."""

    def __call__(self, chosen_lr, rejected_lr, chosen_len=None, rejected_len=None):
        delta = chosen_lr - rejected_lr
        return (-F.logsigmoid(self.beta * delta) * (1 - self.label_smoothing)
                - F.logsigmoid(-self.beta * delta) * self.label_smoothing)


@ALIGN_ALGOS.register("hinge")
class HingeLoss(PreferenceLoss):
    """SLiC-style hinge on preference pairs: max(0, 1 − β·Δ)."""

    def __call__(self, chosen_lr, rejected_lr, chosen_len=None, rejected_len=None):
        return torch.relu(1 - self.beta * (chosen_lr - rejected_lr))


@ALIGN_ALGOS.register("ipo")
class IPOLoss(PreferenceLoss):
    """IPO (Azar et al. 2023): (Δ̄ − 1/(2β))² on per-token-averaged log-ratios."""

    def __call__(self, chosen_lr, rejected_lr, chosen_len=None, rejected_len=None):
        if chosen_len is None or rejected_len is None:
            raise ValueError("dpo_loss: loss_type='ipo' needs chosen_len and rejected_len (completion tokens)")
        d = chosen_lr / chosen_len.clamp(min=1) - rejected_lr / rejected_len.clamp(min=1)
        return (d - 1 / (2 * self.beta)) ** 2


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_len: Optional[torch.Tensor] = None,
             rejected_len: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
    """Per-pair DPO-family loss (b,) and the implicit rewards β·(log π − log π_ref) for logging.
    `loss_type` names a PreferenceLoss in lmlab.registry.ALIGN_ALGOS (sigmoid, ipo, hinge, ...)."""
    try:
        loss_fn = algorithm("dpo", loss_type)(beta, label_smoothing)
    except RegistryError as e:
        raise ValueError(f"dpo_loss: loss_type={loss_type!r}: {e}") from None
    chosen_lr = policy_chosen - ref_chosen        # (b,)
    rejected_lr = policy_rejected - ref_rejected  # (b,)
    delta = chosen_lr - rejected_lr
    loss = loss_fn(chosen_lr, rejected_lr, chosen_len, rejected_len)
    stats = {"rewards/chosen": (beta * chosen_lr).detach(), "rewards/rejected": (beta * rejected_lr).detach(),
             "rewards/accuracy": (delta > 0).float().detach()}
    return loss, stats


def naive_dpo_sigmoid(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """−log σ(βΔ) written out in plain floats: log(1 + exp(−βΔ))."""
    import math
    d = (pc - rc) - (pr - rr)
    return math.log1p(math.exp(-beta * d))


# ------------------------------------------------------------------------------------ sequence log-probs
def completion_logps(model, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log π(x_t | x_<t) over positions where completion_mask is 1.

    input_ids (b, t); completion_mask (b, t) marks completion tokens (the first token is never scored).
    Works with lmlab's Decoder (returns .logits) and with HF models (returns .logits).
    """
    logits = model(input_ids).logits[:, :-1].float()              # (b, t-1, v)
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (b, t-1)
    return (logp * completion_mask[:, 1:].to(logp.dtype)).sum(-1)


@dataclass
class PairBatch:
    """Chosen rows first then rejected rows, both right-padded to the same length."""
    input_ids: torch.Tensor         # (2b, t)
    completion_mask: torch.Tensor   # (2b, t)
    attention_pad: torch.Tensor     # (2b, t) 1 = real token

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def collate_pairs(pairs: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int = 0) -> PairBatch:
    """pairs of (prompt_ids, chosen_ids, rejected_ids) -> PairBatch (right padding; causal model so the
    padding after the completion never influences the scored tokens)."""
    rows, masks = [], []
    for side in (1, 2):
        for p in pairs:
            rows.append(list(p[0]) + list(p[side]))
            masks.append([0] * len(p[0]) + [1] * len(p[side]))
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    cm = torch.zeros((len(rows), t), dtype=torch.long)
    pad = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, :len(r)] = torch.tensor(r)
        cm[i, :len(m)] = torch.tensor(m)
        pad[i, :len(r)] = 1
    return PairBatch(ids, cm, pad)


LogpsFn = Callable[[torch.nn.Module, int, PairBatch], torch.Tensor]


def _completion_logps_of(model, i: int, b: PairBatch) -> torch.Tensor:
    """completion_logps; a Partial LoRA model (lmlab.nn.peft) adapts the positions that predict a completion
    token, as SFT's mask does for the assistant's tokens (lmlab.align.sft)."""
    from lmlab.nn.peft import peft_context

    predicts = torch.zeros_like(b.completion_mask, dtype=torch.bool)
    predicts[:, :-1] = b.completion_mask[:, 1:].bool()
    with peft_context(model, {"lora_mask": predicts}):
        return completion_logps(model, b.input_ids, b.completion_mask)


@torch.no_grad()
def precompute_ref_logps(ref_model, batches: Sequence[PairBatch],
                         logps: LogpsFn = _completion_logps_of) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [logps(ref_model, i, b).chunk(2) for i, b in enumerate(batches)]


def train_dpo(policy, ref_model, pairs: Sequence[tuple[list[int], list[int], list[int]]], *, beta: float = 0.1,
              loss_type: str = "sigmoid", lr: float = 1e-4, epochs: int = 1, batch_size: int = 8,
              pad_id: int = 0, seed: int = 0, log=None, logps: Optional[LogpsFn] = None) -> list[dict]:
    """Plain DPO loop: reference log-probs precomputed once, AdamW on the policy, one metrics dict per step.

    `logps(model, batch_index, batch)` gives each row's summed completion log-prob; the default runs the
    whole model (`completion_logps`). A caller may swap it, e.g. to reuse a frozen trunk's hidden states
    for every epoch (lmlab.experiments.dpo_smollm2)."""
    logps = logps or _completion_logps_of
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pairs), generator=g).tolist()
    dev = next(policy.parameters()).device
    batches = [collate_pairs([pairs[i] for i in order[s:s + batch_size]], pad_id)
               for s in range(0, len(order), batch_size)]
    batches = [PairBatch(b.input_ids.to(dev), b.completion_mask.to(dev), b.attention_pad.to(dev)) for b in batches]
    ref = precompute_ref_logps(ref_model, batches, logps)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    for ep in range(epochs):
        for i, (b, (rc, rr)) in enumerate(zip(batches, ref)):
            pc, pr = logps(policy, i, b).chunk(2)
            lens = b.completion_mask.sum(-1).float().chunk(2)
            loss, st = dpo_loss(pc, pr, rc, rr, beta, loss_type, chosen_len=lens[0], rejected_len=lens[1])
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            m = {"epoch": ep, "loss": loss.mean().item(), **{k: v.mean().item() for k, v in st.items()}}
            history.append(m)
            if log:
                log(m)
    return history


# ------------------------------------------------------------------------------ Direct Principle Feedback
CRITIQUE_PROMPT = ("Here is a response:\n{response}\n\nThe response must not mention {entity}. "
                   "Point out where it does and how it could be avoided.")
REVISION_PROMPT = ("Response:\n{response}\n\nCritique:\n{critique}\n\nRewrite the response following the "
                   "critique so that it does not mention {entity}. Give only the rewritten response.")


def mentions(text: str, entity: str) -> bool:
    return entity.lower() in text.lower()


@ALIGN_ALGOS.register("dpf")
def build_dpf_pairs(backend, items: Sequence[dict], gen=None, max_tries: int = 2) -> list[dict]:
    """Direct Principle Feedback (Castricato et al. 2024): critique-and-revise pairs for DPO, revision ≻ original.

    items: {"prompt", "response", "entity"}. Returns {"prompt", "chosen"=revision, "rejected"=original}
    for every response that mentions its forbidden entity and whose revision no longer does."""
    from lmlab.backend import GenerationConfig

    gen = gen or GenerationConfig(max_new_tokens=128)
    todo = [it for it in items if mentions(it["response"], it["entity"])]
    out = []
    for it in todo:
        for _ in range(max_tries):
            crit = backend.generate([CRITIQUE_PROMPT.format(**it)], gen)[0][0]
            rev = backend.generate([REVISION_PROMPT.format(critique=crit, **it)], gen)[0][0].strip()
            if rev and not mentions(rev, it["entity"]):
                out.append({"prompt": it["prompt"], "chosen": rev, "rejected": it["response"],
                            "entity": it["entity"], "critique": crit})
                break
    return out


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].rsplit(end, 1)[0]


class RuleReviser:
    """A deterministic critique-and-revise backend (the Backend `generate` protocol) for quick runs and tests;
    an LLM backend takes its place in real runs.

    Critique: names each sentence that mentions the entity. Revision: rewrites each such sentence around the
    alternative — every mention of the entity is removed, and the rest of the sentence (its other words, in
    order) is recast by `template` with the alternative as its topic; sentences without the entity are kept
    verbatim. So a revision keeps everything else the response said and always differs from it in more than
    one word (the template adds the alternative and its framing; a bare swap would differ in one)."""

    name = "rule-reviser"
    SENTENCE = re.compile(r"(?<=[.!?])\s+")

    def __init__(self, alternative: str, template: str = "Consider {alternative} instead: {rest}"):
        if "{alternative}" not in template or "{rest}" not in template:
            raise ValueError("template needs {alternative} and {rest}")
        self.alternative, self.template = alternative, template

    def _flagged(self, response: str, entity: str) -> list[str]:
        return [s for s in self.SENTENCE.split(response.strip()) if mentions(s, entity)]

    def critique(self, response: str, entity: str) -> str:
        bad = self._flagged(response, entity)
        if not bad:
            return f"The response does not mention {entity}."
        return (f"{len(bad)} sentence(s) mention {entity}: " + " | ".join(bad)
                + f". Rewrite them about {self.alternative} and keep the rest.")

    def revise(self, response: str, entity: str) -> str:
        pattern = re.compile(re.escape(entity), re.IGNORECASE)
        out = []
        for s in self.SENTENCE.split(response.strip()):
            if not mentions(s, entity):
                out.append(s)
                continue
            rest = re.sub(r"\s+([.,!?;:])", r"\1", " ".join(pattern.sub(" ", s).split()))
            out.append(" ".join(self.template.format(alternative=self.alternative, rest=rest).split()))
        return " ".join(out)

    def generate(self, prompts, gen=None):
        out = []
        for p in prompts:
            if p.startswith("Response:"):            # REVISION_PROMPT
                resp = _between(p, "Response:\n", "\n\nCritique:\n")
                entity = _between(p, "so that it does not mention ", ". Give only the rewritten response.")
                out.append([self.revise(resp, entity)])
            else:                                    # CRITIQUE_PROMPT
                resp = _between(p, "Here is a response:\n", "\n\nThe response must not mention ")
                entity = _between(p, "The response must not mention ", ". Point out where it does")
                out.append([self.critique(resp, entity)])
        return out


def response_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-response KL(π ‖ π_ref) along the given responses:
    Σ_t mask_t · Σ_v π(v|y<t)·(log π − log π_ref)(v|y<t).

    logits (b, t, v) at the response positions (each row predicting that position's token), mask (b, t) 1 for
    the positions that count (up to and including EOS). With responses sampled from π, the mean over rows is an
    unbiased estimate of the sequence-level KL(π ‖ π_ref), with exact per-position terms (lower variance than
    log π(y) − log π_ref(y))."""
    lp = F.log_softmax(policy_logits.float() if policy_logits.dtype != torch.float64 else policy_logits, -1)
    lq = F.log_softmax(ref_logits.to(lp.dtype), -1)
    per_pos = (lp.exp() * (lp - lq)).sum(-1)                  # (b, t)
    return (per_pos * mask.to(per_pos.dtype)).sum(-1)         # (b,)
