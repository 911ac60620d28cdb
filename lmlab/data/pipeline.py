"""The data pipeline: documents of a source -> tokenizer -> token ids (cached) -> packed windows (cached).

`load_data(DataConfig)` returns a `TokenData`: training windows (N, seq_len+1) mixed over domains and
shuffled by `seed`, held-out windows per domain (independent of the seed), the tokenizer, and an
accounting of documents/characters/tokens per domain and split. Packed arrays are cached on disk under
`<data_dir>/packed/<hash of the config>/`, so a repeated run loads in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from lmlab.config import ConfigError
from lmlab.io import atomic_dir

PACK_VERSION = "pack-v1"
TOKENIZER_SAMPLE_CHARS = 1_000_000  # per domain, for training the embedded BPE


@dataclass
class TokenData:
    train: np.ndarray                # (N, seq_len+1) int64
    val: dict[str, np.ndarray]       # domain -> (M, seq_len+1) int64
    train_domain: np.ndarray         # (N,) int64 index into `domains`
    domains: list[str]
    tokenizer: Any                   # lmlab.data.tokenizer.Tokenizer
    stats: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.train.shape[1]) - 1


# ----------------------------------------------------------------------------------------- documents
def _cfg_dict(cfg) -> dict:
    d = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    d.pop("data_dir", None)
    return d


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def _embedded_chars(cfg) -> int:
    """Characters per embedded domain: `cfg.embedded_chars` when the config has it, else the default."""
    from lmlab.data import embedded

    return int(getattr(cfg, "embedded_chars", None) or embedded.DEFAULT_MAX_CHARS)


def load_texts(cfg) -> dict[str, dict[str, list[str]]]:
    """Raw documents: domain -> {"train": [...], "val": [...]} for the configured source."""
    texts: dict[str, dict[str, list[str]]] = {}
    for domain, split, text, _ in iter_split_documents(cfg, {}, {}):
        texts.setdefault(domain, {"train": [], "val": []})[split].append(text)
    return _order_domains(cfg, texts)


def _order_domains(cfg, per_domain: dict) -> dict:
    """cfg.domains order when given (every one must exist), else sorted; empty -> one-line error."""
    if cfg.domains:
        missing = [d for d in cfg.domains if d not in per_domain]
        if missing:
            raise ConfigError(f"data.domains: {missing[0]!r} not found in {cfg.source!r} "
                              f"(found: {', '.join(sorted(per_domain)) or 'nothing'})")
        return {d: per_domain[d] for d in cfg.domains}
    if not per_domain:
        raise ConfigError(f"data source {cfg.source!r}: no documents found")
    if cfg.source == "embedded":
        return per_domain
    return dict(sorted(per_domain.items()))


def iter_split_documents(cfg, sources_out: dict, stats_out: dict) -> Iterator[tuple[str, str, str, str]]:
    """Stream (domain, split, text, key) for cfg.source. Embedded: the corpus' own split; files and datasets:
    split by a hash of the document's content (identical documents never straddle train and val).
    Fills `sources_out` (provenance) and, once exhausted, `stats_out` (source edge-case counts)."""
    from lmlab.data import embedded
    from lmlab.data.packing import split_of
    from lmlab.data.sources import SourceStats, fingerprint_source, iter_documents

    if cfg.source == "embedded":
        texts, sources = embedded.embedded_corpus(cfg.domains, cfg.data_dir, max_chars=_embedded_chars(cfg),
                                                   val_fraction=cfg.val_fraction)
        sources_out.update(sources)
        for d, v in texts.items():
            for split in ("train", "val"):
                for text in v[split]:
                    yield d, split, text, ""
        return
    sources_out.update({"source": cfg.source, "fingerprint": fingerprint_source(cfg.source),
                        "text_field": cfg.text_field, "val_fraction": cfg.val_fraction})
    stats = SourceStats()
    wanted = set(cfg.domains) if cfg.domains else None
    for doc in iter_documents(cfg.source, cfg.text_field, stats):
        if wanted is None or doc.domain in wanted:
            yield doc.domain, split_of(doc.key, cfg.val_fraction), doc.text, doc.key
    stats_out.update(stats.to_dict())


# ----------------------------------------------------------------------------------------- tokenizer
def _sample_train(docs: Iterable[tuple]) -> Iterator[str]:
    """Train-split texts, at most TOKENIZER_SAMPLE_CHARS per domain (in stream order)."""
    seen: dict[str, int] = {}
    for domain, split, text, *_ in docs:
        if split == "train" and seen.get(domain, 0) < TOKENIZER_SAMPLE_CHARS:
            seen[domain] = seen.get(domain, 0) + len(text)
            yield text


def get_tokenizer(cfg):
    """'embedded': byte-level BPE of cfg.vocab_size trained on the embedded corpus' train text (cached);
    'corpus': the same, trained on this source's train text; anything else: a tokenizer file/dir."""
    from lmlab.data import embedded
    from lmlab.data.sources import cache_lock, default_data_dir, fingerprint_source
    from lmlab.data.tokenizer import load_tokenizer, train_tokenizer

    if cfg.tokenizer not in ("embedded", "corpus"):
        return load_tokenizer(cfg.tokenizer)
    if cfg.tokenizer == "embedded":
        tag = f"{embedded.VERSION}-c{_embedded_chars(cfg)}-v{cfg.vocab_size}"
    else:
        tag = f"corpus-{_key(cfg.source, fingerprint_source(cfg.source), cfg.text_field, cfg.val_fraction)}-v{cfg.vocab_size}"
    out = default_data_dir(cfg.data_dir) / "tokenizers" / tag
    if not (out / "tokenizer.json").exists():
        with cache_lock(out):
            if not (out / "tokenizer.json").exists():
                if cfg.tokenizer == "embedded":
                    texts = embedded.embedded_texts(None, cfg.data_dir, max_chars=_embedded_chars(cfg))
                    docs = ((d, "train", t) for d in texts for t in texts[d]["train"])
                else:  # every domain of the source, whatever cfg.domains selects
                    docs = iter_split_documents(cfg.model_copy(update={"domains": None}), {}, {})
                train_tokenizer(_sample_train(docs), cfg.vocab_size, out, name=tag)
    return load_tokenizer(out)


