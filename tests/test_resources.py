"""The memory estimate: parameter counts against built models, the refusal line, available memory."""
import pytest

from lmlab.config import ModelConfig, RunConfig
from lmlab.models.decoder import Decoder
from lmlab.resources import (ResourceError, available_memory, check_memory, check_model_memory, estimate,
                             estimate_params, fmt_bytes)

SMALL = dict(vocab_size=300, d_model=48, n_layer=2, n_head=4)


@pytest.mark.parametrize("kw", [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1, "n_layer": 3},
    {"tie_embeddings": False},
    {"head_rank": 8},
    {"d_ff": 100},
    {"ffn": "moe", "ffn_args": {"moe": {"n_experts": 4, "top_k": 2}}},
    {"ffn": "moe", "ffn_args": {"moe": {"n_experts": 4, "top_k": 1, "granularity": 2, "n_shared": 1}}},
    {"ffn_pattern": ["swiglu", "moe"], "n_layer": 3, "ffn_args": {"moe": {"n_experts": 3}}},
], ids=str)
def test_parameter_count_matches_built_model(kw):
    cfg = ModelConfig(**{**SMALL, **kw})
    real = sum(p.numel() for p in Decoder(cfg).parameters())
    assert estimate_params(cfg) == pytest.approx(real, rel=0.03)


def test_estimate_scales_as_the_formula_says():
    base = estimate(RunConfig())
    deeper = estimate(RunConfig.model_validate({"model": {"n_layer": 8}}))
    assert deeper.params > base.params and deeper.state_bytes == 16 * deeper.params
    bigger_batch = estimate(RunConfig.model_validate({"train": {"batch_size": 32}}))
    assert bigger_batch.activation_bytes == pytest.approx(2 * base.activation_bytes)
    accum = estimate(RunConfig.model_validate({"train": {"batch_size": 32, "grad_accum": 2}}))
    assert accum.activation_bytes == base.activation_bytes          # micro-batch is what is held


def test_refusal_names_the_key_that_drives_the_estimate():
    for overrides, key in [({"model": {"n_layer": 100_000}}, "model.n_layer=100000"),
                           ({"model": {"d_model": 1 << 20, "n_head": 1}}, "model.d_model=1048576"),
                           ({"train": {"batch_size": 1 << 24}}, "train.batch_size=16777216"),
                           ({"model": {"vocab_size": 10**10}}, "model.vocab_size=10000000000")]:
        cfg = RunConfig.model_validate(overrides)
        with pytest.raises(ResourceError) as e:
            check_memory(cfg, available=1 << 30)
        msg = str(e.value)
        assert msg.startswith(key + ": estimated ") and "exceeds 1.0 GiB available" in msg and "\n" not in msg
        assert "--allow-large" in msg


def test_allow_large_and_small_configs_pass(monkeypatch):
    cfg = RunConfig.model_validate({"model": {"n_layer": 100_000}})
    assert check_memory(cfg, allow_large=True, available=1).params > 0
    monkeypatch.setenv("LMLAB_ALLOW_LARGE", "1")
    check_memory(cfg, available=1)
    monkeypatch.delenv("LMLAB_ALLOW_LARGE")
    check_memory(RunConfig(), available=1 << 30)                  # ~100 MiB fits in 1 GiB
    with pytest.raises(ResourceError, match=r"^model\.n_layer=100000"):
        check_model_memory(ModelConfig(n_layer=100_000), batch_size=8, seq_len=256, device="cpu")


def test_available_memory_and_format():
    assert available_memory("cpu") > 1 << 20
    assert fmt_bytes(512) == "512 B" and fmt_bytes(1.5 * (1 << 30)) == "1.5 GiB" and fmt_bytes(1 << 40) == "1.0 TiB"
