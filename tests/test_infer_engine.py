"""Generation engine on a tiny random Decoder: tree/Hydragen decode equals plain recomputation."""
import sys
from pathlib import Path
import torch
import pytest

from lmlab.backend import GenerationConfig
from lmlab.config import ModelConfig
from lmlab.infer.engine import Engine, process_logits
from lmlab.models.decoder import Decoder

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import CharTok  # noqa: E402


def tiny(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=48, n_layer=2, n_head=6, n_kv_head=2, max_seq_len=256,
                      tie_embeddings=False, **kw)
    m = Decoder(cfg).to(dtype)
    with torch.no_grad():  # larger weights -> peaked, diverse next-token distributions
        m.head.weight.mul_(8.0)
    return m.eval()


def greedy_reference(model, ids, n_new, stop=()):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if t in stop:
                break
            ids.append(t)
            out.append(t)
    return out


PROMPTS = ["System: be brief. Q: what is 2+2?", "System: be brief. Q: name a color", "System: be brief. Q: hi",
           "System: be brief. Q: what is 2+2?"]


@pytest.mark.parametrize("hydragen", [True, False])
def test_greedy_equals_full_recompute(hydragen):
    m, tok = tiny(), CharTok()
    eng = Engine(m, tok, hydragen=hydragen, stop_token_ids=[])
    eng.stop_ids = set()
    ids = [tok.encode(p) for p in PROMPTS]
    out = eng.generate_ids(ids, GenerationConfig(max_new_tokens=12, n=2))
    for p, row in zip(ids, out):
        ref = greedy_reference(m, p, 12)
        for c in row:
            assert c.token_ids == ref and c.finish_reason == "length"


def test_hydragen_on_off_identical_and_single_prompt():
    m, tok = tiny(torch.float32), CharTok()
    eng = Engine(m, tok, stop_token_ids=[])
    eng.stop_ids = set()
    for prompts, n in ((PROMPTS, 3), (["one prompt, many samples"], 5), (["ab", "xyz0123"], 1)):
        ids = [tok.encode(p) for p in prompts]
        g = GenerationConfig(max_new_tokens=10, n=n)
        on = eng.generate_ids(ids, g, hydragen=True)
        off = eng.generate_ids(ids, g, hydragen=False)
        assert [[c.token_ids for c in r] for r in on] == [[c.token_ids for c in r] for r in off]


def test_sampling_seeds_n_and_stop():
    m, tok = tiny(torch.float32), CharTok()
    eng = Engine(m, tok)
    g = GenerationConfig(max_new_tokens=16, n=4, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    a = eng.generate(["hello"], g)
    b = eng.generate(["hello"], g)
    assert a == b                                   # same seed, same samples
    assert len(a) == 1 and len(a[0]) == 4
    assert len(set(a[0])) > 1                       # n samples differ
    c = eng.generate(["hello"], GenerationConfig(max_new_tokens=16, n=4, temperature=1.0, seed=8))
    assert c != a
    # stop strings: the greedy text is cut before the first occurrence of a stop string
    full = eng.generate(["hello"], GenerationConfig(max_new_tokens=16))[0][0]
    assert len(full) >= 4
    stop = full[2:4]
    cut = eng.generate(["hello"], GenerationConfig(max_new_tokens=16, stop=[stop]))[0][0]
    assert cut == full[:full.find(stop)]


def test_eos_and_streaming():
    m, tok = tiny(torch.float32), CharTok()
    ids = tok.encode("stream me")
    ref = greedy_reference(m, ids, 20)
    eos = ref[5]
    eng = Engine(m, tok, stop_token_ids=[eos])
    pieces = []
    out = eng.generate_ids([ids], GenerationConfig(max_new_tokens=20), stream=lambda i, j, s: pieces.append(s))
    c = out[0][0]
    assert c.token_ids == ref[:ref.index(eos)] and c.finish_reason == "stop"
    assert "".join(pieces) == c.text == tok.decode(c.token_ids)


def test_logit_processors():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    seen = torch.tensor([[True, False, False, True, False]])
    out = process_logits(logits, GenerationConfig(temperature=1.0, repetition_penalty=2.0), seen)
    assert torch.allclose(out, torch.tensor([[1.0, 1.0, 0.5, -2.0, -3.0]]))
    out = process_logits(logits, GenerationConfig(temperature=0.5, top_k=2), None)
    assert torch.isinf(out[0, 2:]).all() and torch.allclose(out[0, :2], torch.tensor([4.0, 2.0]))
    p = torch.softmax(logits, -1)[0]                 # 0.61, 0.22, 0.14, ...
    out = process_logits(logits, GenerationConfig(temperature=1.0, top_p=0.7), None)
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False, False] and p[0] < 0.7 < p[0] + p[1]


def test_token_logprobs_match_full_forward():
    m, tok = tiny(), CharTok()
    eng = Engine(m, tok)
    ctx, tgt = [tok.encode("abc"), tok.encode("hello world")], [tok.encode("de"), tok.encode("!")]
    lp = eng.token_logprobs(ctx, tgt)
    for c, t, got in zip(ctx, tgt, lp):
        full = torch.log_softmax(m(torch.tensor([c + t])).logits[0].detach(), -1)
        want = [float(full[len(c) - 1 + j, t[j]]) for j in range(len(t))]
        assert got == pytest.approx(want, abs=1e-9)


