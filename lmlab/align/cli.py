"""`lmlab align STAGE [key=value ...] --config configs/align/<stage>.yaml` (stages: lmlab.align.stages)."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("align", help="post-training: SFT, reward models (BT/IDS/ODIN), DPO, PPO, RLOO",
                       description="Run one post-training stage from a YAML config (see configs/align/) with dotted "
                                   "overrides, e.g. `lmlab align dpo dpo.beta=0.2 init_from=runs/align/sft --config "
                                   "configs/align/dpo.yaml`. The out_dir gets config.yaml, meta.json, metrics.jsonl, "
                                   "TensorBoard logs, model.safetensors and summary.json.")
    p.add_argument("stage", metavar="STAGE",
                   help="sft | rm | dpo | rl, or an rl algorithm (ppo | rloo | grpo) for the rl stage with that "
                        "rl.algo (`lmlab list` shows every stage and algorithm)")
    p.add_argument("--config", help="YAML file (see configs/align/)")
    p.add_argument("--allow-large", action="store_true",
                   help="run even when the estimated memory exceeds what is available")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.lr=3e-4 model.n_layer=2")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import os

    from lmlab.align.config import load_align_config
    from lmlab.align.stages import run_stage
    from lmlab.resources import check_model_memory

    from lmlab.registry import ALIGN_STAGES

    # a stage may bring its own config model (e.g. cgpo: AlignConfig + a `cgpo` section)
    loader = getattr(ALIGN_STAGES.get(args.stage), "load_config", None) if args.stage in ALIGN_STAGES else None
    cfg = (loader or load_align_config)(args.config, args.overrides)
    # before anything is built: the largest batch any stage forms, at the model's full length
    batch = max(cfg.sft.batch_size, cfg.rm.batch_size, 2 * cfg.dpo.batch_size,
                cfg.rl.prompts_per_iter * cfg.rl.samples_per_prompt)
    check_model_memory(cfg.model, batch, cfg.model.max_seq_len,
                       allow_large=args.allow_large or bool(os.environ.get("LMLAB_ALLOW_LARGE")))
    summary = run_stage(args.stage, cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0
