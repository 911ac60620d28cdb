"""MMLU log-likelihood scoring: lmlab's batched scorer vs lm-evaluation-harness's HF backend, same requests.

    PYTHONPATH=. python benchmarks/mmlu_loglik.py                      # 100 questions, 5 rounds, 1 thread
    PYTHONPATH=. python benchmarks/mmlu_loglik.py --shots 5            # lm-eval's 5-shot MMLU layout
    PYTHONPATH=. python benchmarks/mmlu_loglik.py --shots 5 --subject high_school_biology --n 16
    PYTHONPATH=. python benchmarks/mmlu_loglik.py --n 20 --reps 2      # a quick check (not a reported figure)

The requests are the ones `lmlab eval --task mmlu --mode loglikelihood --limit N` sends: the first N questions
of lmlab's MMLU task (`mmlu_mc`: the lm-eval-style lettered prompt, continuations " A".." D"), 4 per question.
lm-eval's own MMLU task downloads its data from a hub, so its model is fed these requests directly as
`Instance`s: `HFLM.loglikelihood` (lm-eval ≥ 0.4, an oracle here, never a dependency of lmlab).

Both sides use the same weights (the embedded SmolLM2-135M-Instruct GGUF dequantised by transformers once; lmlab's
Decoder is mapped from that model), fp32, the same torch thread count, and their own tokenisation of the text
requests inside the timed call. Batching: lm-eval's policy is `--lm-eval-batch` rows per forward, default 1 (its
own default, and its fastest here: 20 questions took 7.9 CPU-s at batch 1, 10.8 at 8, 17.7 at 32, since its
batches are right-padded and it takes log_softmax over every position); its requests are sorted longest first
and its one-token-continuation cache scores the four letters from one forward, so a row is a question. lmlab's
is its default (`score_loglikelihood`): contexts sorted longest first and packed into forwards of ≤ 2048 padded
tokens with ≤ 10 % padding, the tokens all prompts share prefilled once.

Checks: every question's chosen letter (argmax of the four log-likelihoods) on both sides, the largest
|Δ log p| over all requests, and that both sides scored the same token ids. Timing: one warm-up call of each
side on 2 questions, then `--reps` interleaved rounds (the order alternating; the figures are written after
every round); questions/s from the median process CPU time (the right clock with one thread while other jobs
load the machine) and from the median wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402


def mmlu_requests(n: int, shots: int = 0, only: str = "") -> tuple[list[tuple[str, str]], list[str]]:
    """(prompt, continuation) pairs of the first n questions, 4 per question in letter order, and gold letters.
    shots > 0: lm-eval's MMLU few-shot layout ("The following are multiple choice questions (with answers)
    about <subject>." then `shots` answered questions, then the question), the shots being the first
    questions of the same subject (in the task's order) outside the n scored ones — the data holds no dev split."""
    from lmlab.eval.tasks.mmlu import mmlu_task, subject

    task = mmlu_task(mode="loglikelihood")
    docs = [d for d in task.docs if not only or subject(d) == only][:n]   # only: one subject's questions
    if len(docs) < n:
        print(f"note: lmlab's MMLU data has {len(docs)} questions, fewer than --n {n}")
    prompts = [task.prompt(d) for d in docs]
    if shots:
        scored = {id(d) for d in docs}
        pool: dict[str, list[dict]] = {}
        for d in task.docs:
            if id(d) not in scored and len(pool.setdefault(subject(d), [])) < shots:
                pool[subject(d)].append(d)
        body = lambda d: task.prompt(d).split("\n\n", 1)[1]  # noqa: E731  (lmlab's prompt without its header)
        prompts = [f"The following are multiple choice questions (with answers) about "
                   f"{subject(d).replace('_', ' ')}.\n\n"
                   + "".join(f"{body(s)} {s['correct_answer'].strip().upper()}\n\n" for s in pool[subject(d)])
                   + body(d) for d in docs]
    reqs = [(p, c) for p, d in zip(prompts, docs) for c in task.choices(d)]
    return reqs, [d["correct_answer"].strip().upper() for d in docs]


def letters(lps: list[float]) -> list[str]:
    return ["ABCD"[max(range(4), key=lps[i:i + 4].__getitem__)] for i in range(0, len(lps), 4)]


def summarise(a, times, reqs, gold, ours, theirs, load_start) -> dict:
    """Agreement (from the latest round) and speed (medians over the rounds so far)."""
    r_ours, r_theirs = times["lmlab"][-1].extra["res"], times["lm-eval"][-1].extra["res"]
    lp_ours, lp_theirs = [r[0] for r in r_ours], [r[0] for r in r_theirs]
    ch_ours, ch_theirs = letters(lp_ours), letters(lp_theirs)
    nq = len(gold)
    res = {
        "questions": nq, "shots": a.shots, "subject": a.subject or "all", "requests": len(reqs),
        "mean_prompt_tokens": sum(len(c) for c, _ in ours[::4]) / nq, "threads": a.threads,
        "lm_eval_batch": a.lm_eval_batch, "lmlab_batch_tokens": a.batch_tokens, "rounds": len(times["lmlab"]),
        "same_token_ids": f"{sum(list(x) == list(y) for x, y in zip(ours, theirs))}/{len(reqs)}",
        "letters_agree": f"{sum(x == y for x, y in zip(ch_ours, ch_theirs))}/{nq}",
        "is_greedy_agree": f"{sum(x[1] == y[1] for x, y in zip(r_ours, r_theirs))}/{len(reqs)}",
        "max_abs_dlogp": max(abs(x - y) for x, y in zip(lp_ours, lp_theirs)),
        "acc_lmlab": sum(x == g for x, g in zip(ch_ours, gold)) / nq,
        "acc_lm_eval": sum(x == g for x, g in zip(ch_theirs, gold)) / nq,
        "load_avg_1m_start": load_start, "load_avg_1m_now": round(os.getloadavg()[0], 2),
    }
    for side in ("lmlab", "lm-eval"):
        for clock in ("cpu", "wall"):
            res[f"{side}_q_per_s_{clock}"] = nq / median_of(times[side], clock)
    for clock in ("cpu", "wall"):
        r = ratio(times, "lm-eval", "lmlab", clock)
        res[f"speedup_{clock}"] = r["median_ratio"]
        res[f"speedup_{clock}_per_round"] = [round(x, 3) for x in r["per_round"]]
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="questions (4 requests each)")
    ap.add_argument("--shots", type=int, default=0, help="few-shot prompts (lm-eval's MMLU layout); 0 = lmlab's task")
    ap.add_argument("--subject", default="", help="only this subject's questions (e.g. high_school_biology)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (≥ 5 for a reported figure)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lm-eval-batch", type=int, default=1,
                    help="lm-eval HFLM batch_size (rows per forward); 1 is its default and its fastest here")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="lmlab: padded tokens per forward")
    ap.add_argument("--first", choices=["lm-eval", "lmlab"], default="lm-eval", help="side that opens round 1")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lmlab.infer.backend_impls import _with_bos
    from lmlab.infer.scoring import score_loglikelihood
    from lmlab.models.hf import decoder_from_hf_model, load_hf

    hf, tok = load_hf("smollm2", torch.float32)
    model = decoder_from_hf_model(hf, torch.float32)
    lm = HFLM(pretrained=hf, tokenizer=tok.tok, batch_size=a.lm_eval_batch, device="cpu", dtype="float32")
    reqs, gold = mmlu_requests(a.n, a.shots, a.subject)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(reqs)]

    def run_lmlab():
        ctx = [_with_bos(tok, tok.encode(p)) for p, _ in reqs]
        cont = [tok.encode(c) for _, c in reqs]
        return {"res": score_loglikelihood(model, list(zip(ctx, cont)), batch_tokens=a.batch_tokens)}

    def run_lm_eval():
        return {"res": lm.loglikelihood(instances, disable_tqdm=True)}

    # the same token ids on both sides (lm-eval moves a context's trailing spaces into the continuation)
    ours = [(_with_bos(tok, tok.encode(p)), tok.encode(c)) for p, c in reqs]
    theirs = [lm._encode_pair(p, c) for p, c in reqs]

    lm.loglikelihood(instances[:8], disable_tqdm=True)   # warm-up on 2 questions: allocator, lazy imports
    score_loglikelihood(model, ours[:8], batch_tokens=a.batch_tokens)
    load_start = round(os.getloadavg()[0], 2)
    sides = {"lm-eval": run_lm_eval, "lmlab": run_lmlab}
    if a.first == "lmlab":
        sides = {"lmlab": run_lmlab, "lm-eval": run_lm_eval}
    times: dict[str, list] = {n: [] for n in sides}
    for r in range(a.reps):   # one interleaved round at a time, the order alternating; figures saved every round
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        got = interleaved({n: sides[n] for n in order}, reps=1, warmup=0, log=lambda m: None)
        for n in sides:
            times[n] += got[n]
        print(f"round {r + 1}/{a.reps} ({' then '.join(order)}): "
              + ", ".join(f"{n} {times[n][-1].cpu:.2f} CPU-s" for n in sides), flush=True)
        res = summarise(a, times, reqs, gold, ours, theirs, load_start)
        if a.out:
            from lmlab.io import atomic_write_text
            atomic_write_text(Path(a.out), json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
