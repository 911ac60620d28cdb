"""One RLOO iteration (generate k completions per prompt, score, reference log-probs, one policy update):
lmlab's loop vs TRL's RLOOTrainer, on the same tiny Llama-shaped model, batch and generation length.

    OMP_NUM_THREADS=1 python benchmarks/rl_throughput.py [--iters 5] [--gen 16] [--prompts 8] [--k 4]

Both sides: d=64, 2 layers, 4 heads, vocab 64, prompt length 8, `--gen` new tokens (no early stop: the
reward ignores EOS and both samplers run the full length), KL β = 0.05, one optimizer step per generation
batch, fp32 on CPU, 1 thread. Reports samples/s and generated tokens/s (median over iterations after one
warm-up) and the ratio. TRL is optional: without it only lmlab's numbers are printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

V, D, L, H, TP = 64, 64, 2, 4, 8


def reward_of(tokens: list[int]) -> float:
    return sum(1.0 for t in tokens if t % 2 == 0) / max(len(tokens), 1)   # fraction of even token ids


def bench_lmlab(iters: int, gen: int, prompts: int, k: int) -> dict:
    from lmlab.align.ppo import RLConfig, rl_train
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    pol = Decoder(ModelConfig(vocab_size=V, d_model=D, n_layer=L, n_head=H, max_seq_len=64, tie_embeddings=False))
    ref = copy.deepcopy(pol)
    cfg = RLConfig(algo="rloo", iterations=iters + 1, prompts_per_iter=prompts, samples_per_prompt=k,
                   max_new_tokens=gen, ppo_epochs=1, minibatches=1, kl_coef=0.05, lr=1e-4, seed=0)

    def prompt_fn(n, g):
        return torch.randint(2, V, (n, TP), generator=g)

    def reward_fn(p, y):
        return torch.tensor([reward_of(r) for r in y.tolist()])

    hist = rl_train(pol, ref, prompt_fn, reward_fn, cfg)[1:]
    sps = statistics.median(h["samples_per_s"] for h in hist)
    return {"samples_per_s": sps, "tokens_per_s": sps * gen,
            "t_generate": statistics.median(h["t_generate"] for h in hist),
            "t_train": statistics.median(h["t_train"] for h in hist)}


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, V)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def bench_trl(iters: int, gen: int, prompts: int, k: int) -> dict:
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

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(f"{d}/model")       # TRL builds its reference model from a path
        tok.save_pretrained(f"{d}/model")
        args = RLOOConfig(output_dir=f"{d}/out", per_device_train_batch_size=prompts * k, num_generations=k,
                          max_completion_length=gen, max_steps=iters + 1, learning_rate=1e-4, beta=0.05,
                          report_to="none", logging_steps=1000, save_strategy="no", use_cpu=True,
                          temperature=1.0, top_p=1.0, top_k=0, num_iterations=1, steps_per_generation=1,
                          dataloader_num_workers=0, disable_tqdm=True,
                          generation_kwargs={"min_new_tokens": gen, "eos_token_id": None})
        tr = RLOOTrainer(model=f"{d}/model", reward_funcs=reward_fn, args=args,
                         train_dataset=Dataset.from_dict({"prompt": rows}), processing_class=tok,
                         callbacks=[Timer()])
        tr.train()
    t = statistics.median(times[1:])
    b = prompts * k
    return {"samples_per_s": b / t, "tokens_per_s": b * gen / t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ours = bench_lmlab(a.iters, a.gen, a.prompts, a.k)
    print(f"batch {a.prompts}×{a.k} samples, {a.gen} new tokens, d={D} L={L} vocab={V}, 1 CPU thread")
    print(f"lmlab RLOO : {ours['samples_per_s']:8.1f} samples/s  {ours['tokens_per_s']:9.1f} tokens/s "
          f"(generate {ours['t_generate'] * 1e3:.0f} ms, update {ours['t_train'] * 1e3:.0f} ms)")
    try:
        theirs = bench_trl(a.iters, a.gen, a.prompts, a.k)
    except ImportError as e:
        print(f"TRL        : not installed ({e}); install trl to compare")
        return
    print(f"TRL RLOO   : {theirs['samples_per_s']:8.1f} samples/s  {theirs['tokens_per_s']:9.1f} tokens/s")
    print(f"ratio lmlab/TRL: {ours['samples_per_s'] / theirs['samples_per_s']:.2f}× (target ≥ 1.5×)")


if __name__ == "__main__":
    main()
