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
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. sft.lr=3e-4 model.n_layer=2 "
                   "(a first .yaml argument is the config: `lmlab align rl configs/align/rloo.yaml`)")
    r = p.add_argument_group("distributed rl (lmlab.align.hybridflow: the rl stage as a Ray dataflow)")
    r.add_argument("--ray", action="store_true", help="run the rl stage on a local Ray cluster started on demand")
    r.add_argument("--ray-address", metavar="ADDR", help="run the rl stage on an existing Ray cluster (host:port)")
    r.add_argument("--placement", choices=["colocated", "split"], default="colocated",
                   help="colocated: every role time-shares the same workers; split: actor+ref and rollout on "
                        "disjoint workers")
    r.add_argument("--rollout-workers", type=int, default=2, metavar="N", help="rollout workers (default 2)")
    r.add_argument("--actor-workers", type=int, default=1, metavar="N",
                   help="data-parallel actor workers (default 1; > 1 runs SPMD with torch.distributed)")
    r.add_argument("--cpus-per-worker", type=float, default=0.25, metavar="X", help="Ray num_cpus of each worker")
    r.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="X", help="Ray num_gpus of each worker")
    r.add_argument("--plan", metavar="CLUSTER",
                   help='print the placement search for a described GPU cluster, e.g. "16xH100, actor 7B, critic '
                        '7B" (an analytic model, not a measurement) and exit')
    p.set_defaults(func=_run)


def _run(args) -> int:
    import os

    from lmlab.align.config import load_align_config
    from lmlab.align.stages import run_stage
    from lmlab.resources import check_model_memory

    if args.plan:
        from lmlab.align.hybridflow.plan import format_plan, parse_cluster

        print(format_plan(parse_cluster(args.plan)))
        return 0
    if args.config is None and args.overrides and args.overrides[0].endswith((".yaml", ".yml")) \
            and "=" not in args.overrides[0]:
        args.config, args.overrides = args.overrides[0], args.overrides[1:]
    from lmlab.registry import ALIGN_STAGES

    # a stage may bring its own config model (e.g. cgpo: AlignConfig + a `cgpo` section)
    loader = getattr(ALIGN_STAGES.get(args.stage), "load_config", None) if args.stage in ALIGN_STAGES else None
    cfg = (loader or load_align_config)(args.config, args.overrides)
    # before anything is built: the largest batch any stage forms, at the model's full length
    batch = max(cfg.sft.batch_size, cfg.rm.batch_size, 2 * cfg.dpo.batch_size,
                cfg.rl.prompts_per_iter * cfg.rl.samples_per_prompt)
    check_model_memory(cfg.model, batch, cfg.model.max_seq_len,
                       allow_large=args.allow_large or bool(os.environ.get("LMLAB_ALLOW_LARGE")))
    if args.ray or args.ray_address:
        from lmlab.align.hybridflow.stage import make_placement, run_stage_dataflow

        for flag, v in (("--rollout-workers", args.rollout_workers), ("--actor-workers", args.actor_workers)):
            if v < 1:
                raise ValueError(f"{flag}={v}: must be >= 1")
        pl = make_placement(args.placement, args.rollout_workers, args.actor_workers, args.cpus_per_worker,
                            args.gpus_per_worker)
        summary = run_stage_dataflow(args.stage, cfg, pl, args.ray_address,
                                     device="cuda" if args.gpus_per_worker else "cpu")
    else:
        summary = run_stage(args.stage, cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0
