"""Online RL for LMs: PPO (clipped loss, value head, GAE, per-token KL, adaptive KL), RLOO / GRPO group
baselines, and contrastive rewards.

Notation: b = rollouts, t = response tokens, p = prompts, k = samples per prompt (b = p·k).

PPO (Schulman et al. 2017) as used for RLHF (Ziegler et al. 2019; Ouyang et al. 2022):
    per-token reward   r_t = −β·(log π_old(y_t) − log π_ref(y_t)) + [t = last]·score
    GAE                δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},   returns R_t = A_t + V_t
    policy loss        mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1−ε, 1+ε)),  ρ_t = π_θ(y_t)/π_old(y_t)
    value loss         ½·mean_t max((V_t − R_t)², (clip(V_t, V_old ± ε_v) − R_t)²)
    adaptive KL        e = clip(KL/KL_target − 1, −0.2, 0.2);  β ← β·(1 + e·n_steps/horizon)
RLOO (Ahmadian et al. 2024): A_i = r_i − 1/(k−1)·Σ_{j≠i} r_j, applied to every token of rollout i.
GRPO (Shao et al. 2024):      A_i = (r_i − mean_j r_j) / (std_j r_j + ε).
Contrastive rewards (Shen et al. 2024): before RL, sample k offline responses per prompt from the SFT
policy and score them with the RM; during RL the reward is r(x, y) − mean_j r(x, y_j) (the baseline is the
average offline score of the same prompt).
PPO, RLOO and GRPO are RLAlgorithm entries of lmlab.registry.ALIGN_ALGOS (`RLConfig.algo`); contrastive rewards
are listed in REWARD_MODELS.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from lmlab.align.algorithms import algorithm
from lmlab.registry import ALIGN_ALGOS, REWARD_MODELS, RegistryError


# ------------------------------------------------------------------------------------------ pure losses
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask)
    return (x - mu) * torch.rsqrt(var + eps)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, vectorised over rows. rewards/values/mask (b, t); the value after
    the last real token is 0. Returns (advantages, returns), both (b, t), zero where mask is 0."""
    mask = mask.to(rewards.dtype)
    b, t = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        next_v = values[:, i + 1] * mask[:, i + 1] if i + 1 < t else torch.zeros_like(last)
        delta = rewards[:, i] + gamma * next_v - values[:, i]
        last = (delta + gamma * lam * last) * mask[:, i]
        adv[:, i] = last
    return adv, (adv + values) * mask


def naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Single trajectory, textbook form A_t = Σ_l (γλ)^l δ_{t+l}."""
    n = len(rewards)
    v = list(values) + [0.0]
    deltas = [rewards[i] + gamma * v[i + 1] - v[i] for i in range(n)]
    return [sum((gamma * lam) ** l * deltas[i + l] for l in range(n - i)) for i in range(n)]


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float = 0.2) -> tuple[torch.Tensor, dict]:
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    clipfrac = masked_mean((pg2 > pg1).float(), mask)
    approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
    return loss, {"clipfrac": clipfrac.item(), "approx_kl": approx_kl.item()}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_eps: float = 0.2) -> torch.Tensor:
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2), mask)


def kl_shaped_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −β·(log π − log π_ref), with the sequence score added at the last real token.
    Returns (rewards (b, t), per-token KL (b, t))."""
    kl = (logp - ref_logp) * mask
    rewards = -kl_coef * kl
    last = mask.long().sum(1).clamp(min=1) - 1                    # (b,)
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (p, k) -> leave-one-out advantages (p, k)."""
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("rloo_advantages: needs k >= 2 samples per prompt")
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - baseline


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


@REWARD_MODELS.register("contrastive")
def contrastive_rewards(rewards: torch.Tensor, offline_scores: torch.Tensor) -> torch.Tensor:
    """Contrastive rewards (Shen et al. 2024): the RM score minus the prompt's mean offline RM score, for RL.

    rewards (b,) for rollouts of prompts whose offline RM scores are offline_scores (b, k)."""
    return rewards - offline_scores.mean(-1)


@torch.no_grad()
def offline_baseline(policy, prompts: torch.Tensor, score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     k: int, max_new_tokens: int, eos_id: Optional[int] = None, temperature: float = 1.0,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Contrastive rewards, step 1: k samples per prompt from the (SFT) policy, scored by the RM.
    prompts (p, tp) -> offline scores (p, k); the RL reward is then contrastive_rewards(r, scores[prompt])."""
    from lmlab.align.rollout import sample

    ro = sample(policy, prompts, max_new_tokens, n=k, temperature=temperature, eos_id=eos_id, generator=generator)
    return score_fn(ro.tokens[:, :ro.prompt_len], ro.responses).view(prompts.shape[0], k)


