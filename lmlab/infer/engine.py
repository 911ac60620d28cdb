"""Batched generation for lmlab Decoders: shared-prefix-aware prefill, preallocated KV cache, decode with
Hydragen attention, sampling (greedy / temperature / top-k / top-p / repetition penalty / seeds), stop
strings and EOS, n samples per prompt, streaming.

Notation: N = sequences (prompts × n), G = distinct prompts, L0 = level-0 prefix (longest common token
prefix of all prompts), R = longest level-1 remainder, T = max new tokens, k = KV heads, d = head dim.

How a batch is laid out (a 2-level prefix tree, detected from the token ids):

    level 0   tokens every prompt shares (a system / few-shot prompt; all but the last token when there
              is a single prompt)                      KV (1, k, L0, d)   prefilled once
    level 1   the rest of each distinct prompt         KV (G, k, R, d)    prefilled once per prompt (ragged)
    suffix    each sequence's own generated tokens     KV (N, k, T, d)    preallocated, written per step

Image tokens (a VLM's projected patches) are embeddings, not ids: `generate_ids(..., extra_embeds=E)` with
E (M, d) reads every id j >= vocab_size as the row E[j − vocab_size]. Prompts that show the same image under
the same ids share that prefix like any other text, so Hydragen batches many questions about one image. A
model with Partial LoRA layers gets the mask "id >= vocab_size" (the image tokens) for each forward.

Decode attention of sequence i reads level 0 + level 1 of its prompt + its suffix. With `hydragen=True`
the three blocks are attended separately (prefix blocks batched over all the sequences that share them)
and merged by log-sum-exp (lmlab.nn.hydragen); with `hydragen=False` the prefixes are copied into a
dense per-sequence cache (N, k, L0+R+T, d) and attended with one masked SDPA call — the standard layout.
When every level-1 remainder has the same length R and folding it costs little (each prompt read by one
sequence, or R ≤ FOLD_LEVEL1_MAX_R), level 1 is copied into the front of each sequence's suffix cache
(N, k, R+T, d) instead: one unmasked block less per layer and step (e.g. 16 samples of one prompt, whose
level 1 is its last token; 32 questions of equal length after one system prompt).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lmlab.backend import GenerationConfig
from lmlab.nn.attention import Attention
from lmlab.nn.hydragen import PrefixLevel, hydragen_attention
from lmlab.nn.peft import peft_context

StreamFn = Callable[[int, int, str], None]   # (prompt index, sample index, new text)
PREFILL_SCORE_BUDGET = 1 << 26               # elements of one level-1 prefill score tensor
FOLD_LEVEL1_MAX_R = 16                       # level 1 shared by several sequences is folded up to this length


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str          # "stop" (EOS or stop string) | "length"
    prompt_tokens: int


@dataclass
class _Plan:
    """State shared by all layers' caches during one generate call."""
    phase: str = "level0"       # level0 | level1 | decode
    hydragen: bool = True
    L0: int = 0
    R: int = 0
    group: Optional[torch.Tensor] = None      # (N,) sequence -> distinct prompt
    l1_len: Optional[torch.Tensor] = None     # (G,) valid level-1 tokens
    step: int = 0
    dense_valid: Optional[torch.Tensor] = None  # (N, L0+R+T) for the non-Hydragen path
    fold: bool = False                          # level 1 copied into the suffix caches (module doc)