def test_sliding_window_model_uses_sequential_path():
    m, tok = tiny(sliding_window=8), CharTok()
    eng = Engine(m, tok)
    eng.stop_ids = set()
    assert not eng.tree_ok
    ids = tok.encode("a window of eight tokens")
    assert eng.generate_ids([ids], GenerationConfig(max_new_tokens=6))[0][0].token_ids == greedy_reference(m, ids, 6)


def test_bad_generation_values():
    eng = Engine(tiny(torch.float32), CharTok())
    with pytest.raises(ValueError, match="top_p"):
        eng.generate(["x"], GenerationConfig(top_p=0.0))
    with pytest.raises(ValueError, match="context"):
        eng.generate(["x" * 250], GenerationConfig(max_new_tokens=10))


def test_load_backend_specs(tmp_path):
    from lmlab.config import ConfigError
    from lmlab.infer import Backend, load_backend
    from lmlab.infer.backend_impls import LocalBackend, _load_lmlab_checkpoint

    m, tok = tiny(torch.float32), CharTok()
    be = LocalBackend(m, tok)
    assert isinstance(be, Backend) and load_backend(be) is be
    for bad, msg in (("nope", "unknown"), ("lmlab:/does/not/exist", "does not exist"), ("openai:ftp://x", "openai"),
                     ("hf:", "nothing after")):
        with pytest.raises(ConfigError, match=msg):
            load_backend(bad)
    torch.save({"model": m.state_dict(), "config": {"model": m.cfg.model_dump()}}, tmp_path / "ckpt.pt")
    m2, _ = _load_lmlab_checkpoint(str(tmp_path))
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(m2(x).logits, m(x).logits)
    # the trainer's layout: <run>/checkpoints/step_*/model.safetensors + state.json with the config
    from lmlab.train.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run" / "checkpoints", 7, m, state={"config": {"model": m.cfg.model_dump()}})
    m3, _ = _load_lmlab_checkpoint(str(tmp_path / "run"))
    with torch.no_grad():
        assert torch.equal(m3(x).logits, m(x).logits)
    # chat goes through the tokenizer's template (or a plain fallback) and equals generate on that prompt
    g = GenerationConfig(max_new_tokens=5)
    assert be.chat([[{"role": "user", "content": "hi"}]], g) == be.generate(["user: hi\nassistant: "], g)
    assert be.score(["abc"])[0] == pytest.approx(be.logprobs(["a"], ["bc"])[0], abs=1e-5)


def test_level1_prefill_in_chunks_equals_reference(monkeypatch):
    import lmlab.infer.engine as E

    m, tok = tiny(), CharTok()
    eng = Engine(m, tok)
    eng.stop_ids = set()
    ps = [tok.encode("prefix shared " + str(i) * (i + 1)) for i in range(7)]
    monkeypatch.setattr(E, "PREFILL_SCORE_BUDGET", 1)     # one prompt per chunk
    out = eng.generate_ids(ps, GenerationConfig(max_new_tokens=5))
    assert [r[0].token_ids for r in out] == [greedy_reference(m, p, 5) for p in ps]


def test_categorical_draws_follow_the_distribution():
    from lmlab.infer.engine import categorical

    probs = torch.tensor([[0.0, 0.5, 0.2, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0, 0.0]]).repeat(4000, 1)
    draws = categorical(probs, torch.Generator().manual_seed(0))
    first, second = draws[0::2], draws[1::2]
    assert set(second.tolist()) == {0}                                  # a one-hot row always gives its token
    assert not ((first == 0) | (first == 3)).any()                      # zero-probability tokens never drawn
    freq = torch.bincount(first, minlength=5).double() / first.numel()
    assert (freq - torch.tensor([0.0, 0.5, 0.2, 0.0, 0.3], dtype=torch.float64)).abs().max() < 0.03  # ~4 SE
    again = categorical(probs, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)                                    # seeded: reproducible


def test_level1_folded_into_the_suffix_equals_reference(monkeypatch):
    """Equal-length remainders (distinct questions after a shared prefix; one prompt's samples, whose level 1 is
    its last token) are folded into the suffix caches, and greedy decoding still equals the full recompute;
    unequal remainders keep level 1 as its own block."""
    import lmlab.infer.engine as E

    folds = []
    real = E.TreeKVCache.__init__

    def spy(self, plan, *a, **k):
        folds.append(plan.fold)
        real(self, plan, *a, **k)

    monkeypatch.setattr(E.TreeKVCache, "__init__", spy)
    m, tok = tiny(), CharTok()
    eng = Engine(m, tok, stop_token_ids=[])
    eng.stop_ids = set()
    base = "shared system text: "
    prompts = [tok.encode(base + q) for q in ("abc?", "xyz?", "pqr?")]
    out = eng.generate_ids(prompts, GenerationConfig(max_new_tokens=8))
    assert folds and all(folds)
    for p, row in zip(prompts, out):
        assert row[0].token_ids == greedy_reference(m, p, 8)
    folds.clear()
    one = eng.generate_ids([prompts[0]], GenerationConfig(max_new_tokens=6, n=3))
    assert folds and all(folds)
    assert all(c.token_ids == greedy_reference(m, prompts[0], 6) for c in one[0])
    folds.clear()
    uneven = [tok.encode(base + "a?"), tok.encode(base + "abcd?")]
    out = eng.generate_ids(uneven, GenerationConfig(max_new_tokens=4, n=2))
    assert folds and not any(folds)
    assert all(c.token_ids == greedy_reference(m, p, 4) for p, row in zip(uneven, out) for c in row)
