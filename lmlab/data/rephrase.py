"""WRAP — Web Rephrase Augmented Pre-training (Maini et al., 2024): rephrase a corpus with an instruction-tuned
model in one of four styles, then pre-train on real + rephrased text.

    docs (id, text) ── chunk_text (≤ max_tokens) ──> chunks (source_id, chunk_idx, text)
        └─ shards of `shard_size` chunks ── batches ──> backend.generate([WRAP prompt + chunk, ...])
              └─ quality_filter ──> <out>/<style>-00000.jsonl  (written to .tmp, then renamed)

The prompts are the paper's (system text + style instruction, the Vicuna-style "USER: … ASSISTANT:" chat that
Mistral-7B-Instruct was prompted with). Every prompt in a batch starts with the same system + style text, so
an engine with a shared-prefix path (Hydragen) computes that prefix once.

Chunks: WRAP rephrases at most 300 tokens at a time, since longer inputs lost information in the rephrase
(the 300 is the catalogue's figure as recalled from the paper; the stored public record searched here did
not quote it verbatim, and the follow-up of Pieler et al. 2024 uses ≤ 350). `chunk_text` splits documents on
sentence, then word boundaries so each chunk is ≤ max_tokens under the rephraser's tokenizer.

Resumable and idempotent: a shard is a pure function of (inputs, settings); it is written to a temporary
file and renamed into place, so a shard file exists only when complete. A rerun skips every existing shard
and a kill loses at most the shard in flight. `manifest.json` pins the settings; a rerun with different
settings is refused instead of silently mixing outputs.

Every function here takes a Backend object (`lmlab.backend`); turning a spec such as "smollm2" into one is
the job of the command line (`lmlab data rephrase`, in lmlab/cli.py), so the data layer never imports
lmlab.infer.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from lmlab.backend import GenerationConfig
from lmlab.io import atomic_write_text

# ---- the paper's prompts (copied character for character from the catalogue) ------------------------------
SYSTEM_TEXT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
               "helpful, detailed, and polite answers to the questions. USER: ")
STYLE_PROMPTS: dict[str, str] = {
    "easy": ("For the following paragraph give me a paraphrase of the same using a very small vocabulary and "
             "extremely simple sentences that a toddler will understand:"),
    "medium": ("For the following paragraph give me a diverse paraphrase of the same in high quality English "
               "language as in sentences on Wikipedia:"),
    "hard": ("For the following paragraph give me a paraphrase of the same using very terse and abstruse "
             "language that only an erudite scholar will understand. Replace simple words and phrases with "
             "rare and complex ones:"),
    "qa": ('Convert the following paragraph into a conversational format with multiple tags of "Question:" '
           'followed by "Answer:":'),
}
STYLES = tuple(STYLE_PROMPTS)
MAX_CHUNK_TOKENS = 300  # the paper's per-rephrase limit


def style_prefix(style: str) -> str:
    """System text + style instruction: the part shared by every prompt of a batch."""
    if style not in STYLE_PROMPTS:
        raise ValueError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    return SYSTEM_TEXT + STYLE_PROMPTS[style]


def build_prompt(style: str, text: str) -> str:
    """The full completion-style prompt: system + instruction, the paragraph, then the assistant turn."""
    return f"{style_prefix(style)}\n{text}\nASSISTANT:"


def build_chat(style: str, text: str) -> list[dict]:
    """The same request as chat messages (for backends that apply their own chat template)."""
    return [{"role": "system", "content": SYSTEM_TEXT.removesuffix(" USER: ")},
            {"role": "user", "content": f"{STYLE_PROMPTS[style]}\n{text}"}]


# ---- token counting and chunking ----------------------------------------------------------------------------
_WORDISH = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Fallback counter when no tokenizer is given: words and punctuation marks (BPE is usually ≥ this)."""
    return len(_WORDISH.findall(text))


def token_counter(tokenizer=None) -> Callable[[str], int]:
    """`len(tokenizer.encode(text))` without special tokens, for the HF and lmlab tokenizer wrappers alike."""
    if tokenizer is None:
        return approx_token_count

    def count(text: str) -> int:
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(text)
        return len(getattr(ids, "ids", ids))

    return count


