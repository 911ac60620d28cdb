"""`lmlab train CONFIG [key=value ...]`."""
from __future__ import annotations

import os
import time
from pathlib import Path

from lmlab.argtypes import out_path, text


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config with dotted overrides",
                       description="Train a decoder from a YAML config (see configs/). Overrides use dotted keys, "
                                   "e.g. `lmlab train configs/base.yaml model.n_layer=4 train.lr=3e-4`. The run dir "
                                   "gets config.yaml, meta.json, metrics.jsonl, TensorBoard logs and checkpoints; "
                                   "rerunning with the same --out resumes from the latest checkpoint.")
    p.add_argument("config", nargs="?", type=text, help="YAML config file (omit for defaults)")
    p.add_argument("overrides", nargs="*", type=text, help="dotted overrides key=value")
    p.add_argument("--out", type=out_path, help="run directory (default runs/<name>-<timestamp>)")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --out")
    p.add_argument("--allow-large", action="store_true",
                   help="train even when the estimated memory exceeds what is available")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lmlab.config import load_config
    from lmlab.resources import check_memory

    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not Path(config).exists():  # `lmlab train key=value` without a file
        overrides.insert(0, config)
        config = None
    cfg = load_config(config, overrides)
    check_memory(cfg, allow_large=args.allow_large, device=cfg.train.device)  # before anything is built
    from lmlab.train.trainer import train  # torch: only once the config is known to be good

    out = args.out or Path(cfg.out_dir or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = train(cfg, out, resume=not args.no_resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(f"done: {res.steps} steps, {res.tokens:,} tokens, val_loss {res.val_loss:.4f} "
          f"({', '.join(f'{k} {v:.3f}' for k, v in res.val_losses.items())}) -> {out}")
    return 0
