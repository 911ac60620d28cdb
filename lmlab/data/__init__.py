"""Data: document sources, tokenizers, packing, the embedded corpus, WRAP rephrasing, synthetic corpora.

The pipeline (`load_data`, `get_tokenizer`, `load_texts`, `TokenData`) lives in `lmlab.data.pipeline`; its
names are re-exported here for older imports.
"""
from lmlab.data.pipeline import TokenData, get_tokenizer, load_data, load_texts

__all__ = ["TokenData", "load_data", "load_texts", "get_tokenizer"]