_SENT_END = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")


def chunk_text(text: str, max_tokens: int = MAX_CHUNK_TOKENS,
               count: Callable[[str], int] = approx_token_count) -> list[str]:
    """Greedy packing of sentences into chunks with count(chunk) ≤ max_tokens.

    A sentence longer than the limit is split at word boundaries, and a single word longer than the limit
    at character boundaries, so the bound holds for any input (it is checked, not assumed).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be ≥ 1, got {max_tokens}")
    pieces: list[str] = []
    for sent in _SENT_END.split(text.strip()):
        sent = " ".join(sent.split())
        if not sent:
            continue
        if count(sent) <= max_tokens:
            pieces.append(sent)
            continue
        for word in sent.split(" "):
            if count(word) <= max_tokens:
                pieces.append(word)
            else:  # pathological: one "word" over the limit
                start = 0
                while start < len(word):
                    end = len(word)
                    while end > start + 1 and count(word[start:end]) > max_tokens:
                        end = start + max(1, (end - start) // 2)
                    pieces.append(word[start:end])
                    start = end
    chunks: list[str] = []
    cur = ""
    for p in pieces:
        cand = f"{cur} {p}" if cur else p
        if count(cand) <= max_tokens:
            cur = cand
        else:
            if cur:
                chunks.append(cur)
            cur = p
    if cur:
        chunks.append(cur)
    return chunks


# ---- input -------------------------------------------------------------------------------------------------
def read_documents(path: str) -> list[dict]:
    """[{"id", "text"}] from a .jsonl file (fields id/text), a .txt file (documents separated by blank
    lines), a folder of .txt files (one document each), or `embedded:DOMAIN[:split]` (the built-in corpus)."""
    if path.startswith("embedded:"):
        _, domain, *rest = path.split(":")
        split = rest[0] if rest else "train"
        from lmlab.data.embedded import embedded_texts  # lands with the data pipeline

        texts = embedded_texts([domain])[domain][split]
        return [{"id": f"{domain}/{split}/{i}", "text": t} for i, t in enumerate(texts)]
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--in {path}: no such file or folder")
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        docs = [{"id": str(f.relative_to(p)), "text": _read_text(f)} for f in files]
    elif p.suffix == ".jsonl":
        docs = []
        for ln, line in enumerate(_read_text(p).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: not a JSON line ({e.msg})") from None
            if not isinstance(row, dict) or "text" not in row:
                raise ValueError(f"{path}:{ln}: row has no 'text' field")
            if not isinstance(row["text"], str):
                raise ValueError(f"{path}:{ln}: 'text' must be a string, got {type(row['text']).__name__}")
            docs.append({"id": str(row.get("id", ln - 1)), "text": row["text"]})
    else:
        paras = [t.strip() for t in re.split(r"\n\s*\n", _read_text(p)) if t.strip()]
        docs = [{"id": f"{p.name}/{i}", "text": t} for i, t in enumerate(paras)]
    if not any(d["text"].strip() for d in docs):
        raise ValueError(f"--in {path}: no text to rephrase (the input is empty)")
    return docs


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---- quality filter ----------------------------------------------------------------------------------------
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i am unable|i'?m unable|as an ai\b|i apologi[sz]e|"
    r"i will not|i won'?t be able)", re.IGNORECASE)


def quality_reason(source: str, output: str, min_words: int = 5, min_ratio: float = 0.2,
                   max_copy_similarity: float = 0.9) -> Optional[str]:
    """None if the rephrase is kept, else why it is dropped: empty / too_short / refusal / copy."""
    out = output.strip()
    if not out:
        return "empty"
    if _REFUSAL.search(out):
        return "refusal"
    n_out, n_src = len(out.split()), len(source.split())
    if n_out < min_words or n_out < min_ratio * n_src:
        return "too_short"
    norm = lambda s: " ".join(_WORDISH.findall(s.lower()))  # noqa: E731
    if difflib.SequenceMatcher(None, norm(source), norm(out), autojunk=False).ratio() >= max_copy_similarity:
        return "copy"
    return None


FILTER_REASONS = ("empty", "too_short", "refusal", "copy")
_SENT = re.compile(r"(?<=[.!?])\s+")


def trim_repetition(text: str) -> str:
    """Cut a degenerate greedy loop: keep sentences up to the first one that repeats an earlier sentence
    (small rephrasers often end in "And God created God. And God created God. ...")."""
    seen, kept = set(), []
    for sent in _SENT.split(text.strip()):
        key = " ".join(_WORDISH.findall(sent.lower()))
        if key and key in seen:
            break
        seen.add(key)
        kept.append(sent)
    return " ".join(kept)


# ---- the job -----------------------------------------------------------------------------------------------
@dataclass
class RephraseSettings:
    style: str
    max_tokens: int = MAX_CHUNK_TOKENS
    shard_size: int = 64          # chunks per shard (the unit of resumption)
    batch_size: int = 16          # prompts per backend.generate call
    max_new_tokens: int = 384
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    chat: bool = False            # use backend.chat with the chat messages instead of the raw prompt
    min_words: int = 5
    max_copy_similarity: float = 0.9
    max_chunks: int = 0           # 0 = all; else only the first N chunks (a small slice of a corpus)
    trim_repetition: bool = False  # cut outputs at their first repeated sentence (degenerate greedy loops)

    def gen(self, shard: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed + shard)


def plan_chunks(docs: Sequence[dict], max_tokens: int, count: Callable[[str], int]) -> list[dict]:
    """Documents -> ordered chunk records; the order (and so every shard) is deterministic."""
    out = []
    for d in docs:
        for j, c in enumerate(chunk_text(d["text"], max_tokens, count)):
            out.append({"source_id": d["id"], "chunk": j, "text": c})
    return out


def _fingerprint(chunks: Sequence[dict], settings: RephraseSettings, backend_name: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    h.update(backend_name.encode())
    for c in chunks:
        h.update(f"{c['source_id']}\x00{c['chunk']}\x00{c['text']}\x01".encode())
    return h.hexdigest()[:16]


def shard_path(out_dir: Path, style: str, k: int) -> Path:
    return out_dir / f"{style}-{k:05d}.jsonl"


def rephrase_shard(backend, chunks: Sequence[dict], settings: RephraseSettings, shard: int,
                   count: Callable[[str], int]) -> tuple[list[dict], dict]:
    """Rephrase one shard in batches; returns (kept rows, stats)."""
    rows, stats = [], {r: 0 for r in FILTER_REASONS}
    stats.update(chunks=len(chunks), kept=0, in_tokens=0, out_tokens=0)
    gen = settings.gen(shard)
    for b in range(0, len(chunks), settings.batch_size):
        batch = chunks[b:b + settings.batch_size]
        if settings.chat:
            outs = backend.chat([build_chat(settings.style, c["text"]) for c in batch], gen)
        else:
            outs = backend.generate([build_prompt(settings.style, c["text"]) for c in batch], gen)
        if len(outs) != len(batch):
            raise RuntimeError(f"backend returned {len(outs)} outputs for {len(batch)} prompts")
        for c, o in zip(batch, outs):
            text = (o[0] if isinstance(o, (list, tuple)) else o).strip()
            if settings.trim_repetition:
                text = trim_repetition(text)
            stats["in_tokens"] += count(c["text"])
            stats["out_tokens"] += count(text)
            why = quality_reason(c["text"], text, settings.min_words,
                                 max_copy_similarity=settings.max_copy_similarity)
            if why:
                stats[why] += 1
                continue
            stats["kept"] += 1
            rows.append({"source_id": c["source_id"], "chunk": c["chunk"], "style": settings.style,
                         "text": text})
    return rows, stats


def write_shard(out_dir: Path, style: str, k: int, rows: list[dict], stats: dict) -> None:
    """Stats first, rows last: the .jsonl (the completion marker) appears only when both are whole."""
    atomic_write_text(out_dir / f"{style}-{k:05d}.stats.json", json.dumps(stats, sort_keys=True))
    atomic_write_text(shard_path(out_dir, style, k), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


class Progress:
    """One line per shard on stderr: done/total, docs/s and generated tokens/s since start."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()
        self.docs = self.tokens = 0

    def update(self, k: int, stats: dict) -> None:
        self.docs += stats["chunks"]
        self.tokens += stats["out_tokens"]
        if self.enabled:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            print(f"[rephrase] shard {k + 1}/{self.total}  {self.docs / dt:.2f} docs/s  "
                  f"{self.tokens / dt:.1f} tok/s  kept {stats['kept']}/{stats['chunks']}", file=sys.stderr)

    def rates(self) -> dict:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return {"seconds": dt, "docs_per_s": self.docs / dt, "tokens_per_s": self.tokens / dt}