class AdaptiveKLController:
    """Ziegler et al. 2019: proportional control of β toward a target KL."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        err = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------------------------------- algorithms
class RLAlgorithm:
    """An online RL algorithm of `rl_train` (the rl stage's `rl.algo`): how scores become advantages."""

    stage = "rl"
    critic = False   # a value head (PolicyWithValue), per-token KL-shaped rewards and GAE
    whiten = False   # whiten the advantages over the batch when RLConfig.whiten_advantages

    @staticmethod
    def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
        """Sequence rewards (p, k) of k samples per prompt -> advantages (p, k) (algorithms without a critic)."""
        raise NotImplementedError


@ALIGN_ALGOS.register("ppo")
class PPO(RLAlgorithm):
    """PPO for RLHF (Schulman et al. 2017; Ziegler et al. 2019): clipped loss, value head, GAE, per-token KL."""

    critic = True
    whiten = True


@ALIGN_ALGOS.register("rloo")
class RLOO(RLAlgorithm):
    """RLOO (Ahmadian et al. 2024): leave-one-out baseline over k samples per prompt, no value head."""

    whiten = True
    group_advantages = staticmethod(rloo_advantages)


@ALIGN_ALGOS.register("grpo")
class GRPO(RLAlgorithm):
    """GRPO (Shao et al. 2024): advantages (r − mean)/std over the k samples of each prompt, no value head."""

    group_advantages = staticmethod(grpo_advantages)


# -------------------------------------------------------------------------------------------- models
class PolicyWithValue(nn.Module):
    """An lmlab Decoder plus a scalar value head on its final hidden states (shared backbone)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.cfg = decoder.cfg
        self.value_head = nn.Linear(decoder.cfg.d_model, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, *a, **kw):
        return self.decoder(*a, **kw)

    def init_states(self, *a, **kw):
        return self.decoder.init_states(*a, **kw)

    def logp_and_values(self, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0):
        out = self.decoder(tokens, return_hidden=True)
        return _response_logp(out.logits, tokens, prompt_len, temperature), \
            self.value_head(out.hidden[:, prompt_len - 1:-1]).squeeze(-1)


def _response_logp(logits: torch.Tensor, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0):
    """log π(y_t | x, y_<t) for the response tokens: (b, tn)."""
    lg = logits[:, prompt_len - 1:-1].float() / max(temperature, 1e-6)
    return torch.log_softmax(lg, -1).gather(-1, tokens[:, prompt_len:, None])[..., 0]


def response_logp(model, tokens: torch.Tensor, prompt_len: int, temperature: float = 1.0) -> torch.Tensor:
    return _response_logp(model(tokens).logits, tokens, prompt_len, temperature)


# -------------------------------------------------------------------------------------- training loop
@dataclass
class RLConfig:
    algo: str = "ppo"                 # an RLAlgorithm in ALIGN_ALGOS: ppo | rloo | grpo
    iterations: int = 50
    prompts_per_iter: int = 16
    samples_per_prompt: int = 4       # k (RLOO/GRPO group size)
    max_new_tokens: int = 8
    temperature: float = 1.0
    lr: float = 1e-3
    ppo_epochs: int = 2
    minibatches: int = 2
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    whiten_advantages: bool = True
    eos_id: Optional[int] = None
    max_grad_norm: float = 1.0
    seed: int = 0


def rl_train(policy: nn.Module, ref: nn.Module, prompt_fn: Callable[[int, torch.Generator], torch.Tensor],
             reward_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cfg: RLConfig,
             baseline_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
             log: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """One visible loop for PPO/RLOO/GRPO.

    prompt_fn(n, generator) -> (n, tp) prompt ids; reward_fn(prompts_rows (b, tp), responses (b, tn)) -> (b,)
    scores; baseline_fn(prompts_rows) -> (b,) subtracted from the score (contrastive rewards).
    PPO needs `policy` to be a PolicyWithValue.
    """
    try:
        algo = algorithm("rl", cfg.algo)
    except RegistryError as e:
        raise ValueError(f"rl_train: algo={cfg.algo!r}: {e}") from None
    if algo.critic and not isinstance(policy, PolicyWithValue):
        raise ValueError(f"rl_train: algo={cfg.algo!r} needs a PolicyWithValue policy")
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    klc = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    k = cfg.samples_per_prompt
    if not algo.critic and k < 2:
        raise ValueError(f"rl_train: algo={cfg.algo!r} needs samples_per_prompt >= 2 (got {k})")
    ref.eval()
    history = []
    from lmlab.align.rollout import sample

    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        prompts = prompt_fn(cfg.prompts_per_iter, g)
        ro = sample(policy, prompts, cfg.max_new_tokens, n=k, temperature=cfg.temperature, eos_id=cfg.eos_id,
                    generator=g)
        t_gen = time.perf_counter() - t0
        tp, mask = ro.prompt_len, ro.response_mask.float()
        rows_prompts = ro.tokens[:, :tp]
        with torch.no_grad():
            raw = reward_fn(rows_prompts, ro.responses).float()           # (b,)
            score = raw - baseline_fn(rows_prompts) if baseline_fn is not None else raw
            if algo.critic:
                old_logp, old_values = policy.logp_and_values(ro.tokens, tp, cfg.temperature)
            else:
                old_logp = response_logp(policy, ro.tokens, tp, cfg.temperature)
            ref_logp = response_logp(ref, ro.tokens, tp, cfg.temperature)
            if algo.critic:
                rewards, kl = kl_shaped_rewards(score, old_logp, ref_logp, mask, klc.value)
                adv, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages and algo.whiten:
                    adv = masked_whiten(adv, mask) * mask
            else:
                kl = (old_logp - ref_logp) * mask
                seq_r = (score - klc.value * kl.sum(1)).view(-1, k)        # (p, k)
                adv = algo.group_advantages(seq_r).view(-1, 1) * mask
                if cfg.whiten_advantages and algo.whiten:
                    adv = masked_whiten(adv, mask) * mask
        t_score = time.perf_counter() - t0 - t_gen
        b = ro.tokens.shape[0]
        mb = max(1, b // cfg.minibatches)
        stats: dict = {"clipfrac": [], "approx_kl": [], "pg_loss": [], "vf_loss": []}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(b, generator=g)
            for s in range(0, b, mb):
                i = perm[s:s + mb]
                if algo.critic:
                    logp, values = policy.logp_and_values(ro.tokens[i], tp, cfg.temperature)
                    pg, st = ppo_policy_loss(logp, old_logp[i], adv[i], mask[i], cfg.clip_eps)
                    vl = value_loss(values, old_values[i], returns[i], mask[i], cfg.clip_eps)
                    loss = pg + cfg.vf_coef * vl
                    stats["vf_loss"].append(vl.item())
                else:
                    logp = response_logp(policy, ro.tokens[i], tp, cfg.temperature)
                    pg, st = ppo_policy_loss(logp, old_logp[i], adv[i], mask[i], cfg.clip_eps)
                    loss = pg
                opt.zero_grad()
                loss.backward()
                if cfg.max_grad_norm:
                    nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                opt.step()
                stats["pg_loss"].append(pg.item())
                stats["clipfrac"].append(st["clipfrac"])
                stats["approx_kl"].append(st["approx_kl"])
        mean_kl = (kl.sum(1)).mean().item()
        if cfg.adaptive_kl:
            klc.update(mean_kl, b)
        dt = time.perf_counter() - t0
        ent = -(ro.logprobs * mask).sum() / mask.sum()
        m = {"iter": it, "reward": raw.mean().item(), "reward_std": raw.std().item(), "score": score.mean().item(),
             "kl": mean_kl, "kl_coef": klc.value, "entropy_est": ent.item(),
             "response_len": mask.sum(1).mean().item(), "samples_per_s": b / dt,
             "tokens_per_s": mask.sum().item() / dt, "t_generate": t_gen, "t_score": t_score,
             "t_train": dt - t_gen - t_score,
             **{key: sum(v) / len(v) for key, v in stats.items() if v}}
        history.append(m)
        if log:
            log(m)
    return history
