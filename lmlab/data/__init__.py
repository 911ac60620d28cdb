"""Data: tokenizers, document sources, the embedded corpus, and `load_data` (packed, cached token arrays).

`load_data(DataConfig)` returns a `TokenData`: training windows (N, seq_len+1) mixed over domains and
shuffled by `seed`, held-out windows per domain (independent of the seed), the tokenizer, and an
accounting of documents/characters/tokens per domain and split. Packed arrays are cached on disk under
`<data_dir>/packed/<hash of the config>/`, so a repeated run loads in well under a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

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


def load_texts(cfg) -> dict[str, dict[str, list[str]]]:
    """Raw documents: domain -> {"train": [...], "val": [...]} for the configured source."""
    texts, _, _ = _load_documents(cfg)
    return texts


def _load_documents(cfg) -> tuple[dict[str, dict[str, list[str]]], dict, dict]:
    """(texts, sources, source_stats) for cfg.source; domains sorted, documents in source order."""
    from lmlab.data import embedded
    from lmlab.data.packing import split_of
    from lmlab.data.sources import SourceStats, fingerprint_source, iter_documents

    if cfg.source == "embedded":
        texts, sources = embedded.embedded_corpus(cfg.domains, cfg.data_dir, val_fraction=cfg.val_fraction)
        return ({d: {"train": v["train"], "val": v["val"]} for d, v in texts.items()},
                sources, {})
    stats = SourceStats()
    texts: dict[str, dict[str, list[str]]] = {}
    for doc in iter_documents(cfg.source, cfg.text_field, stats):
        texts.setdefault(doc.domain, {"train": [], "val": []})[split_of(doc.key, cfg.val_fraction)].append(doc.text)
    if cfg.domains:
        missing = [d for d in cfg.domains if d not in texts]
        if missing:
            raise ValueError(f"data.domains: {missing[0]!r} not found in {cfg.source!r} (found: {', '.join(sorted(texts))})")
        texts = {d: texts[d] for d in cfg.domains}
    if not texts:
        raise ValueError(f"data source {cfg.source!r}: no documents found ({stats.to_dict()})")
    sources = {"source": cfg.source, "fingerprint": fingerprint_source(cfg.source), "text_field": cfg.text_field}
    return dict(sorted(texts.items())), sources, stats.to_dict()


# ----------------------------------------------------------------------------------------- tokenizer
def get_tokenizer(cfg, texts: Optional[dict] = None):
    """'embedded': byte-level BPE of cfg.vocab_size trained on the embedded corpus' train text (cached);
    'corpus': the same, trained on this source's train text; anything else: a tokenizer file/dir."""
    from lmlab.data import embedded
    from lmlab.data.sources import cache_lock, default_data_dir, fingerprint_source
    from lmlab.data.tokenizer import load_tokenizer, train_tokenizer

    if cfg.tokenizer not in ("embedded", "corpus"):
        return load_tokenizer(cfg.tokenizer)
    if cfg.tokenizer == "embedded":
        tag = f"{embedded.VERSION}-v{cfg.vocab_size}"
    else:
        tag = f"corpus-{_key(cfg.source, fingerprint_source(cfg.source), cfg.text_field, cfg.val_fraction)}-v{cfg.vocab_size}"
    out = default_data_dir(cfg.data_dir) / "tokenizers" / tag
    if not (out / "tokenizer.json").exists():
        with cache_lock(out):
            if not (out / "tokenizer.json").exists():
                if cfg.tokenizer == "embedded":
                    texts = embedded.embedded_texts(None, cfg.data_dir)
                elif texts is None:
                    texts, _, _ = _load_documents(cfg)
                sample = []
                for d in sorted(texts):
                    n = 0
                    for t in texts[d]["train"]:
                        if n >= TOKENIZER_SAMPLE_CHARS:
                            break
                        sample.append(t)
                        n += len(t)
                train_tokenizer(sample, cfg.vocab_size, out, name=tag)
    return load_tokenizer(out)


