"""The `lmlab align` stages: sft, rm, dpo and rl, each `stage(cfg, ctx) -> summary` in ALIGN_STAGES.

`run_stage(name, cfg)` writes into cfg.out_dir: config.yaml (resolved) and meta.json once, through the same
code as the trainer (lmlab.train.metrics); metrics.jsonl (one record per step, the same stream as
pretraining) and TensorBoard scalars under tb/; model.safetensors + model.json = {"model_config"} that a
later stage can start from (`init_from`); summary.json. An rl algorithm's name (ppo, rloo, grpo) is
shorthand for the rl stage with that `rl.algo`. Text goes through the byte tokenizer
(lmlab.align.data.ByteTokenizer), so no download is ever needed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lmlab.align.algorithms import algorithm, for_stage, reward_kind
from lmlab.align.config import AlignConfig
from lmlab.align.data import ByteTokenizer
from lmlab.config import ConfigError
from lmlab.registry import ALIGN_ALGOS, ALIGN_STAGES, RegistryError
from lmlab.io import atomic_write_text
from lmlab.train.metrics import MetricsLogger, write_run_files


@dataclass
class StageContext:
    """What a stage gets besides its config: the run directory, the tokenizer and the metrics stream."""

    out: Path
    tok: ByteTokenizer
    metrics: MetricsLogger
    step: int = 0

    def log(self, rec: dict) -> None:
        """One metrics record; steps count the records of this run from 0."""
        self.metrics.log(self.step, rec)
        self.step += 1


def resolve_stage(name: str, cfg: AlignConfig) -> tuple[str, AlignConfig]:
    """(stage, cfg): an rl algorithm's name stands for the rl stage with `rl.algo` set to it."""
    if name in ALIGN_STAGES:
        return name, cfg
    rl = for_stage(ALIGN_ALGOS, "rl")
    if name in rl:
        return "rl", cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"algo": name})})
    raise RegistryError(f"unknown {ALIGN_STAGES.kind} {name!r}; choose one of: {', '.join(ALIGN_STAGES.names())} "
                        f"(or an rl algorithm: {', '.join(sorted(rl))})")


def run_stage(name: str, cfg: AlignConfig) -> dict:
    """Run one stage into cfg.out_dir and return its summary (also written to summary.json)."""
    stage, cfg = resolve_stage(name, cfg)
    fn = ALIGN_STAGES.get(stage)
    _check_inputs(stage, cfg)          # bad inputs fail before anything is written
    out = Path(cfg.out_dir)
    write_run_files(out, cfg, cfg.seed, {"align_stage": stage})
    ctx = StageContext(out, ByteTokenizer(), MetricsLogger(out, cfg.tensorboard))
    t0 = time.time()
    try:
        summary = fn(cfg, ctx)
    finally:
        ctx.metrics.close()
    summary["seconds"] = time.time() - t0
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------------------------------ models
def build_model(cfg: AlignConfig):
    """The decoder a stage starts from: `init_from` (any align stage's output) or a fresh `model`. Seeds torch
    with `seed` either way, so what the stage initialises next (a reward head, LoRA matrices) is reproducible."""
    import torch

    from lmlab.models.decoder import Decoder
    from lmlab.train.checkpoint import load_decoder

    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        p = Path(cfg.init_from)
        if not p.exists():
            raise FileNotFoundError(f"init_from={p}: no such file")
        try:
            return load_decoder(p)
        except ValueError as e:
            raise ConfigError(f"init_from={e}") from None
    return Decoder(cfg.model)


def _init_adapter(cfg: AlignConfig) -> Optional[Path]:
    """The Partial LoRA adapter an `init_from` stage output keeps beside its base weights (`_save_peft`), or None."""
    if not cfg.init_from:
        return None
    p = Path(cfg.init_from)
    d = (p if p.is_dir() else p.parent) / "adapter"
    return d if (d / "adapter_model.safetensors").is_file() else None


def _with_peft(model, cfg: AlignConfig):
    """Wrap the model with LoRA / Partial LoRA / SpIEL when `peft` is set (sft and dpo stages). An `init_from`
    that holds a Partial LoRA adapter is continued by a partial_lora stage (the adapter loaded into its layers);
    any other stage would silently run the base model without it, so that is a one-line error."""
    adapter = _init_adapter(cfg)
    method = (cfg.peft or {}).get("method")
    if adapter is not None and method != "partial_lora":
        raise ConfigError(f"init_from={cfg.init_from}: holds a Partial LoRA adapter beside its base weights "
                          f"({adapter}), which cannot be folded into them; continue it with "
                          f"peft={{method: partial_lora, ...}} or start from another model")
    if not cfg.peft:
        return model, None
    from lmlab.nn.peft import apply_peft, load_lora_adapter

    handle = apply_peft(model, cfg.peft)
    if adapter is not None:
        load_lora_adapter(model, adapter)
    return model, handle


