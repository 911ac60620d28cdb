"""Export an lmlab `Embedder` as a sentence-transformers model directory.

    export_sentence_transformers(model, tokenizer, "out/st")       # tokenizer: lmlab.data.tokenizer.Tokenizer
    SentenceTransformer("out/st").encode(texts, prompt_name="query")  # == embed_texts(model, tok, texts, "query: ")

Layout: modules 0 = Transformer (the trunk written by `lmlab.models.hf.export_hf` as a Llama checkpoint;
`AutoModel` loads its `LlamaModel` part, whose last hidden state is the trunk's output after the final norm),
1 = Pooling (mean over the attention mask), 2 = Normalize. The tokenizer is saved as a
`PreTrainedTokenizerFast` with the end-of-text token as pad (id 0, as `batch_ids` pads), right padding, no
special tokens added, and max_seq_length = the truncation length used in lmlab. The E5 prefixes are stored as
the model's prompts {"query": "query: ", "passage": "passage: "}. Attention is causal on both sides, and with
right padding no real token sees a pad, so the two pipelines compute the same numbers.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lmlab.models.embedder import PASSAGE_PREFIX, QUERY_PREFIX, Embedder
from lmlab.models.hf import export_hf

PROMPTS = {"query": QUERY_PREFIX, "passage": PASSAGE_PREFIX}


def export_sentence_transformers(model: Embedder, tokenizer, out_dir: str | Path, max_len: int = 64) -> Path:
    """Write `model` (+ its lmlab byte-level BPE `tokenizer`) to out_dir in sentence-transformers format."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "_fast", False):
        raise ValueError("export_sentence_transformers needs a `tokenizers`-backed lmlab Tokenizer")
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model.trunk, tmp)
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token=tokenizer.eos_token,
                                         pad_token=tokenizer.eos_token, padding_side="right",
                                         model_max_length=max_len)
        hf_tok.save_pretrained(tmp)
        enc = Transformer(tmp, max_seq_length=max_len)
        st = SentenceTransformer(modules=[enc, Pooling(model.cfg.d_model, pooling_mode="mean"), Normalize()],
                                 device="cpu", prompts=dict(PROMPTS))
        st.save(str(out))
    return out


__all__ = ["PROMPTS", "export_sentence_transformers"]
