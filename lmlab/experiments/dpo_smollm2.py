"""DPO on the real SmolLM2-135M-Instruct: does it raise the gold win-rate on held-out synthetic prompts?

dpo_smollm2   policy = reference = SmolLM2-135M-Instruct (lmlab Decoder, chat template of its tokenizer).
              Prompts are templated instructions ("Write one sentence about {topic}.") over disjoint train and
              held-out topic lists. The gold preference is programmatic (`gold_score`): a response should open
              with its topic word ("Owls are ..." rather than "The owl ..."); the reference does so about half
              of the time. For every train prompt the reference samples k responses; best and worst by gold
              score form pairs (ties skipped, `build_pairs`); DPO (lmlab.align.dpo.dpo_loss) trains LoRA
              adapters on the top layers only. Metric: on held-out prompts, samples of the arm's policy
              against independent samples of the reference, judged by the gold score (ties count 0.5); the
              `ref` arm plays the reference against itself (≈ 0.5).
              Verdict (fixed before the runs): one-sided Welch t-test at α = 0.05 of H1: win-rate gain > 0.05
              (min_effect); unpaired, since the arms' samples differ beyond the shared opponent.

Cheap but exact training on a CPU: with LoRA only in the top `n_top` blocks, the lower blocks are frozen and
identical in policy and reference, so their hidden states are computed once per pair batch under no_grad
(`trunk_hidden`); every DPO step runs only the top blocks, and the LM head only at completion positions
(`top_completion_logps`). Their composition equals `completion_logps` on the full model (tested in float64).
"""
from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Sequence

import torch

from lmlab.experiments.base import ArmResult, Experiment
from lmlab.registry import EXPERIMENTS
from lmlab.experiments.runkey import cached

# Disjoint topic lists (single nouns, so "names the topic" is a word match).
TRAIN_TOPICS = [
    "coffee", "winter", "cats", "music", "mountains", "trains", "bread", "rain", "books", "gardens", "bicycles",
    "rivers", "chess", "candles", "bridges", "owls", "tea", "clocks", "forests", "pianos", "deserts", "bees",
    "lighthouses", "apples", "snow", "boats", "libraries", "wolves", "kites", "volcanoes", "cheese", "stars",
    "umbrellas", "horses", "islands", "soup", "castles", "whales", "maps", "honey", "storms", "robots",
    "lemons", "tigers", "markets", "glaciers", "violins", "dolphins", "mirrors", "tomatoes", "caves", "pencils",
    "parrots", "bakeries", "waterfalls", "rockets", "beaches", "frogs", "lanterns", "museums", "pumpkins",
    "canyons", "helmets", "butterflies"]
HELDOUT_TOPICS = [
    "autumn", "dogs", "oceans", "cities", "chocolate", "flowers", "sunsets", "elephants", "windmills", "pizza",
    "trees", "airplanes", "spiders", "guitars", "farms", "penguins", "clouds", "cookies", "deer", "lakes",
    "keys", "shoes", "rabbits", "moons", "tents", "camels", "salads", "thunder", "puzzles", "bells", "eagles",
    "gloves"]
TEMPLATES = ["Write one sentence about {}.", "Tell me something about {}.", "Say a few words about {}."]

SCALES = {   # n_train prompts, k samples per train prompt, held-out prompts, samples per held-out prompt, ...
    "quick": dict(n_train=40, k=4, per_prompt=2, n_heldout=16, n_eval=4, max_new=16, n_top=2, r=8, epochs=3,
                  batch=8, beta=0.5, lr=1e-3),
    "full": dict(n_train=192, k=8, per_prompt=2, n_heldout=96, n_eval=8, max_new=32, n_top=6, r=16, epochs=3,
                 batch=16, beta=0.5, lr=5e-4),
}
GEN = dict(temperature=0.8)       # no top-p: its full-vocabulary sort costs ~40 % of a CPU decode step


def topic_forms(topic: str) -> set[str]:
    """The topic and its likely singular/plural forms ('cats' -> cat, 'cities' -> city, 'coffee' -> coffees)."""
    t = topic.lower()
    if t.endswith("ies"):
        return {t, t[:-3] + "y"}
    if t.endswith("es"):
        return {t, t[:-1], t[:-2]}                  # horses -> horse, beaches -> beach
    if t.endswith("s") and not t.endswith("ss"):
        return {t, t[:-1]}
    return {t, t + "s", t + "es"}


