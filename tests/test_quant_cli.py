"""`lmlab serve/generate --quantize`: a tiny lmlab checkpoint served int8 to the official openai client, and
one-line errors for bad quantize options."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lmlab.cli import main
from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import serving  # noqa: E402

CFG = dict(d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=128, d_ff=128, tie_embeddings=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random 2-layer Decoder saved as an lmlab torch checkpoint with a small BPE tokenizer beside it."""
    from lmlab.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("quant_ckpt")
    texts = ["the quick brown fox jumps over the lazy dog", "hello world, hello there"] * 20
    tok = train_tokenizer(texts, 300, out_dir=d / "tok")
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, **CFG))
    torch.save({"model": model.state_dict(),
                "config": {"model": {"vocab_size": tok.vocab_size, **CFG},
                           "data": {"tokenizer": str(d / "tok"), "vocab_size": tok.vocab_size}}}, d / "tiny.pt")
    return d / "tiny.pt"


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai", "httpx")),
                    reason="needs the serve extra (fastapi, uvicorn, openai, httpx)")
def test_serve_int8_answers_openai_client(ckpt, monkeypatch):
    import uvicorn
    from openai import OpenAI

    from lmlab.nn.quant import Int8Linear

    got = {}

    def run(app, host, port, log_level):            # what `lmlab serve` would serve, on a free port here
        with serving(app) as url:
            c = OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
            got["models"] = [m.id for m in c.models.list().data]
            got["text"] = c.completions.create(model=got["models"][0], prompt="hello", max_tokens=6,
                                               temperature=0).choices[0].text
        got["engine"] = app.state.batcher.engine

    monkeypatch.setattr(uvicorn, "run", run)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", f"lmlab:{ckpt}", "--quantize", "int8", "--quant-compute", "bf16x2"])
    assert e.value.code == 0
    engine = got["engine"]
    assert got["models"] == ["tiny.pt"]
    linears = [m for n, m in engine.model.named_modules() if n.startswith("blocks.") and hasattr(m, "qweight")]
    assert len(linears) == 2 * 7 and all(isinstance(m, Int8Linear) and m.compute == "bf16x2" for m in linears)
    assert type(engine.model.head) is torch.nn.Linear              # the head stays float (lmlab.infer.cli.QUANT_HEAD)
    from lmlab.backend import GenerationConfig

    assert got["text"] == engine.generate(["hello"], GenerationConfig(max_new_tokens=6))[0][0]


@pytest.mark.parametrize("argv,needles", [
    (["serve", "--quantize", "int3"], ["--quantize", "int3"]),
    (["generate", "--quantize", "fp8", "hi"], ["--quantize", "fp8"]),
    (["generate", "--quantize", "int4", "--group-size", "48", "hi"], ["--group-size", "48"]),
    (["generate", "--quantize", "int8", "--quant-compute", "fp16", "hi"], ["--quant-compute", "fp16"]),
    (["generate", "--model", "lmlab:{ckpt}", "--quantize", "int4", "--group-size", "128", "hi"],
     ["blocks.0.mixer.q_proj", "in_features=64", "group size 128"]),
    (["generate", "--model", "openai:http://127.0.0.1:9/v1#m", "--quantize", "int8", "hi"],
     ["--quantize int8", "not a local lmlab model"]),
])
def test_bad_quantize_options_one_line(argv, needles, ckpt, capsys):
    argv = [a.replace("{ckpt}", str(ckpt)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code not in (0, None)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], lines
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("scheme", ["int8", "int4", "bf16"])
def test_quantize_reaches_the_fused_engine(ckpt, scheme):
    """`load_model(lmlab:PATH, quantize=...)` quantizes after loading: the engine it returns fuses the new layers,
    with the LM head in bf16 (--head-dtype auto), and generates."""
    from lmlab.backend import GenerationConfig
    from lmlab.infer.cli import load_model
    from lmlab.infer.fused import FusedEngine
    from lmlab.nn.quant import BF16Linear, Int4Linear, Int8Linear

    be = load_model(f"lmlab:{ckpt}", quantize=scheme)
    cls = {"int8": Int8Linear, "int4": Int4Linear, "bf16": BF16Linear}[scheme]
    assert type(be.engine) is FusedEngine and all(type(m) is cls for m in be.engine.layers[0].modules)
    assert be.engine.head.weight.dtype == torch.bfloat16 and be.engine.compute_dtype == torch.bfloat16
    assert len(be.generate(["hello"], GenerationConfig(max_new_tokens=4))[0]) == 1
    plain = load_model(f"lmlab:{ckpt}", quantize=scheme, engine="modules", head_dtype="float32")
    assert type(plain.engine) is not FusedEngine


def test_quantize_int8g_quantizes_the_head_and_runs_fp32(ckpt):
    """--quantize int8g: every linear, the LM head included, is an Int8GroupLinear; the fused engine runs them in
    fp32 (their own arithmetic) and greedy output equals the float model's on this tiny checkpoint."""
    from lmlab.backend import GenerationConfig
    from lmlab.config import ConfigError
    from lmlab.infer.cli import load_model
    from lmlab.infer.fused import FusedEngine
    from lmlab.nn.quant import Int8GroupLinear

    be = load_model(f"lmlab:{ckpt}", quantize="int8g")
    assert type(be.engine) is FusedEngine and be.engine.compute_dtype == torch.float32
    assert isinstance(be.model.head, Int8GroupLinear) and be.engine.head is be.model.head
    gen = GenerationConfig(max_new_tokens=6)
    assert be.generate(["hello"], gen) == load_model(f"lmlab:{ckpt}").generate(["hello"], gen)
    with pytest.raises(ConfigError, match="quantize int8g: input_group_size and compute modes"):
        load_model(f"lmlab:{ckpt}", quantize="int8g", quant_compute="bf16x2")
