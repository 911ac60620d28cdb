"""Atomic checkpoints: safetensors for every tensor, JSON for everything else.

Layout of one checkpoint directory `step_000123/`:
    model.safetensors       weights (tied weights stored once)
    optim.safetensors       optimizer state tensors, keys "<param_idx>.<name>"
    rng.safetensors         torch CPU (and CUDA) RNG states as uint8 tensors
    state.json              step, data position, optimizer scalars/hparams, python/numpy RNG, metrics, config

A checkpoint is written into a hidden `<dir>/.<name>.tmp<pid>/` and renamed into place (`lmlab.io.atomic_dir`,
atomic on POSIX), then the `latest` pointer is replaced atomically. A kill at any moment leaves the previous
checkpoint loadable. No pickle anywhere.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lmlab.io import atomic_dir, atomic_file, atomic_write_text  # noqa: F401 (atomic_write_text: used by trainer)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (safetensors refuses aliases)."""
    seen: set[tuple] = set()
    out = {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape))
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out


def load_state_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint",
                    strict: bool = True) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Tied weights were stored once: anything missing must be an alias of something loaded.
    params = dict(model.state_dict())
    really_missing = [k for k in missing if not any(params[k].data_ptr() == params[j].data_ptr()
                                                    for j in sd if j in params)]
    if strict and (really_missing or unexpected):
        raise ValueError(f"{source}: missing {really_missing[:5]}, unexpected {unexpected[:5]}")


def load_model_state(model: torch.nn.Module, path: Path | str, strict: bool = True) -> None:
    load_state_into(model, load_file(str(path)), f"checkpoint {path}", strict)


def save_model(model: torch.nn.Module, path: Path | str, meta: Optional[dict] = None,
               keep: Optional[Callable[[str], bool]] = None) -> Path:
    """A standalone model file: `<name>.safetensors` (weights) + `<name>.json` (e.g. {"model_config": …}),
    each written atomically. The format for everything that is not a resumable training checkpoint."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({k: v for k, v in model_state(model).items() if keep is None or keep(k)}, str(tmp))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta or {}, default=str))
    return path


def load_model_file(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a file written by `save_model`; a directory means `<dir>/model.safetensors`."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors model file (lmlab never loads pickled weights)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    return load_file(str(path)), meta


def load_decoder(path: Path | str) -> torch.nn.Module:
    """An lmlab Decoder from a `save_model` file (or its directory) whose metadata holds "model_config".

    Files saved from a model that wraps a decoder hold the same weights under a prefix: a PolicyWithValue
    ("decoder." + value_head) or a RewardModel ("backbone." + heads); the prefix is stripped and the heads
    dropped, so any align stage's output can seed the next. Anything else raises one-line ValueError."""
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    try:
        sd, meta = load_model_file(path)
        model = Decoder(ModelConfig(**meta["model_config"]))
        sd = {k.removeprefix("decoder.").removeprefix("backbone."): v for k, v in sd.items()
              if not k.startswith(("value_head.", "heads."))}
        load_state_into(model, sd, str(path))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an lmlab decoder checkpoint ({e})") from None
    return model


def _optim_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{name}"] = val.detach().contiguous().cpu()
            else:
                meta["scalars"][f"{idx}.{name}"] = val
    return tensors, meta


def _optim_join(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = val
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {"python": repr(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    import ast

    random.setstate(ast.literal_eval(meta["python"]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(ckpt_dir: Path | str, step: int, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None, state: Optional[dict] = None,
                    keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = ckpt_dir / name
    with atomic_dir(final, fsync=True) as tmp:  # re-saving the same step replaces it
        save_file(model_state(model), str(tmp / "model.safetensors"))
        meta: dict[str, Any] = {"step": step, **(state or {})}
        if optimizer is not None:
            t, m = _optim_split(optimizer)
            save_file(t, str(tmp / "optim.safetensors"))
            meta["optimizer"] = m
        rt, rm = rng_state()
        save_file(rt, str(tmp / "rng.safetensors"))
        meta["rng"] = rm
        (tmp / "state.json").write_text(json.dumps(meta, default=str), encoding="utf-8")
    atomic_write_text(ckpt_dir / "latest", name)
    # Keep the newest `keep` complete checkpoints.
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path | str) -> Optional[Path]:
    """The newest complete checkpoint (the `latest` pointer if valid, else the highest step dir)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    ptr = ckpt_dir / "latest"
    if ptr.exists():
        p = ckpt_dir / ptr.read_text().strip()
        if (p / "state.json").exists():
            return p
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path | str, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None, restore_rng: bool = True) -> dict:
    path = Path(path)
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (state.json missing)")
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    load_model_state(model, path / "model.safetensors")
    if optimizer is not None and (path / "optim.safetensors").exists():
        optimizer.load_state_dict(_optim_join(load_file(str(path / "optim.safetensors")), meta["optimizer"]))
    if restore_rng and (path / "rng.safetensors").exists():
        set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
    return meta
