"""Recurrent, hybrid and hyper-connection models generate through the shared inference engine, and greedy
output equals argmax decoding by full re-computation."""
from __future__ import annotations

import pytest
import torch

from lmlab.backend import GenerationConfig
from lmlab.config import ModelConfig
from lmlab.infer.engine import Engine
from lmlab.models.decoder import Decoder

torch.set_num_threads(1)

KINDS = {
    "hgrn2": dict(layer_pattern=["hgrn2"], mixer_args={"hgrn2": {"expand": 4, "chunk": 4}}),
    "griffin": dict(layer_pattern=["rglru", "rglru", "local_attn"], mixer_args={"local_attn": {"window": 4}}),
    "hyper": dict(residual="hyper", residual_args={"n": 2, "dynamic": True}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_engine_greedy_equals_full_recompute(kind):
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=50, d_model=16, n_layer=3, n_head=2, max_seq_len=32,
                                **KINDS[kind])).eval()
    if kind == "hyper":  # move the policy away from its (residual-equivalent) init
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "alpha" in n or "beta" in n:
                    p.add_(torch.randn_like(p) * 0.3)
    prompt = [3, 7, 11, 2, 9]
    got = Engine(model).generate_ids([prompt], GenerationConfig(max_new_tokens=8, temperature=0.0))[0][0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert list(got.token_ids)[-8:] == seq[len(prompt):]
