"""Rho-1 selective language modeling: exact ⌈k%⌉ selection per batch, naive twin, CLM at k=100%, modes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder
from lmlab.registry import OBJECTIVES
from lmlab.train import objectives_slm as S


def _rand(b=3, t=7, v=11, seed=0, ignore_frac=0.2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    tgt = torch.randint(0, v, (b, t), generator=g)
    tgt[torch.rand(b, t, generator=g) < ignore_frac] = S.IGNORE
    ref = torch.rand(b, t, generator=g, dtype=dtype) * 3
    return logits, tgt, ref


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.3, 0.6, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selects_exactly_ceil_k_percent_per_batch(ratio, seed):
    logits, tgt, ref = _rand(b=4, t=9, seed=seed)
    n = int((tgt != S.IGNORE).sum())
    _, mask, _ = S.slm_loss(logits, tgt, ref, ratio)
    assert int(mask.sum()) == math.ceil(round(ratio * n, 9))
    assert not (mask & (tgt == S.IGNORE)).any()


def test_ceil_is_robust_to_float_error():
    assert S.n_selected(0.6, 10) == 6 and S.n_selected(0.7, 10) == 7 and S.n_selected(0.61, 10) == 7
    assert S.n_selected(0.3, 3) == 1 and S.n_selected(1.0, 17) == 17 and S.n_selected(1e-6, 5) == 1
    with pytest.raises(ValueError, match="ratio"):
        S.n_selected(0.0, 5)


@pytest.mark.parametrize("ratio", [0.25, 0.6, 1.0])
def test_matches_naive_twin_values_masks_and_gradients(ratio):
    logits, tgt, ref = _rand(seed=3)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    loss, mask, _ = S.slm_loss(a, tgt, ref, ratio)
    nloss, nmask = S.naive_slm_loss(b, tgt, ref, ratio)
    assert torch.equal(mask, nmask)
    torch.testing.assert_close(loss.double(), nloss, rtol=1e-10, atol=1e-12)
    loss.backward()
    nloss.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_k100_equals_clm_loss_and_gradient():
    logits, tgt, ref = _rand(seed=4, dtype=torch.float32)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    slm, mask, _ = S.slm_loss(a, tgt, ref, 1.0)
    clm = F.cross_entropy(b.reshape(-1, b.shape[-1]), tgt.reshape(-1), ignore_index=S.IGNORE)
    assert torch.equal(mask, tgt != S.IGNORE)
    torch.testing.assert_close(slm, clm, rtol=1e-6, atol=1e-7)
    slm.backward()
    clm.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_selection_uses_signed_excess_not_raw_loss():
    # 4 tokens, uniform model loss except token 0 (high loss) whose reference loss is even higher
    v = 5
    logits = torch.zeros(1, 4, v)
    logits[0, 0, 1] = -3.0         # target 0 at pos 0 keeps uniform; others get a small boost
    logits[0, 1:, 0] = 1.0
    tgt = torch.zeros(1, 4, dtype=torch.long)
    l_theta = S.per_token_loss(logits, tgt)[0]
    ref = torch.tensor([[l_theta[0] + 1.0, l_theta[1] - 0.5, l_theta[2] - 0.1, l_theta[3] + 0.2]])
    _, mask, _ = S.slm_loss(logits, tgt, ref, 0.5)
    assert l_theta[0] > l_theta[1]  # raw-loss ranking would pick token 0
    assert mask[0].tolist() == [False, True, True, False]


def test_token_dynamics_fractions():
    before = torch.tensor([0.1, 0.2, 5.0, 6.0, 0.3, 7.0])
    after = torch.tensor([0.1, 4.0, 5.0, 0.2, 0.2, 6.5])
    d = S.token_dynamics(before, after, threshold=1.0)
    assert d == {"L->L": 2 / 6, "H->H": 2 / 6, "H->L": 1 / 6, "L->H": 1 / 6}


def _tiny(seed):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=40, d_model=16, n_layer=1, n_head=2, max_seq_len=16))


def test_objective_online_offline_and_clm_agree():
    assert OBJECTIVES.get("slm") is S.SelectiveLM
    model, ref = _tiny(0), _tiny(1)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 40, (6, 13), generator=g).numpy()
    batch = {"input_ids": torch.as_tensor(windows[:, :-1]), "targets": torch.as_tensor(windows[:, 1:])}
    on = S.SelectiveLM(ratio=0.6, mode="online", reference=ref, dynamics_every=3)
    assert not any("/dyn/" in k for k in on(model, batch, 0)[1])  # only on every 3rd step (step+1 = 3, 6…)
    l_on, m_on = on(model, batch, 2)
    scores = S.score_windows(ref, windows)
    off = S.SelectiveLM(ratio=0.6, mode="offline", scores={"windows": windows, "scores": scores})
    # offline looks rows up by content, so any batch order works
    perm = torch.tensor([3, 1, 5, 0, 2, 4])
    l_off, m_off = off(model, {k: v[perm] for k, v in batch.items()}, 0)
    torch.testing.assert_close(l_on, l_off, rtol=1e-5, atol=1e-6)
    assert m_on["slm/selected_frac"] == pytest.approx(math.ceil(0.6 * 72) / 72)
    assert set(k for k in m_on if "/dyn/" in k) == {f"slm/dyn/{c}" for c in ("L->L", "H->H", "H->L", "L->H")}
    assert sum(v for k, v in m_on.items() if "/dyn/" in k) == pytest.approx(1.0)
    full = S.SelectiveLM(ratio=1.0, mode="online", reference=ref)
    l_full, m_full = full(model, batch, 0)
    clm = F.cross_entropy(model(batch["input_ids"]).logits.reshape(-1, 40), batch["targets"].reshape(-1))
    torch.testing.assert_close(l_full, clm, rtol=1e-5, atol=1e-6)
    assert m_full["slm/clm_loss"] == pytest.approx(float(clm), rel=1e-5)
    # SLM's gradient only touches selected tokens: the selected mean is higher than the CLM mean (Δ > typical)
    assert m_on["slm/excess_selected"] > m_on["slm/excess_mean"]


def test_reference_from_checkpoint_file_and_errors(tmp_path):
    ref = _tiny(2)
    from lmlab.train.checkpoint import save_model

    save_model(ref, tmp_path / "ref.safetensors", {"model_config": ref.cfg.model_dump()})
    obj = S.SelectiveLM(ratio=0.5, reference=str(tmp_path / "ref.safetensors"))
    x = torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(obj.ref(x).logits, ref(x).logits)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        S.SelectiveLM(reference=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="needs objective_args.reference"):
        S.SelectiveLM(mode="online")
    with pytest.raises(ValueError, match="mode"):
        S.SelectiveLM(mode="sideways", reference=ref)
    off = S.SelectiveLM(mode="offline", scores={"windows": np.zeros((1, 9), np.int64), "scores": np.zeros((1, 8))})
    with pytest.raises(ValueError, match="no stored reference score"):
        off(ref, {"input_ids": x, "targets": x}, 0)


def test_reference_from_trainer_checkpoint(tmp_path):
    from lmlab.config import RunConfig
    from lmlab.train import checkpoint as ckpt

    ref = _tiny(5)
    cfg = RunConfig(model=ref.cfg)
    ckpt.save_checkpoint(tmp_path / "run" / "checkpoints", 7, ref, None, {"config": cfg.model_dump(mode="json")})
    loaded = S.load_reference_model(str(tmp_path / "run"))
    x = torch.randint(0, 40, (2, 8))
    torch.testing.assert_close(loaded(x).logits, ref(x).logits)
