"""Post-training claims on a synthetic preference world with a hidden gold reward (lmlab.align.envs).

ids_vs_bt            Iterative Data Smoothing: the RM overfits less over epochs than Bradley–Terry
                     (metric: peak − final held-out gold accuracy; lower is better).
odin_vs_bt           ODIN: quality-head/length correlation ≈ 0 vs BT's clearly positive, accuracy kept.
contrastive_rewards  PPO with r − mean offline RM score of the prompt vs plain PPO: higher gold reward.
dpo_winrate          DPO vs the SFT policy: gold win-rate on held-out prompts.
dpf_forbidden        Direct Principle Feedback: lower forbidden-entity mention rate, gold reward kept elsewhere.
Every arm of a seed shares the same world, data and initial weights, so arms differ only by the technique: every
verdict is a paired one-sided t-test over seeds at α = 0.05 (fixed before the runs; `paired=True`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lmlab.experiments.base import (HEADLINE_SEEDS, ArmResult, Experiment, Verdict, arm_values, combine, compare,
                                    mean_std, noninferior)
from lmlab.registry import EXPERIMENTS


def _decoder(vocab: int, d: int, layers: int, seed: int):
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=vocab, d_model=d, n_layer=layers, n_head=2, max_seq_len=32))


def _gold_acc(rm, ids, lens, n):
    with torch.no_grad():
        q = rm.quality(ids, lens)
    return (q[:n] > q[n:]).float().mean().item(), q


# ------------------------------------------------------------------------------------------------ IDS
def _ids_run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.align.envs import PreferenceWorld
    from lmlab.align.reward import RewardModel, pad_batch, train_reward_model

    torch.set_num_threads(1)
    quick = scale == "quick"
    n_train, epochs, d, layers = (300, 12, 64, 2) if quick else (3000, 20, 256, 4)
    world = PreferenceWorld(n_prompts=2, n_content=10, label_scale=4.0, seed=seed)
    c, r, _ = world.preference_pairs(n_train, seed=seed + 100)
    hc, hr, _ = world.preference_pairs(400, seed=seed + 200, annotated=False)
    ids, lens = pad_batch(hc + hr)
    rm = RewardModel(_decoder(world.vocab_size, d, layers, seed))
    curve = []

    def ev(m, ep):
        acc, _ = _gold_acc(m, ids, lens, len(hc))
        curve.append((ep, acc))
        return acc

    t0 = time.time()
    train_reward_model(rm, c, r, method=arm, epochs=epochs, batch_size=16, lr=5e-3, ids_beta=0.3, seed=seed,
                       eval_fn=ev)
    accs = [a for e, a in curve if e > 0]
    return ArmResult(metrics={"overfit_drop": max(accs) - accs[-1], "final_gold_acc": accs[-1],
                              "peak_gold_acc": max(accs), "seconds": time.time() - t0},
                     curves={"gold_acc": curve})


EXPERIMENTS.register("ids_vs_bt", Experiment(
    name="ids_vs_bt", paper="Iterative Data Smoothing (Zhu, Jordan & Jiao 2024)",
    claim="an IDS reward model overfits less over epochs than a Bradley–Terry one",
    metric="overfit_drop", direction="lower", arms=["bt", "ids"], baseline="bt", technique="ids",
    run=_ids_run, plots=["gold_acc"], min_effect=0.01, paired=True,
    description="Synthetic preference world: gold reward = mean per-token weight; annotators BT-noisy "
                "(scale 4); 300 training pairs; 2-layer d=64 RM trained 12 epochs (lr 5e-3, batch 16); "
                "held-out accuracy against the gold ranking after every epoch; metric = peak − final accuracy. "
                "IDS β = 0.3."))


# ------------------------------------------------------------------------------------------------ ODIN
def _odin_run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.align.envs import PreferenceWorld
    from lmlab.align.reward import RewardModel, pad_batch, pearson, train_reward_model

    torch.set_num_threads(1)
    quick = scale == "quick"
    n_train, epochs, d, layers = (384, 6, 32, 1) if quick else (4000, 6, 256, 4)
    world = PreferenceWorld(n_prompts=2, n_content=8, min_len=2, max_len=14, label_scale=3.0, length_bias=0.6,
                            seed=seed)
    c, r, _ = world.preference_pairs(n_train, seed=seed + 1)
    hc, hr, _ = world.preference_pairs(400, seed=seed + 2, annotated=False)   # gold labels, no length bias
    ids, lens = pad_batch(hc + hr)
    rm = RewardModel(_decoder(world.vocab_size, d, layers, seed), n_heads=2 if arm == "odin" else 1)
    curve_c, curve_a = [], []

    def ev(m, ep):
        acc, q = _gold_acc(m, ids, lens, len(hc))
        rho = pearson(lens.float(), q).item()
        curve_c.append((ep, rho))
        curve_a.append((ep, acc))
        return rho

    train_reward_model(rm, c, r, method=arm, epochs=epochs, batch_size=32, lr=3e-3, seed=seed, eval_fn=ev)
    return ArmResult(metrics={"abs_len_corr": abs(curve_c[-1][1]), "len_corr": curve_c[-1][1],
                              "gold_acc": curve_a[-1][1]},
                     curves={"len_corr": curve_c, "gold_acc": curve_a})


ODIN_ACC_TOL = 0.05   # accuracy is "kept" if ODIN's gold accuracy is non-inferior to BT's within 0.05


def _odin_verdict(exp: Experiment, results: dict) -> Verdict:
    """|ρ(length, r_Q)| lower for ODIN by more than min_effect = 0.1 (paired compare) and gold accuracy kept
    (paired non-inferiority within 0.05), combined with how="all"."""
    corr = compare(*arm_values(results, "bt", "odin", "abs_len_corr", paired=True), "lower", min_effect=0.1,
                   paired=True)
    kept = noninferior(*arm_values(results, "bt", "odin", "gold_acc", paired=True), ODIN_ACC_TOL, "higher",
                       paired=True)
    acc_b = mean_std([r.metrics["gold_acc"] for r in results["bt"]])
    acc_o = mean_std([r.metrics["gold_acc"] for r in results["odin"]])
    return combine({"|ρ(length, r_Q)| lower": corr, "gold accuracy kept": kept}, "all", "",
                   corr.baseline, corr.technique, {"acc_bt": acc_b, "acc_odin": acc_o})


EXPERIMENTS.register("odin_vs_bt", Experiment(
    name="odin_vs_bt", headline=True, paper="ODIN: Disentangled Reward Mitigates Hacking in RLHF (Chen et al. 2024)",
    claim="ODIN's quality head is ≈ uncorrelated with length while BT's reward is not; accuracy is kept",
    metric="abs_len_corr", direction="lower", arms=["bt", "odin"], baseline="bt", technique="odin",
    run=_odin_run, verdict=_odin_verdict, paired=True, seeds=HEADLINE_SEEDS, plots=["len_corr", "gold_acc"],
    description="Annotators prefer longer responses (σ(3·Δgold + 0.6·Δlength)); gold quality is "
                "length-free. Held-out: 400 gold-labelled pairs. 1-layer d=32 RM, 6 epochs; ODIN λ_L = λ_O = 1."))


# ------------------------------------------------------------------------------------ contrastive rewards
def _sft_policy(world, seed: int, steps: int, prompts=None):
    """A tiny policy SFT-ed on the annotators' response distribution (uniform content, random length)."""
    from lmlab.align.envs import EOS
    from lmlab.align.sft import pad_examples, train_sft

    rng = np.random.default_rng(seed + 3)
    prompts = list(range(world.n_prompts)) if prompts is None else prompts
    exs = []
    for _ in range(512):
        x = int(prompts[rng.integers(len(prompts))])
        ids = world.encode(x, world.sample_response(rng))
        exs.append((ids, [-100, -100] + ids[2:]))
    sx, sy = pad_examples(exs, pad_id=EOS)
    dec = _decoder(world.vocab_size, 32, 1, seed + 11)
    train_sft(dec, sx, sy, steps=steps, batch_size=32, lr=3e-3, seed=seed)
    return dec


