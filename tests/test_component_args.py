"""Typed component arguments: every registered component declares `Args`, ModelConfig validates
`mixer_args` / `ffn_args` / `residual_args` (and the component names) at load time, and a bad argument is one
line naming the dotted key before any tensor or module exists. Also: the vocab_size rule, and the decoder's
single initialisation rule."""
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lmlab.config import ComponentArgs, ConfigError, ModelConfig, RunConfig, load_config, resolve_vocab_size, to_dict

MOE = ["model.ffn=moe"]
BAD = [  # (overrides, dotted key the one-line message must name, another substring it must contain)
    (MOE + ["model.ffn_args.moe.n_experts=two"], "model.ffn_args.moe.n_experts", "'two'"),          # wrong type
    (["model.mixer_args.attn.windw=4"], "model.mixer_args.attn.windw", "known keys: bias, n_kv_head, window"),
    (MOE + ["model.ffn_args.moe={n_experts: 4, top_k: 5}"], "model.ffn_args.moe.top_k", "<= n_experts=4"),
    (MOE + ["model.ffn_args.moe.top_k=0"], "model.ffn_args.moe.top_k", ">= 1"),
    (MOE + ["model.ffn_args.moe.router=nope"], "model.ffn_args.moe.router", "topk_softmax_tc"),
    (MOE + ["model.ffn_args.moe.group=tokens"], "model.ffn_args.moe.group", "position"),
    (MOE + ["model.ffn_args.moe.capacity_factor=0"], "model.ffn_args.moe.capacity_factor", "> 0"),
    (MOE + ["model.d_ff=96", "model.ffn_args.moe.granularity=5"], "model.ffn_args.moe.granularity", "96"),
    (["model.layer_pattern=[hgrn2]", "model.d_model=96", "model.mixer_args.hgrn2.expand=7"],
     "model.mixer_args.hgrn2.expand", "d_model=96"),
    (["model.layer_pattern=[hgrn2]", "model.mixer_args.hgrn2.mode=fast"], "model.mixer_args.hgrn2.mode", "naive"),
    (["model.mixer_args.attn.window=-3"], "model.mixer_args.attn.window", ">= 1"),
    (["model.mixer_args.attn.n_kv_head=3"], "model.mixer_args.attn.n_kv_head", "n_head=4"),
    (["model.layer_pattern=[local_attn]", "model.mixer_args.local_attn.window=0"],
     "model.mixer_args.local_attn.window", ">= 1"),
    (["model.layer_pattern=[rglru]", "model.mixer_args.rglru.heads=5"], "model.mixer_args.rglru.heads", "lru_width"),
    (["model.layer_pattern=[rglru]", "model.mixer_args.rglru.scan=fft"], "model.mixer_args.rglru.scan", "naive"),
    (["model.mixer=moa", "model.mixer_args.moa={n_experts: 2, top_k: 3}"], "model.mixer_args.moa.top_k", "n_experts=2"),
    (["model.residual=hyper", "model.residual_args.n=0"], "model.residual_args.n", ">= 1"),
    (["model.residual=hyper", "model.residual_args.dynamic=maybe"], "model.residual_args.dynamic", "'maybe'"),
    (["model.residual_args.n=2"], "model.residual_args.n", "unknown key"),                     # prenorm has none
    (["model.ffn_args.swiglu.d_ff=0"], "model.ffn_args.swiglu.d_ff", ">= 1"),
    (["model.layer_pattern=[attn, hgrn3]"], "model.layer_pattern.1", "unknown token mixer 'hgrn3'"),
    (["model.ffn_pattern=[swiglu, mo]"], "model.ffn_pattern.1", "unknown channel mixer 'mo'"),
    (["model.residual=postnorm"], "model.residual", "prenorm"),
    (["model.mixer_args.hgrn={expand: 2}"], "model.mixer_args.hgrn", "unknown token mixer 'hgrn'"),
]


