"""The training loop, in one visible function: `train(cfg) -> TrainResult`.

What it does each step: LR from the schedule; `grad_accum` micro-batches through the objective (bf16
autocast on CUDA, fp32 on CPU); auxiliary losses added; non-finite loss -> step skipped and counted (abort
after `max_bad_steps` in a row); grad clipping; AdamW. Periodically: per-domain validation loss, metrics to
JSONL/TensorBoard, atomic checkpoints. Resume is exact: data position, optimizer and RNG states are restored.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from lmlab.config import ConfigError, RunConfig, resolve_vocab_size
from lmlab.io import atomic_write_text
from lmlab.registry import OBJECTIVES
from lmlab.train import checkpoint as ckpt
from lmlab.train import distributed
from lmlab.train.metrics import MetricsLogger, write_run_files
from lmlab.nn.peft import peft_context  # Partial LoRA reads its token mask from the batch; else a no-op
from lmlab.train.schedules import lr_at


class TrainingError(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: torch.nn.Module
    val_loss: float
    val_losses: dict[str, float]
    curves: dict[str, list[tuple[float, float]]]
    tokens: int
    steps: int
    bad_steps: int = 0
    out_dir: Optional[Path] = None
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or embeddings (tied heads follow embeddings)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in emb else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class BatchStream:
    """Deterministic batches from packed rows (N, t+1): epoch e uses permutation(seed, e).

    `position` = number of rows consumed so far; it fully determines what comes next (exact resume).
    """

    def __init__(self, rows: np.ndarray, seed: int):
        if len(rows) == 0:
            raise ConfigError("data: the training split is empty (no packed sequences); add data or lower data.seq_len")
        self.rows, self.seed, self.position = rows, seed, 0
        self._perm_epoch, self._perm = -1, None

    def _perm_for(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._perm_epoch = epoch
        return self._perm

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            epoch, off = divmod(self.position, len(self.rows))
            k = min(n, len(self.rows) - off)
            out.append(self.rows[self._perm_for(epoch)[off:off + k]])
            self.position += k
            n -= k
        return np.concatenate(out)


def to_batch(rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    t = torch.from_numpy(np.ascontiguousarray(rows)).long().to(device)
    return {"input_ids": t[:, :-1], "targets": t[:, 1:]}


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: dict[str, np.ndarray], batch_size: int = 16,
             max_batches: int = 8, device: Optional[torch.device] = None) -> dict[str, float]:
    """Mean next-token loss per domain over the first `max_batches` batches of each validation split."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {}
    for dom, rows in val.items():
        tot, n = 0.0, 0
        for i in range(0, min(len(rows), batch_size * max_batches), batch_size):
            b = to_batch(rows[i:i + batch_size], device)
            loss = model(b["input_ids"], targets=b["targets"], reduction="sum").loss
            tot += float(loss)
            n += b["targets"].numel()
        if n:
            out[dom] = tot / n
    model.train(was_training)
    return out


def _aux_loss(model: torch.nn.Module) -> Optional[torch.Tensor]:
    aux = [m.aux_loss for m in model.modules() if getattr(m, "aux_loss", None) is not None]
    return torch.stack([a.float() for a in aux]).sum() if aux else None


