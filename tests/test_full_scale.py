"""`--scale full` is built by a test: every experiment that trains a RunConfig gives its full-scale arm configs,
they are derived from the FULL preset, the claimed invariants hold at both scales, and one optimizer step of
each runs (sequence length, steps and batch overridden to tiny values, synthetic tokens)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.experiments.common import FULL, QUICK
from lmlab.registry import EXPERIMENTS

# Experiments whose runs are not a RunConfig training (a pretrained model, a simulator or a benchmark); their
# full scale is a table of sizes in the module.
NOT_RUNCONFIG = {"cgpo_judges", "contrastive_rewards", "dpf_forbidden", "dpo_smollm2", "dpo_winrate", "e5_retrieval",
                 "hydragen", "icl_regression", "ids_vs_bt", "model_collapse_tails", "odin_vs_bt", "r3_curriculum",
                 "vstar", "vmoe_routers_vision", "debate_quotes", "skillmix_compose", "crosseval_smollm2", "e5_xling"}
# Experiments whose arms are VLMConfigs (lmlab.models.vlm), checked in tests/test_vlm_experiments.py.
VLM_CONFIG = {"prismatic_stages", "prismatic_fused", "prismatic_preprocess", "moe_llava", "partial_lora_vlm"}


def _is_runconfig(exp) -> bool:
    from lmlab.config import RunConfig

    return isinstance(exp.arm_config(exp.arms[0], "quick", 0), RunConfig)


def _experiments():
    return [e for _, e in EXPERIMENTS.items() if not e.name.startswith("_")]


def test_every_runconfig_experiment_builds_its_arms():
    names = {e.name for e in _experiments()}
    assert NOT_RUNCONFIG <= names
    for exp in _experiments():
        assert (exp.arm_config is None) == (exp.name in NOT_RUNCONFIG), exp.name


@pytest.fixture(scope="module")
def full_configs():
    return {e.name: {a: e.arm_config(a, "full", 0) for a in e.arms} for e in _experiments()
            if e.arm_config and e.name not in VLM_CONFIG and _is_runconfig(e)}


def test_own_config_experiments_build_both_scales():
    """Experiments whose arms are their own config dicts (tiled VLMs, LocVLM, Ferret, the E5 recipe …) build every
    arm at both scales, the full arm is at least as large in every size-like entry, and their invariants hold."""
    own = [e for e in _experiments() if e.arm_config and e.name not in VLM_CONFIG and not _is_runconfig(e)]
    for exp in own:
        quick = {a: exp.arm_config(a, "quick", 0) for a in exp.arms}
        full = {a: exp.arm_config(a, "full", 0) for a in exp.arms}
        assert full != quick, exp.name
        if exp.invariants is not None:
            exp.invariants(quick)
            exp.invariants(full)


def test_full_scale_arms_come_from_the_full_preset(full_configs):
    for name, cfgs in full_configs.items():
        exp = EXPERIMENTS.get(name)
        for arm, cfg in cfgs.items():
            quick = exp.arm_config(arm, "quick", 0)
            assert cfg.model.d_model > quick.model.d_model, (name, arm)
            assert cfg.train.steps > quick.train.steps and cfg.data.seq_len >= quick.data.seq_len, (name, arm)
            assert cfg.data.vocab_size == FULL["data"]["vocab_size"] and quick.data.vocab_size == \
                QUICK["data"]["vocab_size"], (name, arm)
    # the fine-grained MoE sizes scale with the preset (they stayed d = 48 / 80 before)
    gran = full_configs["moe_granularity"]
    assert gran["s_G1"].model.d_model == 384 and gran["m_G4"].model.d_model == 640


def test_claimed_invariants_hold_at_both_scales(full_configs):
    checked = []
    for name, cfgs in full_configs.items():
        exp = EXPERIMENTS.get(name)
        if exp.invariants is None:
            continue
        exp.invariants({a: exp.arm_config(a, "quick", 0) for a in exp.arms})
        exp.invariants(cfgs)
        checked.append(name)
    assert {"hgrn2_expand", "griffin_hybrid", "moe_routers", "moe_granularity", "moe_jetmoe", "moe_btx"} <= set(checked)
    # JetMoE: the MoA+MoE arm's active non-embedding parameters are those of dense (within 10%) at full scale
    jet = EXPERIMENTS.get("moe_jetmoe").invariants(full_configs["moe_jetmoe"])
    assert jet["moa_moe"] > 0.9 * jet["dense"] > 1e7


class _Tokens:
    """The trainer's data interface over random tokens."""

    def __init__(self, vocab: int, seq: int):
        g = np.random.default_rng(0)
        self.train = g.integers(0, vocab, (8, seq + 1))
        self.val = {"x": g.integers(0, vocab, (2, seq + 1))}
        self.domains, self.tokenizer, self.stats = ["x"], None, {}


def _tiny(cfg, seq: int = 16):
    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"seq_len": seq}),
        "train": cfg.train.model_copy(update={"steps": 1, "batch_size": 2, "grad_accum": 1, "warmup_steps": 0,
                                              "eval_interval": 1, "eval_batches": 1, "log_interval": 1,
                                              "device": "cpu", "precision": "fp32", "compile": False,
                                              "progress": False, "tensorboard": False})})


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads per op are many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_one_training_step_of_every_full_scale_arm(full_configs, one_thread):
    from lmlab.train.trainer import train

    torch.manual_seed(0)
    done: dict[str, float] = {}
    for name, cfgs in full_configs.items():
        for arm, cfg in cfgs.items():
            key = cfg.model.model_dump_json()          # arms that differ only by data train the same model
            if key in done:
                continue
            tiny = _tiny(cfg)
            res = train(tiny, None, data=_Tokens(cfg.model.vocab_size, tiny.data.seq_len), resume=False)
            assert res.steps == 1 and np.isfinite(res.val_loss), (name, arm)
            done[key] = res.val_loss
    assert len(done) >= 25
