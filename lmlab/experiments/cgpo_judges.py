"""CGPO (Xu et al. 2024, arXiv:2409.20370) against PPO and RLOO on a two-task token world: a small-scale
stand-in for the paper's multi-task RLHF, with a tiny lmlab policy.

Tasks (one vocabulary, one policy, prompts of 4 tokens):
  pref    [BOS, PREF, P_x, P_x] -> content words; hidden gold r*(x, y) = mean_t W[x, y_t] (lmlab.align.envs'
          preference world). The word w0 is a "forbidden entity": its gold weight is −2, but the annotators whose
          pairs train the BT reward model like it (+FORBID_BONUS per mention) and like length (+LEN_BIAS per word),
          so the RM rewards exactly what the gold reward punishes: the classic reward-hacking set-up.
          Judges: ForbiddenJudge(["w0"]) and LengthJudge(max_words=MAX_WORDS).
  arith   [BOS, ARITH, a, b] with a, b ∈ 0..ARITH_MAX -> the digit a + b. Its reward model is a format-only
          stand-in (1 for one digit followed by EOS, else 0: it cannot check the sum). Judge: ExactAnswerJudge.
          Gold = accuracy.
Calibration references ȳ: the golden answer for arith; one fixed SFT sample per prompt for pref.
Arms at equal samples (ITERS iterations × PROMPTS prompts × K samples): ppo and rloo (lmlab.align.ppo.rl_train
on the RM reward of the mixed batch, KL 0.05) and the three CGPO optimizers (lmlab.align.cgpo.cgpo_train with
per-task KL weights and generation lengths). Every arm of a seed starts from the same SFT policy and RM.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare, mean_std, noninferior
from lmlab.registry import EXPERIMENTS

BOS, EOS, PREF, ARITH = 0, 1, 2, 3
N_PROMPTS, N_WORDS = 4, 10
P_OFF = 4                                  # prompt tokens P_0..P_3
W_OFF = P_OFF + N_PROMPTS                  # content words w0..w9 (digits 0..9 for arith)
VOCAB = W_OFF + N_WORDS
FORBIDDEN = 0                              # w0
FORBID_GOLD, FORBID_BONUS, LEN_BIAS = -2.0, 2.5, 0.3
MAX_WORDS = 6
ARITH_MAX = 4                              # arith operands 0..4, so a + b is one digit
SFT_CORRECT = 0.5                          # fraction of SFT arith examples with the right sum (else a random digit)
ITERS = {"quick": 120, "full": 600}
PROMPTS, K = 16, 4                         # prompts per iteration (8 per task), samples per prompt
KL = {"pref": 0.05, "arith": 0.01}         # CGPO per-task KL weights; PPO/RLOO use KL_BASE on the mixed batch
KL_BASE = 0.05
NEW_TOKENS = {"pref": 9, "arith": 2}       # CGPO per-task generation lengths; PPO/RLOO use 9 for both
LR = 2e-3
EVAL_N = 64                                # eval samples per prompt
GOLD_TOL = 0.05                            # pref gold reward "kept": paired non-inferiority margin
ACC_TOL = 0.05                             # arith accuracy "kept": paired non-inferiority margin
ARMS = ["ppo", "rloo", "crpg", "codpo", "crraft"]


class _World:
    def __init__(self, seed: int):
        g = np.random.default_rng(seed)
        self.W = g.normal(size=(N_PROMPTS, N_WORDS))
        self.W[:, FORBIDDEN] = FORBID_GOLD

    def gold(self, x: int, words: list[int]) -> float:
        return float(self.W[x, words].mean()) if words else 0.0

    def annotator_score(self, x: int, words: list[int]) -> float:
        return 3.0 * self.gold(x, words) + LEN_BIAS * len(words) + FORBID_BONUS * words.count(FORBIDDEN)

    def pairs(self, n: int, rng: np.random.Generator):
        out = []
        for _ in range(n):
            x = int(rng.integers(N_PROMPTS))
            a, b = (_random_words(rng) for _ in range(2))
            p = 1 / (1 + np.exp(-(self.annotator_score(x, a) - self.annotator_score(x, b))))
            c, r = (a, b) if rng.random() < p else (b, a)
            out.append((_encode(x, c), _encode(x, r)))
        return out


def _random_words(rng) -> list[int]:
    return [int(t) for t in rng.integers(0, N_WORDS, size=int(rng.integers(2, 9)))]


def _encode(x: int, words: list[int]) -> list[int]:
    return [BOS, PREF, P_OFF + x, P_OFF + x] + [W_OFF + w for w in words] + [EOS]


def _words(resp: list[int]) -> list[int]:
    """Content words before the first EOS (other tokens dropped)."""
    resp = resp[:resp.index(EOS)] if EOS in resp else resp
    return [t - W_OFF for t in resp if W_OFF <= t < VOCAB]


def _text(resp: list[int]) -> str:
    resp = resp[:resp.index(EOS)] if EOS in resp else resp
    return " ".join(f"w{t - W_OFF}" if W_OFF <= t < VOCAB else f"<{t}>" for t in resp)


def _decoder(seed: int):
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=VOCAB, d_model=32, n_layer=1, n_head=2, max_seq_len=16))


def _setup(seed: int, quick: bool):
    """World, BT reward model for pref, SFT policy on both tasks (same for every arm of a seed)."""
    from lmlab.align.reward import RewardModel, train_reward_model
    from lmlab.align.sft import pad_examples, train_sft

    world = _World(seed)
    rng = np.random.default_rng(seed + 1)
    pairs = world.pairs(400 if quick else 4000, rng)
    rm = RewardModel(_decoder(seed + 7))
    train_reward_model(rm, [c for c, _ in pairs], [r for _, r in pairs], method="bt", epochs=4, batch_size=32,
                       lr=3e-3, seed=seed)
    rm.eval()
    exs = []
    for i in range(600):
        if i % 2:
            x = int(rng.integers(N_PROMPTS))
            ids = _encode(x, _random_words(rng))
        else:
            a, b = (int(v) for v in rng.integers(0, ARITH_MAX + 1, 2))
            ans = a + b if rng.random() < SFT_CORRECT else int(rng.integers(10))
            ids = [BOS, ARITH, W_OFF + a, W_OFF + b, W_OFF + ans, EOS]
        exs.append((ids, [-100] * 4 + ids[4:]))
    sx, sy = pad_examples(exs, pad_id=EOS)
    dec = _decoder(seed + 11)
    train_sft(dec, sx, sy, steps=200 if quick else 1000, batch_size=32, lr=3e-3, seed=seed)
    return world, rm, dec


def _pieces(world: _World, rm):
    """Prompt samplers, rewards, judges and gold per task on token rows."""
    from lmlab.align.judges import ExactAnswerJudge, ForbiddenJudge, LengthJudge, MixtureOfJudges, Sample

    pref_moj = MixtureOfJudges([ForbiddenJudge([f"w{FORBIDDEN}"]), LengthJudge(max_words=MAX_WORDS)])
    exact = MixtureOfJudges([ExactAnswerJudge()])

    def pref_prompts(n, g):
        x = torch.randint(0, N_PROMPTS, (n,), generator=g) + P_OFF
        return torch.stack([torch.full_like(x, BOS), torch.full_like(x, PREF), x, x], 1)

    def arith_prompts(n, g):
        ab = torch.randint(0, ARITH_MAX + 1, (n, 2), generator=g) + W_OFF
        return torch.cat([torch.full((n, 1), BOS), torch.full((n, 1), ARITH), ab], 1)

    def rm_rows(rows):
        t = max(len(x) for x in rows)
        ids = torch.tensor([x + [EOS] * (t - len(x)) for x in rows])
        with torch.no_grad():
            return rm.quality(ids, torch.tensor([len(x) for x in rows]))

    def pref_reward(prompts, responses):
        rows = []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            rows.append(p + (y[:y.index(EOS) + 1] if EOS in y else y))
        return rm_rows(rows)

    def arith_reward(prompts, responses):   # format-only stand-in RM: one digit then EOS
        out = []
        for y in responses.tolist():
            out.append(float(len(y) >= 2 and W_OFF <= y[0] < VOCAB and y[1] == EOS))
        return torch.tensor(out)

    def answer(p):
        return str(p[2] - W_OFF + p[3] - W_OFF)

    def pref_judge(prompts, responses):
        return torch.tensor(pref_moj.passes([Sample("", _text(y)) for y in responses.tolist()]))

    def arith_judge(prompts, responses):
        out = []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            w = _words(y)
            resp = " ".join(str(v) for v in w) if len(_text(y).split()) == len(w) else _text(y)
            out.append(Sample("", resp, {"answer": answer(p)}))
        return torch.tensor(exact.passes(out))

    def pref_gold(prompts, responses):
        return torch.tensor([world.gold(p[2] - P_OFF, _words(y)) for p, y in zip(prompts.tolist(),
                                                                                  responses.tolist())])

    def arith_gold(prompts, responses):
        return arith_judge(prompts, responses).float()

    return {"pref": (pref_prompts, pref_reward, pref_judge, pref_gold),
            "arith": (arith_prompts, arith_reward, arith_judge, arith_gold), "rm_rows": rm_rows}


def _evaluate(policy, pieces, seed: int) -> dict:
    from lmlab.align.rollout import sample

    out = {}
    g = torch.Generator().manual_seed(seed + 999)
    for name in ("pref", "arith"):
        pf, rf, jf, gf = pieces[name]
        prompts = pf(EVAL_N, g)
        ro = sample(policy, prompts, NEW_TOKENS[name] if name == "arith" else 9, n=4, eos_id=EOS, generator=g)
        rows = ro.tokens[:, :4]
        out[f"{name}_violation"] = 1 - jf(rows, ro.responses).float().mean().item()
        out[f"{name}_gold"] = gf(rows, ro.responses).float().mean().item()
        out[f"{name}_rm"] = rf(rows, ro.responses).float().mean().item()
    return out


def _run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    import copy

    from lmlab.align.cgpo import CGPOConfig, CGPOTask, cgpo_train
    from lmlab.align.ppo import PolicyWithValue, RLConfig, rl_train
    from lmlab.align.rollout import sample

    torch.set_num_threads(1)
    quick = scale == "quick"
    world, rm, sft = _setup(seed, quick)
    ref = copy.deepcopy(sft).eval()
    pieces = _pieces(world, rm)
    iters = ITERS[scale]
    curves: dict[str, list] = {k: [] for k in ("violation_rate", "pref_gold", "pref_rm", "arith_acc")}
    t0 = time.time()
    if arm in ("ppo", "rloo"):
        policy = PolicyWithValue(sft) if arm == "ppo" else sft

        def prompt_fn(n, g):   # stratified: half pref, half arith (the same split as CGPO's shares)
            return torch.cat([pieces["pref"][0](n // 2, g), pieces["arith"][0](n - n // 2, g)])

        def reward_fn(prompts, responses):
            is_pref = prompts[:, 1] == PREF
            r = torch.zeros(len(prompts))
            ji = torch.zeros(len(prompts), dtype=torch.bool)
            for name, sel in (("pref", is_pref), ("arith", ~is_pref)):
                if sel.any():
                    pf, rf, jf, gf = pieces[name]
                    r[sel] = rf(prompts[sel], responses[sel]).float()
                    ji[sel] = jf(prompts[sel], responses[sel])
                    if name == "pref":
                        curves["pref_gold"].append((len(curves["violation_rate"]), gf(prompts[sel],
                                                                                      responses[sel]).mean().item()))
                        curves["pref_rm"].append((len(curves["violation_rate"]), r[sel].mean().item()))
                    else:
                        curves["arith_acc"].append((len(curves["violation_rate"]), ji[sel].float().mean().item()))
            curves["violation_rate"].append((len(curves["violation_rate"]), 1 - ji.float().mean().item()))
            return r

        cfg = RLConfig(algo=arm, iterations=iters, prompts_per_iter=PROMPTS, samples_per_prompt=K,
                       max_new_tokens=NEW_TOKENS["pref"], eos_id=EOS, lr=LR, kl_coef=KL_BASE, ppo_epochs=2,
                       minibatches=2, seed=seed)
        rl_train(policy, ref, prompt_fn, reward_fn, cfg)
        final = policy.decoder if arm == "ppo" else policy
    else:
        # calibration references: arith -> the golden answer; pref -> one fixed SFT sample per prompt
        allp = torch.tensor([[BOS, PREF, P_OFF + x, P_OFF + x] for x in range(N_PROMPTS)])
        ro = sample(sft, allp, 9, n=1, eos_id=EOS, generator=torch.Generator().manual_seed(seed + 5))
        ref_r = pieces["pref"][1](allp, ro.responses)

        def arith_ref(prompts):
            return torch.ones(len(prompts))          # the golden answer is well formatted: RM score 1

        tasks = []
        for name, refn in (("pref", lambda pr: ref_r[pr[:, 2] - P_OFF]), ("arith", arith_ref)):
            pf, rf, jf, gf = pieces[name]
            tasks.append(CGPOTask(name, pf, rf, refn, jf, share=0.5, kl_coef=KL[name],
                                  max_new_tokens=NEW_TOKENS[name], gold_fn=gf))
        cfg = CGPOConfig(optimizer=arm, iterations=iters, prompts_per_iter=PROMPTS, samples_per_prompt=K, lr=LR,
                         epochs=2, eos_id=EOS, seed=seed)
        hist = cgpo_train(sft, ref, tasks, cfg)
        for i, h in enumerate(hist):
            curves["violation_rate"].append((i, (h["pref/violation_rate"] + h["arith/violation_rate"]) / 2))
            curves["pref_gold"].append((i, h["pref/gold"]))
            curves["pref_rm"].append((i, h["pref/reward"]))
            curves["arith_acc"].append((i, h["arith/gold"]))
        final = sft
    ev = _evaluate(final, pieces, seed)
    gold = [v for _, v in curves["pref_gold"]]
    sm = np.convolve(gold, np.ones(5) / 5, mode="valid")      # 5-iteration moving average
    return ArmResult(metrics={"violation_rate": (ev["pref_violation"] + ev["arith_violation"]) / 2, **ev,
                              "pref_gold_drop": float(sm.max() - sm[-1]), "seconds": time.time() - t0},
                     curves=curves)


def _verdict(exp: Experiment, results: dict) -> Verdict:
    """CRPG (the paper's main optimizer) vs PPO, all three parts paired over seeds at α = 0.05, how="all":
    mean violation rate (pref + arith judges) lower by more than min_effect = 0.05; pref gold reward
    non-inferior within GOLD_TOL; arith accuracy non-inferior within ACC_TOL. Beside it: every arm's means,
    and the reward-hacking measure pref_gold_drop (peak − final of the 5-iteration moving average of the
    training gold reward) for PPO and CRPG."""
    viol = compare(*arm_values(results, "ppo", "crpg", "violation_rate", paired=True), "lower", exp.min_effect,
                   paired=True)
    gold = noninferior(*arm_values(results, "ppo", "crpg", "pref_gold", paired=True), GOLD_TOL, "higher",
                       paired=True)
    acc = noninferior(*arm_values(results, "ppo", "crpg", "arith_gold", paired=True), ACC_TOL, "higher",
                      paired=True)
    extra = {f"{a}_{m}": mean_std([r.metrics[m] for r in results[a]])
             for a in results for m in ("violation_rate", "pref_gold", "arith_gold", "pref_rm", "pref_gold_drop")}
    return combine({"violation rate lower": viol, "pref gold reward kept": gold, "arith accuracy kept": acc},
                   "all", "", viol.baseline, viol.technique, extra)


EXPERIMENTS.register("cgpo_judges", Experiment(
    name="cgpo_judges",
    paper="CGPO: The Perfect Blend, Redefining RLHF with Mixture of Judges (Xu et al. 2024)",
    claim="CGPO (CRPG) keeps the judges' violation rate lower than PPO at equal-or-higher gold reward",
    metric="violation_rate", direction="lower", arms=ARMS, baseline="ppo", technique="crpg", run=_run,
    verdict=_verdict, paired=True, min_effect=0.05,
    plots=["violation_rate", "pref_gold", "pref_rm", "arith_acc"],
    description="Small-scale stand-in, tiny lmlab policy (1 layer, d = 32). Two tasks in one token vocabulary: "
                "a preference world whose annotators (and so the BT reward model) like the forbidden word w0 "
                f"(+{FORBID_BONUS} per mention; gold weight {FORBID_GOLD}) and length (+{LEN_BIAS} per word), "
                f"judged by ForbiddenJudge(w0) and LengthJudge(≤ {MAX_WORDS} words); and a + b "
                f"(a, b ≤ {ARITH_MAX}) with a format-only reward model, judged by ExactAnswerJudge. Equal samples: "
                f"{ITERS['quick']} iterations × {PROMPTS} prompts × {K} samples (quick). PPO/RLOO: rl_train on the "
                f"RM reward, KL {KL_BASE}; CGPO: per-task KL {KL['pref']}/{KL['arith']} and lengths "
                f"{NEW_TOKENS['pref']}/{NEW_TOKENS['arith']}, calibrated rewards, 2 steps per batch. Metrics on "
                f"{EVAL_N * 4} final samples per task: mean violation rate of the two tasks, pref gold reward, "
                "arith accuracy."))
