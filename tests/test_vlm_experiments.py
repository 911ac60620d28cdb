"""The vision-language experiments build their arms with the invariants their rules rely on: equal steps and
the same scenes across arms (Prismatic, MoE-LLaVA, Partial LoRA), equal active parameters (MoE-LLaVA top-1 vs
dense), Partial LoRA leaving text-only inputs untouched, and the vision routers at equal compute with the
same non-router initialisation. Nothing here trains to convergence."""
from __future__ import annotations

import pytest
import torch

from lmlab.registry import EXPERIMENTS

VLM = ["prismatic_stages", "prismatic_fused", "prismatic_preprocess", "moe_llava", "partial_lora_vlm"]


@pytest.mark.parametrize("name", VLM)
@pytest.mark.parametrize("scale", ["quick", "full"])
def test_vlm_arms_share_steps_scenes_and_seed(name, scale):
    exp = EXPERIMENTS.get(name)
    cfgs = {a: exp.arm_config(a, scale, 1) for a in exp.arms}
    facts = exp.invariants(cfgs)
    assert set(facts) == set(exp.arms)
    steps = {sum(s.steps for s in c.stages) for c in cfgs.values()}
    assert len(steps) == 1 and len({c.data.model_dump_json() for c in cfgs.values()}) == 1
    assert all(c.seed == 1 and c.data.seed == 1 for c in cfgs.values())
    assert exp.paired and exp.seeds >= 3
    with pytest.raises(ValueError):
        exp.arm_config("nope", scale, 0)


def test_prismatic_arms_differ_only_where_claimed():
    from lmlab.experiments import vlm_prismatic as P

    two, one = P.stages_config("two_stage", "quick"), P.stages_config("single_stage", "quick")
    assert [s.train for s in two.stages] == [["projector"], ["projector", "lm"]]
    assert [s.train for s in one.stages] == [["projector", "lm"]]
    enc = {a: P.fused_config(a, "quick").encoder for a in P.ENCODERS}
    assert enc["fused"].name == "fused" and enc["fused"].args == {"a": "efficientnet_lite0", "b": "mobilenet_v2"}
    assert {P.preprocess_config(a, "quick").encoder.mode for a in P.MODES} == set(P.MODES)


def test_preprocess_scenes_are_wide_and_identical_across_modes():
    from lmlab.experiments import _vlm as V
    from lmlab.experiments import vlm_prismatic as P

    cfg = P.preprocess_config("resize", "quick", 0).model_copy(
        update={"data": P.preprocess_config("resize", "quick", 0).data.model_copy(update={"n_train": 2,
                                                                                           "n_eval": 1})})
    tr, he = V.scenes(cfg, size=P.WIDE)
    tr2, _ = V.scenes(cfg, size=P.WIDE)
    assert tr.images[0].size == P.WIDE and he.images[0].size == P.WIDE
    assert tr.questions == tr2.questions and tr.images[0].tobytes() == tr2.images[0].tobytes()


def test_moe_llava_top1_has_dense_active_params_and_top2_more():
    from lmlab.experiments import vlm_moe_llava as M

    cfgs = {a: M.arm_config(a, "quick", 0) for a in M.ARMS}
    f = M._invariants(cfgs)
    assert f["moe_top1"]["active_no_router"] == f["dense"]["active_no_router"]
    assert f["moe"]["active"] > f["dense"]["active"] and f["moe"]["total"] > 1.5 * f["dense"]["total"]
    moe = cfgs["moe"].stages[-1].moe
    assert (moe.n_experts, moe.top_k, moe.capacity_factor, moe.aux_weight, moe.every_other) == (4, 2, 1.5, 0.01, True)
    assert cfgs["dense"].stages[-1].moe is None and cfgs["dense"].stages[-1].steps == cfgs["moe"].stages[-1].steps


def test_modality_load_averages_and_plots(tmp_path):
    from lmlab.experiments import vlm_moe_llava as M

    a = {"moe/L1/image/load/0": 0.75, "moe/L1/image/load/1": 0.25, "moe/L1/text/load/0": 0.5,
         "moe/L1/text/load/1": 0.5}
    b = {k: 1 - v if "image" in k else v for k, v in a.items()}
    m = M.modality_load([a, b])
    assert m == {"L1/image/0": 0.5, "L1/image/1": 0.5, "L1/text/0": 0.5, "L1/text/1": 0.5}
    assert M.plot_modality_load(a, tmp_path / "l.png", "t").stat().st_size > 1000


def test_partial_lora_leaves_text_only_inputs_untouched():
    from lmlab.config import ModelConfig
    from lmlab.experiments import vlm_partial_lora as PL
    from lmlab.models.decoder import Decoder
    from lmlab.nn.peft import apply_peft

    torch.manual_seed(0)
    rows = torch.randint(0, 257, (2, 17)).numpy()
    losses = {}
    for method in ("partial_lora", "lora"):
        lm = Decoder(ModelConfig(vocab_size=257, d_model=32, n_layer=1, n_head=2, max_seq_len=32))
        before = PL.text_loss(lm, rows)
        apply_peft(lm, {"method": method, "r": 2, "alpha": 4, "target_modules": PL.LINEARS})
        with torch.no_grad():
            for n, p in lm.named_parameters():
                if "lora_" in n:
                    p.normal_(0, 0.5)
        losses[method] = (before, PL.text_loss(lm, rows))
    assert losses["partial_lora"][0] == losses["partial_lora"][1]
    assert losses["lora"][0] != losses["lora"][1]
    cfgs = {a: PL.arm_config(a, "quick") for a in PL.ARMS}
    assert cfgs["full"].stages[1].peft == {} and cfgs["partial_lora"].stages[1].peft["method"] == "partial_lora"


def test_vision_routers_equal_compute_and_shared_init():
    from lmlab.experiments import vlm_routers as R

    for scale in ("quick", "full"):
        facts = R._equal_compute({a: R.arm_config(a, scale, 0) for a in R.ARMS})
        assert {f["expert_passes_per_image"] for f in facts.values()} == {float(R.arm_config("soft", scale)["tokens"])}
    x = torch.randn(3, 3, 32, 32)
    vits = {}
    for arm in R.ARMS:
        cfg = dict(R.arm_config(arm, "quick", 0), width=32, depth=2, moe_layers=[1], d_expert=32)
        vits[arm] = R.build_vit(cfg)
        assert vits[arm].classify(x).shape == (3, 7)
        assert vits[arm].blocks[1].mlp.group == "sequence"
    ref = {n: p for n, p in vits["softmax_tc"].named_parameters() if ".router." not in n}
    for arm, v in vits.items():
        for n, p in v.named_parameters():
            if ".router." not in n and n in ref:
                assert torch.equal(p, ref[n]), (arm, n)
    with pytest.raises(AssertionError):
        R._equal_compute({"a": R.arm_config("softmax_tc", "quick"),
                          "b": dict(R.arm_config("soft", "quick"), moe={**R.router_args("soft", 16),
                                                                        "slots_per_expert": 8})})


def test_vision_router_samples_keep_the_image_order():
    from lmlab.experiments import vlm_routers as R

    xtr, ytr, xte, yte, imgs = R.scene_tensors(0, 4, 2, 32)
    assert xtr.shape == (4, 3, 32, 32) and len(imgs) == 2 and imgs[0].size == (32, 32)
    assert set(ytr.tolist()) <= set(range(7))
