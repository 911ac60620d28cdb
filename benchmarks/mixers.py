"""Token-mixer cost vs sequence length: softmax attention, HGRN2 and the Griffin hybrid.

For each arm (a Decoder whose layers are all `attn`, all `hgrn2`, or Griffin's rglru, rglru, local_attn):
  * forward+backward wall time and activation memory (bytes saved for backward, counted with
    torch.autograd.graph.saved_tensors_hooks, each storage once) at lengths 256 → 16K;
  * decode time per token after a prefill of L tokens, and the size of the decode state.
Prints markdown tables, the crossover length where each recurrent arm becomes faster than attention, and
writes them to benchmarks/results/mixers.md (or --out).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/mixers.py                   # CPU, ~5–10 min
    PYTHONPATH=. python benchmarks/mixers.py --device cuda --lengths 1024 4096 16384 65536
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

ARMS = {
    "attention": dict(layer_pattern=["attn"]),
    "hgrn2": dict(layer_pattern=["hgrn2"]),
    "griffin": dict(layer_pattern=["rglru", "rglru", "local_attn"]),
}


def make(arm: str, args) -> Decoder:
    cfg = ModelConfig(vocab_size=256, d_model=args.d_model, n_layer=args.layers, n_head=args.heads,
                      max_seq_len=max(args.lengths + args.contexts) + 64, tie_embeddings=False,
                      mixer_args={"hgrn2": {"expand": args.expand, "chunk": args.chunk},
                                  "local_attn": {"window": args.window}}, **ARMS[arm])
    return Decoder(cfg).to(args.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fwd_bwd(model: Decoder, t: int, args) -> tuple[float, int]:
    """Median seconds of one forward+backward at length t, and bytes saved for backward."""
    idx = torch.randint(0, 256, (args.batch, t), device=args.device)
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor):
        s = x.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = model(idx, idx).loss
    loss.backward()
    saved = sum(storages.values())
    times = []
    for _ in range(args.reps if t <= 4096 else 1):
        model.zero_grad(set_to_none=True)
        _sync(args.device)
        t0 = time.perf_counter()
        model(idx, idx).loss.backward()
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], saved


def state_bytes(states) -> int:
    n = 0
    for s in states:
        for v in ([s] if torch.is_tensor(s) else vars(s).values()):
            if torch.is_tensor(v):
                n += v.numel() * v.element_size()
    return n


@torch.no_grad()
def decode(model: Decoder, context: int, args) -> tuple[float, int]:
    """Seconds per generated token after a prefill of `context` tokens; bytes of decode state."""
    idx = torch.randint(0, 256, (1, context), device=args.device)
    states = model.init_states(1, context + args.decode_tokens + 1)
    out = model(idx, states=states)
    states = out.states
    tok = out.logits[:, -1:].argmax(-1)
    out = model(tok, states=states)  # warm-up step
    states = out.states
    _sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.decode_tokens):
        tok = out.logits[:, -1:].argmax(-1)
        out = model(tok, states=out.states)
    _sync(args.device)
    return (time.perf_counter() - t0) / args.decode_tokens, state_bytes(out.states)


def crossover(lengths, base: dict, other: dict) -> str:
    """Smallest length from which `other` is faster than `base` at every measured longer length."""
    for i, t in enumerate(lengths):
        if all(other[u] < base[u] for u in lengths[i:] if u in other and u in base):
            return str(t)
    return "none measured"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 8192, 16384])
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--expand", type=int, default=4)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mixers.md"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {a: make(a, args) for a in args.arms}
    train_t: dict[str, dict[int, float]] = {a: {} for a in args.arms}
    train_m: dict[str, dict[int, int]] = {a: {} for a in args.arms}
    dec_t: dict[str, dict[int, float]] = {a: {} for a in args.arms}
    dec_m: dict[str, dict[int, int]] = {a: {} for a in args.arms}
    for t in args.lengths:
        for a in args.arms:
            train_t[a][t], train_m[a][t] = fwd_bwd(models[a], t, args)
            print(f"fwd+bwd {a:9s} t={t:6d}: {train_t[a][t] * 1e3:9.1f} ms  saved {train_m[a][t] / 2**20:8.1f} MiB",
                  flush=True)
    for c in args.contexts:
        for a in args.arms:
            dec_t[a][c], dec_m[a][c] = decode(models[a], c, args)
            print(f"decode  {a:9s} ctx={c:6d}: {dec_t[a][c] * 1e3:7.2f} ms/token  state {dec_m[a][c] / 2**10:9.1f} KiB",
                  flush=True)

    env = (f"device={args.device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
           f"threads={torch.get_num_threads()}, d_model={args.d_model}, layers={args.layers}, heads={args.heads}, "
           f"batch={args.batch}, hgrn2 expand={args.expand} chunk={args.chunk}, local window={args.window}")
    lines = ["# Token mixers: cost vs length", "", env, "",
             "## Forward+backward (ms) and activation memory saved for backward (MiB)", "",
             "| length | " + " | ".join(f"{a} ms | {a} MiB" for a in args.arms) + " |",
             "|---" * (1 + 2 * len(args.arms)) + "|"]
    for t in args.lengths:
        lines.append(f"| {t} | " + " | ".join(f"{train_t[a][t] * 1e3:.1f} | {train_m[a][t] / 2**20:.1f}"
                                              for a in args.arms) + " |")
    lines += ["", "## Decode: ms per token after a prefill of `context` tokens, decode-state size (KiB)", "",
              "| context | " + " | ".join(f"{a} ms/tok | {a} KiB" for a in args.arms) + " |",
              "|---" * (1 + 2 * len(args.arms)) + "|"]
    for c in args.contexts:
        lines.append(f"| {c} | " + " | ".join(f"{dec_t[a][c] * 1e3:.2f} | {dec_m[a][c] / 2**10:.0f}"
                                              for a in args.arms) + " |")
    lines += ["", "## Crossover (smallest length from which the arm is faster than attention at all longer lengths)", ""]
    if "attention" in args.arms:
        for a in args.arms:
            if a == "attention":
                continue
            lines.append(f"- {a}: fwd+bwd from {crossover(args.lengths, train_t['attention'], train_t[a])} tokens; "
                         f"decode from context {crossover(args.contexts, dec_t['attention'], dec_t[a])}")
        for a in args.arms:
            ts = train_t[a]
            lo, hi = min(ts), max(ts)
            lines.append(f"- {a}: time ×{ts[hi] / ts[lo]:.1f} and memory ×{train_m[a][hi] / train_m[a][lo]:.1f} "
                         f"for length ×{hi // lo} ({lo} → {hi})")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