def _save_peft(model, handle, out: Path) -> None:
    """Fold the adaptation into the weights so the next stage loads a plain decoder; Partial LoRA cannot be
    folded (its update depends on the token mask), so its adapter is saved beside the base weights."""
    if handle is not None and handle.method == "partial_lora":
        handle.save(out / "adapter")
        _save(model, out, keep=lambda k: "lora_" not in k)
        return
    _save(handle.merge() if handle is not None else model, out)


def _save(model, out: Path, keep=None) -> None:
    from lmlab.train.checkpoint import save_model

    mc = getattr(model, "cfg", None) or model.backbone.cfg
    save_model(model, out / "model.safetensors", {"model_config": mc.model_dump(mode="json")}, keep=keep)


# ------------------------------------------------------------------------------------------ data
def _prompt_text(messages: list[dict]) -> str:
    from lmlab.align.sft import ChatTemplate

    t = ChatTemplate()
    return "".join(t.header.format(role=m["role"]) + m["content"] + t.end for m in messages) + t.generation_header


def _check_inputs(stage: str, cfg: AlignConfig) -> None:
    if stage in ("sft", "rm", "dpo"):
        p = Path(_data_path(cfg, stage))
        if not p.is_file():
            raise FileNotFoundError(f"data.path={p}: no such file")
    if cfg.init_from and not Path(cfg.init_from).exists():
        raise FileNotFoundError(f"init_from={cfg.init_from}: no such file")


def _data_path(cfg: AlignConfig, stage: str) -> str:
    if not cfg.data.path:
        raise ConfigError(f"align {stage}: data.path: required (path to a JSONL file)")
    return cfg.data.path


def _pair_tokens(cfg: AlignConfig, tok: ByteTokenizer, stage: str) -> list[tuple[list[int], list[int], list[int]]]:
    """Preference rows -> (prompt ids, chosen ids + eos, rejected ids + eos)."""
    from lmlab.align.data import load_preferences

    out = []
    for r in load_preferences(_data_path(cfg, stage)):
        p = tok.encode(_prompt_text(r["prompt"]))
        out.append((p, tok.encode(r["chosen"]) + [tok.eos_id], tok.encode(r["rejected"]) + [tok.eos_id]))
    return out


# ------------------------------------------------------------------------------------------ stages
@ALIGN_STAGES.register("sft")
def sft_stage(cfg: AlignConfig, ctx: StageContext) -> dict:
    """Supervised fine-tuning on chat rows, loss on assistant tokens only (section `sft`, optional `peft`)."""
    import torch

    from lmlab.align.data import load_chat
    from lmlab.align.sft import pack, tokenize_chat, train_sft

    s, tok = cfg.sft, ctx.tok
    exs = [tokenize_chat(m, tok.encode, tok.eos_id) for m in load_chat(_data_path(cfg, "sft"))]
    x, y = pack(exs, s.seq_len, tok.pad_id)
    model, handle = _with_peft(build_model(cfg), cfg)
    losses = train_sft(model, torch.as_tensor(x), torch.as_tensor(y), steps=s.steps, batch_size=s.batch_size,
                       grad_accum=s.grad_accum, lr=s.lr, seed=cfg.seed, log=ctx.log)
    _save_peft(model, handle, ctx.out)
    return {"stage": "sft", "examples": len(exs), "first_loss": losses[0], "final_loss": losses[-1]}