# One source for the PPO settings of contrastive_rewards: the run and the row's description both read these.
CR_KL = 0.1                 # KL coefficient to the SFT reference
CR_ITERS = {"quick": 40, "full": 400}
CR_PROMPTS, CR_SAMPLES, CR_K = 16, 4, 8   # prompts × samples per prompt per iteration; offline samples per prompt


def _cr_run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.align.envs import BOS, EOS, PreferenceWorld
    from lmlab.align.ppo import PolicyWithValue, RLConfig, offline_baseline, rl_train
    from lmlab.align.reward import RewardModel, train_reward_model

    torch.set_num_threads(1)
    quick = scale == "quick"
    world = PreferenceWorld(n_prompts=4, n_content=10, min_len=2, max_len=8, label_scale=3.0, seed=seed)
    V, P = world.vocab_size, world.n_prompts
    # 1) an imperfect reward model (BT on 300 noisy pairs)
    c, r, _ = world.preference_pairs(300 if quick else 3000, seed=seed + 1)
    rm = RewardModel(_decoder(V, 32, 1, seed + 7))
    train_reward_model(rm, c, r, method="bt", epochs=4, batch_size=32, lr=3e-3, seed=seed)
    rm.eval()
    # 2) the SFT policy: imitates the annotators' response distribution (uniform content, random length)
    policy_dec = _sft_policy(world, seed, 60 if quick else 600)
    ref = _decoder(V, 32, 1, seed + 11)
    ref.load_state_dict(policy_dec.state_dict())
    policy = PolicyWithValue(policy_dec)

    def rm_score(prompts, responses):
        rows, lens = [], []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            y = y[:y.index(EOS) + 1] if EOS in y else y
            rows.append(p + y)
        t = max(len(x) for x in rows)
        ids = torch.tensor([x + [EOS] * (t - len(x)) for x in rows])
        with torch.no_grad():
            return rm.quality(ids, torch.tensor([len(x) for x in rows]))

    def prompt_fn(n, g):
        x = torch.randint(0, P, (n,), generator=g)
        return torch.stack([torch.full_like(x, BOS), x + 2], 1)

    # 3) offline baseline: k samples per prompt from the SFT policy, scored by the RM (contrastive arm only,
    #    but computed in both arms so the random streams stay aligned)
    k = CR_K
    all_prompts = torch.stack([torch.full((P,), BOS), torch.arange(P) + 2], 1)
    offline = offline_baseline(policy_dec, all_prompts, rm_score, k, 9, eos_id=EOS,
                               generator=torch.Generator().manual_seed(seed + 5))      # (P, k)
    baseline = offline.mean(1)                                         # (P,)
    baseline_fn = (lambda pr: baseline[pr[:, 1] - 2]) if arm == "contrastive" else None

    gold_log, rm_log = [], []

    def reward_fn(prompts, responses):
        gold_log.append(world.gold_tokens(prompts, responses))
        s = rm_score(prompts, responses)
        rm_log.append(s)
        return s

    cfg = RLConfig(algo="ppo", iterations=CR_ITERS[scale], prompts_per_iter=CR_PROMPTS, samples_per_prompt=CR_SAMPLES,
                   max_new_tokens=9, eos_id=EOS, lr=1e-3, kl_coef=CR_KL, ppo_epochs=2, minibatches=2, seed=seed)
    t0 = time.time()
    hist = rl_train(policy, ref, prompt_fn, reward_fn, cfg, baseline_fn=baseline_fn)
    tail = torch.cat(gold_log[-5:])
    return ArmResult(
        metrics={"gold_reward": tail.mean().item(), "gold_std": tail.std().item(),
                 "rm_reward": torch.cat(rm_log[-5:]).mean().item(), "gold_start": gold_log[0].mean().item(),
                 "kl": float(np.mean([h["kl"] for h in hist[-5:]])), "seconds": time.time() - t0},
        curves={"gold_reward": [(i, g.mean().item()) for i, g in enumerate(gold_log)],
                "rm_reward": [(i, s.mean().item()) for i, s in enumerate(rm_log)]})


