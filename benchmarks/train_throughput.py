"""Training throughput: lmlab Decoder vs HF transformers LlamaForCausalLM with identical shapes.

Both models run forward+backward+AdamW on the same random batch in the same process, interleaved
(A, B, A, B, …) so machine noise hits both equally. Prints tokens/s for each and the ratio.

    python benchmarks/train_throughput.py [--d 256 --layers 4 --heads 8 --seq 256 --batch 8 --steps 10]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_pair(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmlab.config import ModelConfig
    from lmlab.models import build_model

    mc = ModelConfig(vocab_size=args.vocab, d_model=args.d, n_layer=args.layers, n_head=args.heads,
                     n_kv_head=args.kv_heads, max_seq_len=args.seq, tie_embeddings=True)
    ours = build_model(mc)
    hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d, intermediate_size=mc.ffn_hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads or args.heads, max_position_embeddings=args.seq,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    hf = LlamaForCausalLM(hf_cfg)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_ours == n_hf, (n_ours, n_hf)
    return ours, hf, n_ours


def step_fn(model, kind, x):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        if kind == "lmlab":
            loss = model(x[:, :-1], targets=x[:, 1:]).loss
        else:
            loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    ours, hf, n = build_pair(args)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    steps = {"lmlab": step_fn(ours, "lmlab", x), "transformers": step_fn(hf, "hf", x)}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    times = {k: [] for k in steps}
    for _ in range(args.steps):
        for k, s in steps.items():
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    toks = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device=cpu threads={torch.get_num_threads()} torch={torch.__version__} params={n:,} "
          f"d={args.d} layers={args.layers} heads={args.heads} seq={args.seq} batch={args.batch}")
    for k, v in med.items():
        print(f"{k:13s} {toks / v:10.0f} tokens/s  (median step {v * 1000:.1f} ms over {args.steps})")
    print(f"ratio lmlab/transformers = {med['transformers'] / med['lmlab']:.2f}x")


if __name__ == "__main__":
    main()
