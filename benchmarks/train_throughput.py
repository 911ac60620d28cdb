"""Training throughput: lmlab Decoder vs HF transformers LlamaForCausalLM with identical shapes.

Both models run forward+backward on the same random batch in the same process, interleaved (A, B, A, B, …)
so machine noise hits both equally. Prints tokens/s for each and the ratio. The default clock is the
process CPU time with one thread, which other jobs on a shared machine do not inflate; `--clock wall
--threads N` measures wall time instead.

    python benchmarks/train_throughput.py [--d 256 --layers 4 --heads 8 --seq 256 --batch 8 --steps 10]
    python benchmarks/train_throughput.py --device cuda --d 768 --layers 12 --heads 12 --seq 1024  # GPU, bf16

On CUDA both models run under bf16 autocast and the clock is wall time after a device synchronize.
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
    """One forward+backward of the next-token loss (gradients cleared first)."""
    model.train()
    cuda = x.device.type == "cuda"

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = _loss(model, kind, x)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()

    return step


def _loss(model, kind, x):
    if kind == "lmlab":
        return model(x[:, :-1], targets=x[:, 1:]).loss
    return model(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # transformers shifts the labels itself


def floor_step(args, device, ffn: int):
    """The irreducible part of one step for ANY implementation of this model in fp32 eager PyTorch: the
    matrix products of forward and backward (every linear layer and the LM head: y = x Wᵀ, dx = dy W,
    dW = dyᵀ x) and the fused attention kernel forward + backward, on the same shapes, with nothing else.
    HF time / this time bounds the ratio that lean glue code alone can reach."""
    import torch.nn.functional as F

    n, d, hd = args.batch * args.seq, args.d, args.d // args.heads
    kv = args.kv_heads or args.heads
    shapes = [(d, args.heads * hd), (d, kv * hd), (d, kv * hd), (args.heads * hd, d), (d, ffn), (d, ffn), (ffn, d)]
    mats = [(torch.randn(n, i, device=device), torch.randn(o, i, device=device), torch.randn(n, o, device=device))
            for i, o in shapes * args.layers + [(d, args.vocab)]]
    q = torch.randn(args.batch, args.heads, args.seq, hd, device=device, requires_grad=True)
    k = torch.randn(args.batch, kv, args.seq, hd, device=device, requires_grad=True)
    v = torch.randn(args.batch, kv, args.seq, hd, device=device, requires_grad=True)
    go = torch.randn(args.batch, args.heads, args.seq, hd, device=device)

    def step():
        for x, w, dy in mats:
            torch.mm(x, w.t()), torch.mm(dy, w), torch.mm(dy.t(), x)
        for _ in range(args.layers):
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != args.heads).backward(go)

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
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--compile", action="store_true",
                    help="also time both models under torch.compile (what `train.compile=true` does for lmlab)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--floor", action="store_true",
                    help="also time the matrix products + attention kernels alone (the bound on any ratio)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast, wall clock)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        args.clock = "wall"
    else:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    ours, hf, n = build_pair(args)
    ours, hf = ours.to(dev), hf.to(dev)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=dev)
    steps = {"lmlab": step_fn(ours, "lmlab", x), "transformers": step_fn(hf, "hf", x)}
    if args.compile:
        steps["lmlab+compile"] = step_fn(torch.compile(ours), "lmlab", x)
        steps["transformers+compile"] = step_fn(torch.compile(hf), "hf", x)
    if args.floor:
        steps["floor (GEMMs + attention only)"] = floor_step(args, dev, ours.cfg.ffn_hidden)
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    times = {k: [] for k in steps}
    for _ in range(args.steps):
        for k, s in steps.items():
            t = clock()
            s()
            times[k].append(clock() - t)
    toks = args.batch * args.seq
    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu threads={torch.get_num_threads()}"
    print(f"device={where} clock={args.clock} torch={torch.__version__} params={n:,} "
          f"d={args.d} layers={args.layers} heads={args.heads} seq={args.seq} batch={args.batch}")
    for k, v in med.items():
        print(f"{k:13s} {toks / v:10.0f} tokens/s  (median step {v * 1000:.1f} ms over {args.steps})")
    if args.floor:
        fl = med["floor (GEMMs + attention only)"]
        print(f"floor = {fl / med['transformers']:.0%} of the transformers step, {fl / med['lmlab']:.0%} of lmlab's; "
              f"no implementation of the same math can beat transformers by more than {med['transformers'] / fl:.2f}x")
    print(f"ratio lmlab/transformers = {med['transformers'] / med['lmlab']:.2f}x")
    if args.compile:
        print(f"ratio lmlab+compile/transformers+compile = "
              f"{med['transformers+compile'] / med['lmlab+compile']:.2f}x")
        print(f"ratio lmlab+compile/transformers (eager) = {med['transformers'] / med['lmlab+compile']:.2f}x")


if __name__ == "__main__":
    main()