def _cr_verdict(exp: Experiment, results: dict) -> Verdict:
    """Paired compare of the gold reward; seed and batch spreads reported beside it."""
    v = compare(*arm_values(results, "ppo", "contrastive", "gold_reward", paired=True), "higher", paired=True)
    sd_b = mean_std([r.metrics["gold_reward"] for r in results["ppo"]])[1]
    sd_t = mean_std([r.metrics["gold_reward"] for r in results["contrastive"]])[1]
    w_b = mean_std([r.metrics["gold_std"] for r in results["ppo"]])[0]
    w_t = mean_std([r.metrics["gold_std"] for r in results["contrastive"]])[0]
    v.rule += (f"; across-seed std of gold reward: PPO {sd_b:.3f} vs contrastive {sd_t:.3f}; "
               f"within-batch gold std: PPO {w_b:.3f} vs contrastive {w_t:.3f}")
    v.extra.update({"seed_std_ppo": sd_b, "seed_std_cr": sd_t, "batch_std_ppo": w_b, "batch_std_cr": w_t})
    return v


EXPERIMENTS.register("contrastive_rewards", Experiment(
    name="contrastive_rewards",
    paper="Improving RLHF Using Contrastive Rewards (Shen et al. 2024)",
    claim="PPO on r − mean offline RM score reaches a higher gold reward than PPO on r",
    metric="gold_reward", direction="higher", arms=["ppo", "contrastive"], baseline="ppo", technique="contrastive",
    run=_cr_run, verdict=_cr_verdict, paired=True, plots=["gold_reward", "rm_reward"],
    description="Preference world with 4 prompts; BT RM on 300 noisy pairs (imperfect proxy); SFT policy "
                f"imitates the annotators' response distribution; k = {CR_K} offline samples per prompt give the "
                f"contrastive baseline; PPO {CR_ITERS['quick']} iterations (quick) × {CR_PROMPTS * CR_SAMPLES} "
                f"rollouts, KL coefficient {CR_KL:g}. Metric: gold reward of the rollouts of the last 5 "
                "iterations."))


