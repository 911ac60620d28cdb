"""WRAP rephrasing: prompts, chunking bound, sharded resumable output, quality filter, mixing, Ray path."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmlab.backend import Backend, GenerationConfig
from lmlab.data import rephrase as R

ROOT = Path(__file__).resolve().parents[1]

# The paper's prompts, as in the project catalogue (docs/CATALOGUE "WRAP prompts").
EXPECTED_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the questions. USER: ")
EXPECTED = {
    "easy": "For the following paragraph give me a paraphrase of the same using a very small vocabulary and "
            "extremely simple sentences that a toddler will understand:",
    "medium": "For the following paragraph give me a diverse paraphrase of the same in high quality English "
              "language as in sentences on Wikipedia:",
    "hard": "For the following paragraph give me a paraphrase of the same using very terse and abstruse language "
            "that only an erudite scholar will understand. Replace simple words and phrases with rare and "
            "complex ones:",
    "qa": 'Convert the following paragraph into a conversational format with multiple tags of "Question:" '
          'followed by "Answer:":',
}


class FakeBackend:
    """Deterministic stand-in: 'rephrases' by reversing each word; refuses or copies on some hashes."""

    name = "fake"

    def __init__(self, sleep: float = 0.0, fail_after_calls: int | None = None):
        self.calls, self.sleep, self.fail_after = 0, sleep, fail_after_calls
        self.batch_sizes: list[int] = []

    def _one(self, prompt: str) -> str:
        para = prompt.split("\n", 1)[1].rsplit("\nASSISTANT:", 1)[0]
        h = int(hashlib.md5(para.encode()).hexdigest(), 16) % 10
        if h == 0:
            return "I'm sorry, but I cannot help with that."
        if h == 1:
            return para  # a copy of the input
        if h == 2:
            return ""
        return " ".join(w[::-1] for w in para.split())

    def generate(self, prompts, gen):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("injected failure")
        self.calls += 1
        self.batch_sizes.append(len(prompts))
        if self.sleep:
            time.sleep(self.sleep)
        return [[self._one(p)] * gen.n for p in prompts]

    def chat(self, conversations, gen):
        return self.generate([R.SYSTEM_TEXT + m[1]["content"] + "\nASSISTANT:" for m in conversations], gen)

    def logprobs(self, prompts, continuations):
        return [0.0] * len(prompts)

    def score(self, texts):
        return [0.0] * len(texts)


def _docs(n=23, seed=0):
    rng = random.Random(seed)
    words = "the of and to in a is that for it as was with be by on not he this are or his from at".split()
    docs = []
    for i in range(n):
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))).capitalize() + "."
                 for _ in range(rng.randint(1, 12))]
        docs.append({"id": f"doc{i}", "text": " ".join(sents)})
    return docs


def test_prompts_match_catalogue_exactly():
    assert R.SYSTEM_TEXT == EXPECTED_SYSTEM
    assert R.STYLE_PROMPTS == EXPECTED
    assert R.build_prompt("qa", "X y.") == EXPECTED_SYSTEM + EXPECTED["qa"] + "\nX y.\nASSISTANT:"
    assert R.MAX_CHUNK_TOKENS == 300
    cat = Path("/work/shared/CATALOGUE.md")
    if cat.exists():  # also against the catalogue text itself when it is on this machine
        flat = " ".join(cat.read_text().split())
        seg = flat[flat.index("WRAP prompts (the paper's"):][:2000]
        for s in [R.SYSTEM_TEXT, *R.STYLE_PROMPTS.values()]:
            assert f'"{s}"' in seg
    with pytest.raises(ValueError, match="unknown style 'poetic'"):
        R.style_prefix("poetic")


def test_every_prompt_of_a_batch_shares_the_style_prefix():
    prompts = [R.build_prompt("hard", d["text"]) for d in _docs(5)]
    pre = os.path.commonprefix(prompts)
    assert pre.startswith(R.style_prefix("hard"))


@pytest.mark.parametrize("max_tokens", [1, 7, 50, 300])
def test_chunking_respects_token_limit_and_keeps_all_words(max_tokens):
    rng = random.Random(max_tokens)
    text = " ".join(
        rng.choice(["alpha", "beta,", "gamma.", "delta!", "x" * rng.randint(1, 40), "e;", "\n\n"])
        for _ in range(2000))
    for count in (R.approx_token_count, len):  # word-ish counter, and a byte-level "tokenizer" (len of chars)
        if count is len and max_tokens < 5:
            continue
        chunks = R.chunk_text(text, max_tokens, count)
        assert chunks and all(count(c) <= max_tokens for c in chunks)
        if count is R.approx_token_count:  # words are never cut unless a single word exceeds the limit
            assert "".join("".join(chunks).split()) == "".join(text.split())
    # packing is greedy: two neighbouring chunks would not have fit together
    chunks = R.chunk_text(text, max_tokens, R.approx_token_count)
    assert all(R.approx_token_count(a + " " + b) > max_tokens for a, b in zip(chunks, chunks[1:]))


def test_chunking_with_a_real_bpe_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    docs = _docs(30)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator([d["text"] for d in docs], trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    count = R.token_counter(tok)
    assert count("the of and") == len(tok.encode("the of and").ids)
    for d in docs:
        for c in R.chunk_text(d["text"], 40, count):
            assert len(tok.encode(c).ids) <= 40


def test_quality_filter_reasons():
    src = "The quick brown fox jumps over the lazy dog near the river bank today."
    assert R.quality_reason(src, "   ") == "empty"
    assert R.quality_reason(src, "A fox.") == "too_short"
    assert R.quality_reason(src, "I'm sorry, but I can't rephrase this paragraph for you.") == "refusal"
    assert R.quality_reason(src, "As an AI language model I will not do that.") == "refusal"
    assert R.quality_reason(src, src.upper() + " ") == "copy"
    assert R.quality_reason(src, "A fast brown fox leaps above a sleepy dog close to the riverside.") is None


def _settings(**kw):
    base = dict(style="easy", shard_size=5, batch_size=3, min_words=3)
    return R.RephraseSettings(**(base | kw))


def _shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if ".tmp" not in p.name}


def test_sharded_output_keeps_ids_style_and_counts(tmp_path):
    docs = _docs()
    be = FakeBackend()
    assert isinstance(be, Backend)
    s = R.rephrase_corpus(docs, be, tmp_path, _settings(max_tokens=40), progress=False)
    chunks = R.plan_chunks(docs, 40, R.approx_token_count)
    assert s["chunks"] == len(chunks) and s["done_shards"] == s["shards"] == -(-len(chunks) // 5)
    assert max(be.batch_sizes) == 3
    rows = R.read_rephrased(tmp_path, "easy")
    assert len(rows) == s["kept"] == s["chunks"] - sum(s[r] for r in R.FILTER_REASONS)
    # counts are exactly what the fake backend's hash rule produces
    expect = {"refusal": 0, "copy": 0, "empty": 0}
    for c in chunks:
        h = int(hashlib.md5(c["text"].encode()).hexdigest(), 16) % 10
        expect[{0: "refusal", 1: "copy", 2: "empty"}.get(h, "kept")] = \
            expect.get({0: "refusal", 1: "copy", 2: "empty"}.get(h, "kept"), 0) + 1
    short = sum(1 for c in chunks if int(hashlib.md5(c["text"].encode()).hexdigest(), 16) % 10 > 2
                and len(c["text"].split()) < 3)
    assert (s["refusal"], s["copy"], s["empty"]) == (expect["refusal"], expect["copy"], expect["empty"])
    assert s["too_short"] == short and s["kept"] == expect["kept"] - short
    by_key = {(c["source_id"], c["chunk"]): c["text"] for c in chunks}
    for r in rows:
        assert r["style"] == "easy"
        assert r["text"] == " ".join(w[::-1] for w in by_key[(r["source_id"], r["chunk"])].split())
    # a rerun is a no-op and a rerun with other settings is refused
    again = R.rephrase_corpus(docs, FakeBackend(fail_after_calls=0), tmp_path, _settings(max_tokens=40), progress=False)
    assert again["skipped_shards"] == s["shards"]
    with pytest.raises(ValueError, match="fingerprint"):
        R.rephrase_corpus(docs, FakeBackend(), tmp_path, _settings(max_tokens=41), progress=False)


def test_resume_after_injected_failure_equals_uninterrupted(tmp_path):
    docs = _docs()
    ref = tmp_path / "ref"
    R.rephrase_corpus(docs, FakeBackend(), ref, _settings(), progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="injected"):
        # 2 calls per shard (5 chunks / batch 3): fails in the middle of the 3rd shard
        R.rephrase_corpus(docs, FakeBackend(fail_after_calls=5), out, _settings(), progress=False)
    partial = sorted(p.name for p in out.glob("easy-*.jsonl"))
    assert partial == ["easy-00000.jsonl", "easy-00001.jsonl"]
    be = FakeBackend()
    s = R.rephrase_corpus(docs, be, out, _settings(), progress=False)
    n = s["chunks"]
    remaining = [min(5, n - 5 * k) for k in range(2, s["shards"])]
    assert s["skipped_shards"] == 2 and be.calls == sum(-(-m // 3) for m in remaining)
    assert _shard_bytes(out) == _shard_bytes(ref)


def test_resume_after_real_sigkill_equals_uninterrupted(tmp_path):
    docs = _docs(40)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    ref = tmp_path / "ref"
    R.rephrase_corpus(R.read_documents(str(tmp_path / "docs.jsonl")), FakeBackend(), ref, _settings(), progress=False)
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
        from test_datatech_rephrase import FakeBackend, _settings
        from lmlab.data import rephrase as R
        R.rephrase_corpus(R.read_documents({str(tmp_path / 'docs.jsonl')!r}), FakeBackend(sleep=0.15),
                          {str(out)!r}, _settings(), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        t0 = time.time()
        while not (out / "easy-00001.jsonl").exists():
            assert proc.poll() is None, "the child finished or died before it could be killed"
            assert time.time() - t0 < 40
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    n_done = len(list(out.glob("easy-*.jsonl")))
    n_total = json.loads((out / "manifest-easy.json").read_text())["n_shards"]
    assert 2 <= n_done < n_total
    for p in out.glob("easy-*.jsonl"):  # every finished shard is whole
        assert p.read_bytes() == (ref / p.name).read_bytes()
    s = R.rephrase_corpus(R.read_documents(str(tmp_path / "docs.jsonl")), FakeBackend(), out, _settings(),
                          progress=False)
    assert s["skipped_shards"] == n_done
    assert _shard_bytes(out) == _shard_bytes(ref)


def test_chat_mode_sends_style_instruction_as_user_turn(tmp_path):
    seen = []

    class Chat(FakeBackend):
        def chat(self, conversations, gen):
            seen.extend(conversations)
            return super().chat(conversations, gen)

    R.rephrase_corpus(_docs(3), Chat(), tmp_path, _settings(chat=True, style="qa"), progress=False)
    assert seen and all(c[1]["content"].startswith(EXPECTED["qa"] + "\n") for c in seen)
    assert seen[0][0]["content"] + " USER: " == EXPECTED_SYSTEM


def test_mixing_ratio_and_budget():
    real = [f"real {i} " + "w " * (i % 7 + 3) for i in range(200)]
    syn = [f"syn {i} " + "v " * (i % 5 + 3) for i in range(40)]
    c = R.approx_token_count
    for ratio in (0.5, 1.0, 2.0):
        mix = R.mix_real_synthetic(real, syn, ratio, seed=1)
        rt = sum(c(t) for t in mix if t.startswith("real"))
        st = sum(c(t) for t in mix if t.startswith("syn"))
        assert rt == sum(c(t) for t in real)
        assert abs(st / rt - ratio) < 0.02
    mix = R.mix_real_synthetic(real, syn, 1.0, token_budget=1000, seed=0)
    rt = sum(c(t) for t in mix if t.startswith("real"))
    st = sum(c(t) for t in mix if t.startswith("syn"))
    assert abs(rt + st - 1000) <= 20 and abs(rt - st) <= 20
    assert R.mix_real_synthetic(real, syn, 0.0) and all(t.startswith("real") for t in R.mix_real_synthetic(real, syn, 0.0))
    assert R.mix_real_synthetic(real, syn, 1.0, seed=3) == R.mix_real_synthetic(real, syn, 1.0, seed=3)


def _cli(argv):
    import argparse

    from lmlab.cli import DATA_COMMANDS, register_rephrase

    assert DATA_COMMANDS["rephrase"] == "lmlab.cli:register_rephrase"
    p = argparse.ArgumentParser()
    register_rephrase(p.add_subparsers())
    a = p.parse_args(["rephrase", *argv])
    return a.func(a)


def test_cli_rephrase_end_to_end(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("\n\n".join(d["text"] for d in _docs(6)))
    sys.modules.setdefault("test_datatech_rephrase", sys.modules[__name__])
    rc = _cli(["--style", "medium", "--backend", "py:test_datatech_rephrase:FakeBackend",
               "--in", str(tmp_path / "in.txt"), "--out", str(tmp_path / "o"), "--shard-size", "4"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["done_shards"] == s["shards"] and len(R.read_rephrased(tmp_path / "o")) == s["kept"] > 0
    assert {r["style"] for r in R.read_rephrased(tmp_path / "o")} == {"medium"}
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        _cli(["--style", "medium", "--backend", "x", "--in", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])


def test_ray_data_path_matches_local(tmp_path):
    ray = pytest.importorskip("ray", reason="ray not installed (pip install lmlab[dist])")
    pytest.importorskip("pandas")
    docs = _docs(12)
    ref = tmp_path / "ref"
    R.rephrase_corpus(docs, FakeBackend(), ref, _settings(), progress=False)
    out = tmp_path / "ray"
    # half the shards already done: the Ray path must skip them and produce the rest identically
    try:
        R.rephrase_corpus(docs, FakeBackend(fail_after_calls=4), out, _settings(), progress=False)
    except RuntimeError:
        pass
    done_before = len(list(out.glob("easy-*.jsonl")))
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        s = R.rephrase_corpus_ray(docs, FakeBackend, out, _settings(), num_workers=2)
    finally:
        ray.shutdown()
    assert s["ray_shards"] == s["shards"] - done_before > 0
    assert _shard_bytes(out) == _shard_bytes(ref)


def test_export_domain_for_the_data_pipeline(tmp_path):
    R.rephrase_corpus(_docs(8), FakeBackend(), tmp_path / "o", _settings(style="hard"), progress=False)
    n = R.export_domain(tmp_path / "o", tmp_path / "wrap" / "wrap_hard.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "wrap" / "wrap_hard.jsonl").read_text().splitlines()]
    assert n == len(rows) == len(R.read_rephrased(tmp_path / "o")) > 0
    assert all(r["style"] == "hard" and "#" in r["id"] and r["text"] for r in rows)


def test_trim_repetition_cuts_degenerate_loops(tmp_path):
    t = "In the beginning God made light. The earth was empty. And God created God. And God created God. And God"
    assert R.trim_repetition(t) == "In the beginning God made light. The earth was empty. And God created God."
    assert R.trim_repetition("No loop here. None at all!") == "No loop here. None at all!"

    class Loopy(FakeBackend):
        def _one(self, prompt):
            return "A fine new sentence about it. Then more words follow here. Again. Again. Again."

    docs = [{"id": f"d{i}", "text": f"Short source text number {i} about the river."} for i in range(4)]
    R.rephrase_corpus(docs, Loopy(), tmp_path, _settings(trim_repetition=True), progress=False)
    assert {r["text"] for r in R.read_rephrased(tmp_path)} == {"A fine new sentence about it. Then more words follow here. Again."}
