"""Training a VLM on synthetic-scene VQA, stage by stage, in one visible function: `train_vlm(cfg) -> result`;
`save_vlm(vlm, dir)` / `load_vlm(dir)` for the saved directory that `lmlab generate --image` and `lmlab serve`
read.

Each stage (lmlab.models.vlm.StageSpec): optional MoE-tuning (sparse upcycling of the LM: every other FFN ->
E experts, top-k, capacity factor, balance loss) and optional PEFT on the LM (LoRA, Partial LoRA on the image
tokens), then `steps` AdamW steps over shuffled (image, question, answer) examples with the loss on answer
tokens only, LR from lmlab.train.schedules, gradient clipping. A frozen encoder's features are computed once
through the feature cache (lmlab.vision.cache) and the encoder never runs in the loop.

A saved VLM directory:
    vlm_config.yaml          the VLMConfig it was trained from
    vlm.json                 LM config after every stage (MoE), PEFT config, which weights are stored, n tokens
    projector.safetensors    + .json
    lm.safetensors           the LM (full) or only its adapters (a pretrained LM under LoRA / Partial LoRA)
    encoder.safetensors      only for encoders without packaged weights, or that trained
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from lmlab.config import ConfigError, ModelConfig, load_config
from lmlab.io import atomic_write_text
from lmlab.models.vlm import (VLM, ByteTokenizer, VLMConfig, build_vlm, collate, count_trainable, encode_example,
                              modality_expert_load, set_trainable)
from lmlab.nn.peft import apply_peft, lora_layers
from lmlab.train.checkpoint import load_model_file, load_state_into, save_model
from lmlab.train.metrics import MetricsLogger, write_run_files
from lmlab.train.schedules import lr_at
from lmlab.train.trainer import param_groups, pick_device, seed_everything

FORMAT = 1


# ------------------------------------------------------------------------------------------------- data
@dataclass
class VQAData:
    """Scenes with their questions, flattened: example i asks `questions[i]` about `images[image_of[i]]`."""

    images: list                     # PIL images, one per scene
    scenes: list
    image_of: list[int]
    questions: list[str]
    answers: list[str]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.questions)


def scene_vqa(spec, split: str = "train", n: Optional[int] = None, start: int = 0) -> VQAData:
    """VQA examples from `n` scenes of lmlab.data.scenes (spec: VLMConfig.data)."""
    from lmlab.data.scenes import scene_dataset

    rows = scene_dataset(spec.seed, n or spec.n_train, split, spec.questions_per_scene, start=start,
                         size=spec.image_size, objects_per_scene=tuple(spec.objects_per_scene),
                         background=spec.background, words=spec.words, vocab=spec.vocab)
    return vqa_from_rows(rows, spec.kinds)


def vqa_from_rows(rows, kinds=None) -> VQAData:
    """Flatten `scene_dataset` rows [(scene, [QA])] into VQAData, keeping only questions of `kinds` if given."""
    d = VQAData([], [], [], [], [], [])
    for i, (scene, qas) in enumerate(rows):
        d.images.append(scene.image)
        d.scenes.append(scene)
        for qa in qas:
            if kinds and qa.kind not in kinds:
                continue
            d.image_of.append(i)
            d.questions.append(qa.question)
            d.answers.append(qa.answer)
            d.kinds.append(qa.kind)
    return d


def image_inputs(vlm: VLM, images: list, cache_dir: Optional[str] = None) -> dict[str, torch.Tensor]:
    """{"features": (m, n, c)} through the feature cache for a frozen encoder, else {"images": (m, 3, S, S)}."""
    from lmlab.vision.preprocess import preprocess_batch

    enc = vlm.cfg.encoder
    if getattr(vlm.encoder, "frozen", False) and getattr(vlm.encoder, "weights_id", "random") == "random":
        with torch.no_grad():   # random weights have no cache key of their own: compute, keep in memory
            return {"features": vlm.encoder(preprocess_batch(images, enc.size, enc.mode)).float()}
    if getattr(vlm.encoder, "frozen", False):
        from lmlab.data.sources import default_data_dir
        from lmlab.vision.cache import FeatureCache

        root = Path(cache_dir or enc.cache_dir or default_data_dir() / "vlm_features")
        cache = FeatureCache(root, vlm.encoder, enc.name, enc.mode, enc.size)
        return {"features": cache.encode(images)}
    return {"images": preprocess_batch(images, enc.size, enc.mode)}


# --------------------------------------------------------------------------------------------- training
@dataclass
class VLMTrainResult:
    model: VLM
    final_loss: float
    stage_losses: dict[str, float]
    history: list[dict] = field(default_factory=list)
    out_dir: Optional[Path] = None
    seconds: float = 0.0
    expert_load: dict[str, float] = field(default_factory=dict)


def _peft_method(lm) -> str:
    h = getattr(lm, "peft", None)
    return h.method if h is not None else "none"


def prepare_stage(vlm: VLM, stage, seed: int) -> None:
    """Apply a stage's MoE-tuning (upcycle the LM) and PEFT, then set which parameters train."""
    if stage.moe is not None:
        from lmlab.models.upcycle import upcycle

        if _peft_method(vlm.lm) == "partial_lora":
            raise ConfigError(f"stages.{stage.name}: moe-tuning after partial_lora is not supported (it cannot merge)")
        if _peft_method(vlm.lm) == "lora":
            vlm.lm.peft.merge()
            del vlm.lm.peft
        m = stage.moe
        vlm.lm = upcycle(vlm.lm, n_experts=m.n_experts, top_k=m.top_k, router=m.router, every_other=m.every_other,
                         seed=seed, capacity_factor=m.capacity_factor, balance_weight=m.aux_weight)
    method = stage.peft.get("method", "none") if stage.peft else "none"
    if method != "none":
        if _peft_method(vlm.lm) == "lora":
            vlm.lm.peft.merge()
            del vlm.lm.peft
        elif _peft_method(vlm.lm) != "none":
            raise ConfigError(f"stages.{stage.name}: the LM already has {_peft_method(vlm.lm)} adapters")
        apply_peft(vlm.lm, dict(stage.peft))
        vlm.peft_cfg = dict(stage.peft)
    set_trainable(vlm, list(stage.train))


