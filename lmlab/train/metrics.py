"""What every run writes beside its outputs: the resolved config and metadata, once, and a metrics stream.

    config.yaml     the resolved config (any pydantic config: RunConfig, AlignConfig, ...)
    meta.json       seed, package versions, git commit (+ dirty flag), python, host, time, caller's extras
    metrics.jsonl   one JSON record per `log` call, "step" first; TensorBoard scalars under tb/ as well

The trainer and `lmlab align` both write through this module, so their run directories read the same.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel

from lmlab.io import atomic_write_text


class MetricsLogger:
    """Appends records to `<out_dir>/metrics.jsonl` and, with `tensorboard`, their numeric values to
    `<out_dir>/tb/` (skipped when TensorBoard is not installed). `out_dir=None` logs nowhere (e.g. a
    non-zero rank)."""

    def __init__(self, out_dir: Optional[str | Path], tensorboard: bool = True):
        self.file = None
        self.writer = None
        if out_dir is None:
            return
        out = Path(out_dir)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:
                self.writer = None
        self.file = open(out / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, step: int, rec: dict) -> dict:
        """Write `{"step": step, **rec}` (flushed at once) and return it."""
        rec = {"step": step, **rec}
        if self.file:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)
        return rec

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.writer:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_metadata(seed: Optional[int], extra: Optional[dict] = None) -> dict:
    """Seed, package versions, git commit and dirty flag, python, host, thread count and time (+ `extra`)."""
    from importlib import metadata

    import torch

    versions = {}
    for pkg in ("lmlab", "torch", "numpy", "tokenizers", "safetensors", "transformers", "pydantic"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True,
                                    text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git on this machine, or it hung
        commit, dirty = None, None
    return {"seed": seed, "versions": versions, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "host": platform.node(), "torch_threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(extra or {})}


def write_run_files(out_dir: str | Path, cfg: BaseModel, seed: Optional[int], extra: Optional[dict] = None) -> None:
    """`config.yaml` (the resolved `cfg`) and `meta.json` (`run_metadata(seed, extra)`), each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    atomic_write_text(out_dir / "meta.json", json.dumps(run_metadata(seed, extra), indent=2))
