"""CGPO: Constrained Generative Policy Optimization with a Mixture of Judges (Xu et al. 2024, "The Perfect
Blend: Redefining RLHF with Mixture of Judges", arXiv:2409.20370, §4). The authors released no code; this
follows the paper's §4.1–4.3 text and equations.

Notation: p prompts of one task, k samples per prompt, b = p·k rollouts, t response tokens.
    calibrated reward (§4.2)   R_calib(x, y) = σ(r(x, y) − r(x, ȳ)), ȳ a reference response of x (the prompt's
                               golden response when there is one, else one from the starting policy); bounded
                               in (0, 1) and comparable across prompts and tasks.
    constraint judges (§4.1)   pass_i = every judge of the task passes (x_i, y_i) (lmlab.align.judges).
    CRPG   (calibrated-regularized policy gradient): only feasible samples get the calibrated reward,
           R_i = R_calib,i · 1[pass_i] − β_task · KL_i,   KL_i = Σ_t (log π_old − log π_ref)(y_i,t)  (detached)
           loss = −1/b Σ_i (R_i − baseline) · Σ_t log π_θ(y_i,t); the paper's estimator has no baseline
           (baseline="none"); baseline="mean" subtracts the mean of R over the k samples of the same prompt
           (unbiased, lower variance; an option, not the paper's default).
    CODPO  (constrained online DPO): per prompt, chosen = the highest-reward sample among those that pass all
           judges, rejected = the lowest-reward sample among those that violate one; prompts without both are
           skipped. loss = −log σ(β·(Δ_w − Δ_l)) − λ/|y_w| · log π_θ(y_w|x), Δ = log π_θ − log π_ref.
    CRRAFT (constrained reward-ranked finetuning): per prompt, drop violating samples, keep the highest-reward
           one that passes (RAFT's best-of-k), and fine-tune on it weighted by its calibrated reward:
           loss = −Σ_sel R_calib,i · (1/|y_i|) Σ_t log π_θ(y_i,t) / |sel|.
Multi-task (§4.3): each task has its own prompt sampler, reward model, judges, KL weight and generation
settings (max_new_tokens, temperature); every iteration draws a stratified batch (a fixed share of prompts per
task), computes each task's loss with its own pieces, and takes one optimizer step on the sum of the task
losses weighted by their prompt shares (the paper aggregates the per-task gradients).

Pure losses (float64-checked in tests/test_cgpo.py): calibrated_reward, crpg_rewards, crpg_loss, codpo_pairs,
codpo_loss, crraft_select, crraft_loss. The training loop is `cgpo_train`; `lmlab align cgpo --config
configs/align/cgpo.yaml` runs it on the verifiable text tasks of lmlab.align.envs (stage `cgpo`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from lmlab.align.config import AlignConfig
from lmlab.config import _Base
from lmlab.registry import ALIGN_STAGES

OPTIMIZERS = ("crpg", "codpo", "crraft")


# ------------------------------------------------------------------------------------------ pure pieces
def calibrated_reward(reward: torch.Tensor, ref_reward: torch.Tensor) -> torch.Tensor:
    """σ(r(x, y) − r(x, ȳ)) against the reference response ȳ of the same prompt (CGPO §4.2)."""
    return torch.sigmoid(reward - ref_reward)


def crpg_rewards(calibrated: torch.Tensor, passed: torch.Tensor, kl: Optional[torch.Tensor] = None,
                 kl_coef: float = 0.0) -> torch.Tensor:
    """CRPG's per-sample reward R_i = R_calib,i · 1[pass_i] − β·KL_i (KL_i a detached sequence KL estimate)."""
    r = calibrated * passed.to(calibrated.dtype)
    if kl is not None and kl_coef:
        r = r - kl_coef * kl
    return r


