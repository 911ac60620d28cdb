"""One RLOO iteration (generate k completions per prompt, score, reference log-probs, one policy update):
lmlab's loop vs TRL's RLOOTrainer, on the same tiny Llama-shaped model, batch and generation length.

    OMP_NUM_THREADS=1 python benchmarks/rl_throughput.py [--reps 5] [--gen 16] [--prompts 8] [--k 4]

Both sides: d=64, 2 layers, 4 heads, vocab 64, prompt length 8, `--gen` new tokens (no early stop: the
reward ignores EOS and both samplers run the full length), KL β = 0.05, one optimizer step per generation
batch, fp32 on CPU, 1 thread. The two loops run interleaved, one iteration each in turn (lmlab, TRL, lmlab,
TRL, …: each loop runs in its own thread and they hand a baton back and forth, so only one computes at a
time): one warm-up iteration each, then `--reps` (≥ 5) rounds. Reports samples/s and generated tokens/s of
each (median over rounds of the iteration's thread CPU time; wall time printed too) and the median of the
per-round ratios. TRL is optional: without it only lmlab's numbers are printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))

V, D, L, H, TP = 64, 64, 2, 4, 8


def reward_of(tokens: list[int]) -> float:
    return sum(1.0 for t in tokens if t % 2 == 0) / max(len(tokens), 1)   # fraction of even token ids


class Baton:
    """Strict turn-taking between two threads: `wait(me)` blocks until it is `me`'s turn (or the other side
    has finished), `give(to)` hands the turn over."""

    def __init__(self, first: str):
        self.cv, self.holder, self.done = threading.Condition(), first, set()

    def wait(self, me: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.holder == me or (self.done - {me}))

    def give(self, to: str) -> None:
        with self.cv:
            self.holder = to
            self.cv.notify_all()

    def finish(self, me: str, other: str) -> None:
        with self.cv:
            self.done.add(me)
            self.holder = other
            self.cv.notify_all()


def bench_lmlab(iters: int, gen: int, prompts: int, k: int, baton: Baton | None = None) -> list[dict]:
    """`iters` iterations; with a baton, hands the turn to "trl" after each and waits for it back."""
    from lmlab.align.ppo import RLConfig, rl_train
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    pol = Decoder(ModelConfig(vocab_size=V, d_model=D, n_layer=L, n_head=H, max_seq_len=64, tie_embeddings=False))
    ref = copy.deepcopy(pol)
    cfg = RLConfig(algo="rloo", iterations=iters, prompts_per_iter=prompts, samples_per_prompt=k,
                   max_new_tokens=gen, ppo_epochs=1, minibatches=1, kl_coef=0.05, lr=1e-4, seed=0)

    def prompt_fn(n, g):
        return torch.randint(2, V, (n, TP), generator=g)

    def reward_fn(p, y):
        return torch.tensor([reward_of(r) for r in y.tolist()])

    times: list[dict] = []
    clock = {"cpu": time.thread_time(), "wall": time.perf_counter()}

    def log(entry: dict) -> None:   # called at the end of each iteration
        times.append({"cpu": time.thread_time() - clock["cpu"], "wall": time.perf_counter() - clock["wall"],
                      "t_generate": entry.get("t_generate"), "t_train": entry.get("t_train")})
        if baton is not None:
            baton.give("trl")
            baton.wait("lmlab")
        clock.update(cpu=time.thread_time(), wall=time.perf_counter())

    rl_train(pol, ref, prompt_fn, reward_fn, cfg, log=log)
    return times


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, V)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def bench_trl(iters: int, gen: int, prompts: int, k: int, baton: Baton | None = None) -> list[dict]:
    """`iters` TRL steps; with a baton, each step waits for its turn and hands it back to "lmlab" after."""
    import logging
    import tempfile

    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=192, num_hidden_layers=L,
                                         num_attention_heads=H, max_position_embeddings=64, pad_token_id=0,
                                         eos_token_id=None, bos_token_id=None, tie_word_embeddings=False))
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(f"t{int(t)}" for t in torch.randint(2, V, (TP,), generator=g)) for _ in range(64)]

    def reward_fn(completions, completion_ids=None, **kw):
        return [reward_of(c) for c in completion_ids]

    times: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if baton is not None:
                baton.wait("trl")
            self.c, self.t = time.thread_time(), time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append({"cpu": time.thread_time() - self.c, "wall": time.perf_counter() - self.t})
            if baton is not None:
                baton.give("lmlab")

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(f"{d}/model")       # TRL builds its reference model from a path
        tok.save_pretrained(f"{d}/model")
        args = RLOOConfig(output_dir=f"{d}/out", per_device_train_batch_size=prompts * k, num_generations=k,
                          max_completion_length=gen, max_steps=iters, learning_rate=1e-4, beta=0.05,
                          report_to="none", logging_steps=1000, save_strategy="no", use_cpu=True,
                          temperature=1.0, top_p=1.0, top_k=0, num_iterations=1, steps_per_generation=1,
                          dataloader_num_workers=0, disable_tqdm=True,
                          generation_kwargs={"min_new_tokens": gen, "eos_token_id": None})
        tr = RLOOTrainer(model=f"{d}/model", reward_funcs=reward_fn, args=args,
                         train_dataset=Dataset.from_dict({"prompt": rows}), processing_class=tok,
                         callbacks=[Timer()])
        tr.train()
    return times


def trl_in_thread(iters: int, gen: int, prompts: int, k: int):
    """TRL's `iters` iterations in a daemon thread, taking turns with the caller through a Baton ("lmlab" holds
    the first turn). Returns (baton, results, errors, thread): results fill as TRL runs; errors holds what the
    thread raised, for the caller to raise in the main thread."""
    baton = Baton("lmlab")
    theirs: list[dict] = []
    err: list[BaseException] = []

    def body():
        try:
            theirs.extend(bench_trl(iters, gen, prompts, k, baton))
        except BaseException as e:  # surface it in the main thread
            err.append(e)
        finally:
            baton.finish("trl", "lmlab")

    th = threading.Thread(target=body, daemon=True)
    th.start()
    return baton, theirs, err, th


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5, help="timed rounds after one warm-up (≥ 5 for a figure)")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    n = a.reps + 1
    b = a.prompts * a.k
    print(f"batch {a.prompts}×{a.k} samples, {a.gen} new tokens, d={D} L={L} vocab={V}, 1 CPU thread, "
          f"1 warm-up + {a.reps} interleaved rounds")
    try:
        import trl  # noqa: F401
    except ImportError as e:
        ours = bench_lmlab(n, a.gen, a.prompts, a.k)[1:]
        c = statistics.median(t["cpu"] for t in ours)
        print(f"lmlab RLOO : {b / c:8.1f} samples/s  {b * a.gen / c:9.1f} tokens/s (per CPU-s)")
        print(f"TRL        : not installed ({e}); install trl to compare")
        return
    baton, theirs, err, th = trl_in_thread(n, a.gen, a.prompts, a.k)
    try:
        ours = bench_lmlab(n, a.gen, a.prompts, a.k, baton)
    finally:
        baton.finish("lmlab", "trl")
    th.join()
    if err:
        raise err[0]
    ours, theirs = ours[1:], theirs[1:]      # drop the warm-up iteration of each
    for name, ts in (("lmlab RLOO", ours), ("TRL RLOO", theirs)):
        c, w = statistics.median(t["cpu"] for t in ts), statistics.median(t["wall"] for t in ts)
        print(f"{name:10s} : {b / c:8.1f} samples/s  {b * a.gen / c:9.1f} tokens/s per CPU-s  "
              f"(median iteration {c * 1e3:.0f} CPU-ms, {w * 1e3:.0f} wall-ms over {len(ts)})")
    per_round = [t["cpu"] / o["cpu"] for o, t in zip(ours, theirs)]
    wall = [t["wall"] / o["wall"] for o, t in zip(ours, theirs)]
    print("per-round ratios lmlab/TRL: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(f"ratio lmlab/TRL: {statistics.median(per_round):.2f}× samples/s (median of {len(per_round)} "
          f"interleaved rounds, CPU time; wall time {statistics.median(wall):.2f}×) (target ≥ 1.5×)")


if __name__ == "__main__":
    main()
