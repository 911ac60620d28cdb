"""PEFT selected by config: every configs/peft YAML applies; the trainer drives SpIEL and trains LoRA."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.config import ModelConfig, load_config
from lmlab.models.decoder import Decoder
from lmlab.nn.peft import apply_peft

ROOT = Path(__file__).resolve().parents[1] / "configs" / "peft"


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_peft_configs_apply(path):
    cfg = load_config(path)
    model = Decoder(cfg.model.model_copy(update={"vocab_size": 64}))
    for key in ("peft", "baseline_peft"):
        if key in cfg.extra:
            m = Decoder(cfg.model.model_copy(update={"vocab_size": 64}))
            h = apply_peft(m, cfg.extra[key])
            assert 0 < h.n_trainable() < sum(p.numel() for p in model.parameters())


class _Data:
    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 16, (64, 1))
        self.train = (base + np.arange(17)[None, :]) % 32        # counting sequences: easy to learn
        self.val = {"count": self.train[:16]}
        self.domains = ["count"]
        self.tokenizer = None
        self.stats = {}


def test_trainer_runs_spiel_cycles_and_lora_learns():
    from lmlab.experiments.common import tiny_run_config
    from lmlab.train.trainer import evaluate, train

    cfg = tiny_run_config(model={"vocab_size": 32, "d_model": 32, "n_layer": 1, "n_head": 2, "max_seq_len": 16},
                          data={"seq_len": 16},
                          train={"steps": 12, "batch_size": 8, "lr": 2e-2, "warmup_steps": 1, "eval_interval": 12,
                                 "device": "cpu", "weight_decay": 0.0})
    data = _Data(0)
    for peft_cfg in ({"method": "spiel", "density": 0.1, "update_interval": 4, "drop_fraction": 0.25},
                     {"method": "lora", "r": 2, "alpha": 4, "target_modules": ".*"}):
        torch.manual_seed(0)
        model = Decoder(cfg.model)
        frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
        h = apply_peft(model, peft_cfg)
        before = evaluate(model, data.val, 8, 2)["count"]
        res = train(cfg, None, model=model, data=data)
        assert res.val_loss < before - 0.1
        if h.spiel is not None:
            assert h.spiel.t == 12 and len(h.spiel.history) == 3         # driven by the trainer's optimizer
            assert h.spiel.n_trainable() == round(0.1 * sum(l.weight.numel() for l in h.spiel.layers.values()))
        for n, p in model.named_parameters():                            # the base never moves
            if n in frozen:
                torch.testing.assert_close(p, frozen[n], rtol=0, atol=0)