def mentions_topic(text: str, topic: str) -> bool:
    """Whole-word, case-insensitive match of any form of the topic."""
    alts = "|".join(re.escape(f) for f in sorted(topic_forms(topic), key=len, reverse=True))
    return re.search(rf"\b(?:{alts})\b", text, re.IGNORECASE) is not None


def n_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def gold_score(text: str, topic: str) -> float:
    """The hidden gold preference: 1 when the response opens with its topic ("Owls are ...", not "The owl ..."
    or "In the forest, owls ..."), else 0. The first word is the first run of letters or digits."""
    m = re.match(r"\W*(\w+)", text)
    return float(m is not None and m.group(1).lower() in topic_forms(topic))


def build_pairs(groups: Sequence[tuple[list[int], str, Sequence[tuple[list[int], str]]]], per_prompt: int = 1
                ) -> list[tuple[list[int], list[int], list[int]]]:
    """groups of (prompt_ids, topic, [(response_ids, response_text), ...]) -> DPO pairs (prompt, chosen, rejected).

    Per prompt the responses are ranked by gold score (stable: earlier samples first among equals); the i-th
    best is paired with the i-th worst for i < per_prompt, so no response is used twice, and a pair is kept
    only when the chosen response scores strictly higher (ties are skipped)."""
    if per_prompt < 1:
        raise ValueError(f"build_pairs: per_prompt={per_prompt} must be >= 1")
    pairs = []
    for prompt, topic, samples in groups:
        scores = [gold_score(text, topic) for _, text in samples]
        order = sorted(range(len(samples)), key=lambda i: -scores[i])
        for j in range(min(per_prompt, len(samples) // 2)):
            w, l = order[j], order[-1 - j]
            if scores[w] > scores[l]:
                pairs.append((list(prompt), list(samples[w][0]), list(samples[l][0])))
    return pairs


# ------------------------------------------------------------------------ frozen trunk + trainable top
@torch.no_grad()
def trunk_hidden(model, input_ids: torch.Tensor, n_frozen: int) -> torch.Tensor:
    """Residual stream (b, t, d) after the first n_frozen blocks (0 = embeddings only)."""
    h = model.residual_cls.expand(model.embed(input_ids), model.cfg)
    for blk in model.blocks[:n_frozen]:
        h, _ = blk(h)
    return h


def top_completion_logps(model, h: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                         n_frozen: int) -> torch.Tensor:
    """Σ_t log π(x_t | x_<t) over completion tokens (b,), from the trunk's hidden states h (b, t, d): runs the
    blocks n_frozen.. and the LM head only where a completion token is predicted."""
    for blk in model.blocks[n_frozen:]:
        h, _ = blk(h)
    x = model.norm(model.residual_cls.reduce(h, model.cfg))          # (b, t, d)
    sel = completion_mask[:, 1:].bool()                               # (b, t-1): position t-1 predicts token t
    logits = model.head(x[:, :-1][sel]).float()                       # (n, v) for the n scored tokens only
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:][sel][:, None])[:, 0]   # (n,)
    rows = torch.arange(sel.shape[0], device=sel.device)[:, None].expand_as(sel)[sel]       # (n,)
    return torch.zeros(sel.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def train_dpo_top(policy, ref_model, pairs: Sequence[tuple[list[int], list[int], list[int]]], n_frozen: int, *,
                  beta: float = 0.1, lr: float = 1e-3, epochs: int = 1, batch_size: int = 8, pad_id: int = 0,
                  seed: int = 0) -> list[dict]:
    """DPO with only blocks n_frozen.. trainable: lmlab.align.dpo.train_dpo (same batches, loss and AdamW) with
    each batch's frozen-trunk hidden states computed once and reused by the reference pass and every epoch."""
    from lmlab.align.dpo import train_dpo

    frozen = [p for blk in policy.blocks[:n_frozen] for p in blk.parameters()] + list(policy.embed.parameters())
    if any(p.requires_grad for p in frozen):
        raise ValueError(f"train_dpo_top: blocks below {n_frozen} and the embeddings must be frozen")
    trunk: dict[int, torch.Tensor] = {}

    def logps(model, i, b):
        if i not in trunk:
            trunk[i] = trunk_hidden(policy, b.input_ids, n_frozen)
        return top_completion_logps(model, trunk[i], b.input_ids, b.completion_mask, n_frozen)

    return train_dpo(policy, ref_model, pairs, beta=beta, lr=lr, epochs=epochs, batch_size=batch_size,
                     pad_id=pad_id, seed=seed, logps=logps)


# ------------------------------------------------------------------------------------------ the experiment
@cached(maxsize=1)
def _smollm2(device: str = "cpu"):
    """SmolLM2-135M-Instruct, loaded once per process (every arm and seed starts from these weights)."""
    from lmlab.models.hf import load_pretrained

    model, tok = load_pretrained("smollm2")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), tok