# ------------------------------------------------------------------------------------------------ DPO
def _sample_rows(policy, world, prompts: list[int], n: int, seed: int):
    from lmlab.align.envs import BOS, EOS
    from lmlab.align.rollout import sample

    p = torch.stack([torch.full((len(prompts),), BOS), torch.tensor(prompts) + 2], 1)
    ro = sample(policy, p, world.max_len + 1, n=n, eos_id=EOS, generator=torch.Generator().manual_seed(seed))
    return ro.tokens[:, :2], ro.responses


def _dpo_run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    """SFT policy on train prompts; DPO on annotated pairs of train prompts; gold win-rate on held-out prompts
    of the arm's samples against the SFT policy's samples (the SFT arm plays itself: ≈ 0.5)."""
    from lmlab.align.dpo import train_dpo
    from lmlab.align.envs import PreferenceWorld

    torch.set_num_threads(1)
    quick = scale == "quick"
    world = PreferenceWorld(n_prompts=12, n_content=10, min_len=2, max_len=8, label_scale=4.0, shared=0.7,
                            seed=seed)
    train_p, held_p = list(range(8)), list(range(8, 12))
    sft = _sft_policy(world, seed, 60 if quick else 600, prompts=train_p)
    policy = _decoder(world.vocab_size, 32, 1, seed + 11)
    policy.load_state_dict(sft.state_dict())
    hist = []
    if arm == "dpo":
        c, r, _ = world.preference_pairs(512 if quick else 5000, seed=seed + 1, prompts=train_p)
        pairs = [(ci[:2], ci[2:], ri[2:]) for ci, ri in zip(c, r)]
        hist = train_dpo(policy, sft, pairs, beta=0.1, lr=1e-3, epochs=2, batch_size=32, seed=seed)
    pa, ya = _sample_rows(policy, world, held_p, 64, seed + 1000)
    pb, yb = _sample_rows(sft, world, held_p, 64, seed + 2000)
    ga, gb = world.gold_tokens(pa, ya), world.gold_tokens(pb, yb)
    win = ((ga > gb).float() + 0.5 * (ga == gb).float()).mean().item()
    pt, yt = _sample_rows(policy, world, train_p, 32, seed + 3000)
    return ArmResult(metrics={"heldout_winrate": win, "heldout_gold": ga.mean().item(),
                              "train_prompt_gold": world.gold_tokens(pt, yt).mean().item()},
                     curves={"dpo_loss": [(i, h["loss"]) for i, h in enumerate(hist)]})


