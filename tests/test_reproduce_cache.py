"""`lmlab reproduce` reuses a saved run only while its config, environment and sources are unchanged, and
reruns exactly the runs an edit affects (fake experiments in a throw-away package on sys.path)."""
import importlib
import json
import sys
import textwrap
import uuid

import pytest

from lmlab.experiments.runkey import RunDeps
from lmlab.registry import EXPERIMENTS

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _helpers import fake_package  # noqa: E402

EXPS = '''
from lmlab.experiments.base import ArmResult, Experiment
from lmlab.registry import EXPERIMENTS
from . import helper_a
from .helper_b import value as b_value

CALLS = []
CONFIGS = {"base": {"lr": 1.0}, "tech": {"lr": 2.0}}


def run_a(arm, seed, scale, out):
    CALLS.append(("A", arm, seed))
    (out / "marker.txt").write_text("ran")
    return ArmResult({"val_loss": helper_a.value() + (1.0 if arm == "base" else 0.0) + 0.01 * seed})


def _b_extra():
    return 0.0


def run_b(arm, seed, scale, out):
    CALLS.append(("B", arm, seed))
    return ArmResult({"val_loss": b_value() + _b_extra() + (1.0 if arm == "base" else 0.0) + 0.01 * seed})


EXP_A = Experiment(name="A_TAG", paper="Fake", claim="tech beats base", metric="val_loss", run=run_a,
                   arms=["base", "tech"], baseline="base", technique="tech")
EXP_A.arm_config = lambda arm, scale, seed: {"arm": arm, **CONFIGS[arm]}
EXPERIMENTS.register("A_TAG", EXP_A)
EXPERIMENTS.register("B_TAG", Experiment(name="B_TAG", paper="Fake", claim="tech beats base",
                                           metric="val_loss", run=run_b, arms=["base", "tech"], baseline="base",
                                           technique="tech", description="DESCRIPTION"))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A package `fk_<tag>` with two experiments: A (arm_config, helper_a) and B (no arm_config, helper_b)."""
    with fake_package(tmp_path, monkeypatch, "fk") as (tag, pkg):
        (pkg / "helper_a.py").write_text("def value():\n    return 1.0\n")
        (pkg / "helper_b.py").write_text("def value():\n    return 2.0\n")
        (pkg / "exps.py").write_text(EXPS.replace("TAG", tag).replace("DESCRIPTION", "first"))
        monkeypatch.setattr(sys, "dont_write_bytecode", True)    # edited sources reload from source
        mod = __import__(f"fk_{tag}.exps", fromlist=["x"])

        class F:
            pass

        f = F()
        f.tag, f.pkg, f.mod, f.names = tag, pkg, mod, [f"A_{tag}", f"B_{tag}"]
        f.out = tmp_path / "out"
        yield f


def _repro(f, seeds=2, names=None):
    from lmlab.experiments.runner import reproduce

    before = len(f.mod.CALLS)
    reproduce(names or f.names, "quick", seeds, f.out, show_progress=False)
    return sorted(f.mod.CALLS[before:])


def test_rerun_reuses_everything_unchanged(fake):
    assert len(_repro(fake)) == 8
    assert _repro(fake) == []
    res = json.loads((fake.out / f"A_{fake.tag}" / "tech" / "seed_1" / "arm_result.json").read_text())
    key = res["key"]
    assert key["config"]["arm_config"] == {"arm": "tech", "lr": 2.0} and len(key["config_hash"]) == 64
    assert f"fk_{fake.tag}.helper_a" in key["code"] and f"fk_{fake.tag}.exps::run_a" in key["code"]
    assert f"fk_{fake.tag}.helper_b" not in key["code"]          # B's helper is not A's dependency
    assert "lmlab.experiments.base" in key["code"] and key["commit"]
    assert set(key["env"]) == {"python", "torch", "numpy", "device"}
    rows = json.loads((fake.out / "claims.json").read_text())
    assert {r["name"] for r in rows} == set(fake.names)
    assert all(r["commit"] and r["run_commits"] and r["runs"]["reused"] == 4 for r in rows)
    rj = json.loads((fake.out / "reproduce.json").read_text())
    assert rj["code_version"] == rows[0]["commit"]


def test_config_change_reruns_that_arm_only(fake):
    _repro(fake)
    stale_dir = fake.out / f"A_{fake.tag}" / "tech" / "seed_0"
    (stale_dir / "leftover.txt").write_text("from the stale run")
    fake.mod.CONFIGS["tech"]["lr"] = 3.0
    assert _repro(fake) == [("A", "tech", 0), ("A", "tech", 1)]
    assert not (stale_dir / "leftover.txt").exists()             # rerun in a clean directory
    assert _repro(fake) == []


def test_helper_source_change_reruns_its_experiment_only(fake):
    _repro(fake)
    (fake.pkg / "helper_a.py").write_text("def value():\n    return 1.5\n")
    importlib.reload(sys.modules[f"fk_{fake.tag}.helper_a"])
    ran = _repro(fake)
    assert ran == sorted(("A", a, s) for a in ("base", "tech") for s in (0, 1))
    rows = {r["name"]: r for r in json.loads((fake.out / "claims.json").read_text())}
    assert rows[f"A_{fake.tag}"]["baseline"][0] == pytest.approx(2.505)   # the new numbers, not the old
    (fake.pkg / "helper_b.py").write_text("def value():\n    return 2.5  # changed\n")
    assert [r[0] for r in _repro(fake)] == ["B"] * 4


def test_definition_level_in_experiment_module(fake):
    _repro(fake)
    src = fake.pkg / "exps.py"
    # B's own helper function changes: only B reruns, though A lives in the same file
    src.write_text(src.read_text().replace("def _b_extra():\n    return 0.0", "def _b_extra():\n    return 0.5"))
    assert [r[0] for r in _repro(fake)] == ["B"] * 4
    # an edited declaration (description) changes no run
    src.write_text(src.read_text().replace('description="first"', 'description="second"'))
    assert _repro(fake) == []
    # A's run function changes: only A reruns
    src.write_text(src.read_text().replace('(out / "marker.txt").write_text("ran")',
                                           '(out / "marker.txt").write_text("ran again")'))
    assert [r[0] for r in _repro(fake)] == ["A"] * 4


def test_unkeyed_result_is_rerun_never_relabelled(fake):
    _repro(fake)
    p = fake.out / f"B_{fake.tag}" / "base" / "seed_1" / "arm_result.json"
    d = json.loads(p.read_text())
    del d["key"]                                                # as written before runs were keyed
    p.write_text(json.dumps(d))
    assert _repro(fake) == [("B", "base", 1)]
    assert "key" in json.loads(p.read_text())


def test_environment_change_reruns(fake, monkeypatch):
    _repro(fake, names=[fake.names[1]])
    import lmlab.experiments.runner as runner

    monkeypatch.setattr(runner, "env_key", lambda: {"python": "3.11", "torch": "9.9", "numpy": "1", "device": "cpu"})
    assert len(_repro(fake, names=[fake.names[1]])) == 4


def test_more_seeds_runs_only_the_new_seeds(fake):
    _repro(fake, seeds=2)
    assert _repro(fake, seeds=3) == sorted((e, a, 2) for e in "AB" for a in ("base", "tech"))


def test_default_seeds_follow_the_experiment(fake):
    from lmlab.experiments.runner import seeds_for

    exp = EXPERIMENTS.get(fake.names[0])
    assert seeds_for(exp, None) == 3 and seeds_for(exp, 2) == 2
    exp.seeds = 5
    assert seeds_for(exp, None) == 5
    exp.seeds = 1
    assert seeds_for(exp, None) == 3


def test_registry_lookups_and_config_files_become_dependencies(tmp_path, monkeypatch):
    """A run's registry look-ups (a Block asks CHANNEL_MIXERS for "moe") and the files it reads under configs/
    join its key: the MoE arm depends on nn/moe/layer.py, the dense arm does not; editing the config file it
    read reruns it."""
    import lmlab.experiments.runkey as runkey
    from lmlab.experiments.base import ArmResult, Experiment
    from lmlab.experiments.runner import reproduce

    repo, configs = tmp_path / "repo", tmp_path / "repo" / "configs"
    configs.mkdir(parents=True)
    (configs / "arm.yaml").write_text("lr: 1\n")
    monkeypatch.setattr(runkey, "REPO", repo)
    monkeypatch.setattr(runkey, "CONFIGS", configs)
    calls = []

    def run(arm, seed, scale, out):
        from lmlab.experiments.common import tiny_run_config
        from lmlab.models.decoder import Decoder

        calls.append(arm)
        cfg = tiny_run_config(model={"d_model": 16, "n_layer": 1, "n_head": 2, "ffn": arm})
        Decoder(cfg.model)
        lr = float((configs / "arm.yaml").read_text().split(":")[1])
        return ArmResult({"val_loss": lr + (0.0 if arm == "moe" else 1.0) + 0.01 * seed})

    name = f"_registry_deps_{uuid.uuid4().hex[:6]}"
    EXPERIMENTS.register(name, Experiment(name=name, paper="Fake", claim="c", metric="val_loss", run=run,
                                          arms=["swiglu", "moe"], baseline="swiglu", technique="moe"))
    out = tmp_path / "out"
    reproduce([name], "quick", 1, out, show_progress=False)
    keys = {a: json.loads((out / name / a / "seed_0" / "arm_result.json").read_text())["key"]["code"]
            for a in ("swiglu", "moe")}
    assert "lmlab.nn.moe.layer" in keys["moe"] and "lmlab.nn.moe.layer" not in keys["swiglu"]
    assert "lmlab.nn.ffn" in keys["swiglu"] and "file:configs/arm.yaml" in keys["moe"]
    reproduce([name], "quick", 1, out, show_progress=False)
    assert len(calls) == 2
    (configs / "arm.yaml").write_text("lr: 2\n")
    reproduce([name], "quick", 1, out, show_progress=False)
    assert len(calls) == 4


def test_a_value_cached_across_runs_keeps_its_dependencies(tmp_path, monkeypatch):
    """A helper cached across runs (`runkey.cached`, e.g. a loaded backend) replays the registry look-ups and
    configs/ files of its first call into every run that reuses the value: both seeds' keys name the MoE layer
    and the config file, where functools.lru_cache left them out of the second run's key."""
    import functools

    import lmlab.experiments.runkey as runkey
    from lmlab.experiments.base import ArmResult, Experiment
    from lmlab.experiments.runner import reproduce

    repo, configs = tmp_path / "repo", tmp_path / "repo" / "configs"
    configs.mkdir(parents=True)
    (configs / "m.yaml").write_text("x: 1\n")
    monkeypatch.setattr(runkey, "REPO", repo)
    monkeypatch.setattr(runkey, "CONFIGS", configs)

    def model(ffn: str):
        from lmlab.experiments.common import tiny_run_config
        from lmlab.models.decoder import Decoder

        (configs / "m.yaml").read_text()
        return Decoder(tiny_run_config(model={"d_model": 16, "n_layer": 1, "n_head": 2, "ffn": ffn}).model)

    keys = {}
    for label, cache in (("cached", runkey.cached(maxsize=2)), ("lru", functools.lru_cache(maxsize=2))):
        get = cache(model)

        def run(arm, seed, scale, out, get=get):
            get("moe")
            return ArmResult({"val_loss": 1.0 + 0.01 * seed + (0.0 if arm == "moe" else 0.1)})

        name = f"_cached_deps_{label}_{uuid.uuid4().hex[:6]}"
        EXPERIMENTS.register(name, Experiment(name=name, paper="Fake", claim="c", metric="val_loss", run=run,
                                              arms=["dense", "moe"], baseline="dense", technique="moe"))
        out = tmp_path / label
        reproduce([name], "quick", 2, out, show_progress=False)
        keys[label] = [json.loads((out / name / a / f"seed_{s}" / "arm_result.json").read_text())["key"]["code"]
                       for s in (0, 1) for a in ("dense", "moe")]
    assert all("lmlab.nn.moe.layer" in k and "file:configs/m.yaml" in k for k in keys["cached"])
    assert sum("lmlab.nn.moe.layer" in k for k in keys["lru"]) == 1          # the hole `cached` closes
    assert runkey.cached(maxsize=1)(lambda v: v + 1)(1) == 2                   # outside a recording: a cache


def test_real_experiments_depend_on_their_own_code_only():
    """Static part of the keys of registered experiments: per-definition in shared experiment files, and an
    MoE module is not a dependency of the DPO experiment."""
    deps = RunDeps()
    dpo = deps.for_callable(EXPERIMENTS.get("dpo_winrate").run)
    assert not any(k.startswith("lmlab.nn.moe") for k in dpo)
    assert any(k.startswith("lmlab.align") for k in dpo)
    big, longer = (deps.for_callable(EXPERIMENTS.get(n).run) for n in ("bigger_model", "longer_training"))
    assert "lmlab.experiments.sanity::_bigger" in big and "lmlab.experiments.sanity::_longer" not in big
    assert "lmlab.experiments.sanity" not in big and "lmlab.experiments.sanity::_longer" in longer


def test_function_closure_follows_names_not_lines(tmp_path, monkeypatch):
    pkg = tmp_path / f"fd_{uuid.uuid4().hex[:6]}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(textwrap.dedent('''
        SIZES = {"a": 1}
        OTHER = 2
        def helper():
            return SIZES["a"]
        def run(arm, seed, scale, out):
            return helper()
        def unrelated():
            return OTHER
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    deps = RunDeps((pkg.name,))
    k = f"{pkg.name}.m::run"
    h0 = deps.function_closure(f"{pkg.name}.m", "run")[k]
    src = (pkg / "m.py").read_text()
    (pkg / "m.py").write_text(src.replace("OTHER = 2", "OTHER = 3").replace("def unrelated", "\n\ndef unrelated"))
    assert RunDeps((pkg.name,)).function_closure(f"{pkg.name}.m", "run")[k] == h0
    (pkg / "m.py").write_text(src.replace('{"a": 1}', '{"a": 2}'))
    assert RunDeps((pkg.name,)).function_closure(f"{pkg.name}.m", "run")[k] != h0


def test_shared_caches_are_dropped_when_runs_are_stale(fake):
    _repro(fake)
    shared = fake.out / f"A_{fake.tag}" / "_reference"
    shared.mkdir()
    (shared / "model.bin").write_text("made by the old code")
    assert _repro(fake) == [] and shared.exists()               # nothing stale: the cache stays
    fake.mod.CONFIGS["base"]["lr"] = 5.0
    assert _repro(fake) == [("A", "base", 0), ("A", "base", 1)]
    assert not shared.exists()


def test_comment_only_edit_reruns_nothing(fake):
    _repro(fake)
    (fake.pkg / "helper_a.py").write_text("# a comment\ndef value():\n\n    return 1.0  # same code\n")
    assert _repro(fake) == []
