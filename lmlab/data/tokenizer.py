"""Tokenizers: train a byte-level BPE with HF `tokenizers`, or load any HF tokenizer file/directory.

Byte-level BPE with no normalizer is lossless: `decode(encode(x)) == x` for every unicode string.
The end-of-text token `<|endoftext|>` separates documents; it is only ever inserted by id (the packer
does that), so the literal string "<|endoftext|>" inside a document is encoded as ordinary text.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from lmlab.config import ConfigError
from lmlab.io import atomic_file

EOS_TOKEN = "<|endoftext|>"


class Tokenizer:
    """Thin wrapper with one interface over a `tokenizers.Tokenizer` or a `transformers` tokenizer."""

    def __init__(self, backend: Any, eos_token: Optional[str] = None, name: str = "tokenizer"):
        self.backend = backend
        self.name = name
        self._fast = _is_tokenizers_obj(backend)
        if self._fast:
            if hasattr(backend, "encode_special_tokens"):
                backend.encode_special_tokens = True  # a literal "<|endoftext|>" in text is not EOS
            self.eos_token = eos_token or _guess_eos(backend)
            self.eos_id = backend.token_to_id(self.eos_token) if self.eos_token else None
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        else:  # transformers PreTrainedTokenizer(Fast)
            self.eos_token = eos_token or backend.eos_token
            self.eos_id = backend.convert_tokens_to_ids(self.eos_token) if self.eos_token else None
            self.vocab_size = len(backend)
        if self.eos_id is None:
            raise ConfigError(f"tokenizer {name!r} has no end-of-text token (looked for {self.eos_token!r})")
        self.bos_id: Optional[int] = None
        self.pad_id: int = self.eos_id

    # --------------------------------------------------------------------------------- encode/decode
    def encode(self, text: str) -> list[int]:
        if self._fast:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._fast:
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
        return [self.backend.encode(t, add_special_tokens=False) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self._fast:
            return self.backend.decode(ids, skip_special_tokens=False)
        return self.backend.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------------------------- identity
    def to_json(self) -> str:
        if self._fast:
            return self.backend.to_str()
        return json.dumps({"name_or_path": getattr(self.backend, "name_or_path", self.name),
                           "vocab": sorted(self.backend.get_vocab().items(), key=lambda kv: kv[1])})

    @property
    def fingerprint(self) -> str:
        """Content hash: two tokenizers with the same fingerprint encode identically."""
        return hashlib.blake2b(self.to_json().encode("utf-8"), digest_size=8).hexdigest()

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self._fast:
            with atomic_file(out / "tokenizer.json", fsync=False) as tmp:
                self.backend.save(str(tmp))
        else:
            self.backend.save_pretrained(str(out))
        (out / "lmlab_tokenizer.json").write_text(json.dumps(
            {"eos_token": self.eos_token, "vocab_size": self.vocab_size, "name": self.name}), encoding="utf-8")
        return out

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _is_tokenizers_obj(obj: Any) -> bool:
    from tokenizers import Tokenizer as _T

    return isinstance(obj, _T)


def _guess_eos(tok: Any) -> Optional[str]:
    vocab = tok.get_vocab(with_added_tokens=True)
    for cand in (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "[SEP]"):
        if cand in vocab:
            return cand
    return None


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None,
                    min_frequency: int = 2, name: str = "bpe") -> Tokenizer:
    """Byte-level BPE with `<|endoftext|>` as the single special token (id 0)."""
    from tokenizers import Tokenizer as _T, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ConfigError(f"vocab_size={vocab_size}: must be >= 257 (256 bytes + <|endoftext|>)")
    tok = _T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(iter(texts), trainer=trainer)
    out = Tokenizer(tok, EOS_TOKEN, name=name)
    if out_dir is not None:
        out.save(out_dir)
    return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizer.json` file, a directory holding one, or any HF tokenizer directory (via transformers)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"tokenizer path {str(p)!r} does not exist")
    meta: dict = {}
    if p.is_dir():
        if (p / "lmlab_tokenizer.json").exists():
            meta = json.loads((p / "lmlab_tokenizer.json").read_text(encoding="utf-8"))
        if (p / "tokenizer.json").exists():
            p = p / "tokenizer.json"
        else:
            try:
                from transformers import AutoTokenizer
            except ImportError as e:  # pragma: no cover
                raise ConfigError(f"tokenizer dir {str(p)!r} has no tokenizer.json and transformers is missing") from e
            try:
                hf = AutoTokenizer.from_pretrained(str(p))
            except Exception as e:  # noqa: BLE001 - one line naming the dir
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"tokenizer dir {str(p)!r}: cannot load ({first})") from None
            return Tokenizer(hf, meta.get("eos_token"), name=p.name)
    from tokenizers import Tokenizer as _T

    try:
        tok = _T.from_file(str(p))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"tokenizer file {str(p)!r}: cannot load ({str(e).splitlines()[0] if str(e) else e})") from None
    return Tokenizer(tok, meta.get("eos_token"), name=p.parent.name or p.stem)
