"""Softmax-bottleneck probes: closed-form values on constructed inputs, the O(N·d) anisotropy equals the
explicit cosine matrix, rank-constrained heads bound the head's effective rank, and a checkpoint probes the
same as the live model."""
from __future__ import annotations

import math

import pytest
import torch

from lmlab.config import ModelConfig, RunConfig
from lmlab.eval.probes import (anisotropy, effective_rank, naive_anisotropy, probe_callback, probe_checkpoint,
                               probe_model, singular_spectrum)
from lmlab.models.decoder import Decoder

torch.set_num_threads(1)


def test_anisotropy_closed_forms_and_naive_twin():
    v = torch.randn(8)
    assert anisotropy(v.repeat(5, 1)) == pytest.approx(1.0, abs=1e-12)
    assert anisotropy(torch.eye(6)) == pytest.approx(0.0, abs=1e-12)
    assert anisotropy(torch.cat([torch.eye(3), -torch.eye(3)])) == pytest.approx(-1 / 5, abs=1e-12)
    x = torch.randn(50, 7) + 0.5
    assert anisotropy(x) == pytest.approx(naive_anisotropy(x), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        anisotropy(torch.randn(1, 3))


def test_effective_rank_and_spectrum():
    assert effective_rank(singular_spectrum(torch.eye(7))) == pytest.approx(7.0, rel=1e-9)
    r1 = torch.randn(9, 1) @ torch.randn(1, 6)
    assert effective_rank(singular_spectrum(r1)) == pytest.approx(1.0, abs=1e-6)
    s = torch.tensor([3.0, 1.0])
    assert effective_rank(s) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-12)
    sp = singular_spectrum(torch.diag(torch.tensor([2.0, 8.0, 4.0])))
    torch.testing.assert_close(sp, torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))


def _cfg(**kw):
    return ModelConfig(**{**dict(vocab_size=64, d_model=32, n_layer=1, n_head=2, max_seq_len=32), **kw})


def test_rank_constrained_head_bounds_head_effective_rank():
    torch.manual_seed(0)
    idx = torch.randint(0, 64, (4, 16))
    full = probe_model(Decoder(_cfg()), idx)
    low = probe_model(Decoder(_cfg(head_rank=4)), idx)
    assert low["head_eff_rank"] <= 4.0 + 1e-6 < full["head_eff_rank"]
    assert 0 < full["hidden_eff_rank_frac"] <= 1 and -1 <= full["anisotropy"] <= 1


def test_probe_checkpoint_equals_live_model(tmp_path):
    from lmlab.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = RunConfig(model=_cfg(head_rank=8))
    model = Decoder(cfg.model)
    save_checkpoint(tmp_path / "ckpt", 7, model, state={"config": cfg.model_dump(mode="json")})
    idx = torch.randint(0, 64, (2, 16))
    live = probe_model(model, idx)
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "step_00000007"):
        assert probe_checkpoint(path, idx) == pytest.approx(live, rel=1e-9)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        probe_checkpoint(tmp_path / "nothing", idx)


def test_callback_logs_every_n_steps():
    torch.manual_seed(0)
    model = Decoder(_cfg())
    cb = probe_callback(model, torch.randint(0, 64, (2, 8)), every=10)
    recs = [{"step": s} for s in (5, 10, 10, 20)]
    for r in recs:
        cb(r["step"], r)
    assert [r["step"] for r in cb.records] == [10, 20]
    assert "probe/anisotropy" in recs[1] and "probe/anisotropy" not in recs[0] and "probe/anisotropy" not in recs[2]


def test_cli_probe_prints_json_for_a_checkpoint(tmp_path, monkeypatch, capsys):
    import json
    import types

    import numpy as np

    import lmlab.data.pipeline
    from lmlab.cli import main
    from lmlab.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = RunConfig(model=_cfg())
    model = Decoder(cfg.model)
    save_checkpoint(tmp_path / "ck", 3, model, state={"config": cfg.model_dump(mode="json")})
    rows = np.random.default_rng(0).integers(0, 64, size=(6, 17))
    monkeypatch.setattr(lmlab.data.pipeline, "load_data", lambda c: types.SimpleNamespace(val={"a": rows, "b": rows}))
    with pytest.raises(SystemExit) as e:
        main(["probe", str(tmp_path / "ck"), "--rows", "2"])
    assert e.value.code == 0
    got = json.loads(capsys.readouterr().out)
    want = probe_model(model, torch.as_tensor(np.concatenate([rows[:2], rows[:2]])[:, :-1]))
    assert got["anisotropy"] == pytest.approx(want["anisotropy"], abs=1e-6)
    with pytest.raises(SystemExit) as e:
        main(["probe", str(tmp_path / "missing")])
    assert e.value.code == 2