def train(cfg: RunConfig, out_dir: Optional[str | Path] = None, *, model: Optional[torch.nn.Module] = None,
          data: Any = None, objective: Any = None, resume: bool = True,
          callback: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train `model` (built from cfg.model when None) on `data` (lmlab.data.load_data(cfg.data) when None)."""
    from lmlab.models.decoder import build_model

    tc = cfg.train
    device = pick_device(tc.device)
    dist_info = distributed.setup(device)
    out = Path(out_dir or cfg.out_dir) if (out_dir or cfg.out_dir) else None
    seed_everything(tc.seed)
    if data is None:
        from lmlab.data import load_data

        data = load_data(cfg.data)
    if model is None:
        tok_vocab = data.tokenizer.vocab_size if getattr(data, "tokenizer", None) is not None else None
        if tok_vocab:  # model.vocab_size: left out = the tokenizer's; written = must match (lmlab.config)
            cfg = cfg.model_copy(update={"model": resolve_vocab_size(cfg.model, tok_vocab)})
        model = build_model(cfg.model)
    peft_cfg = cfg.extra.get("peft")
    if peft_cfg and not hasattr(model, "peft"):  # LoRA / Partial LoRA / SpIEL chosen by config
        from lmlab.nn.peft import apply_peft

        apply_peft(model, peft_cfg)
    model.to(device)
    if isinstance(objective, str) or objective is None:
        try:
            objective = OBJECTIVES.get(objective or tc.objective)(**tc.objective_args)
        except TypeError as e:
            raise ConfigError(f"train.objective_args: {e}") from None
    if hasattr(objective, "setup"):
        objective.setup(model, data, cfg, device)

    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                                  eps=tc.eps, foreach=False)
    micro = tc.batch_size // (tc.grad_accum * dist_info.world)
    if micro * tc.grad_accum * dist_info.world != tc.batch_size:
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by grad_accum×world "
                          f"({tc.grad_accum}×{dist_info.world})")
    stream = BatchStream(data.train, seed=cfg.data.seed + 1000 * tc.seed)
    start_step, bad_in_row, bad_total, history = 0, 0, 0, []
    ckpt_dir = out / "checkpoints" if out else None
    if out and dist_info.main:
        write_run_files(out, cfg, tc.seed, {"params": sum(p.numel() for p in model.parameters()),
                                            "data_stats": getattr(data, "stats", {})})
    if resume and ckpt_dir is not None and (last := ckpt.latest_checkpoint(ckpt_dir)) is not None:
        meta = ckpt.load_checkpoint(last, model, optimizer)
        start_step, stream.position = meta["step"], meta["data_position"]
        bad_total, history = meta.get("bad_steps", 0), meta.get("history", [])
        if out and (out / "metrics.jsonl").exists():  # drop records written after the checkpoint
            lines = (out / "metrics.jsonl").read_text().splitlines()
            keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            atomic_write_text(out / "metrics.jsonl", "".join(k + "\n" for k in keep))

    run_model = distributed.wrap(model, dist_info, device, tc.parallel)
    if tc.compile:
        run_model = torch.compile(run_model)
    use_bf16 = device.type == "cuda" and tc.precision in ("auto", "bf16")
    if tc.precision == "bf16" and device.type != "cuda":
        use_bf16 = False  # bf16 autocast on CPU is slower than fp32 here; kept fp32
    metrics = MetricsLogger(out if dist_info.main else None, tc.tensorboard)

    def log(rec: dict) -> None:
        history.append(rec)
        metrics.log(rec["step"], rec)
        if callback:
            callback(rec["step"], rec)

    def save(step: int) -> None:
        if ckpt_dir is not None and dist_info.main:
            ckpt.save_checkpoint(ckpt_dir, step, model, optimizer,
                                 {"data_position": stream.position, "bad_steps": bad_total, "history": history,
                                  "config": cfg.model_dump(mode="json")}, keep=tc.keep_ckpts)

    tokens_per_step = tc.batch_size * (data.train.shape[1] - 1)
    progress = _Progress(tc.steps, start_step, enabled=tc.progress and dist_info.main)
    t0, last_t, last_step = time.time(), time.time(), start_step
    val_losses: dict[str, float] = {}
    model.train()
    try:
        for step in range(start_step, tc.steps):
            lr = lr_at(tc, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum, finite, extra = 0.0, True, {}
            for _ in range(tc.grad_accum):
                rows = stream.take(tc.batch_size // tc.grad_accum)
                rows = rows[dist_info.rank * micro:(dist_info.rank + 1) * micro]
                batch = to_batch(rows, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16), \
                        peft_context(model, batch):
                    loss, m = objective(run_model, batch, step)
                    aux = _aux_loss(model)
                    total = loss + tc.aux_loss_weight * aux if aux is not None else loss
                if not torch.isfinite(total.detach()):
                    finite = False
                    break
                (total / tc.grad_accum).backward()
                loss_sum += float(loss.detach()) / tc.grad_accum
                if aux is not None:
                    extra["aux_loss"] = extra.get("aux_loss", 0.0) + float(aux.detach()) / tc.grad_accum
                for k, v in m.items():
                    extra[k] = extra.get(k, 0.0) + float(v) / tc.grad_accum
            if not finite:
                # Keep the data position consistent with an uninterrupted run, then skip the update.
                done = _ + 1
                stream.take((tc.grad_accum - done) * (tc.batch_size // tc.grad_accum))
                optimizer.zero_grad(set_to_none=True)
                bad_in_row += 1
                bad_total += 1
                log({"step": step + 1, "skipped": 1, "bad_steps": bad_total})
                if bad_in_row >= tc.max_bad_steps:
                    raise TrainingError(f"loss was not finite for {bad_in_row} steps in a row (step {step + 1}); "
                                        f"lower train.lr (now {tc.lr}) or check the data")
                continue
            bad_in_row = 0
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else 1e30)
            optimizer.step()
            s = step + 1
            loss_sum = distributed.all_reduce_mean(loss_sum, dist_info)
            if s % tc.log_interval == 0 or s == tc.steps:
                now = time.time()
                tps = tokens_per_step * (s - last_step) / max(now - last_t, 1e-9)
                last_t, last_step = now, s
                log({"step": s, "train_loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
                     "tokens": s * tokens_per_step, "tokens_per_s": tps, **extra})
            if s % tc.eval_interval == 0 or s == tc.steps:
                val_losses = evaluate(model, data.val, micro, tc.eval_batches, device)
                if val_losses:
                    rec = {"step": s, "val_loss": float(np.mean(list(val_losses.values())))}
                    rec.update({f"val_loss/{k}": v for k, v in val_losses.items()})
                    log(rec)
            if tc.ckpt_interval and s % tc.ckpt_interval == 0 and s != tc.steps:
                save(s)
            progress.update(s, loss_sum, tokens_per_step)
        if ckpt_dir is not None and tc.steps > start_step:
            save(tc.steps)
    finally:
        progress.close()
        metrics.close()
    if not val_losses:
        val_losses = evaluate(model, data.val, micro, tc.eval_batches, device)
    curves: dict[str, list[tuple[float, float]]] = {}
    for rec in history:
        for k in ("train_loss", "val_loss"):
            if k in rec:
                curves.setdefault(k, []).append((rec["step"], rec[k]))
    vl = float(np.mean(list(val_losses.values()))) if val_losses else math.nan
    res = TrainResult(model=model, val_loss=vl, val_losses=val_losses, curves=curves,
                      tokens=tc.steps * tokens_per_step, steps=tc.steps, bad_steps=bad_total, out_dir=out,
                      seconds=time.time() - t0, history=history)
    if out and dist_info.main:
        atomic_write_text(out / "result.json", json.dumps(
            {"val_loss": vl, "val_losses": val_losses, "tokens": res.tokens, "steps": res.steps,
             "bad_steps": bad_total, "seconds": res.seconds}, indent=2))
    return res


class _Progress:
    """A rich progress bar with loss, tokens/s and ETA (silent when disabled)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                          TimeRemainingColumn(), transient=True)
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)
        self.t, self.s = time.time(), start

    def update(self, step: int, loss: float, tokens_per_step: int) -> None:
        if not self.enabled:
            return
        now = time.time()
        tps = tokens_per_step * (step - self.s) / max(now - self.t, 1e-9)
        self.t, self.s = now, step
        self.p.update(self.task, completed=step, loss=loss, tps=tps)

    def close(self) -> None:
        if self.enabled:
            self.p.stop()