def crpg_loss(seq_logp: torch.Tensor, rewards: torch.Tensor, k: int = 1,
              baseline: Literal["none", "mean"] = "none") -> torch.Tensor:
    """−1/b Σ_i (R_i − b_i) · log π_θ(y_i|x_i). seq_logp (b,) = Σ_t log π_θ over response tokens; rewards (b,)
    from crpg_rewards, rows grouped k per prompt; baseline "mean" uses the prompt's mean reward."""
    if baseline not in ("none", "mean"):
        raise ValueError(f"crpg_loss: baseline={baseline!r}: allowed none, mean")
    r = rewards.detach()
    if baseline == "mean":
        r = (r.view(-1, k) - r.view(-1, k).mean(1, keepdim=True)).reshape(-1)
    return -(r * seq_logp).mean()


def codpo_pairs(rewards: torch.Tensor, passed: torch.Tensor) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) per prompt of rewards/passed (p, k): chosen = argmax reward over passing
    samples, rejected = argmin reward over violating samples; a prompt without both kinds gives no pair.
    Ties go to the lowest index."""
    out = []
    for i in range(rewards.shape[0]):
        ok, bad = passed[i].bool(), ~passed[i].bool()
        if not ok.any() or not bad.any():
            continue
        r = rewards[i]
        c = int(torch.where(ok, r, torch.full_like(r, -float("inf"))).argmax())
        rj = int(torch.where(bad, r, torch.full_like(r, float("inf"))).argmin())
        out.append((i, c, rj))
    return out


def codpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, len_chosen: torch.Tensor, beta: float = 0.1,
               nll_coef: float = 1.0) -> torch.Tensor:
    """Mean over pairs of −log σ(β·((π_w − ref_w) − (π_l − ref_l))) − λ·π_w/|y_w| (sequence log-probs)."""
    margin = beta * ((pol_chosen - ref_chosen) - (pol_rejected - ref_rejected))
    return (-F.logsigmoid(margin) - nll_coef * pol_chosen / len_chosen.to(pol_chosen.dtype)).mean()


def crraft_select(rewards: torch.Tensor, passed: torch.Tensor) -> list[tuple[int, int]]:
    """(prompt, sample) of the highest-reward passing sample of each prompt (rewards/passed (p, k)); prompts
    whose samples all violate are dropped. Ties go to the lowest index."""
    out = []
    for i in range(rewards.shape[0]):
        ok = passed[i].bool()
        if ok.any():
            r = rewards[i]
            out.append((i, int(torch.where(ok, r, torch.full_like(r, -float("inf"))).argmax())))
    return out


def crraft_loss(seq_logp: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−mean_i w_i · log π_θ(y_i|x_i)/|y_i| over the selected samples, w_i = R_calib,i (detached)."""
    return -(weights.detach() * seq_logp / lengths.to(seq_logp.dtype)).mean()


# ------------------------------------------------------------------------------------------- the loop
@dataclass
class CGPOTask:
    """One task of a multi-task CGPO run.

    prompt_fn(n, generator) -> (n, tp) prompt ids (equal length within a task)
    reward_fn(prompts (b, tp), responses (b, t)) -> (b,) reward-model scores r(x, y)
    ref_reward_fn(prompts (b, tp)) -> (b,) r(x, ȳ) of each prompt's reference response (calibration)
    judge_fn(prompts, responses) -> (b,) bool, True where every judge of the task passes
    gold_fn (optional) -> (b,) a hidden gold reward, only logged (experiments)
    """

    name: str
    prompt_fn: Callable[[int, torch.Generator], torch.Tensor]
    reward_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ref_reward_fn: Callable[[torch.Tensor], torch.Tensor]
    judge_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    share: float = 1.0                # fraction of each iteration's prompts drawn from this task
    kl_coef: float = 0.05
    max_new_tokens: int = 8
    temperature: float = 1.0
    gold_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None


@dataclass
class CGPOConfig:
    optimizer: str = "crpg"           # crpg | codpo | crraft
    iterations: int = 50
    prompts_per_iter: int = 16        # split over the tasks by their shares
    samples_per_prompt: int = 4
    lr: float = 1e-3
    epochs: int = 1                   # optimizer steps on each iteration's batch
    baseline: str = "mean"            # CRPG: none (paper) | mean
    beta: float = 0.1                 # CODPO β
    nll_coef: float = 1.0             # CODPO λ
    eos_id: Optional[int] = None
    max_grad_norm: float = 1.0
    seed: int = 0