@ALIGN_STAGES.register("rm")
def rm_stage(cfg: AlignConfig, ctx: StageContext) -> dict:
    """Reward model on preference rows: a REWARD_MODELS kind (bt, ids, odin) chosen by `rm.method`."""
    import torch

    from lmlab.align.reward import RewardModel, pad_batch, pearson, train_reward_model

    s = cfg.rm
    pairs = _pair_tokens(cfg, ctx.tok, "rm")
    chosen = [p + c for p, c, _ in pairs]
    rejected = [p + r for p, _, r in pairs]
    rm = RewardModel(build_model(cfg), n_heads=reward_kind(s.method).heads)
    ids, lens = pad_batch(chosen + rejected, ctx.tok.pad_id)

    def ev(m, ep):
        with torch.no_grad():
            q = m.quality(ids, lens)
        n = len(chosen)
        rec = {"epoch": ep, "train_accuracy": (q[:n] > q[n:]).float().mean().item(),
               "reward_length_corr": pearson(lens.float(), q).item()}
        ctx.log(rec)
        return rec

    res = train_reward_model(rm, chosen, rejected, method=s.method, epochs=s.epochs, batch_size=s.batch_size,
                             lr=s.lr, ids_beta=s.ids_beta, lambda_l=s.odin_lambda_l, lambda_o=s.odin_lambda_o,
                             seed=cfg.seed, eval_fn=ev)
    _save(rm, ctx.out)
    return {"stage": "rm", "method": s.method, "pairs": len(pairs), **res["history"][-1]}


@ALIGN_STAGES.register("dpo")
def dpo_stage(cfg: AlignConfig, ctx: StageContext) -> dict:
    """DPO-family training on preference rows: a loss of ALIGN_ALGOS chosen by `dpo.loss_type` (optional `peft`)."""
    import copy

    from lmlab.align.dpo import train_dpo

    s = cfg.dpo
    pairs = _pair_tokens(cfg, ctx.tok, "dpo")
    policy = build_model(cfg)
    ref = copy.deepcopy(policy).eval()          # the reference stays the plain model
    policy, handle = _with_peft(policy, cfg)
    if _init_adapter(cfg) is not None:          # the model to improve on is base + that adapter: freeze a copy
        ref = copy.deepcopy(policy).eval()
    hist = train_dpo(policy, ref, pairs, beta=s.beta, loss_type=s.loss_type, lr=s.lr, epochs=s.epochs,
                     batch_size=s.batch_size, pad_id=ctx.tok.pad_id, seed=cfg.seed, log=ctx.log)
    _save_peft(policy, handle, ctx.out)
    return {"stage": "dpo", "pairs": len(pairs), "final": hist[-1]}


@ALIGN_STAGES.register("rl")
def rl_stage(cfg: AlignConfig, ctx: StageContext) -> dict:
    """Online RL on a checkable task (`data.task`): an ALIGN_ALGOS algorithm chosen by `rl.algo` (ppo, rloo, grpo)."""
    import copy
    import random

    import torch

    from lmlab.align.envs import make_task
    from lmlab.align.ppo import PolicyWithValue, RLConfig, rl_train

    s, tok = cfg.rl, ctx.tok
    task = make_task(cfg.data.task, **cfg.data.task_args)
    rng = random.Random(cfg.seed)
    problems: dict = {}

    def prompt_fn(n, g):
        # the cached sampler needs equal-length prompts: draw problems whose prompt has the first one's length
        first = task.sample(rng)
        batch = [first]
        L = len(tok.encode(_prompt_text([{"role": "user", "content": first.prompt}])))
        while len(batch) < n:
            p = task.sample(rng)
            if len(tok.encode(_prompt_text([{"role": "user", "content": p.prompt}]))) == L:
                batch.append(p)
        rows = []
        for p in batch:
            ids = tok.encode(_prompt_text([{"role": "user", "content": p.prompt}]))
            problems[tuple(ids)] = p
            rows.append(ids)
        return torch.tensor(rows)

    def reward_fn(prompts, responses):
        out = []
        for p, y in zip(prompts.tolist(), responses.tolist()):
            y = y[:y.index(tok.eos_id)] if tok.eos_id in y else y
            out.append(task.check(problems[tuple(p)], tok.decode(y)))
        return torch.tensor(out)

    dec = build_model(cfg)
    ref = copy.deepcopy(dec).eval()
    policy = PolicyWithValue(dec) if algorithm("rl", s.algo).critic else dec
    rc = RLConfig(algo=s.algo, iterations=s.iterations, prompts_per_iter=s.prompts_per_iter,
                  samples_per_prompt=s.samples_per_prompt, max_new_tokens=s.max_new_tokens,
                  temperature=s.temperature, lr=s.lr, kl_coef=s.kl_coef, adaptive_kl=s.adaptive_kl,
                  kl_target=s.kl_target, clip_eps=s.clip_eps, eos_id=tok.eos_id, seed=cfg.seed)
    hist = rl_train(policy, ref, prompt_fn, reward_fn, rc, log=ctx.log)
    _save(policy, ctx.out)
    return {"stage": s.algo, "task": cfg.data.task, "final": hist[-1]}