class TreeKVCache:
    """One layer's KV for a prefix tree; `attend` is called by Attention.forward (see nn/attention.py)."""

    def __init__(self, plan: _Plan, n_seq: int, kv: int, d: int, max_new: int, device, dtype):
        self.plan = plan
        self.k0 = self.v0 = self.k1 = self.v1 = None
        front = plan.R if plan.fold else 0                                        # folded level 1
        self.ks = torch.zeros(n_seq, kv, front + max_new, d, device=device, dtype=dtype)  # preallocated suffix
        self.vs = torch.zeros_like(self.ks)
        self.kd = self.vd = None
        self.length = 0

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        P = self.plan
        if P.phase == "level0":                                           # q (1, h, L0, d)
            self.k0, self.v0 = k, v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if P.phase == "level1":                                           # q (G, h, R, d)
            self.k1, self.v1 = k, v
            if P.fold:
                self.ks[:, :, :P.R] = k[P.group]
                self.vs[:, :, :P.R] = v[P.group]
            G, h, R = q.shape[0], q.shape[1], q.shape[2]
            step = max(1, PREFILL_SCORE_BUDGET // (h * R * R))   # bound the (prompts, h, R, R) scores
            outs = []
            for i in range(0, G, step):
                g = min(step, G - i)
                levels = [PrefixLevel(self.k0, self.v0, q.new_zeros(g, dtype=torch.long))] if P.L0 else []
                q_pos = torch.arange(R, device=q.device)[None].expand(g, R)
                outs.append(hydragen_attention(q[i:i + g], levels, k[i:i + g], v[i:i + g], P.l1_len[i:i + g], q_pos))
            return torch.cat(outs)
        s = P.step                                                        # decode: q (N, h, 1, d)
        if P.fold:
            c = P.R + s
            self.ks[:, :, c] = k[:, :, 0]
            self.vs[:, :, c] = v[:, :, 0]
            levels = [PrefixLevel(self.k0, self.v0, torch.zeros_like(P.group))] if P.L0 else []
            return hydragen_attention(q, levels, self.ks[:, :, :c + 1], self.vs[:, :, :c + 1])
        self.ks[:, :, s] = k[:, :, 0]
        self.vs[:, :, s] = v[:, :, 0]
        if P.hydragen:
            levels = [PrefixLevel(self.k1, self.v1, P.group, P.l1_len)]
            if P.L0:
                levels.insert(0, PrefixLevel(self.k0, self.v0, torch.zeros_like(P.group)))
            return hydragen_attention(q, levels, self.ks[:, :, :s + 1], self.vs[:, :, :s + 1])
        if self.kd is None:  # copy every prefix into each sequence's own cache
            N, kv, T, d = self.ks.shape
            self.kd = self.ks.new_zeros(N, kv, P.L0 + P.R + T, d)
            self.vd = torch.zeros_like(self.kd)
            if P.L0:
                self.kd[:, :, :P.L0] = self.k0
                self.vd[:, :, :P.L0] = self.v0
            self.kd[:, :, P.L0:P.L0 + P.R] = self.k1[P.group]
            self.vd[:, :, P.L0:P.L0 + P.R] = self.v1[P.group]
        c = P.L0 + P.R + s
        self.kd[:, :, c] = k[:, :, 0]
        self.vd[:, :, c] = v[:, :, 0]
        mask = P.dense_valid[:, None, None, :c + 1]
        return F.scaled_dot_product_attention(q, self.kd[:, :, :c + 1], self.vd[:, :, :c + 1], attn_mask=mask,
                                              enable_gqa=True)


# ----------------------------------------------------------------------------------------------- sampling
def process_logits(logits: torch.Tensor, gen: GenerationConfig, seen: Optional[torch.Tensor]) -> torch.Tensor:
    """logits (N, V) fp32 -> filtered logits (HF order: repetition penalty, temperature, top-k, top-p)."""
    if gen.repetition_penalty != 1.0 and seen is not None:
        pen = torch.where(logits > 0, logits / gen.repetition_penalty, logits * gen.repetition_penalty)
        logits = torch.where(seen, pen, logits)
    if gen.temperature <= 0:
        return logits
    logits = logits / gen.temperature
    if gen.top_k and gen.top_k < logits.shape[-1]:
        kth = torch.topk(logits, gen.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        logits = top_p_filter(logits, gen.top_p)
    return logits


TOP_P_FIRST_K = 64          # candidates of top_p_filter's first partial selection (doubled while too few)
TOP_P_SLACK = 1e-5          # masses within TOP_P_SLACK + (j+2)·2^-24 of top_p go to the full sort (see below)


def top_p_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p by sorting the whole vocabulary: keep the smallest set of highest logits whose softmax mass is
    ≥ top_p (HF's rule: a token is dropped when the mass strictly before it exceeds top_p), -inf elsewhere.
    This is the reference `top_p_filter` reproduces; among tokens tied at the boundary the sort's order decides."""
    srt, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(srt, dim=-1)
    drop = probs.cumsum(-1) - probs > top_p
    srt = srt.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, idx, srt)


def top_p_filter(logits: torch.Tensor, top_p: float, first_k: int = TOP_P_FIRST_K) -> torch.Tensor:
    """`top_p_sorted(logits, top_p)` without sorting the vocabulary: the k highest logits (torch.topk, k = 64,
    doubled until every row's running mass passes top_p inside them) decide the boundary, and one comparison
    with the smallest kept logit keeps the set. logits (N, V) -> (N, V), kept entries unchanged, -inf elsewhere.

    The same tokens as the sort, exactly: the softmax here is taken in vocabulary order, the sort's in sorted
    order, so the two float32 masses differ by rounding; a row whose mass before some candidate lies within a
    margin of top_p (below), or whose boundary logit is tied with a token outside the kept set (the sort's
    order among equal values then decides which is kept), is handed to `top_p_sorted` itself, as is the whole
    batch when the candidates grow to the full vocabulary. The margin at candidate j is TOP_P_SLACK (for the
    two normalisers' difference, measured ≤ 1e-6 relative) plus (j+2)·2^-24 (one float32 rounding of the
    running sum per step on each side, masses < 1)."""
    N, V = logits.shape
    probs = torch.softmax(logits, dim=-1)
    k = min(first_k, V)
    while True:
        vals, idx = torch.topk(logits, k, dim=-1)                 # (N, k), descending
        p = probs.gather(1, idx)
        before = p.cumsum(-1) - p                                 # mass strictly before each candidate
        slack = TOP_P_SLACK + torch.arange(2, k + 2, device=logits.device, dtype=logits.dtype) * 2.0 ** -24
        if k == V or bool((before[:, -1] > top_p + slack[-1]).all()):
            break
        k = min(2 * k, V)
    if k == V:
        return top_p_sorted(logits, top_p)
    n_keep = (before <= top_p).sum(-1, keepdim=True)              # ≥ 1: nothing comes before the first
    keep = logits >= vals.gather(1, n_keep - 1)
    out = logits.masked_fill(~keep, float("-inf"))
    unsure = ((before - top_p).abs() <= slack).any(-1) | (keep.sum(-1, keepdim=True) != n_keep)[:, 0]
    if bool(unsure.any()):
        rows = unsure.nonzero()[:, 0]
        out[rows] = top_p_sorted(logits[rows], top_p)
    return out


def categorical(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw per row of (N, V) probabilities by inverse CDF: a float64 running sum and one uniform per
    row, found by binary search. Needs one random number per row where `torch.multinomial` draws one per
    vocabulary entry (16 × 49152 exponentials took 15 ms of a 160 ms SmolLM2 decode step)."""
    cdf = probs.to(torch.float64).cumsum(-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_max(probs.shape[-1] - 1)


def sample(logits: torch.Tensor, gen: GenerationConfig, seen: Optional[torch.Tensor],
           generator: Optional[torch.Generator]) -> torch.Tensor:
    logits = process_logits(logits, gen, seen)
    if gen.temperature <= 0:
        return logits.argmax(-1)
    return categorical(torch.softmax(logits, -1), generator)


def validate_gen(gen: GenerationConfig) -> None:
    checks = [("max_new_tokens", gen.max_new_tokens >= 1), ("temperature", gen.temperature >= 0),
              ("top_k", gen.top_k >= 0), ("top_p", 0 < gen.top_p <= 1),
              ("repetition_penalty", gen.repetition_penalty > 0), ("n", gen.n >= 1)]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"generation: {name}={getattr(gen, name)!r} out of range")


def common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


class _TextTracker:
    """Incremental detokenisation with stop strings; holds back text that could start a stop string."""

    def __init__(self, tok, stop: list[str]):
        self.tok, self.stop = tok, [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = 0
        self.text = ""

    def update(self, ids: list[int]) -> tuple[str, bool]:
        """Returns (new text safe to emit, hit a stop string)."""
        self.text = self.tok.decode(ids)
        for s in self.stop:
            j = self.text.find(s)
            if j >= 0:
                self.text = self.text[:j]
                return self.flush(), True
        safe = len(self.text) - self.hold
        while safe > self.sent and self.text[safe - 1] == "\ufffd":  # an incomplete multi-byte char
            safe -= 1
        if safe <= self.sent:
            return "", False
        out = self.text[self.sent:safe]
        self.sent = safe
        return out, False

    def flush(self) -> str:
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out


# ------------------------------------------------------------------------------------------------- engine
class Engine:
    """engine = Engine(model, tokenizer); engine.generate(["prompt"], GenerationConfig(n=4)) -> [[str × 4]]."""

    def __init__(self, model, tokenizer=None, hydragen: bool = True, stop_token_ids: Optional[list[int]] = None):
        self.model = model.eval()
        self.tok = tokenizer
        self.hydragen = hydragen
        eos = getattr(tokenizer, "eos_id", None)
        self.stop_ids = set(stop_token_ids or []) | ({eos} if eos is not None else set())
        self.tree_ok = all(type(b.mixer) is Attention and b.mixer.window is None for b in model.blocks)
        self.last_stats: dict = {}  # timings of the latest call: prefill_s, decode_s, decode_steps, prefix
        self._extra: Optional[torch.Tensor] = None  # (M, d) embeddings of ids >= vocab_size, during a call

    @property
    def device(self):
        return self.model.embed.weight.device

    # --------------------------------------------------------------------------------------- forward
    def _forward(self, idx: torch.Tensor, positions: torch.Tensor, caches: list,
                 last: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (b, V) fp32 of position `last` (b,) (default: the final one) only."""
        m = self.model
        with self._image_mask(idx):
            h = m.residual_cls.expand(self._embed(idx), m.cfg)
            for blk, c in zip(m.blocks, caches):
                h, _ = blk(h, state=c, positions=positions)
        x = m.residual_cls.reduce(h, m.cfg)
        x = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        return m.head(m.norm(x)).float()

    def _embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings; ids >= vocab_size read the call's extra embeddings (image tokens)."""
        emb = self.model.embed
        if self._extra is None:
            return emb(idx)
        V = emb.num_embeddings
        img = idx >= V
        out = emb(idx.clamp_max(V - 1))
        if bool(img.any()):
            out = out.masked_scatter(img.unsqueeze(-1), self._extra[idx[img] - V].to(out.dtype))
        return out

    def _image_mask(self, idx: torch.Tensor):
        """Partial LoRA's token mask (the image tokens) for one forward; a no-op without extra embeddings."""
        if self._extra is None:
            return peft_context(self.model, {})
        return peft_context(self.model, {"lora_mask": idx >= self.model.embed.num_embeddings})

    # -------------------------------------------------------------------------------------- generate
    def generate(self, prompts: list[str], gen: GenerationConfig, stream: Optional[StreamFn] = None,
                 hydragen: Optional[bool] = None) -> list[list[str]]:
        ids = [self.tok.encode(p) for p in prompts]
        out = self.generate_ids(ids, gen, stream, hydragen)
        return [[c.text for c in row] for row in out]

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], gen: GenerationConfig, stream: Optional[StreamFn] = None,
                     hydragen: Optional[bool] = None, extra_embeds: Optional[torch.Tensor] = None
                     ) -> list[list[Completion]]:
        """Completions of token-id prompts; ids >= vocab_size index `extra_embeds` (M, d) (see the module doc)."""
        if extra_embeds is None:
            return self._generate_ids(prompts, gen, stream, hydragen)
        V = self.model.embed.num_embeddings
        top = max((t for p in prompts for t in p), default=0)
        if top >= V + extra_embeds.shape[0]:
            raise ValueError(f"generation: id {top} is past the vocabulary ({V}) + {extra_embeds.shape[0]} extra embeddings")
        self._extra = extra_embeds.to(self.device)
        try:
            return self._generate_ids(prompts, gen, stream, hydragen)
        finally:
            self._extra = None

    def _generate_ids(self, prompts, gen, stream, hydragen):
        validate_gen(gen)
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("generation: empty prompt (no tokens)")
        longest = max(len(p) for p in prompts)
        if longest + gen.max_new_tokens > self.model.cfg.max_seq_len:
            raise ValueError(f"generation: prompt of {longest} tokens + max_new_tokens={gen.max_new_tokens} "
                             f"exceeds the model context {self.model.cfg.max_seq_len}")
        hydragen = self.hydragen if hydragen is None else hydragen
        if self.tree_ok:
            return self._generate_tree(prompts, gen, stream, hydragen)
        return self._generate_sequential(prompts, gen, stream)

    def _generate_tree(self, prompts, gen, stream, hydragen):
        dev, cfg = self.device, self.model.cfg
        distinct: dict[tuple, int] = {}
        for p in prompts:
            distinct.setdefault(tuple(p), len(distinct))
        uniq = [list(u) for u in distinct]
        # sequences, grouped by distinct prompt: (prompt index, sample index)
        seqs = [(i, j) for u in range(len(uniq)) for i, p in enumerate(prompts) if distinct[tuple(p)] == u
                for j in range(gen.n)]
        G, N, T = len(uniq), len(seqs), gen.max_new_tokens
        group = torch.tensor([distinct[tuple(prompts[i])] for i, _ in seqs], device=dev)
        L0 = min(common_prefix(uniq), min(len(u) for u in uniq) - 1)   # every prompt keeps ≥ 1 own token
        rem = [u[L0:] for u in uniq]
        R = max(len(r) for r in rem)
        l1_len = torch.tensor([len(r) for r in rem], device=dev)
        t0, c0 = time.perf_counter(), time.process_time()
        most = int(torch.bincount(group).max())                          # sequences reading one level 1
        plan = _Plan(hydragen=hydragen, L0=L0, R=R, group=group, l1_len=l1_len,
                     fold=hydragen and len({len(r) for r in rem}) == 1 and (most == 1 or R <= FOLD_LEVEL1_MAX_R))
        kv, hd = cfg.kv_heads, cfg.head_dim
        caches = [TreeKVCache(plan, N, kv, hd, T, dev, self.model.embed.weight.dtype) for _ in self.model.blocks]
        if L0:
            plan.phase = "level0"
            self._forward(torch.tensor([uniq[0][:L0]], device=dev), torch.arange(L0, device=dev)[None], caches)
        plan.phase = "level1"
        x1 = torch.zeros(G, R, dtype=torch.long, device=dev)
        for g, r in enumerate(rem):
            x1[g, :len(r)] = torch.tensor(r)
        pos1 = L0 + torch.arange(R, device=dev)[None].expand(G, R)
        logits = self._forward(x1, pos1, caches, last=l1_len - 1)[group]          # (N, V)
        if not hydragen:
            j = torch.arange(L0 + R + T, device=dev)[None]
            plan.dense_valid = (j < L0) | ((j >= L0) & (j < L0 + l1_len[group][:, None])) | (j >= L0 + R)
        self.last_stats = {"prefill_s": time.perf_counter() - t0, "prefill_cpu_s": time.process_time() - c0, "level0": L0, "level1": l1_len.tolist(),
                           "sequences": N}
        plan.phase = "decode"
        pos = (L0 + l1_len[group])[:, None]                                        # (N, 1)

        def step_fn(nxt: torch.Tensor, step: int) -> torch.Tensor:
            plan.step = step
            return self._forward(nxt[:, None], pos + step, caches)

        return self._decode_loop(prompts, seqs, logits, gen, stream, step_fn)

    def _decode_loop(self, prompts, seqs, logits, gen, stream, step_fn):
        dev, N = self.device, len(seqs)
        V = logits.shape[-1]
        seen = None
        if gen.repetition_penalty != 1.0:
            seen = torch.zeros(N, V, dtype=torch.bool, device=dev)
            for r, (i, _) in enumerate(seqs):
                seen[r, torch.tensor([t for t in prompts[i] if t < V], dtype=torch.long, device=dev)] = True
        seed = gen.seed if gen.seed is not None else random.randrange(2**31)
        generator = torch.Generator(device=dev).manual_seed(seed)
        out_ids: list[list[int]] = [[] for _ in range(N)]
        done = [False] * N
        reason = ["length"] * N
        trackers = [_TextTracker(self.tok, gen.stop) if self.tok is not None else None for _ in range(N)]
        t0, c0, steps = time.perf_counter(), time.process_time(), 0
        for step in range(gen.max_new_tokens):
            nxt = sample(logits, gen, seen, generator)                              # (N,)
            if seen is not None:
                seen[torch.arange(N, device=dev), nxt] = True
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                if t in self.stop_ids:
                    done[r], reason[r] = True, "stop"
                    if stream and trackers[r]:
                        tail = trackers[r].flush()
                        if tail:
                            stream(seqs[r][0], seqs[r][1], tail)
                    continue
                out_ids[r].append(t)
                if trackers[r] is not None:
                    delta, hit = trackers[r].update(out_ids[r])
                    if hit:
                        done[r], reason[r] = True, "stop"
                    if stream and delta:
                        stream(seqs[r][0], seqs[r][1], delta)
            if all(done) or step == gen.max_new_tokens - 1:
                break
            logits = step_fn(nxt, step)
            steps += 1
        self.last_stats.update(decode_s=time.perf_counter() - t0, decode_cpu_s=time.process_time() - c0,
                               decode_steps=steps)
        results: list[list[Optional[Completion]]] = [[None] * gen.n for _ in prompts]
        for r, (i, j) in enumerate(seqs):
            tr = trackers[r]
            if tr is not None and stream and not done[r]:
                tail = tr.flush()
                if tail:
                    stream(i, j, tail)
            text = tr.text if tr is not None else ""
            results[i][j] = Completion(text, out_ids[r], reason[r], len(prompts[i]))
        return results

    def _generate_sequential(self, prompts, gen, stream):
        """Fallback for models whose mixers keep their own state (recurrent, sliding window): one
        sequence at a time through Decoder.forward with its states."""
        dev = self.device
        out = []
        for i, p in enumerate(prompts):
            row = []
            for j in range(gen.n):
                st = {"states": self.model.init_states(1, len(p) + gen.max_new_tokens)}
                x = torch.tensor([p], device=dev)
                with self._image_mask(x):
                    res = self.model(x, states=st["states"], embeds=self._embed(x))
                st["states"] = res.states

                def step_fn(nxt, step, st=st):
                    r = self.model(nxt[:, None], states=st["states"])
                    st["states"] = r.states
                    return r.logits[:, -1].float()

                sub = GenerationConfig(**{**gen.__dict__, "n": 1,
                                          "seed": None if gen.seed is None else gen.seed + 1000 * i + j})
                cb = (lambda a, b, s, _i=i, _j=j: stream(_i, _j, s)) if stream else None
                row.append(self._decode_loop([p], [(0, 0)], res.logits[:, -1].float(), sub, cb, step_fn)[0][0])
            out.append(row)
        return out

    # --------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def token_logprobs(self, contexts: list[list[int]], targets: list[list[int]], batch_size: int = 8) -> list[list[float]]:
        """log p(target_j | context, target_<j) for each pair; contexts must be non-empty."""
        out: list[list[float]] = []
        dev = self.device
        for b0 in range(0, len(contexts), batch_size):
            cs, ts = contexts[b0:b0 + batch_size], targets[b0:b0 + batch_size]
            full = [c + t for c, t in zip(cs, ts)]
            L = max(len(f) for f in full)
            x = torch.zeros(len(full), L, dtype=torch.long, device=dev)
            for r, f in enumerate(full):
                x[r, :len(f)] = torch.tensor(f)
            logits = self.model(x).logits                                          # right padding: causal-safe
            logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
            for r, (c, t) in enumerate(zip(cs, ts)):
                pos = torch.arange(len(c) - 1, len(c) - 1 + len(t), device=dev)
                out.append(logp[r, pos, torch.tensor(t, device=dev)].tolist())
        return out