EXPERIMENTS.register("dpo_winrate", Experiment(
    name="dpo_winrate", headline=True, paper="Direct Preference Optimization (Rafailov et al. 2023)",
    claim="DPO raises the gold win-rate over the SFT policy on held-out prompts",
    metric="heldout_winrate", direction="higher", arms=["sft", "dpo"], baseline="sft", technique="dpo",
    run=_dpo_run, plots=["dpo_loss"], min_effect=0.02, paired=True, seeds=HEADLINE_SEEDS,
    description="Tiny lmlab policy (the SmolLM2-135M version is `dpo_smollm2`). "
                "Preference world with 12 prompts whose gold weights share 70% across prompts; SFT and DPO "
                "(β = 0.1, 512 annotated pairs, 2 epochs) on prompts 0–7; win-rate by gold reward of 256 "
                "samples on prompts 8–11 against the SFT policy's samples."))


# ------------------------------------------------------------------------------------------------ DPF
DPF_RULED = [0, 1, 2, 3]     # prompts whose instruction forbids the entity (the DPF pairs come from these)
DPF_FREE = [4, 5, 6, 7]      # prompts without the entity rule: where collateral damage is measured
DPF_GOLD_TOL = 0.05          # gold reward on the free prompts may drop by at most this much (non-inferiority)
DPF_TEMPLATE = "{alternative} {rest} {alternative}"   # the token world has no function words: the rewrite
                                                      # opens and closes the sentence with the alternative


def _policy_kl(policy, ref, prompts, responses, mask) -> torch.Tensor:
    """KL(π ‖ π_ref) of each sampled response (lmlab.align.dpo.response_kl)."""
    from lmlab.align.dpo import response_kl

    ids = torch.cat([prompts, responses], 1)
    with torch.no_grad():
        lp = policy(ids).logits[:, prompts.shape[1] - 1:-1]
        lq = ref(ids).logits[:, prompts.shape[1] - 1:-1]
    return response_kl(lp, lq, mask)


def _dpf_run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    """SFT policy on 8 prompts; DPF pairs (critique + rewrite by the rule-based reviser) from SFT samples on
    the ruled prompts 0–3; DPO. Metrics: mention rate on the ruled prompts; collateral damage on the free
    prompts 4–7: gold reward, KL(policy ‖ SFT) and mention rate there."""
    from lmlab.align.dpo import RuleReviser, build_dpf_pairs, train_dpo
    from lmlab.align.envs import BOS, EOS, PreferenceWorld
    from lmlab.align.rollout import sample

    torch.set_num_threads(1)
    quick = scale == "quick"
    world = PreferenceWorld(n_prompts=len(DPF_RULED + DPF_FREE), n_content=10, min_len=2, max_len=8, seed=seed)
    off = world.content_offset()
    sft = _sft_policy(world, seed, 60 if quick else 600)
    policy = _decoder(world.vocab_size, 32, 1, seed + 11)
    policy.load_state_dict(sft.state_dict())

    def to_text(resp):
        resp = resp[:resp.index(EOS)] if EOS in resp else resp
        return " ".join(f"w{t - off}" if t >= off else f"<{t}>" for t in resp)

    def from_text(text):
        return [int(w[1:-1]) if w.startswith("<") else off + int(w[1:]) for w in text.split()] + [EOS]

    def rollouts(model, prompts, s, n=64):
        p = torch.stack([torch.full((len(prompts),), BOS), torch.tensor(prompts) + 2], 1)
        return sample(model, p, world.max_len + 1, n=n, eos_id=EOS, generator=torch.Generator().manual_seed(s))

    def mention_rate(ro):
        return float(np.mean(["w0" in to_text(r).split() for r in ro.responses.tolist()]))

    hist, n_pairs, changed = [], 0, 0.0
    if arm == "dpf":
        p, y = _sample_rows(sft, world, DPF_RULED, 64, seed + 500)
        items = [{"prompt": int(pp[1]), "response": to_text(r), "entity": "w0"}
                 for pp, r in zip(p.tolist(), y.tolist())]
        items = [it for it in items if "w0" in it["response"].split()]
        reviser = RuleReviser(alternative=f"w{1 + seed % (world.n_content - 1)}", template=DPF_TEMPLATE)
        pairs = build_dpf_pairs(reviser, items)
        n_pairs = len(pairs)
        changed = float(np.mean([_words_changed(pr["rejected"], pr["chosen"]) for pr in pairs])) if pairs else 0.0
        tok_pairs = [([0, pr["prompt"]], from_text(pr["chosen"]), from_text(pr["rejected"])) for pr in pairs]
        hist = train_dpo(policy, sft, tok_pairs, beta=0.1, lr=1e-3, epochs=3, batch_size=16, seed=seed)
    ruled = rollouts(policy, DPF_RULED, seed + 4000)
    free = rollouts(policy, DPF_FREE, seed + 5000, n=256)
    kl = _policy_kl(policy, sft, free.tokens[:, :2], free.responses, free.response_mask)
    return ArmResult(metrics={"mention_rate": mention_rate(ruled),
                              "sft_mention_rate": mention_rate(rollouts(sft, DPF_RULED, seed + 4000)),
                              "free_gold": world.gold_tokens(free.tokens[:, :2], free.responses).mean().item(),
                              "free_kl_to_sft": kl.mean().item(), "free_mention_rate": mention_rate(free),
                              "pairs": float(n_pairs), "words_changed_per_pair": changed},
                     curves={"dpo_loss": [(i, h["loss"]) for i, h in enumerate(hist)]})