class _NoTensors(TorchFunctionMode):
    """Fails on any torch function call (tensor factories included) while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        raise AssertionError(f"torch.{getattr(func, '__name__', func)} called while loading a config")


@pytest.fixture
def no_torch(monkeypatch):
    load_config(None, MOE + ["model.residual=hyper"])     # registries loaded (module imports) beforehand

    def forbidden(self, *a, **k):
        raise AssertionError(f"{type(self).__name__} built while loading a config")

    monkeypatch.setattr(torch.nn.Module, "__init__", forbidden)
    with _NoTensors():
        yield


@pytest.mark.parametrize("overrides,key,also", BAD)
def test_bad_component_args_are_one_line_at_load(no_torch, overrides, key, also):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert f"{key}=" in msg and also in msg, msg


def test_bad_args_in_a_yaml_file_name_the_file_and_key(tmp_path, no_torch):
    p = tmp_path / "m.yaml"
    p.write_text("model:\n  ffn: moe\n  ffn_args:\n    moe: {n_experts: 4, top_k: 8}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: model\.ffn_args\.moe\.top_k=8: must be <= n_experts=4"):
        load_config(p)


def test_direct_construction_is_the_same_one_line(no_torch):
    with pytest.raises(ConfigError) as e:
        ModelConfig(ffn="moe", ffn_args={"moe": {"top_k": 9}})
    assert str(e.value) == "ModelConfig: model.ffn_args.moe.top_k=9: must be <= n_experts=8"
    with pytest.raises(KeyError):     # an unknown name is also a KeyError, as the registry's own error is
        RunConfig(model={"mixer": "nosuch"})


def test_unused_component_args_are_checked_against_their_schema_only():
    # hgrn2's expand must divide d_model only where hgrn2 is used; a misspelt key is an error anywhere.
    cfg = load_config(None, ["model.mixer_args.hgrn2.expand=7"])
    assert cfg.model.mixer_args == {"hgrn2": {"expand": 7}}
    with pytest.raises(ConfigError, match="model.mixer_args.hgrn2.expnd"):
        load_config(None, ["model.mixer_args.hgrn2.expnd=2"])


def test_cli_train_with_bad_component_arg_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "train", "model.ffn=moe", "model.ffn_args.moe.top_k=9"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert "model.ffn_args.moe.top_k=9" in r.stderr and "n_experts=8" in r.stderr


def test_validated_args_are_available_and_the_config_serialises_as_written():
    m = {"d_model": 64, "layer_pattern": ["hgrn2", "attn"], "ffn": "moe",
         "mixer_args": {"hgrn2": {"expand": 8}}, "ffn_args": {"moe": {"router": "softmax_ec", "top_k": 1}},
         "residual": "hyper", "residual_args": {"n": 4}}
    cfg = RunConfig(model=m)
    a = cfg.model.component_args("ffn")
    assert type(a).__name__ == "Args" and (a.router, a.top_k, a.n_experts) == ("softmax_ec", 1, 8)
    assert cfg.model.component_args("mixer", "hgrn2").expand == 8
    assert cfg.model.component_args("mixer", "attn").window is None
    assert cfg.model.component_args("residual").n == 4
    d = to_dict(cfg)["model"]
    assert {k: d[k] for k in m} == m                       # dicts in, the same dicts out
    assert load_config(None, [f"model.{k}={v}" for k, v in m.items() if k == "d_model"]).model.d_model == 64


def test_window_and_kv_heads_resolve_in_one_place():
    from lmlab.models.decoder import Decoder

    cfg = ModelConfig(vocab_size=32, d_model=32, n_layer=4, n_head=4, n_kv_head=2, sliding_window=6,
                      layer_pattern=["attn", "local_attn", "moa", "attn"],
                      mixer_args={"attn": {}, "local_attn": {"window": 3}, "moa": {"n_experts": 2, "top_k": 1}})
    m = Decoder(cfg)
    assert (m.blocks[0].mixer.n_kv, m.blocks[0].mixer.window) == (2, 6)      # the model's
    assert (m.blocks[1].mixer.n_kv, m.blocks[1].mixer.window) == (1, 3)      # local_attn's own defaults / value
    assert m.blocks[2].mixer.m == 2                                          # moa: the model's K/V heads
    own = ModelConfig(vocab_size=32, d_model=32, n_layer=1, n_head=4, n_kv_head=2, sliding_window=6,
                      mixer_args={"attn": {"window": 2, "n_kv_head": 1}})
    assert (Decoder(own).blocks[0].mixer.n_kv, Decoder(own).blocks[0].mixer.window) == (1, 2)


def test_from_config_validates_keywords():
    from lmlab.nn.moe.layer import MoE
    from lmlab.nn.recurrent.hgrn2 import HGRN2

    cfg = ModelConfig(d_model=8, n_head=2, d_ff=12, n_layer=2)
    with pytest.raises(ConfigError, match="^MoE: top_k=5: must be <= n_experts=4$"):
        MoE.from_config(cfg, n_experts=4, top_k=5)
    with pytest.raises(ConfigError, match="^HGRN2: expand=3: must divide d_model=8$"):
        HGRN2.from_config(cfg, expand=3)
    assert MoE.from_config(cfg, n_experts=2, top_k=1).e == 2


def test_routers_are_registered_with_typed_args():
    from lmlab.nn.moe.routers import build_router
    from lmlab.registry import ROUTERS

    assert ROUTERS.names() == ["sinkhorn_ec", "sinkhorn_tc", "soft", "softmax_ec", "softmax_tc", "sparse_ec",
                               "topk_softmax_tc"]
    for name in ROUTERS.names():
        assert ROUTERS.describe(name) and issubclass(ROUTERS.get(name).Args, ComponentArgs)
    assert build_router("softmax_ec", 8, 4, top_k=2).cf == 2.0
    with pytest.raises(ConfigError, match="router soft: batch_priority=true: unknown key"):
        build_router("soft", 8, 4, batch_priority=True)
    with pytest.raises(KeyError, match="choose one of"):
        build_router("nope", 8, 4)


# ------------------------------------------------------------------------------------------- vocab_size
def test_vocab_size_rule():
    unset = load_config(None, []).model
    assert resolve_vocab_size(unset, 5000).vocab_size == 5000                 # left out: the tokenizer's
    same = load_config(None, ["model.vocab_size=5000"]).model
    assert resolve_vocab_size(same, 5000) is same
    with pytest.raises(ConfigError) as e:                                      # written and different: an error
        resolve_vocab_size(load_config(None, ["model.vocab_size=4096"]).model, 5000)
    assert str(e.value).startswith("model.vocab_size=4096: the tokenizer has 5000 tokens") and "\n" not in str(e.value)


def test_trainer_applies_the_vocab_rule(synthetic_data):
    from lmlab.train.trainer import train

    data = SimpleNamespace(**{**vars(synthetic_data), "tokenizer": SimpleNamespace(vocab_size=64)})
    model = dict(d_model=16, n_layer=1, n_head=2, max_seq_len=64)
    tc = dict(steps=1, batch_size=4, warmup_steps=0, progress=False, tensorboard=False, eval_batches=1)
    res = train(RunConfig(model=model, train=tc), data=data)
    assert res.model.cfg.vocab_size == 64 and res.model.embed.weight.shape[0] == 64
    with pytest.raises(ConfigError, match="model.vocab_size=100: the tokenizer has 64 tokens"):
        train(RunConfig(model={**model, "vocab_size": 100}, train=tc), data=data)


# --------------------------------------------------------------------------------------- initialisation
def test_residual_outputs_are_named_by_components_and_scaled_by_the_decoder():
    from lmlab.models.decoder import Decoder

    cfg = ModelConfig(vocab_size=32, d_model=32, n_layer=4, n_head=4, d_ff=64, init_std=0.05,
                      layer_pattern=["attn", "hgrn2", "rglru", "moa"], ffn_pattern=["swiglu", "moe"],
                      mixer_args={"hgrn2": {"expand": 4}, "moa": {"n_experts": 2, "top_k": 1}},
                      ffn_args={"moe": {"n_experts": 2, "top_k": 1, "n_shared": 1}})
    torch.manual_seed(0)
    m = Decoder(cfg)
    rule = m.init_rule()
    names = {n for n, p in m.named_parameters() if id(p) in rule.residual_out}
    assert names == {"blocks.0.mixer.o_proj.weight", "blocks.1.mixer.o_proj.weight", "blocks.2.mixer.linear_out.weight",
                     "blocks.3.mixer.w_o", "blocks.0.ffn.down.weight", "blocks.2.ffn.down.weight",
                     "blocks.1.ffn.experts.w_down", "blocks.1.ffn.shared.down.weight",
                     "blocks.3.ffn.experts.w_down", "blocks.3.ffn.shared.down.weight"}
    assert rule.std == 0.05 and rule.out_std == pytest.approx(0.05 / 8 ** 0.5)
    big = [p for n, p in m.named_parameters() if n in names and p.numel() >= 2048]
    assert big and all(abs(float(p.std()) / rule.out_std - 1) < 0.1 for p in big)