def train_vlm(cfg: VLMConfig, out_dir: "str | Path | None" = None, *, vlm: Optional[VLM] = None,
              data: Optional[VQAData] = None, callback: Optional[Callable[[dict], None]] = None) -> VLMTrainResult:
    """Train `vlm` (built from cfg when None) on `data` (cfg.data's train scenes when None) through
    cfg.stages; save it to out_dir (or cfg.out_dir) when one is given. Returns the model and losses."""
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(out_dir or cfg.out_dir) if (out_dir or cfg.out_dir) else None
    vlm = vlm or build_vlm(cfg)
    vlm.full_lm = cfg.lm.pretrained is None
    data = data or scene_vqa(cfg.data, "train", cfg.data.n_train)
    if len(data) == 0:
        raise ConfigError("data: no training examples (check data.kinds and data.n_train)")
    tok, n_img = vlm.tokenizer, vlm.n_image_tokens
    encoded = [encode_example(tok, vlm.format_prompt(q), a, n_img) for q, a in zip(data.questions, data.answers)]
    inputs = {k: v.to(device) for k, v in image_inputs(vlm, data.images).items()}
    image_of = torch.tensor(data.image_of)
    pad = tok.eos_id
    if out:
        write_run_files(out, cfg, cfg.seed, {"examples": len(data), "images": len(data.images),
                                             "image_tokens": n_img})
    metrics = MetricsLogger(out, tensorboard=False)
    history: list[dict] = []
    stage_losses: dict[str, float] = {}
    expert_load: dict[str, float] = {}
    t0, step_total, loss_val = time.time(), 0, float("nan")
    try:
        for si, stage in enumerate(cfg.stages):
            prepare_stage(vlm, stage, cfg.seed + si)
            if stage.moe is not None or ("lm" in stage.train and stage.peft.get("method", "none") == "none"):
                vlm.full_lm = True
            vlm.to(device).train()
            opt = torch.optim.AdamW(param_groups(vlm, stage.weight_decay), lr=stage.lr, foreach=False)
            rng = np.random.default_rng([cfg.seed, si])
            order, pos = rng.permutation(len(encoded)), 0
            t_stage, recent = time.time(), []
            for step in range(stage.steps):
                lr = lr_at(stage, step)
                for g in opt.param_groups:
                    g["lr"] = lr
                if pos + stage.batch_size > len(order):
                    order, pos = np.concatenate([order[pos:], rng.permutation(len(encoded))]), 0
                idx = order[pos:pos + stage.batch_size]
                pos += stage.batch_size
                batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad).items()}
                imgs = {k: v[image_of[idx].to(v.device)] for k, v in inputs.items()}
                res = vlm(batch["input_ids"], batch["image_mask"], targets=batch["targets"], **imgs)
                total = res.loss + res.aux_loss if res.aux_loss is not None else res.loss
                if not torch.isfinite(total.detach()):
                    raise ConfigError(f"stages.{stage.name}: loss is not finite at step {step + 1}; lower lr "
                                      f"(now {stage.lr})")
                opt.zero_grad(set_to_none=True)
                total.backward()
                params = [p for p in vlm.parameters() if p.requires_grad]
                gn = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip if stage.grad_clip > 0 else 1e30)
                opt.step()
                step_total += 1
                loss_val = float(res.loss.detach())
                recent.append(loss_val)
                if (step + 1) % stage.log_interval == 0 or step + 1 == stage.steps:
                    now = time.time()
                    rec = {"stage": stage.name, "stage_step": step + 1, "train_loss": float(np.mean(recent)),
                           "lr": lr, "grad_norm": float(gn), "trainable": count_trainable(vlm),
                           "examples_per_s": len(recent) * stage.batch_size / max(now - t_stage, 1e-9)}
                    if res.aux_loss is not None:
                        rec["aux_loss"] = float(res.aux_loss.detach())
                    t_stage, recent = now, []
                    history.append(metrics.log(step_total, rec))
                    if callback:
                        callback(rec)
            stage_losses[stage.name] = history[-1]["train_loss"] if history else loss_val
            if stage.moe is not None:
                expert_load = modality_expert_load(vlm, batch["image_mask"])
                history.append(metrics.log(step_total, {"stage": stage.name, **expert_load}))
    finally:
        metrics.close()
    vlm.eval()
    result = VLMTrainResult(vlm, loss_val, stage_losses, history, out, time.time() - t0, expert_load)
    if out:
        save_vlm(vlm, out)
        atomic_write_text(out / "result.json", json.dumps(
            {"final_loss": loss_val, "stage_losses": stage_losses, "seconds": result.seconds,
             "expert_load": expert_load}, indent=2))
    return result