def _words_changed(a: str, b: str) -> int:
    """Word-level edit operations turning a into b (difflib opcodes: replaced, deleted and inserted words)."""
    import difflib

    sm = difflib.SequenceMatcher(a=a.split(), b=b.split(), autojunk=False)
    return sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal")


def _dpf_verdict(exp: Experiment, results: dict) -> Verdict:
    """Two parts, combined with how="all": the mention rate on the ruled prompts drops by more than
    min_effect = 0.02 (paired compare) and the gold reward on the free prompts is non-inferior to the SFT
    policy's within DPF_GOLD_TOL (paired). KL(policy ‖ SFT) and the mention rate on the free prompts are
    reported beside it."""
    drop = compare(*arm_values(results, "sft", "dpf", "mention_rate", paired=True), "lower", exp.min_effect,
                   paired=True)
    kept = noninferior(*arm_values(results, "sft", "dpf", "free_gold", paired=True), DPF_GOLD_TOL, "higher",
                       paired=True)
    get = lambda a, k: mean_std([r.metrics[k] for r in results[a]])  # noqa: E731
    return combine({"mention rate lower (ruled prompts)": drop,
                    "gold reward kept (free prompts)": kept}, "all", "", drop.baseline, drop.technique,
                   {"free_gold_sft": get("sft", "free_gold"), "free_gold_dpf": get("dpf", "free_gold"),
                    "free_kl_to_sft_dpf": get("dpf", "free_kl_to_sft"),
                    "free_mention_rate_sft": get("sft", "free_mention_rate"),
                    "free_mention_rate_dpf": get("dpf", "free_mention_rate"),
                    "words_changed_per_pair": get("dpf", "words_changed_per_pair")})


EXPERIMENTS.register("dpf_forbidden", Experiment(
    name="dpf_forbidden", headline=True, paper="Direct Principle Feedback (Castricato et al. 2024)",
    claim="DPO on (revision ≻ original) pairs lowers the forbidden-entity mention rate without collateral "
          "damage on prompts without the entity",
    metric="mention_rate", direction="lower", arms=["sft", "dpf"], baseline="sft", technique="dpf",
    run=_dpf_run, verdict=_dpf_verdict, plots=["dpo_loss"], min_effect=0.02, paired=True, seeds=HEADLINE_SEEDS,
    description="Tiny lmlab policy over the preference world's words w0..w9 and 8 prompts; the entity w0 is "
                f"forbidden on prompts {DPF_RULED[0]}–{DPF_RULED[-1]}, prompts {DPF_FREE[0]}–{DPF_FREE[-1]} "
                "have no such rule. DPF pairs come from build_dpf_pairs with a deterministic rule-based "
                "critique/rewrite backend (RuleReviser, a stand-in for an LLM): each sentence that mentions the "
                "entity is rewritten around an alternative word, the rest of its words kept in order "
                f"(template '{DPF_TEMPLATE}'), so a revision differs from the original in more than one word. "
                "DPO β = 0.1, 3 epochs. Metrics: fraction of 256 samples on the ruled prompts that mention w0; "
                "gold reward of 1024 samples on the free prompts, and KL(policy ‖ SFT) there. Verdict: mention "
                "rate lower (paired, min effect 0.02) and free-prompt gold reward non-inferior within "
                f"{DPF_GOLD_TOL:g} (paired), both at α = 0.05."))
