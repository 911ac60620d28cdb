"""`lmlab align` end to end on the example data with tiny models: every stage runs, writes its metrics
stream and model, and the numbers move the right way."""
import json
from pathlib import Path

import pytest

from lmlab.align.config import load_align_config
from lmlab.align.stages import run_stage
from lmlab.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_layer=1", "model.n_head=2", "model.max_seq_len=128", "tensorboard=false"]


def _cfg(stage, tmp_path, *extra):
    return load_align_config(str(ROOT / f"configs/align/{stage}.yaml"),
                             TINY + [f"out_dir={tmp_path / stage}", f"data.path={ROOT / 'configs/align/examples'}/"
                                     + ("chat.jsonl" if stage == "sft" else "prefs.jsonl"), *extra])


def _metrics(path):
    return [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines()]


def test_every_config_validates():
    from lmlab.align.cgpo import load_cgpo_config

    for p in sorted((ROOT / "configs/align").glob("*.yaml")):
        # a stage with its own config model (cgpo: AlignConfig + a `cgpo` section) loads with its loader
        (load_cgpo_config if p.stem.startswith("cgpo") else load_align_config)(str(p), [])


def test_bad_key_is_one_line_error():
    with pytest.raises(ConfigError, match="lrr"):
        load_align_config(None, ["lrr=1"])
    with pytest.raises(ConfigError, match="rm_method"):
        load_align_config(None, ["rm_method=foo"])


