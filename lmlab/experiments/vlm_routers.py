"""Routers in Vision Mixture of Experts (Liu et al., 2024), in its own setting: a tiny ViT with MoE layers on
a non-causal image task, where Soft MoE's and expert choice's mixing across the tokens of an image is
legitimate (no causal mask).

Task: single-object emoji scenes (lmlab.data.scenes) at 32 × 32 px, classify the object's group (7 classes:
animal, plant, food, vehicle, household, sky, sports). Train scenes 0..n−1 and test scenes n..n+m−1 of the
seed's scene stream; the arms of a seed share the scenes, the order of batches and every non-router
initialisation (paired over seeds 0, 1, 2).
Model: ViT (patch 8 → 16 tokens per image, width 64, depth 4); blocks 1 and 3 (every other, as V-MoE) have an
MoE of 4 SwiGLU experts, each of the hidden size h of the dense blocks' MLP; routing group = one image's 16
tokens. Equal compute: every arm runs 16 expert passes of hidden h per image and MoE layer (one per token on
average):
  softmax_tc   token choice, softmax over experts, top-1, capacity factor 1 (tokens over capacity dropped,
               batch-priority routing)
  sinkhorn_tc  token choice on the Sinkhorn-balanced plan, top-1, capacity factor 1
  softmax_ec   expert choice: each expert takes its top 16·1/4 = 4 tokens (capacity factor 1)
  soft         Soft MoE: 4 experts × 4 slots, each slot a softmax mix of the image's 16 tokens
Training: 300 AdamW steps, batch 32, LR 2e-3 cosine, balance loss 0.01 for the sparse routers.

Verdict (fixed before the runs), the paper's ordering as combine(all) of paired one-sided t-tests on test
accuracy: softmax_ec > softmax_tc and soft > softmax_ec. Sinkhorn token choice is reported beside it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from lmlab.experiments.base import ArmResult, Experiment, Verdict, arm_values, combine, compare, mean_std
from lmlab.registry import EXPERIMENTS
from lmlab.experiments.runkey import cached

ARMS = ["softmax_tc", "sinkhorn_tc", "softmax_ec", "soft"]
SCALES = {"quick": {"image": 32, "patch": 8, "width": 64, "depth": 4, "n_train": 1000, "n_test": 300,
                    "steps": 300, "batch": 32, "lr": 2e-3},
          "full": {"image": 64, "patch": 8, "width": 256, "depth": 8, "n_train": 20000, "n_test": 2000,
                   "steps": 5000, "batch": 128, "lr": 1e-3}}
N_EXPERTS = 4
MLP_RATIO = 2.0


def router_args(arm: str, tokens: int) -> dict:
    """The MoE.Args of an arm (one expert pass per token on average, routing group = one image)."""
    base = {"n_experts": N_EXPERTS, "group": "sequence", "balance_weight": 0.01, "z_weight": 0.0}
    if arm == "softmax_tc":
        return {**base, "router": "softmax_tc", "top_k": 1, "capacity_factor": 1.0, "batch_priority": True}
    if arm == "sinkhorn_tc":
        return {**base, "router": "sinkhorn_tc", "top_k": 1, "capacity_factor": 1.0, "batch_priority": True}
    if arm == "softmax_ec":
        return {**base, "router": "softmax_ec", "top_k": 1, "capacity_factor": 1.0}
    if arm == "soft":
        return {**base, "router": "soft", "top_k": 1, "slots_per_expert": tokens // N_EXPERTS,
                "balance_weight": 0.0}
    raise ValueError(f"unknown arm {arm!r}; choose one of {ARMS}")


def arm_config(arm: str, scale: str, seed: int = 0) -> dict:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: choose quick or full")
    sc = SCALES[scale]
    tokens = (sc["image"] // sc["patch"]) ** 2
    return {"arm": arm, "seed": seed, **sc, "tokens": tokens, "moe_layers": list(range(1, sc["depth"], 2)),
            "moe": router_args(arm, tokens), "d_expert": int(sc["width"] * MLP_RATIO)}


def expert_passes_per_image(cfg: dict) -> float:
    """Expert FFN applications (of hidden d_expert) per image and MoE layer."""
    a, n = cfg["moe"], cfg["tokens"]
    if a["router"] == "soft":
        return float(a["n_experts"] * a["slots_per_expert"])
    if a["router"].endswith("_ec"):
        return float(a["capacity_factor"] * n)
    return float(a["top_k"] * n)


def _equal_compute(cfgs: dict) -> dict:
    facts = {arm: {"expert_passes_per_image": expert_passes_per_image(c), "d_expert": c["d_expert"]}
             for arm, c in cfgs.items()}
    if len({tuple(f.values()) for f in facts.values()}) != 1:
        raise AssertionError(f"vmoe_routers_vision: unequal compute {facts}")
    return facts


def build_vit(cfg: dict):
    import torch

    from lmlab.config import Dims
    from lmlab.nn.moe.layer import MoE
    from lmlab.vision.vit import GeluMLP, ViT

    def mlp(i: int, d: int, d_ff: int):
        if i not in cfg["moe_layers"]:
            return GeluMLP(d, cfg["d_expert"])
        dims = Dims(d_model=d, n_head=4, n_kv_head=4, head_dim=d // 4, ffn_hidden=cfg["d_expert"],
                    n_layer=cfg["depth"], max_seq_len=cfg["tokens"], rope_theta=1e4, norm_eps=1e-5, dropout=0.0,
                    sliding_window=None, layer_idx=i)
        with torch.random.fork_rng():          # the arms' other weights keep the same draws
            torch.manual_seed(10_000 + cfg["seed"] * 100 + i)   # experts: the same draw in every arm
            return MoE(dims, MoE.Args(**cfg["moe"]))

    torch.manual_seed(cfg["seed"])
    return ViT(image_size=cfg["image"], patch=cfg["patch"], width=cfg["width"], depth=cfg["depth"], n_heads=4,
               n_classes=7, mlp_factory=mlp)


@cached(maxsize=4)
def scene_tensors(seed: int, n_train: int, n_test: int, size: int):
    """(x_train, y_train, x_test, y_test, test PIL images): single-object scenes, label = the object's group."""
    from lmlab.data.scenes import GROUPS, scene_dataset
    from lmlab.vision.preprocess import preprocess_batch

    rows = scene_dataset(seed, n_train + n_test, "train", 1, size=size, objects_per_scene=(1, 1))
    imgs = [s.image for s, _ in rows]
    y = np.array([GROUPS.index(s.objects[0].group) for s, _ in rows])
    x = preprocess_batch(imgs, size, "resize")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], imgs[n_train:]


