"""`lmlab align sft|rm|dpo|ppo|rloo --config configs/align/<stage>.yaml [key=value ...]`.

Every stage writes into out_dir: config.yaml (resolved), meta.json, metrics.jsonl (one record per step,
the same stream format as pretraining), TensorBoard scalars under tb/ when tensorboard is installed, and
model.pt = {"model_config", "state_dict"} that a later stage can start from (`init_from`).
Text goes through the byte tokenizer (lmlab.align.data.ByteTokenizer), so no download is ever needed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from lmlab.config import ConfigError, ModelConfig, _Base, apply_overrides, validate

STAGES = ("sft", "rm", "dpo", "ppo", "rloo")


class AlignConfig(_Base):
    name: str = "align"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(vocab_size=258, d_model=64, n_layer=2, n_head=4,
                                                                   max_seq_len=256))
    init_from: Optional[str] = Field(None, description="model.safetensors (or its dir) written by an earlier stage")
    data: Optional[str] = Field(None, description="JSONL: chat rows (sft) or preference rows (rm, dpo)")
    task: Literal["arithmetic", "countdown", "sorting"] = "arithmetic"
    task_args: dict[str, Any] = Field(default_factory=dict)
    out_dir: str = "runs/align"
    seed: int = 0
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(1, ge=1)
    steps: int = Field(100, ge=1, description="sft optimizer steps")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(256, ge=8)
    # rm
    rm_method: Literal["bt", "ids", "odin"] = "bt"
    ids_beta: float = Field(0.3, gt=0, le=1)
    odin_lambda_l: float = Field(1.0, ge=0)
    odin_lambda_o: float = Field(1.0, ge=0)
    # dpo
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    # ppo / rloo
    iterations: int = Field(20, ge=1)
    prompts_per_iter: int = Field(8, ge=1)
    samples_per_prompt: int = Field(4, ge=1)
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0)
    clip_eps: float = Field(0.2, gt=0)
    tensorboard: bool = True
    peft: dict[str, Any] = Field(default_factory=dict, description="sft/dpo: parameter-efficient fine-tuning, e.g. "
                                 "{method: lora, r: 8, alpha: 16, target: [q_proj, v_proj]} (see lmlab.nn.peft)")


def load_align_config(path: Optional[str], overrides: list[str]) -> AlignConfig:
    import yaml

    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such config file")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, overrides)
    return validate(AlignConfig, data, source=str(path or "align config"))


# ------------------------------------------------------------------------------------------ plumbing
class _Logger:
    def __init__(self, out: Path, tensorboard: bool):
        self.f = open(out / "metrics.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                pass
        self.step = 0

    def __call__(self, rec: dict) -> None:
        rec = {"step": self.step, **rec}
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, self.step)
        self.step += 1

    def close(self) -> None:
        self.f.close()
        if self.writer:
            self.writer.close()


def _build_model(cfg: AlignConfig):
    import torch

    from lmlab.models.decoder import Decoder
    from lmlab.train.checkpoint import load_model_file, load_state_into

    if cfg.init_from:
        p = Path(cfg.init_from)
        if not p.exists():
            raise FileNotFoundError(f"init_from={p}: no such file")
        try:
            sd, meta = load_model_file(p)
            model = Decoder(ModelConfig(**meta["model_config"]))
            # checkpoints of a PolicyWithValue ("decoder.") or a RewardModel ("backbone.") hold the same decoder
            sd = {k.removeprefix("decoder.").removeprefix("backbone."): v for k, v in sd.items()
                  if not k.startswith(("value_head.", "heads."))}
            load_state_into(model, sd, f"init_from={p}")
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"init_from={p}: not an lmlab decoder checkpoint ({e})") from None
        return model
    torch.manual_seed(cfg.seed)
    return Decoder(cfg.model)


def _with_peft(model, cfg: AlignConfig):
    """Wrap the model with LoRA / Partial LoRA / SpIEL when `peft` is set (sft and dpo stages)."""
    if not cfg.peft:
        return model, None
    from lmlab.nn.peft import apply_peft

    return model, apply_peft(model, cfg.peft)


def _save_peft(model, handle, cfg: AlignConfig, out: Path) -> None:
    """Fold the adaptation into the weights so the next stage loads a plain decoder; Partial LoRA cannot be
    folded (its update depends on the token mask), so its adapter is saved beside the base weights."""
    if handle is not None and handle.method == "partial_lora":
        handle.save(out / "adapter")
        _save(model, cfg, out, keep=lambda k: "lora_" not in k)
        return
    _save(handle.merge() if handle is not None else model, cfg, out)


def _save(model, cfg: AlignConfig, out: Path, keep=None) -> None:
    from lmlab.train.checkpoint import save_model

    mc = getattr(model, "cfg", None) or model.backbone.cfg
    save_model(model, out / "model.safetensors", {"model_config": mc.model_dump(mode="json")}, keep=keep)


def _prompt_text(messages: list[dict]) -> str:
    from lmlab.align.sft import ChatTemplate

    t = ChatTemplate()
    return "".join(t.header.format(role=m["role"]) + m["content"] + t.end for m in messages) + t.generation_header


def _need_data(cfg: AlignConfig, stage: str) -> str:
    if not cfg.data:
        raise ConfigError(f"align {stage}: data: required (path to a JSONL file)")
    return cfg.data


# ------------------------------------------------------------------------------------------ stages
def run_stage(stage: str, cfg: AlignConfig) -> dict:
    import torch

    from lmlab.align.data import ByteTokenizer
    from lmlab.train.trainer import write_run_files

    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: allowed {', '.join(STAGES)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    try:
        from lmlab.config import RunConfig
        write_run_files(out, RunConfig(name=cfg.name, model=cfg.model), {"align_stage": stage})
        (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    except Exception:
        pass
    tok = ByteTokenizer()
    log = _Logger(out, cfg.tensorboard)
    t0 = time.time()
    try:
        summary = globals()[f"_{stage}"](cfg, tok, log)
    finally:
        log.close()
    summary["seconds"] = time.time() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _sft(cfg, tok, log) -> dict:
    from lmlab.align.data import load_chat
    from lmlab.align.sft import pack, tokenize_chat, train_sft
    import torch

    chats = load_chat(_need_data(cfg, "sft"))
    exs = [tokenize_chat(m, tok.encode, tok.eos_id) for m in chats]
    x, y = pack(exs, cfg.seq_len, tok.pad_id)
    model, handle = _with_peft(_build_model(cfg), cfg)
    losses = train_sft(model, torch.as_tensor(x), torch.as_tensor(y), steps=cfg.steps, batch_size=cfg.batch_size,
                       grad_accum=cfg.grad_accum, lr=cfg.lr, seed=cfg.seed, log=log)
    _save_peft(model, handle, cfg, Path(cfg.out_dir))
    return {"stage": "sft", "examples": len(exs), "first_loss": losses[0], "final_loss": losses[-1]}


def _pairs_tokens(cfg, tok, stage):
    from lmlab.align.data import load_preferences

    rows = load_preferences(_need_data(cfg, stage))
    out = []
    for r in rows:
        p = tok.encode(_prompt_text(r["prompt"]))
        out.append((p, tok.encode(r["chosen"]) + [tok.eos_id], tok.encode(r["rejected"]) + [tok.eos_id]))
    return out


def _rm(cfg, tok, log) -> dict:
    from lmlab.align.reward import RewardModel, pad_batch, train_reward_model
    import torch

    pairs = _pairs_tokens(cfg, tok, "rm")
    chosen = [p + c for p, c, _ in pairs]
    rejected = [p + r for p, _, r in pairs]
    rm = RewardModel(_build_model(cfg), n_heads=2 if cfg.rm_method == "odin" else 1)
    ids, lens = pad_batch(chosen + rejected, tok.pad_id)

    def ev(m, ep):
        with torch.no_grad():
            q = m.quality(ids, lens)
        n = len(chosen)
        from lmlab.align.reward import pearson
        rec = {"epoch": ep, "train_accuracy": (q[:n] > q[n:]).float().mean().item(),
               "reward_length_corr": pearson(lens.float(), q).item()}
        log(rec)
        return rec

    res = train_reward_model(rm, chosen, rejected, method=cfg.rm_method, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr, ids_beta=cfg.ids_beta,
                             lambda_l=cfg.odin_lambda_l, lambda_o=cfg.odin_lambda_o, seed=cfg.seed, eval_fn=ev)
    _save(rm, cfg, Path(cfg.out_dir))
    return {"stage": "rm", "method": cfg.rm_method, "pairs": len(pairs), **res["history"][-1]}


def _dpo(cfg, tok, log) -> dict:
    import copy

    from lmlab.align.dpo import train_dpo

    pairs = _pairs_tokens(cfg, tok, "dpo")
    policy = _build_model(cfg)
    ref = copy.deepcopy(policy).eval()          # the reference stays the plain model
    policy, handle = _with_peft(policy, cfg)
    hist = train_dpo(policy, ref, pairs, beta=cfg.beta, loss_type=cfg.loss_type, lr=cfg.lr, epochs=cfg.epochs,
                     batch_size=cfg.batch_size, pad_id=tok.pad_id, seed=cfg.seed, log=log)
    _save_peft(policy, handle, cfg, Path(cfg.out_dir))
    return {"stage": "dpo", "pairs": len(pairs), "final": hist[-1]}


def _rl(cfg, tok, log, algo) -> dict:
    import copy
    import random

    import torch

    from lmlab.align.envs import make_task
    from lmlab.align.ppo import PolicyWithValue, RLConfig, rl_train

    task = make_task(cfg.task, **cfg.task_args)
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

    dec = _build_model(cfg)
    ref = copy.deepcopy(dec).eval()
    policy = PolicyWithValue(dec) if algo == "ppo" else dec
    rc = RLConfig(algo=algo, iterations=cfg.iterations, prompts_per_iter=cfg.prompts_per_iter,
                  samples_per_prompt=cfg.samples_per_prompt, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, lr=cfg.lr, kl_coef=cfg.kl_coef, adaptive_kl=cfg.adaptive_kl,
                  kl_target=cfg.kl_target, clip_eps=cfg.clip_eps, eos_id=tok.eos_id, seed=cfg.seed)
    hist = rl_train(policy, ref, prompt_fn, reward_fn, rc, log=log)
    _save(policy, cfg, Path(cfg.out_dir))
    return {"stage": algo, "task": cfg.task, "final": hist[-1]}


def _ppo(cfg, tok, log) -> dict:
    return _rl(cfg, tok, log, "ppo")


def _rloo(cfg, tok, log) -> dict:
    return _rl(cfg, tok, log, "rloo")


def register(sub) -> None:
    p = sub.add_parser("align", help="post-training: SFT, reward models (BT/IDS/ODIN), DPO, PPO, RLOO")
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--config", help="YAML file (see configs/align/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. lr=3e-4 model.n_layer=2")
    p.set_defaults(func=_run)


def _run(args) -> int:
    cfg = load_align_config(args.config, args.overrides)
    from lmlab.resources import check_model_memory; check_model_memory(cfg.model, cfg.batch_size, cfg.seq_len)  # noqa: E702
    summary = run_stage(args.stage, cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0