# ---------------------------------------------------------------------------------------------- load
def load_data(cfg) -> TokenData:
    """Packed training/validation windows for a `DataConfig` (cached on disk; see module doc)."""
    from lmlab.data.sources import cache_lock, default_data_dir, fingerprint_source
    from lmlab.data.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    if cfg.source == "embedded":
        from lmlab.data import embedded

        ident = [embedded.VERSION, _embedded_chars(cfg)]
    else:
        ident = [fingerprint_source(cfg.source)]
    tok = get_tokenizer(cfg)
    key = _key(PACK_VERSION, _cfg_dict(cfg), ident, tok.fingerprint)
    root = default_data_dir(cfg.data_dir) / "packed" / key
    hit = (root / "meta.json").exists()
    if not hit:
        tokens = tokenized_corpus(cfg, tok, ident)
        with cache_lock(root):
            if not (root / "meta.json").exists():
                _build_packed(cfg, tok, root, tokens)
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    data = TokenData(
        train=np.load(root / "train.npy"),
        val={d: np.load(root / f"val_{i}.npy") for i, d in enumerate(meta["domains"])},
        train_domain=np.load(root / "train_domain.npy"),
        domains=list(meta["domains"]),
        tokenizer=load_tokenizer(root / "tokenizer"),
        stats=meta["stats"],
        sources=meta["sources"],
    )
    data.stats["cache_hit"] = hit
    data.stats["load_s"] = round(time.perf_counter() - t0, 3)
    data.stats["cache_dir"] = str(root)
    return data


def tokenized_corpus(cfg, tok, ident: list) -> Path:
    """Tokenize every domain of cfg.source once per (source, split rule, tokenizer); cached as .npz.

    Packing for another seed, seq_len, mix or budget reuses these token ids without re-tokenizing.
    """
    from lmlab.data.packing import TokenStream
    from lmlab.data.sources import cache_lock, default_data_dir, hash_unit

    key = _key(PACK_VERSION, ident, cfg.source, cfg.text_field, cfg.val_fraction, tok.fingerprint)
    root = default_data_dir(cfg.data_dir) / "tokens" / key
    if (root / "meta.json").exists():
        return root
    with cache_lock(root):
        if (root / "meta.json").exists():
            return root
        t0 = time.perf_counter()
        all_cfg = cfg.model_copy(update={"domains": None})
        sources: dict = {}
        source_stats: dict = {}
        streams: dict[tuple[str, str], TokenStream] = {}
        batch: list[tuple[str, str, str, str]] = []

        def flush() -> None:
            for (d, split, text, k), ids in zip(batch, tok.encode_batch([b[2] for b in batch])):
                streams.setdefault((d, split), TokenStream()).add(ids, len(text), hash_unit("val:" + k))
            batch.clear()

        for item in iter_split_documents(all_cfg, sources, source_stats):
            batch.append(item)
            if len(batch) >= 256:
                flush()
        flush()
        domains = list(dict.fromkeys(d for d, _ in streams))
        with atomic_dir(root) as tmp:
            for i, d in enumerate(domains):
                for split in ("train", "val"):
                    streams.get((d, split), TokenStream()).docs().save(tmp / f"{i}_{split}.npz")
            (tmp / "meta.json").write_text(json.dumps(
                {"domains": domains, "sources": sources, "source_stats": source_stats,
                 "tokenize_s": round(time.perf_counter() - t0, 2)}, indent=1, default=str), encoding="utf-8")
    return root


