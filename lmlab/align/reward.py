"""Reward models: scalar head(s) on a decoder backbone; Bradley–Terry, Iterative Data Smoothing, ODIN.

Notation: b = pairs, t = tokens, d = hidden size, Δ = r(a) − r(a′) (chosen minus rejected).

Bradley–Terry:   P(a ≻ a′) = σ(Δ);  loss = −[y·log σ(Δ) + (1−y)·log σ(−Δ)], y = 1 for hard labels.

Iterative Data Smoothing (Zhu, Jordan & Jiao 2024, Alg. 1): labels start hard (y = 1) and, after each
gradient step on a batch, the labels of that batch move toward the model's own prediction:
    y ← (1 − β)·y + β·σ(r_θ(a) − r_θ(a′))
so pairs the model cannot separate (seen rarely) drift toward 1/2 and stop pushing rewards to ±∞.
With the model frozen (Δ fixed), k updates have the closed form y_k = σ(Δ) + (1−β)^k·(y_0 − σ(Δ)).

ODIN (Chen et al. 2024): two linear heads on shared features, r = r_Q + r_L,
    L = BT(r_Q + r_L) + λ_L·[(1 − ρ(len, r_L)) + |ρ(len, r_Q)|] + λ_O·|ŵ_Q · ŵ_L|
with ρ the Pearson correlation over the batch (both responses of every pair) and ŵ the unit-normalised
head weights. RL uses r_Q only.
Each method is a RewardKind registered by name in lmlab.registry.REWARD_MODELS (`method`, the rm stage's `rm.method`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.align.algorithms import reward_kind
from lmlab.registry import REWARD_MODELS, RegistryError


# ------------------------------------------------------------------------------------------- kinds
class RewardKind:
    """A reward-model training method of `train_reward_model` (the rm stage's `rm.method`)."""

    stage = "rm"
    heads = 1        # scalar heads the RewardModel needs; head 0 is the reward used downstream


@REWARD_MODELS.register("bt")
class BradleyTerry(RewardKind):
    """Bradley–Terry: −log σ(r(chosen) − r(rejected)) on hard labels."""


@REWARD_MODELS.register("ids")
class IterativeDataSmoothing(RewardKind):
    """Iterative Data Smoothing (Zhu et al. 2024): BT on labels that move toward the model's own prediction."""


@REWARD_MODELS.register("odin")
class ODIN(RewardKind):
    """ODIN (Chen et al. 2024): quality + length heads, length-correlation and orthogonality penalties."""

    heads = 2


# ------------------------------------------------------------------------------------------- losses
def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, labels: Optional[torch.Tensor] = None,
            margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-pair Bradley–Terry loss (b,); labels = soft P(chosen ≻ rejected) (default 1)."""
    delta = r_chosen - r_rejected
    if margin is not None:
        delta = delta - margin
    if labels is None:
        return -F.logsigmoid(delta)
    return -(labels * F.logsigmoid(delta) + (1 - labels) * F.logsigmoid(-delta))


def ids_update(labels: torch.Tensor, r_chosen: torch.Tensor, r_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """One IDS label step: y ← (1−β)·y + β·σ(r(a) − r(a′)) (no gradient flows into labels)."""
    return (1 - beta) * labels + beta * torch.sigmoid((r_chosen - r_rejected).detach())


def ids_closed_form(y0: torch.Tensor, delta: torch.Tensor, beta: float, k: int) -> torch.Tensor:
    """Labels after k IDS steps with a frozen reward gap Δ."""
    p = torch.sigmoid(delta)
    return p + (1 - beta) ** k * (y0 - p)


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    x = x.float() - x.float().mean()
    y = y.float() - y.float().mean()
    return (x * y).sum() / (x.norm() * y.norm() + eps)


def odin_loss(rq_c: torch.Tensor, rl_c: torch.Tensor, rq_r: torch.Tensor, rl_r: torch.Tensor,
              len_c: torch.Tensor, len_r: torch.Tensor, w_q: torch.Tensor, w_l: torch.Tensor,
              lambda_l: float = 1.0, lambda_o: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Scalar ODIN loss and its parts. r*_c / r*_r: (b,) quality/length rewards of chosen/rejected."""
    rank = bt_loss(rq_c + rl_c, rq_r + rl_r).mean()
    lens = torch.cat([len_c, len_r]).float()
    rho_l = pearson(lens, torch.cat([rl_c, rl_r]))
    rho_q = pearson(lens, torch.cat([rq_c, rq_r]))
    length = (1 - rho_l) + rho_q.abs()
    ortho = (F.normalize(w_q.flatten(), dim=0) @ F.normalize(w_l.flatten(), dim=0)).abs()
    loss = rank + lambda_l * length + lambda_o * ortho
    return loss, {"rank": rank.item(), "rho_len_L": rho_l.item(), "rho_len_Q": rho_q.item(), "ortho": ortho.item()}


# ------------------------------------------------------------------------------------------- model
class RewardModel(nn.Module):
    """Backbone (lmlab Decoder) + `n_heads` linear heads read at each sequence's last real token.

    forward(ids (b, t), lengths (b,)) -> (b, n_heads). n_heads = 2 is ODIN's [quality, length].
    """

    def __init__(self, backbone: nn.Module, n_heads: int = 1):
        super().__init__()
        self.backbone = backbone
        d = backbone.cfg.d_model
        self.heads = nn.Linear(d, n_heads)
        nn.init.normal_(self.heads.weight, std=1.0 / d ** 0.5)
        nn.init.zeros_(self.heads.bias)

    def features(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.backbone(ids, return_hidden=True).hidden          # (b, t, d)
        return h[torch.arange(ids.shape[0]), lengths - 1]           # (b, d)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(ids, lengths))              # (b, n_heads)

    def quality(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reward used downstream: head 0 (the only head for BT/IDS; r_Q for ODIN)."""
        return self(ids, lengths)[:, 0]


def pad_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in seqs])


def train_reward_model(rm: RewardModel, chosen: list[list[int]], rejected: list[list[int]], *,
                       method: str = "bt", epochs: int = 3, batch_size: int = 32, lr: float = 1e-3,
                       ids_beta: float = 0.5, lambda_l: float = 1.0, lambda_o: float = 1.0,
                       seed: int = 0, eval_fn=None, weight_decay: float = 0.0) -> dict:
    """Train with a RewardKind of REWARD_MODELS (bt, ids, odin); `eval_fn(rm, epoch) -> dict` is called after every
    epoch. Returns {"history": [eval dicts], "labels": final labels (IDS)}."""
    try:
        kind = reward_kind(method)
    except RegistryError as e:
        raise ValueError(f"train_reward_model: method={method!r}: {e}") from None
    if rm.heads.out_features < kind.heads:
        raise ValueError(f"train_reward_model: method={method!r} needs a RewardModel with n_heads={kind.heads}")
    g = torch.Generator().manual_seed(seed)
    n = len(chosen)
    labels = torch.ones(n)
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    if eval_fn:
        history.append(eval_fn(rm, 0))
    for ep in range(1, epochs + 1):
        rm.train()
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            ids, lens = pad_batch([chosen[i] for i in idx] + [rejected[i] for i in idx])
            out = rm(ids, lens)                                    # (2b, heads)
            b = len(idx)
            if method == "odin":
                w = rm.heads.weight
                loss, _ = odin_loss(out[:b, 0], out[:b, 1], out[b:, 0], out[b:, 1], lens[:b], lens[b:],
                                    w[0], w[1], lambda_l, lambda_o)
            else:
                loss = bt_loss(out[:b, 0], out[b:, 0], labels[idx] if method == "ids" else None).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if method == "ids":
                with torch.no_grad():
                    r = rm(ids, lens)[:, 0]
                labels[idx] = ids_update(labels[idx], r[:b], r[b:], ids_beta)
        if eval_fn:
            rm.eval()
            history.append(eval_fn(rm, ep))
    return {"history": history, "labels": labels}