def _device(scale: str) -> str:
    return "cuda" if scale == "full" and torch.cuda.is_available() else "cpu"


def _prompts(tok, topics: list[str], n: int, offset: int) -> list[tuple[list[int], str]]:
    """n (prompt ids, topic): topics × templates in a fixed interleaved order starting at `offset`."""
    combos = [(t, TEMPLATES[(i + j) % len(TEMPLATES)]) for j in range(len(TEMPLATES)) for i, t in enumerate(topics)]
    out = []
    for k in range(n):
        topic, tpl = combos[(offset + k) % len(combos)]
        text = tok.apply_chat_template([{"role": "user", "content": tpl.format(topic)}], add_generation_prompt=True)
        out.append((tok.encode(text), topic))
    return out


def _sample(model, tok, prompts: list[tuple[list[int], str]], n: int, max_new: int, seed: int):
    """n samples per prompt -> per prompt [(response ids incl. EOS when it stopped, text), ...]."""
    from lmlab.backend import GenerationConfig
    from lmlab.infer.engine import Engine

    gen = GenerationConfig(max_new_tokens=max_new, n=n, seed=seed, **GEN)
    rows = Engine(model, tok).generate_ids([p for p, _ in prompts], gen)
    return [[(c.token_ids + ([tok.eos_id] if c.finish_reason == "stop" else []), c.text) for c in row]
            for row in rows]


@cached(maxsize=4)
def _ref_heldout(seed: int, scale: str, stream: int):
    """Held-out samples of the reference (stream 0 is the opponent of every arm; stream 1 is the `ref` arm's)."""
    s = SCALES[scale]
    model, tok = _smollm2(_device(scale))
    prompts = _prompts(tok, HELDOUT_TOPICS, s["n_heldout"], offset=7 * seed)
    return prompts, _sample(model, tok, prompts, s["n_eval"], s["max_new"], 10_000 * seed + 2000 + stream)


def _summary(prompts, samples) -> dict[str, float]:
    flat = [(topic, text, ids) for (_, topic), row in zip(prompts, samples) for ids, text in row]
    n = len(flat)
    return {"gold": sum(gold_score(x, t) for t, x, _ in flat) / n,
            "mention_rate": sum(mentions_topic(x, t) for t, x, _ in flat) / n,
            "words": sum(n_words(x) for _, x, _ in flat) / n,
            "tokens": sum(len(ids) for _, _, ids in flat) / n}