def _prepare(docs, out_dir, settings, backend_name, tokenizer):
    if settings.style not in STYLE_PROMPTS:
        raise ValueError(f"unknown style {settings.style!r}; choose one of: {', '.join(STYLES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = token_counter(tokenizer)
    chunks = plan_chunks(docs, settings.max_tokens, count)
    if settings.max_chunks:
        chunks = chunks[:settings.max_chunks]
    fp = _fingerprint(chunks, settings, backend_name)
    n_shards = math.ceil(len(chunks) / settings.shard_size)
    man_path = out_dir / f"manifest-{settings.style}.json"
    manifest = {"fingerprint": fp, "style": settings.style, "backend": backend_name, "n_chunks": len(chunks),
                "n_shards": n_shards, "settings": dataclasses.asdict(settings)}
    if man_path.exists():
        old = json.loads(man_path.read_text())
        if old.get("fingerprint") != fp:
            raise ValueError(f"{man_path}: output folder holds a run with other inputs or settings "
                             f"(fingerprint {old.get('fingerprint')} != {fp}); use a fresh --out")
    else:
        atomic_write_text(man_path, json.dumps(manifest, indent=1, sort_keys=True))
    return out_dir, count, chunks, n_shards


def rephrase_corpus(docs: Sequence[dict], backend, out_dir, settings: RephraseSettings, tokenizer=None,
                    progress: bool = True, on_shard_done: Optional[Callable[[int], None]] = None) -> dict:
    """Rephrase `docs` into sharded JSONL under out_dir; skip shards already present. Returns a summary with
    the filter counts over all shards (including ones finished by an earlier run) and this run's rates."""
    name = getattr(backend, "name", type(backend).__name__)
    out_dir, count, chunks, n_shards = _prepare(docs, out_dir, settings, name, tokenizer)
    prog = Progress(n_shards, progress)
    skipped = 0
    for k in range(n_shards):
        if shard_path(out_dir, settings.style, k).exists():
            skipped += 1
            continue
        part = chunks[k * settings.shard_size:(k + 1) * settings.shard_size]
        rows, stats = rephrase_shard(backend, part, settings, k, count)
        write_shard(out_dir, settings.style, k, rows, stats)
        prog.update(k, stats)
        if on_shard_done is not None:
            on_shard_done(k)
    return summarize(out_dir, settings.style, n_shards) | {"skipped_shards": skipped, **prog.rates()}


def summarize(out_dir, style: str, n_shards: int) -> dict:
    tot = {r: 0 for r in FILTER_REASONS} | {"chunks": 0, "kept": 0, "in_tokens": 0, "out_tokens": 0}
    done = 0
    for k in range(n_shards):
        sp = Path(out_dir) / f"{style}-{k:05d}.stats.json"
        if shard_path(Path(out_dir), style, k).exists() and sp.exists():
            done += 1
            for key, v in json.loads(sp.read_text()).items():
                tot[key] = tot.get(key, 0) + v
    return tot | {"shards": n_shards, "done_shards": done}


def read_rephrased(out_dir, style: Optional[str] = None) -> list[dict]:
    """All kept rows of the finished shards, in shard order."""
    rows = []
    for f in sorted(Path(out_dir).glob(f"{style or '*'}-[0-9]*.jsonl")):
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


# ---- Ray Data path (many machines): one task per shard, same files, same skip rule ---------------------------
def rephrase_corpus_ray(docs: Sequence[dict], backend_factory: Callable[[], object], out_dir,
                        settings: RephraseSettings, tokenizer=None, num_workers: int = 2,
                        ray_address: Optional[str] = None) -> dict:
    """Distribute the missing shards over Ray actors (each builds its own backend once via backend_factory).
    Output files are identical to `rephrase_corpus` (each shard is still written to tmp and renamed)."""
    import ray  # optional dependency: lmlab[dist]

    probe = backend_factory()
    name = getattr(probe, "name", type(probe).__name__)
    del probe
    out_dir, count, chunks, n_shards = _prepare(docs, out_dir, settings, name, tokenizer)
    todo = [k for k in range(n_shards) if not shard_path(out_dir, settings.style, k).exists()]
    if todo:
        if not ray.is_initialized():
            ray.init(address=ray_address, num_cpus=None if ray_address else num_workers,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        import ray.data  # noqa: F401

        items = [{"shard": k, "chunks": json.dumps(chunks[k * settings.shard_size:(k + 1) * settings.shard_size])}
                 for k in todo]
        worker_kwargs = {"factory": backend_factory, "settings": settings, "out_dir": str(out_dir),
                         "tokenizer": tokenizer}
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(_RayShardWorker, fn_constructor_kwargs=worker_kwargs, batch_size=1,
                            concurrency=min(num_workers, len(items)), batch_format="pandas")
        ds.materialize()
    return summarize(out_dir, settings.style, n_shards) | {"ray_shards": len(todo)}


class _RayShardWorker:
    def __init__(self, factory, settings, out_dir, tokenizer):
        self.backend, self.settings, self.out_dir = factory(), settings, Path(out_dir)
        self.count = token_counter(tokenizer)

    def __call__(self, batch):
        import pandas as pd

        out = []
        for k, ch in zip(batch["shard"], batch["chunks"]):
            k = int(k)
            if not shard_path(self.out_dir, self.settings.style, k).exists():
                rows, stats = rephrase_shard(self.backend, json.loads(ch), self.settings, k, self.count)
                write_shard(self.out_dir, self.settings.style, k, rows, stats)
            out.append(k)
        return pd.DataFrame({"shard": out})


# ---- mixing real and synthetic text ------------------------------------------------------------------------
def mix_real_synthetic(real: Sequence[str], synthetic: Sequence[str], ratio: float = 1.0,
                       count: Callable[[str], int] = approx_token_count, token_budget: Optional[int] = None,
                       seed: int = 0) -> list[str]:
    """Shuffle together real and synthetic documents so tokens(real) : tokens(synthetic) ≈ 1 : ratio.

    With token_budget, the mixture is cut to ≈ that many tokens in total (budget/(1+ratio) real); otherwise
    all real text is used and synthetic text is drawn (with repetition if short) to match the ratio.
    ratio = 0 returns real text only.
    """
    if ratio < 0:
        raise ValueError(f"ratio must be ≥ 0, got {ratio}")
    rng = random.Random(seed)

    def take(pool: Sequence[str], n_tok: int, cycle: bool) -> list[str]:
        got, total, order = [], 0, list(range(len(pool)))
        while total < n_tok and order:
            rng.shuffle(order)
            for i in order:
                if total >= n_tok:
                    break
                got.append(pool[i])
                total += count(pool[i])
            if not cycle:
                break
        return got

    real_tok = sum(count(t) for t in real)
    want_real = real_tok if token_budget is None else min(real_tok, int(token_budget / (1 + ratio)))
    want_syn = int(want_real * ratio) if token_budget is None else int(token_budget - want_real)
    mix = take(real, want_real, cycle=False) + (take(synthetic, want_syn, cycle=True) if ratio > 0 else [])
    rng.shuffle(mix)
    return mix


# ---- export ------------------------------------------------------------------------------------------------
def export_domain(rephrase_dir, path, style: Optional[str] = None) -> int:
    """Write the kept rephrases as one JSONL file ({"id", "text", "style"}) — a domain for the data pipeline
    (a folder of such files is a multi-domain source; DataConfig.mix sets the real:synthetic ratio)."""
    rows = read_rephrased(rephrase_dir, style)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"id": f"{r['source_id']}#{r['chunk']}", "text": r["text"],
                                                "style": r["style"]}, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)