# ------------------------------------------------------------------------------------------- save / load
def save_vlm(vlm: VLM, out_dir: "str | Path") -> Path:
    """Write the directory described in the module doc (atomically, file by file)."""
    from lmlab.config import save_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = getattr(vlm, "full_lm", vlm.cfg.lm.pretrained is None)
    peft_cfg = getattr(vlm, "peft_cfg", None) if _peft_method(vlm.lm) != "none" else None
    save_model(vlm.projector, out / "projector", {"kind": vlm.cfg.projector.kind})
    save_model(vlm.lm, out / "lm", {"model_config": vlm.lm.cfg.model_dump(mode="json")},
               keep=None if full else (lambda k: "lora_" in k))
    enc_saved = getattr(vlm.encoder, "weights_id", "random") == "random" or not getattr(vlm.encoder, "frozen", True)
    if enc_saved:
        save_model(vlm.encoder, out / "encoder", {"name": vlm.cfg.encoder.name})
    tmp = out / ".vlm_config.yaml.tmp"
    save_config(vlm.cfg, tmp)
    tmp.replace(out / "vlm_config.yaml")
    atomic_write_text(out / "vlm.json", json.dumps({
        "format": FORMAT, "lm_config": vlm.lm.cfg.model_dump(mode="json"), "peft": peft_cfg,
        "lm_weights": "full" if full else "adapters", "encoder_weights": enc_saved,
        "encoder_weights_id": getattr(vlm.encoder, "weights_id", None), "n_image_tokens": vlm.n_image_tokens,
        "tokenizer": "bytes" if isinstance(vlm.tokenizer, ByteTokenizer) else f"pretrained:{vlm.cfg.lm.pretrained}",
    }, indent=2))
    return out


def is_vlm_dir(path: "str | Path") -> bool:
    return (Path(path) / "vlm.json").exists() and (Path(path) / "vlm_config.yaml").exists()


def _pretrained_tokenizer(spec: str):
    from transformers import AutoTokenizer

    from lmlab.models.hf import HFTokenizer, resolve

    path, gguf = resolve(spec)
    return HFTokenizer(AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {})))


def load_vlm(path: "str | Path", device: str = "cpu") -> VLM:
    """A VLM saved by `save_vlm` / `train_vlm`, in eval mode."""
    from lmlab.models.decoder import Decoder
    from lmlab.models.hf import load_pretrained

    p = Path(path)
    if not is_vlm_dir(p):
        raise ConfigError(f"{str(p)!r} is not a saved VLM directory (no vlm.json + vlm_config.yaml)")
    cfg = load_config(p / "vlm_config.yaml", model=VLMConfig)
    meta = json.loads((p / "vlm.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{p}: VLM format {meta.get('format')!r}, this lmlab reads {FORMAT}")
    sd, _ = load_model_file(p / "lm.safetensors")
    if meta["lm_weights"] == "full":
        lm = Decoder(ModelConfig(**meta["lm_config"]))
        tok = ByteTokenizer() if meta["tokenizer"] == "bytes" else _pretrained_tokenizer(cfg.lm.pretrained)
    else:
        lm, tok = load_pretrained(cfg.lm.pretrained)
    if meta.get("peft"):
        apply_peft(lm, dict(meta["peft"]))
    if meta["lm_weights"] == "full":
        load_state_into(lm, sd, f"{p}/lm.safetensors")
    else:
        missing, unexpected = lm.load_state_dict(sd, strict=False)
        if unexpected:
            raise ConfigError(f"{p}/lm.safetensors: unexpected keys {unexpected[:3]}")
    vlm = build_vlm(cfg, lm=lm, tokenizer=tok)
    if meta.get("peft"):
        vlm.peft_cfg = dict(meta["peft"])
    vlm.full_lm = meta["lm_weights"] == "full"
    psd, _ = load_model_file(p / "projector.safetensors")
    load_state_into(vlm.projector, psd, f"{p}/projector.safetensors")
    if meta.get("encoder_weights"):
        esd, _ = load_model_file(p / "encoder.safetensors")
        load_state_into(vlm.encoder, esd, f"{p}/encoder.safetensors")
    return vlm.to(device).eval()


__all__ = ["VQAData", "scene_vqa", "image_inputs", "train_vlm", "VLMTrainResult", "prepare_stage", "save_vlm",
           "load_vlm", "is_vlm_dir", "build_vlm", "lora_layers"]
