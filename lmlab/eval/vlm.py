"""VQA evaluation of a VLM on synthetic scenes, and `lmlab vlm train|eval`.

    evaluate_vqa(vlm, data)   exact match of the greedy answer (lower-cased, trailing '.' and spaces dropped)
                              against the scene's ground truth, overall and per question kind; answers come
                              from lmlab.infer.vlm.generate in batches, so questions about one image share
                              its prefix (Hydragen).

    lmlab vlm train configs/vlm/tiny.yaml [key=value ...] --out runs/vlm    train, save, evaluate (eval.json)
    lmlab vlm eval runs/vlm [--split heldout] [--n 50]                      evaluate a saved VLM
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from lmlab.backend import GenerationConfig


def normalize_answer(s: str) -> str:
    return " ".join(s.strip().lower().rstrip(".").split())


def evaluate_vqa(vlm, data=None, *, split: Optional[str] = None, n: Optional[int] = None, batch_size: int = 64,
                 max_new_tokens: Optional[int] = None, n_samples: int = 8, hydragen: bool = True) -> dict:
    """Exact-match accuracy of `vlm` on `data` (a lmlab.train.vlm.VQAData; default: n scenes of
    cfg.data.eval_split, which is the held-out split unless configured otherwise, starting after the
    training scenes). Returns {"accuracy", "by_kind": {kind: accuracy}, "n", "samples": [first n_samples
    {"image", "question", "answer", "output", "kind"}]}."""
    from lmlab.infer.engine import Engine
    from lmlab.infer.vlm import generate
    from lmlab.train.vlm import scene_vqa

    if data is None:
        spec = vlm.cfg.data
        split = split or spec.eval_split
        start = spec.n_train if split == "train" else 0
        data = scene_vqa(spec, split, n or spec.n_eval, start=start)
    tok = vlm.tokenizer
    longest = max((len(tok.encode(" " + a)) for a in data.answers), default=1)
    gen = GenerationConfig(max_new_tokens=max_new_tokens or longest + 2, temperature=0.0, stop=["\n"])
    engine = Engine(vlm.lm, tok, hydragen=hydragen)
    outputs: list[str] = []
    for s in range(0, len(data), batch_size):
        imgs = [data.images[i] for i in data.image_of[s:s + batch_size]]
        outputs += [row[0] for row in generate(vlm, imgs, data.questions[s:s + batch_size], gen, engine=engine)]
    hits: dict[str, list[bool]] = defaultdict(list)
    for out, ans, kind in zip(outputs, data.answers, data.kinds):
        hits[kind].append(normalize_answer(out) == normalize_answer(ans))
    every = [h for v in hits.values() for h in v]
    samples = [{"image": data.images[data.image_of[i]], "question": data.questions[i], "answer": data.answers[i],
                "output": outputs[i].strip(), "kind": data.kinds[i]} for i in range(min(n_samples, len(data)))]
    return {"accuracy": sum(every) / max(len(every), 1), "n": len(every),
            "by_kind": {k: sum(v) / len(v) for k, v in sorted(hits.items())}, "samples": samples}


def _summary(m: dict) -> str:
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in m["by_kind"].items())
    return f"VQA exact match {m['accuracy']:.3f} on {m['n']} questions ({kinds})"


# ---------------------------------------------------------------------------------------------------- CLI
def register(sub) -> None:
    p = sub.add_parser("vlm", help="train or evaluate a vision-language model on synthetic scenes",
                       description="`lmlab vlm train CONFIG [key=value ...] --out DIR` trains the stages of a VLM "
                                   "config (configs/vlm/), saves the VLM to DIR and evaluates it; `lmlab vlm eval "
                                   "DIR` evaluates a saved VLM. A saved VLM also works with `lmlab generate --image` "
                                   "and `lmlab serve --model DIR`.")
    vsub = p.add_subparsers(dest="vlm_cmd", metavar="VERB")
    vsub.required = True
    t = vsub.add_parser("train", help="train (stage by stage), save and evaluate a VLM")
    t.add_argument("config", nargs="?", help="VLM YAML config (configs/vlm/*.yaml; omit for defaults)")
    t.add_argument("overrides", nargs="*", help="dotted overrides key=value")
    t.add_argument("--out", type=Path, help="output dir (default: out_dir of the config, else runs/<name>)")
    t.add_argument("--no-eval", action="store_true")
    t.set_defaults(func=run_train)
    e = vsub.add_parser("eval", help="VQA exact match of a saved VLM, per question kind")
    e.add_argument("model", help="saved VLM directory")
    e.add_argument("--split", choices=["train", "heldout"], default=None, help="default: the config's eval_split")
    e.add_argument("--n", type=int, default=None, help="scenes (default: the config's n_eval)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.set_defaults(func=run_eval)


def run_train(args) -> int:
    from lmlab.config import load_config
    from lmlab.io import atomic_write_text
    from lmlab.models.vlm import VLMConfig
    from lmlab.train.vlm import train_vlm

    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not Path(config).exists():
        overrides.insert(0, config)
        config = None
    cfg = load_config(config, overrides, model=VLMConfig)
    out = args.out or Path(cfg.out_dir or Path("runs") / cfg.name)
    res = train_vlm(cfg, out)
    print(f"trained: {', '.join(f'{k} loss {v:.3f}' for k, v in res.stage_losses.items())} "
          f"in {res.seconds:.0f}s -> {out}")
    if not args.no_eval:
        m = evaluate_vqa(res.model)
        atomic_write_text(out / "eval.json", json.dumps({k: v for k, v in m.items() if k != "samples"}, indent=2))
        print(_summary(m))
    return 0


def run_eval(args) -> int:
    from lmlab.train.vlm import load_vlm

    vlm = load_vlm(args.model)
    m = evaluate_vqa(vlm, split=args.split, n=args.n)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "samples"}, indent=2))
    else:
        print(_summary(m))
        for s in m["samples"][:4]:
            print(f"  {s['question']!r} -> {s['output']!r} (gold {s['answer']!r})", file=sys.stdout)
    return 0