def _run(arm: str, seed: int, scale: str, out: Optional[Path]) -> ArmResult:
    import torch
    import torch.nn.functional as F

    from lmlab.data.scenes import GROUPS

    cfg = arm_config(arm, scale, seed)
    if scale == "quick":
        torch.set_num_threads(1)
    xtr, ytr, xte, yte, imgs = scene_tensors(seed, cfg["n_train"], cfg["n_test"], cfg["image"])
    ytr_t, yte_t = torch.as_tensor(ytr), torch.as_tensor(yte)
    vit = build_vit(cfg)
    opt = torch.optim.AdamW(vit.parameters(), lr=cfg["lr"], weight_decay=0.0)
    rng = np.random.default_rng([seed, 7])
    steps, bs, curve, recent = cfg["steps"], cfg["batch"], [], []
    for step in range(steps):
        lr = cfg["lr"] * min(1.0, (step + 1) / (steps // 10)) * (0.55 + 0.45 * np.cos(np.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.as_tensor(rng.integers(0, len(ytr), bs))
        loss = F.cross_entropy(vit.classify(xtr[idx]), ytr_t[idx])
        opt.zero_grad(set_to_none=True)
        (loss + vit.aux_loss()).backward()
        torch.nn.utils.clip_grad_norm_(vit.parameters(), 1.0)
        opt.step()
        recent.append(float(loss.detach()))
        if (step + 1) % 20 == 0:
            curve.append((float(step + 1), float(np.mean(recent))))
            recent = []
    vit.eval()
    with torch.no_grad():
        logits = torch.cat([vit.classify(xte[s:s + 100]) for s in range(0, len(yte), 100)])
    pred = logits.argmax(-1)
    metrics = {"accuracy": float((pred == yte_t).float().mean()), "test_loss": float(F.cross_entropy(logits, yte_t)),
               "train_loss": curve[-1][1]}
    info: dict = {"seed": seed, "expert_passes_per_image": expert_passes_per_image(cfg),
                  "params": sum(p.numel() for p in vit.parameters())}
    if out is not None:
        from lmlab.vlm_plots import plot_vqa_samples

        samples = [{"image": imgs[i], "question": "What kind of thing is this?", "answer": GROUPS[int(yte[i])],
                    "output": GROUPS[int(pred[i])]} for i in range(8)]
        p = plot_vqa_samples(samples, Path(out) / "samples.png",
                             title=f"ViT-MoE {arm} (seed {seed}): test accuracy {metrics['accuracy']:.2f}")
        info["images"] = [p.name]
    return ArmResult(metrics, {"train_loss": curve}, info)


def _verdict(exp: Experiment, results) -> Verdict:
    parts = {}
    for lo, hi in (("softmax_tc", "softmax_ec"), ("softmax_ec", "soft")):
        b, t = arm_values(results, lo, hi, "accuracy", paired=True)
        parts[f"{hi} > {lo}"] = compare(b, t, "higher", paired=True)
    tc, soft = arm_values(results, "softmax_tc", "soft", "accuracy")
    out = combine(parts, "all", "Soft MoE > expert choice > token choice on test accuracy",
                  baseline=mean_std(tc), technique=mean_std(soft))
    for arm in ARMS:
        rs = results.get(arm, [])
        if rs:
            out.extra[f"{arm}/accuracy"] = float(np.mean([r.metrics["accuracy"] for r in rs]))
    return out


EXPERIMENTS.register("vmoe_routers_vision", Experiment(
    name="vmoe_routers_vision", paper="Routers in Vision Mixture of Experts (Liu et al., 2024)",
    claim="on a non-causal image task at equal compute, Soft MoE beats expert choice and expert choice beats "
          "token choice",
    metric="accuracy", direction="higher", arms=ARMS, baseline="softmax_tc", technique="soft", run=_run,
    verdict=_verdict, invariants=_equal_compute, paired=True, plots=["train_loss"], seeds=3,
    description="Tiny ViT (16 patch tokens, 4 blocks, MoE in blocks 1 and 3 with 4 experts) classifying the "
                "group of a single emoji in 32-px scenes; routing within each image (no causal mask). Softmax "
                "and Sinkhorn token choice (top-1, cf 1), softmax expert choice (cf 1), Soft MoE (4 × 4 slots): "
                "16 expert passes per image and MoE layer in every arm. Verdict: EC > softmax TC and Soft > EC, "
                "paired one-sided t-tests on test accuracy, all must hold."))