def _seq_logp(model, tokens: torch.Tensor, tp: int, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    from lmlab.align.ppo import response_logp

    return (response_logp(model, tokens, tp, temperature) * mask).sum(1)


def _task_loss(policy, ref, task: CGPOTask, ro, mask, cfg: CGPOConfig, pieces: dict) -> Optional[torch.Tensor]:
    tp, k = ro.prompt_len, cfg.samples_per_prompt
    logp = _seq_logp(policy, ro.tokens, tp, mask, task.temperature)
    if cfg.optimizer == "crpg":
        return crpg_loss(logp, pieces["crpg_r"], k, cfg.baseline)
    if cfg.optimizer == "codpo":
        pairs = pieces["pairs"]
        if not pairs:
            return None
        c = torch.tensor([p * k + j for p, j, _ in pairs])
        r = torch.tensor([p * k + j for p, _, j in pairs])
        return codpo_loss(logp[c], logp[r], pieces["ref_logp"][c], pieces["ref_logp"][r],
                          mask[c].sum(1).clamp(min=1), cfg.beta, cfg.nll_coef)
    sel = pieces["sel"]
    if not sel:
        return None
    idx = torch.tensor([p * k + j for p, j in sel])
    return crraft_loss(logp[idx], mask[idx].sum(1).clamp(min=1), pieces["calib"][idx])


def cgpo_train(policy, ref, tasks: list[CGPOTask], cfg: CGPOConfig,
               log: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Multi-task CGPO: per iteration and task, sample k responses for the task's stratified prompts with its
    generation settings, score (RM + calibration) and judge them, build the optimizer's loss (crpg | codpo |
    crraft) with the task's KL weight, and step once per epoch on the share-weighted sum of task losses.
    Returns one record per iteration with per-task reward, calibrated reward, violation rate (and gold)."""
    from lmlab.align.rollout import sample

    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"cgpo_train: optimizer={cfg.optimizer!r}: allowed {', '.join(OPTIMIZERS)}")
    if not tasks:
        raise ValueError("cgpo_train: no tasks")
    if cfg.samples_per_prompt < 2 and cfg.optimizer == "codpo":
        raise ValueError("cgpo_train: codpo needs samples_per_prompt >= 2")
    total = sum(t.share for t in tasks)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    ref.eval()
    k, history = cfg.samples_per_prompt, []
    for it in range(cfg.iterations):
        t0 = time.perf_counter()
        batch, rec = [], {"iter": it}
        for task in tasks:
            n = max(1, round(cfg.prompts_per_iter * task.share / total))
            prompts = task.prompt_fn(n, g)
            ro = sample(policy, prompts, task.max_new_tokens, n=k, temperature=task.temperature, eos_id=cfg.eos_id,
                        generator=g)
            tp, mask = ro.prompt_len, ro.response_mask.float()
            rows = ro.tokens[:, :tp]
            with torch.no_grad():
                r = task.reward_fn(rows, ro.responses).double()
                calib = calibrated_reward(r, task.ref_reward_fn(rows).double())
                passed = torch.as_tensor(task.judge_fn(rows, ro.responses)).bool()
                ref_lp = _seq_logp(ref, ro.tokens, tp, mask, task.temperature)
                old_lp = _seq_logp(policy, ro.tokens, tp, mask, task.temperature)
                kl = old_lp - ref_lp
                pieces = {"calib": calib.float(), "ref_logp": ref_lp,
                          "crpg_r": crpg_rewards(calib, passed, kl.double(), task.kl_coef).float(),
                          "pairs": codpo_pairs(r.view(-1, k), passed.view(-1, k)),
                          "sel": crraft_select(r.view(-1, k), passed.view(-1, k))}
            batch.append((task, ro, mask, pieces))
            rec[f"{task.name}/reward"] = r.mean().item()
            rec[f"{task.name}/calibrated"] = calib.mean().item()
            rec[f"{task.name}/violation_rate"] = 1.0 - passed.float().mean().item()
            rec[f"{task.name}/kl"] = kl.mean().item()
            rec[f"{task.name}/response_len"] = mask.sum(1).mean().item()
            if task.gold_fn is not None:
                rec[f"{task.name}/gold"] = task.gold_fn(rows, ro.responses).float().mean().item()
        losses = []
        for _ in range(cfg.epochs):
            loss = None
            for task, ro, mask, pieces in batch:
                tl = _task_loss(policy, ref, task, ro, mask, cfg, pieces)
                if tl is not None:
                    loss = tl * task.share / total if loss is None else loss + tl * task.share / total
            if loss is None:
                break
            opt.zero_grad()
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(loss.item())
        rec["loss"] = sum(losses) / len(losses) if losses else 0.0
        rec["updates"] = len(losses)            # 0 when no task had a pair / a passing sample
        rec["seconds"] = time.perf_counter() - t0
        history.append(rec)
        if log:
            log(rec)
    return history


# ------------------------------------------------------------------------------------- the align stage
class CGPOTaskSection(_Base):
    task: Literal["arithmetic", "countdown", "sorting"] = Field(
        "arithmetic", description="a verifiable task of lmlab.align.envs (prompts and the gold answer)")
    task_args: dict[str, Any] = Field(default_factory=dict)
    share: float = Field(1.0, gt=0, description="share of each iteration's prompts")
    judges: list[dict[str, Any]] = Field(default_factory=lambda: [{"kind": "exact_answer"}],
                                         description="rule judges, e.g. {kind: length, max_words: 3}")
    reward_model: Optional[str] = Field(None, description="an rm stage output (model.safetensors or its dir); "
                                        "none: r = 0, so R_calib = 0.5 and the judges alone shape the update")
    kl_coef: float = Field(0.05, ge=0)
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)


class CGPOSection(_Base):
    optimizer: Literal["crpg", "codpo", "crraft"] = "crpg"
    iterations: int = Field(20, ge=1)
    prompts_per_iter: int = Field(8, ge=1)
    samples_per_prompt: int = Field(4, ge=2)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1)
    baseline: Literal["none", "mean"] = "mean"
    beta: float = Field(0.1, gt=0)
    nll_coef: float = Field(1.0, ge=0)
    tasks: list[CGPOTaskSection] = Field(default_factory=lambda: [CGPOTaskSection()], min_length=1)


class CGPOAlignConfig(AlignConfig):
    """AlignConfig plus a `cgpo` section (the multi-task CGPO run of `lmlab align cgpo`)."""

    cgpo: CGPOSection = Field(default_factory=CGPOSection)


def load_cgpo_config(path, overrides=None) -> CGPOAlignConfig:
    """YAML file + dotted overrides -> CGPOAlignConfig; one-line ConfigError naming a bad key or value."""
    from lmlab.config import load_config

    return load_config(path, overrides, model=CGPOAlignConfig)


def load_reward_model(path):
    """A RewardModel saved by the rm stage (backbone decoder + heads)."""
    from lmlab.align.reward import RewardModel
    from lmlab.train.checkpoint import load_decoder, load_model_file

    sd, _ = load_model_file(path)
    if "heads.weight" not in sd:
        raise ValueError(f"reward_model={path}: not a reward model (no heads.weight)")
    rm = RewardModel(load_decoder(path), n_heads=sd["heads.weight"].shape[0])
    rm.heads.load_state_dict({"weight": sd["heads.weight"], "bias": sd["heads.bias"]})
    return rm.eval()


def _text_task(sec: CGPOTaskSection, tok, seed: int, prompt_text: Callable[[str], str]) -> CGPOTask:
    """A CGPOTask over a text task of lmlab.align.envs through the byte tokenizer."""
    import random
    from pathlib import Path

    from lmlab.align.envs import make_task
    from lmlab.align.judges import MixtureOfJudges, Sample, make_judge

    task = make_task(sec.task, **sec.task_args)
    moj = MixtureOfJudges([make_judge(j) for j in sec.judges])
    rm = None
    if sec.reward_model:
        if not Path(sec.reward_model).exists():
            raise FileNotFoundError(f"cgpo.tasks.reward_model={sec.reward_model}: no such file")
        rm = load_reward_model(sec.reward_model)
    rng = random.Random(seed)
    problems: dict = {}

    def prompt_fn(n, g):
        first = task.sample(rng)
        L = len(tok.encode(prompt_text(first.prompt)))
        batch = [first]
        while len(batch) < n:
            p = task.sample(rng)
            if len(tok.encode(prompt_text(p.prompt))) == L:
                batch.append(p)
        rows = []
        for p in batch:
            ids = tok.encode(prompt_text(p.prompt))
            problems[tuple(ids)] = p
            rows.append(ids)
        return torch.tensor(rows)

    def text(y):
        y = y[:y.index(tok.eos_id)] if tok.eos_id in y else y
        return tok.decode(y)

    def score(rows: list[list[int]]) -> torch.Tensor:
        if rm is None:
            return torch.zeros(len(rows))
        from lmlab.align.reward import pad_batch

        ids, lens = pad_batch(rows, tok.pad_id)
        with torch.no_grad():
            return rm.quality(ids, lens).float()

    def reward_fn(prompts, responses):
        rows = []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            y = y[:y.index(tok.eos_id) + 1] if tok.eos_id in y else y
            rows.append(p + y)
        return score(rows)

    def ref_reward_fn(prompts):   # the golden response of each prompt is the reference ȳ
        return score([p + tok.encode(problems[tuple(p)].answer) + [tok.eos_id] for p in prompts.tolist()])

    def judge_fn(prompts, responses):
        samples = [Sample(problems[tuple(p)].prompt, text(y), {"answer": problems[tuple(p)].answer})
                   for p, y in zip(prompts.tolist(), responses.tolist())]
        return torch.tensor(moj.passes(samples))

    def gold_fn(prompts, responses):
        return torch.tensor([task.check(problems[tuple(p)], text(y)) for p, y in zip(prompts.tolist(),
                                                                                   responses.tolist())])

    return CGPOTask(sec.task, prompt_fn, reward_fn, ref_reward_fn, judge_fn, sec.share, sec.kl_coef,
                    sec.max_new_tokens, sec.temperature, gold_fn)


def cgpo_stage(cfg: CGPOAlignConfig, ctx) -> dict:
    """Multi-task CGPO on verifiable tasks (`cgpo.tasks`, each with judges, optional reward model, KL weight and
    generation settings) with the constrained optimizer `cgpo.optimizer` (crpg | codpo | crraft)."""
    import copy

    from lmlab.align.stages import _prompt_text, _save, build_model

    if not isinstance(cfg, CGPOAlignConfig):   # a plain AlignConfig (no cgpo section): the defaults
        cfg = CGPOAlignConfig(**cfg.model_dump())
    s, tok = cfg.cgpo, ctx.tok
    pt = lambda q: _prompt_text([{"role": "user", "content": q}])  # noqa: E731
    tasks = [_text_task(sec, tok, cfg.seed + i, pt) for i, sec in enumerate(s.tasks)]
    names = [t.name for t in tasks]
    for i, t in enumerate(tasks):        # unique names in the metrics when a task appears twice
        if names.count(t.name) > 1:
            t.name = f"{t.name}{i}"
    policy = build_model(cfg)
    ref = copy.deepcopy(policy).eval()
    cc = CGPOConfig(optimizer=s.optimizer, iterations=s.iterations, prompts_per_iter=s.prompts_per_iter,
                    samples_per_prompt=s.samples_per_prompt, lr=s.lr, epochs=s.epochs, baseline=s.baseline,
                    beta=s.beta, nll_coef=s.nll_coef, eos_id=tok.eos_id, seed=cfg.seed)
    hist = cgpo_train(policy, ref, tasks, cc, log=ctx.log)
    _save(policy, ctx.out)
    return {"stage": "cgpo", "optimizer": s.optimizer, "tasks": [t.name for t in tasks], "final": hist[-1]}


cgpo_stage.load_config = load_cgpo_config       # the align CLI loads this stage's config with its own model
ALIGN_STAGES.register("cgpo", cgpo_stage)