def _run(arm: str, seed: int, scale: str, out: Path) -> ArmResult:
    from lmlab.nn.peft import apply_peft

    torch.set_num_threads(1)
    s = SCALES[scale]
    base, tok = _smollm2(_device(scale))          # loaded once per process; not counted in cpu_s / wall_s
    c0, t0 = time.process_time(), time.time()
    opp_prompts, opp = _ref_heldout(seed, scale, 0)
    hist, info = [], {}
    if arm == "ref":
        samples = _ref_heldout(seed, scale, 1)[1]
    else:
        prompts = _prompts(tok, TRAIN_TOPICS, s["n_train"], offset=s["n_train"] * seed)
        groups = [(p, topic, row) for (p, topic), row in
                  zip(prompts, _sample(base, tok, prompts, s["k"], s["max_new"], 10_000 * seed + 1))]
        pairs = build_pairs(groups, s["per_prompt"])
        t_sample = time.process_time() - c0
        n_layer, n_top = base.cfg.n_layer, s["n_top"]
        policy = copy.deepcopy(base)
        torch.manual_seed(seed)
        top = "|".join(str(i) for i in range(n_layer - n_top, n_layer))
        handle = apply_peft(policy, {"method": "lora", "r": s["r"], "alpha": 2 * s["r"],
                                     "target_modules": rf"blocks\.({top})\.(mixer\.[qkvo]_proj|ffn\.(gate|up|down))"})
        hist = train_dpo_top(policy, base, pairs, n_layer - n_top, beta=s["beta"], lr=s["lr"], epochs=s["epochs"],
                             batch_size=s["batch"], pad_id=tok.eos_id, seed=seed)
        n_lora = handle.n_trainable()
        handle.merge()
        policy.eval()
        samples = _sample(policy, tok, opp_prompts, s["n_eval"], s["max_new"], 10_000 * seed + 3000)
        info = {"pairs": len(pairs), "lora_params": n_lora, "sample_train_cpu_s": t_sample,
                "train_cpu_s": time.process_time() - c0 - t_sample}
        tr = _summary([(p, t) for p, t, _ in groups], [row for _, _, row in groups])
        info.update({f"train_ref_{k}": v for k, v in tr.items()})
    wins = []
    for (_, topic), row_a, row_b in zip(opp_prompts, samples, opp):
        for (_, a), (_, b) in zip(row_a, row_b):
            ga, gb = gold_score(a, topic), gold_score(b, topic)
            wins.append(1.0 if ga > gb else 0.5 if ga == gb else 0.0)
    mine, theirs = _summary(opp_prompts, samples), _summary(opp_prompts, opp)
    examples = [{"topic": t, "policy": row_a[0][1], "ref": row_b[0][1]}
                for (_, t), row_a, row_b in zip(opp_prompts[:4], samples[:4], opp[:4])]
    metrics = {"heldout_winrate": sum(wins) / len(wins), **{f"heldout_{k}": v for k, v in mine.items()},
               **{f"ref_heldout_{k}": v for k, v in theirs.items()},
               "cpu_s": time.process_time() - c0, "wall_s": time.time() - t0}
    if hist:
        metrics.update(final_dpo_loss=sum(h["loss"] for h in hist[-3:]) / min(3, len(hist)),
                       final_reward_acc=sum(h["rewards/accuracy"] for h in hist[-3:]) / min(3, len(hist)))
    return ArmResult(metrics=metrics, curves={"dpo_loss": [(i, h["loss"]) for i, h in enumerate(hist)]},
                     info={**info, "examples": examples})


_Q = SCALES["quick"]
EXPERIMENTS.register("dpo_smollm2", Experiment(
    name="dpo_smollm2", paper="Direct Preference Optimization (Rafailov et al. 2023)",
    claim="DPO on SmolLM2-135M-Instruct raises the gold win-rate against the untuned model on held-out prompts",
    metric="heldout_winrate", direction="higher", arms=["ref", "dpo"], baseline="ref", technique="dpo",
    run=_run, plots=["dpo_loss"], min_effect=0.05,
    description=(f"Real SmolLM2-135M-Instruct (the embedded GGUF, dequantised to fp32) as policy and reference; "
                 f"its chat template. Prompts: {len(TEMPLATES)} instruction templates × topic nouns, "
                 f"{len(TRAIN_TOPICS)} train and {len(HELDOUT_TOPICS)} held-out topics (disjoint). Gold preference: "
                 f"the response opens with its topic word. Quick: {_Q['n_train']} train prompts × {_Q['k']} "
                 f"reference samples (≤ {_Q['max_new']} new tokens, temperature {GEN['temperature']}) -> up to "
                 f"{_Q['per_prompt']} best ≻ worst pairs per prompt (ties skipped); DPO β = {_Q['beta']}, LoRA "
                 f"r = {_Q['r']} on every linear of the top {_Q['n_top']} of 30 blocks (the frozen lower blocks' "
                 f"hidden states computed once), AdamW lr {_Q['lr']:g}, batch {_Q['batch']}, {_Q['epochs']} epochs. "
                 f"Metric: {_Q['n_heldout']} held-out prompts × {_Q['n_eval']} samples against as many independent "
                 f"reference samples, won by the higher gold score (ties 0.5); the `ref` arm plays itself.")))
