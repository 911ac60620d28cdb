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
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.lr=3e-4 model.n_layer=2")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lmlab.align.config import load_align_config
    from lmlab.align.stages import run_stage

    summary = run_stage(args.stage, load_align_config(args.config, args.overrides))
    print(json.dumps(summary, indent=2, default=str))
    return 0
