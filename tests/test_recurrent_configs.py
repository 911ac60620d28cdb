"""configs/recurrent/*.yaml validate, build, and run forward + one decode step with the expected mixers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmlab.config import load_config
from lmlab.models.decoder import Decoder

ROOT = Path(__file__).resolve().parents[1] / "configs" / "recurrent"
EXPECT = {"hgrn2": {"hgrn2"}, "griffin": {"rglru", "local_attn"}, "hyper": {"attn"}, "bottleneck": {"attn"}}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_config_builds_and_decodes(name):
    cfg = load_config(ROOT / f"{name}.yaml")
    m = cfg.model.model_copy(update={"vocab_size": 64, "d_model": 32, "max_seq_len": 16})
    torch.manual_seed(0)
    model = Decoder(m).eval()
    assert {b.mixer_name for b in model.blocks} == EXPECT[name]
    idx = torch.randint(0, 64, (1, 6))
    with torch.no_grad():
        full = model(idx).logits
        out = model(idx[:, :5], states=model.init_states(1, 16))
        step = model(idx[:, 5:], states=out.states).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)