def test_sft_then_dpo_then_rm(tmp_path):
    s = run_stage("sft", _cfg("sft", tmp_path, "sft.steps=15", "sft.lr=1e-2"))
    assert s["final_loss"] < s["first_loss"]
    assert (tmp_path / "sft/model.safetensors").exists() and len(_metrics(tmp_path / "sft")) == 15
    d = run_stage("dpo", _cfg("dpo", tmp_path, f"init_from={tmp_path / 'sft/model.safetensors'}", "dpo.epochs=3", "dpo.lr=1e-3"))
    m = _metrics(tmp_path / "dpo")
    assert m[-1]["loss"] < m[0]["loss"]
    r = run_stage("rm", _cfg("rm", tmp_path, "rm.method=odin", "rm.epochs=2",
                             f"init_from={tmp_path / 'dpo/model.safetensors'}"))
    assert set(r) >= {"train_accuracy", "reward_length_corr"}
    # a reward model's checkpoint seeds a later stage too (its backbone), and junk is refused in one line
    import torch
    from lmlab.align.stages import build_model
    from lmlab.train.checkpoint import load_model_file, save_model
    rm_sd, _ = load_model_file(tmp_path / "rm/model.safetensors")
    dec = build_model(_cfg("dpo", tmp_path, f"init_from={tmp_path / 'rm'}"))
    assert torch.equal(dec.embed.weight, rm_sd["backbone.embed.weight"])
    save_model(torch.nn.Linear(1, 1), tmp_path / "bad.safetensors", {"model_config": dec.cfg.model_dump()})
    with pytest.raises(ConfigError, match="not an lmlab decoder checkpoint"):
        build_model(_cfg("dpo", tmp_path, f"init_from={tmp_path / 'bad.safetensors'}"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pickled.pt")  # pickles are refused, never unpickled
    with pytest.raises(ConfigError, match="safetensors"):
        build_model(_cfg("dpo", tmp_path, f"init_from={tmp_path / 'pickled.pt'}"))


@pytest.mark.parametrize("stage", ["ppo", "rloo"])
def test_rl_stages_log_metrics(tmp_path, stage):
    cfg = load_align_config(str(ROOT / f"configs/align/{stage}.yaml"),
                            TINY + [f"out_dir={tmp_path / stage}", "rl.iterations=2", "rl.prompts_per_iter=2",
                                    "rl.samples_per_prompt=2", "rl.max_new_tokens=3"])
    run_stage(stage, cfg)
    m = _metrics(tmp_path / stage)
    assert len(m) == 2
    for key in ("reward", "kl", "entropy_est", "response_len", "clipfrac", "samples_per_s", "t_generate"):
        assert key in m[-1]
    assert all(0.0 <= r["reward"] <= 1.0 for r in m)


@pytest.mark.parametrize("method", ["lora", "spiel", "partial_lora"])
def test_sft_and_dpo_select_peft_by_config(tmp_path, method):
    """`peft: {method: …}` in an align config trains only the adapter and saves a plain decoder."""
    import torch
    from lmlab.align.stages import build_model
    from lmlab.train.checkpoint import load_model_file

    peft = {"lora": "{method: lora, r: 4, alpha: 8}", "spiel": "{method: spiel, density: 0.05}",
            "partial_lora": "{method: partial_lora, r: 4, alpha: 8}"}[method]
    s = run_stage("sft", _cfg("sft", tmp_path, "sft.steps=6", "sft.lr=1e-2", f"peft={peft}"))
    assert s["final_loss"] < s["first_loss"]
    base = build_model(_cfg("sft", tmp_path))  # same seed: the untouched initial weights
    sd, _ = load_model_file(tmp_path / "sft/model.safetensors")
    assert not any("lora_" in k or "delta" in k for k in sd)
    changed = [k for k, v in base.state_dict().items() if k in sd and not torch.equal(v, sd[k])]
    if method == "partial_lora":  # adapter kept apart, base weights untouched
        assert changed == [] and (tmp_path / "sft/adapter/adapter_model.safetensors").exists()
    else:                          # adaptation folded into the weights
        assert changed
    d = run_stage("dpo", _cfg("dpo", tmp_path, f"init_from={tmp_path / 'sft'}", "dpo.epochs=1", f"peft={peft}"))
    assert d["stage"] == "dpo"


def test_partial_lora_adapter_carries_from_sft_to_dpo(tmp_path):
    """An SFT stage's Partial LoRA adapter (kept beside the base weights) is where a partial_lora DPO stage starts
    (with a negligible lr it writes the same adapter back); a stage without partial_lora refuses it in one line rather than
    running the base model without it."""
    import torch
    from safetensors.torch import load_file

    peft = "peft={method: partial_lora, r: 4, alpha: 8}"
    run_stage("sft", _cfg("sft", tmp_path, "sft.steps=4", "sft.lr=1e-2", peft))
    sft = load_file(tmp_path / "sft/adapter/adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in sft.items())
    d = run_stage("dpo", _cfg("dpo", tmp_path, f"init_from={tmp_path / 'sft'}", "dpo.epochs=1", "dpo.lr=1e-12", peft))
    assert abs(d["final"]["loss"] - 0.6931) < 1e-3            # policy = reference = the SFT model: log 2
    dpo = load_file(tmp_path / "dpo/adapter/adapter_model.safetensors")
    assert sft.keys() == dpo.keys() and all(torch.allclose(sft[k], dpo[k], atol=1e-9) for k in sft)
    for extra in ([], ["peft={method: lora, r: 4, alpha: 8}"]):
        with pytest.raises(ConfigError, match="holds a Partial LoRA adapter") as e:
            run_stage("dpo", _cfg("dpo", tmp_path / "x", f"init_from={tmp_path / 'sft'}", *extra))
        assert "\n" not in str(e.value)


def test_nested_sections_and_old_flat_keys_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"rm\.method=.*choose one of: bt, ids, odin"):
        load_align_config(None, ["rm.method=foo"])
    with pytest.raises(ConfigError, match=r"dpo\.loss_type=.*choose one of: hinge, ipo, sigmoid"):
        load_align_config(None, ["dpo.loss_type=ppo"])
    with pytest.raises(ConfigError, match=r"rl\.algo=.*choose one of: grpo, ppo, rloo"):
        load_align_config(None, ["rl.algo=dpo"])
    for flat, new in (("lr=1", "sft.lr"), ("iterations=2", "rl.iterations"), ("data=x.jsonl", "data.path")):
        with pytest.raises(ConfigError, match=new) as e:
            load_align_config(None, [flat])
        assert "\n" not in str(e.value)


def test_align_registries_describe_every_entry():
    from lmlab.registry import ALIGN_ALGOS, ALIGN_STAGES, REWARD_MODELS

    expect = {ALIGN_STAGES: {"sft", "rm", "dpo", "rl"}, REWARD_MODELS: {"bt", "ids", "odin", "contrastive"},
              ALIGN_ALGOS: {"sigmoid", "ipo", "hinge", "ppo", "rloo", "grpo", "vstar", "dpf"}}
    for reg, names in expect.items():
        assert names <= set(reg.names())
        for n in reg.names():
            doc = (reg.get(n).__doc__ or "").strip().splitlines()
            assert doc and doc[0] == reg.describe(n) and len(doc[0]) > 20, (reg.kind, n)


def test_run_files_written_once_and_rl_shorthand(tmp_path):
    import yaml

    cfg = load_align_config(str(ROOT / "configs/align/ppo.yaml"),
                            TINY + [f"out_dir={tmp_path / 'g'}", "seed=3", "rl.iterations=1", "rl.prompts_per_iter=2",
                                    "rl.samples_per_prompt=2", "rl.max_new_tokens=2"])
    s = run_stage("grpo", cfg)  # an rl algorithm's name = the rl stage with that rl.algo
    assert s["stage"] == "grpo" and len(_metrics(tmp_path / "g")) == 1
    written = load_align_config(str(tmp_path / "g/config.yaml"))
    assert written.rl.algo == "grpo" and written.seed == 3 and written.model.d_model == 32
    meta = json.loads((tmp_path / "g/meta.json").read_text())
    assert meta["seed"] == 3 and meta["align_stage"] == "rl" and "versions" in meta
    assert yaml.safe_load((tmp_path / "g/config.yaml").read_text())["rl"]["algo"] == "grpo"
    from lmlab.registry import RegistryError
    with pytest.raises(RegistryError, match="choose one of: cgpo, dpo, rl, rm, sft"):
        run_stage("nope", cfg)


def test_a_stage_from_init_from_is_reproducible(tmp_path):
    """A stage that starts from an earlier stage's output and initialises something new (the reward model's head)
    gives the same result twice with the same seed: init_from seeds torch as a fresh model does."""
    import torch
    from lmlab.train.checkpoint import load_model_file

    run_stage("sft", _cfg("sft", tmp_path, "sft.steps=2"))
    runs = [run_stage("rm", _cfg("rm", tmp_path / f"r{i}", f"init_from={tmp_path / 'sft'}", "rm.epochs=1"))
            for i in range(2)]
    same = [{k: v for k, v in r.items() if k != "seconds"} for r in runs]
    assert same[0] == same[1]
    a, _ = load_model_file(tmp_path / "r0/rm/model.safetensors")
    b, _ = load_model_file(tmp_path / "r1/rm/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_may_follow_the_options(tmp_path):
    """`lmlab align sft --config X key=value …`: overrides after the options are applied like those before;
    anything else left over is still an argparse error."""
    from lmlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["align", "sft", "--config", str(ROOT / "configs/align/sft.yaml"), *TINY, "sft.steps=1",
              f"out_dir={tmp_path / 'a'}", f"data.path={ROOT / 'configs/align/examples/chat.jsonl'}"])
    assert e.value.code == 0
    assert "steps: 1" in (tmp_path / "a/config.yaml").read_text()
    with pytest.raises(SystemExit) as e:
        main(["align", "sft", "--config", str(ROOT / "configs/align/sft.yaml"), "--bogus"])
    assert e.value.code == 2