def _build_packed(cfg, tok, root: Path, tokens: Path) -> None:
    from lmlab.data.packing import TokenizedDocs, ensure_val, mix_rows, pack, shuffled_order, take_rows

    t0 = time.perf_counter()
    tmeta = json.loads((tokens / "meta.json").read_text(encoding="utf-8"))
    sources, source_stats = tmeta["sources"], tmeta["source_stats"]
    index = {d: i for i, d in enumerate(tmeta["domains"])}
    domains = list(_order_domains(cfg, index))
    w = cfg.seq_len + 1
    max_val_rows = max(1, cfg.max_val_tokens_per_domain // w)
    per: dict[str, dict] = {}
    train_windows: dict[str, np.ndarray] = {}
    val: dict[str, np.ndarray] = {}
    val_fallback = []
    for i, d in enumerate(domains):
        tr_docs, va_docs, moved = ensure_val(TokenizedDocs.load(tokens / f"{index[d]}_train.npz"),
                                             TokenizedDocs.load(tokens / f"{index[d]}_val.npz"))
        if moved:  # a small domain where no document hashed to val: its lowest-ranked one is held out
            val_fallback.append(d)
        tr, tr_st = pack(tr_docs, cfg.seq_len, tok.eos_id, shuffled_order(len(tr_docs), cfg.seed, i))
        va, va_st = pack(va_docs, cfg.seq_len, tok.eos_id)  # fixed order: the same held-out set for every seed
        if len(va) == 0:
            raise ConfigError(f"data: domain {d!r} has {len(tr_docs)} document(s), too few to hold one out "
                              f"for validation (give it at least 2 documents)")
        train_windows[d] = tr
        val[d] = va[:max_val_rows]
        per[d] = {
            "train_docs": len(tr_docs), "val_docs": len(va_docs),
            "train_chars": int(tr_docs.chars.sum()), "val_chars": int(va_docs.chars.sum()),
            "train_pack": tr_st.to_dict(), "val_pack": va_st.to_dict(),
            "train_windows": tr_st.windows, "val_windows": int(len(val[d])),
            "val_windows_dropped": int(len(va) - len(val[d])),
        }
    avail = {d: len(train_windows[d]) for d in domains}
    total = None if cfg.max_train_tokens is None else max(1, cfg.max_train_tokens // w)
    rows = mix_rows(avail, dict(cfg.mix), total)
    parts, dom_idx = [], []
    for i, d in enumerate(domains):
        x, repeated = take_rows(train_windows[d], rows[d], cfg.seed, i, name=d)
        parts.append(x)
        dom_idx.append(np.full(len(x), i, np.int64))
        per[d]["train_rows"] = int(len(x))
        per[d]["train_rows_repeated"] = int(repeated)
        per[d]["train_tokens"] = int(len(x) * w)
        per[d]["val_tokens"] = int(len(val[d]) * w)
    train = np.concatenate(parts) if parts else np.zeros((0, w), np.int64)
    train_domain = np.concatenate(dom_idx) if dom_idx else np.zeros(0, np.int64)
    perm = np.random.default_rng([cfg.seed, 1 << 20]).permutation(len(train))
    train, train_domain = train[perm], train_domain[perm]
    if len(train) == 0:
        raise ConfigError(f"data source {cfg.source!r}: no training window of seq_len+1={w} tokens")
    stats = {
        "seq_len": cfg.seq_len, "train_rows": int(len(train)), "train_tokens": int(train.size),
        "val_tokens": {d: int(v.size) for d, v in val.items()},
        "mix_realized": {d: round(per[d]["train_rows"] / len(train), 6) for d in domains},
        "domains": per, "source": source_stats, "val_fallback_domains": val_fallback,
        "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "fingerprint": tok.fingerprint},
        "tokenize_s": tmeta["tokenize_s"], "pack_s": round(time.perf_counter() - t0, 2),
    }
    with atomic_dir(root) as tmp:
        np.save(tmp / "train.npy", train.astype(np.int64))
        np.save(tmp / "train_domain.npy", train_domain.astype(np.int64))
        for i, d in enumerate(domains):
            np.save(tmp / f"val_{i}.npy", val[d].astype(np.int64))
        tok.save(tmp / "tokenizer")
        (tmp / "meta.json").write_text(json.dumps({"domains": domains, "stats": stats, "sources": sources,
                                                   "config": _cfg_dict(cfg)}, indent=1, default=str),
                                       encoding="utf-8")

__all__ = ["TokenData", "load_data", "load_texts", "get_tokenizer"]