# ---------------------------------------------------------------------------------------------- load
def load_data(cfg) -> TokenData:
    """Packed training/validation windows for a `DataConfig` (cached on disk; see module doc)."""
    from lmlab.data.sources import cache_lock, default_data_dir, fingerprint_source
    from lmlab.data.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    if cfg.source == "embedded":
        from lmlab.data import embedded

        ident = [embedded.VERSION]
    else:
        ident = [fingerprint_source(cfg.source)]
    tok = get_tokenizer(cfg)
    key = _key(PACK_VERSION, _cfg_dict(cfg), ident, tok.fingerprint)
    root = default_data_dir(cfg.data_dir) / "packed" / key
    if not (root / "meta.json").exists():
        with cache_lock(root):
            if not (root / "meta.json").exists():
                _build_packed(cfg, tok, root)
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
    data.stats["load_s"] = round(time.perf_counter() - t0, 3)
    data.stats["cache_dir"] = str(root)
    return data


def _build_packed(cfg, tok, root: Path) -> None:
    from lmlab.data.packing import mix_rows, pack, shuffled_order, take_rows, tokenize_documents

    t0 = time.perf_counter()
    texts, sources, source_stats = _load_documents(cfg)
    domains = list(texts)
    w = cfg.seq_len + 1
    max_val_rows = max(1, cfg.max_val_tokens_per_domain // w)
    per: dict[str, dict] = {}
    train_windows: dict[str, np.ndarray] = {}
    val: dict[str, np.ndarray] = {}
    for i, d in enumerate(domains):
        tr_docs = tokenize_documents(tok, texts[d]["train"])
        va_docs = tokenize_documents(tok, texts[d]["val"])
        tr, tr_st = pack(tr_docs, cfg.seq_len, tok.eos_id, shuffled_order(len(tr_docs), cfg.seed, i))
        va, va_st = pack(va_docs, cfg.seq_len, tok.eos_id)  # fixed order: the same held-out set for every seed
        train_windows[d] = tr
        val[d] = va[:max_val_rows]
        per[d] = {
            "train_docs": len(texts[d]["train"]), "val_docs": len(texts[d]["val"]),
            "train_chars": sum(map(len, texts[d]["train"])), "val_chars": sum(map(len, texts[d]["val"])),
            "train_pack": tr_st.to_dict(), "val_pack": va_st.to_dict(),
            "train_windows": tr_st.windows, "val_windows": int(len(val[d])),
            "val_windows_dropped": int(len(va) - len(val[d])),
        }
    avail = {d: len(train_windows[d]) for d in domains}
    total = None if cfg.max_train_tokens is None else max(1, cfg.max_train_tokens // w)
    rows = mix_rows(avail, dict(cfg.mix), total)
    parts, dom_idx = [], []
    for i, d in enumerate(domains):
        x, repeated = take_rows(train_windows[d], rows[d], cfg.seed, i)
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
        raise ValueError(f"data source {cfg.source!r}: no training window of seq_len+1={w} tokens")
    stats = {
        "seq_len": cfg.seq_len, "train_rows": int(len(train)), "train_tokens": int(train.size),
        "val_tokens": {d: int(v.size) for d, v in val.items()},
        "mix_realized": {d: round(per[d]["train_rows"] / len(train), 6) for d in domains},
        "domains": per, "source": source_stats,
        "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "fingerprint": tok.fingerprint},
        "build_s": round(time.perf_counter() - t0, 2),
    }
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "train.npy", train.astype(np.int64))
    np.save(tmp / "train_domain.npy", train_domain.astype(np.int64))
    for i, d in enumerate(domains):
        np.save(tmp / f"val_{i}.npy", val[d].astype(np.int64))
    tok.save(tmp / "tokenizer")
    (tmp / "meta.json").write_text(json.dumps({"domains": domains, "stats": stats, "sources": sources,
                                               "config": _cfg_dict(cfg)}, indent=1, default=str), encoding="utf-8")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


__all__ = ["TokenData", "load_data", "load_texts", "get_tokenizer"]
