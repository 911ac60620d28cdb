"""HybridFlow without Ray: row-seeded sampling, batches and dispatch, the controller on the in-process backend
(same update as rl_train), the placement search's cost model and the cluster plan. Ray: test_hybridflow_ray.py."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _hybridflow_setup import TOL, V, max_diff, prompt_fn, reward_fn, setup, single_process
from lmlab.align.hybridflow.controller import HybridFlow
from lmlab.align.hybridflow.plan import format_plan, parse_cluster, plan_cluster, predict, search
from lmlab.align.hybridflow.sampling import row_seeded_sample, seeded_sample
from lmlab.align.hybridflow.workers import Batch, Collect, Dispatch, RoleWorker, colocated, dispatch_of, split
from lmlab.align.ppo import response_logp

ROOT = Path(__file__).resolve().parents[1]


def test_row_seeded_rollout_does_not_depend_on_the_split():
    pol, _, _ = setup("rloo")
    prompts = prompt_fn(4, torch.Generator().manual_seed(0))
    whole = seeded_sample(pol, prompts, 5, 3, 1.0, None, seed=11)
    halves = [seeded_sample(pol, prompts[a:b], 5, 3, 1.0, None, seed=11, prompt_index=torch.arange(a, b))
              for a, b in ((0, 1), (1, 4))]
    assert torch.equal(whole.tokens, torch.cat([h.tokens for h in halves]))
    assert torch.equal(whole.logprobs, torch.cat([h.logprobs for h in halves]))
    # the recorded log-probs are the policy's log-probs of the sampled tokens (it samples from the policy)
    lp = response_logp(pol, whole.tokens, whole.prompt_len)
    assert torch.allclose(whole.logprobs, lp, atol=1e-5)
    # another seed, other samples; rl_train's entry point draws one seed from its generator
    assert not torch.equal(whole.tokens, seeded_sample(pol, prompts, 5, 3, 1.0, None, seed=12).tokens)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(row_seeded_sample(pol, prompts, 5, 3, generator=g1).tokens,
                       row_seeded_sample(pol, prompts, 5, 3, generator=g2).tokens)


def test_batch_split_keeps_groups_and_order():
    b = Batch({"x": torch.arange(12).view(6, 2), "y": torch.arange(6)}, {"k": 2})
    parts = b.split(2, unit=2)
    assert [len(p) for p in parts] == [4, 2]                  # 3 groups of 2 rows -> 2 + 1 groups
    assert torch.equal(Batch.concat(parts)["x"], b["x"]) and parts[1].meta == {"k": 2}
    assert b.nbytes == 12 * 8 + 6 * 8
    with pytest.raises(ValueError, match="cannot split 3 groups"):
        b.split(4, unit=2)
    assert dispatch_of(RoleWorker, "generate")[:2] == (Dispatch.SPLIT, Collect.CONCAT)
    assert dispatch_of(RoleWorker, "update")[:2] == (Dispatch.BROADCAST, Collect.LIST)
    assert dispatch_of(RoleWorker, "get_weights")[0] is Dispatch.RANK_ZERO
    with pytest.raises(AttributeError, match="not a registered group method"):
        dispatch_of(RoleWorker, "load")


@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_in_process_dataflow_matches_rl_train(algo):
    """Two iterations through the controller (in-process workers) = rl_train with the same sampler."""
    ref_pol, ref_hist = single_process(algo, iterations=2)
    for pl in (colocated(2, 1), split(1, 2)):
        pol, ref, cfg = setup(algo, iterations=2)
        hist = HybridFlow(pl, backend="local").train(pol, ref, prompt_fn, reward_fn, cfg)
        assert max_diff(ref_pol, pol) <= TOL, pl.name
        assert hist[-1]["reward"] == ref_hist[-1]["reward"] and hist[-1]["kl"] == pytest.approx(ref_hist[-1]["kl"])
        assert {"t_generate", "t_old_logp", "t_ref_logp", "t_reward", "t_update", "t_weight_sync",
                "bytes_generate", "bytes_weight_sync"} <= set(hist[0])
    # the rollout replica that does not host the actor is refreshed; the colocated one reads the actor in place
    n_params = sum(v.numel() * 8 for v in pol.state_dict().values())
    assert hist[0]["bytes_weight_sync"] == 2 * n_params      # split: both rollout workers get the weights


def test_placement_cost_model_by_hand():
    st = {"generate": 1.0, "old_logp": 0.2, "ref_logp": 0.3, "update": 0.5, "weight_sync": 0.1}
    # colocated(2, actor=1): gen/2 + (old + ref/2 on shared processes) + update + sync to 1 of 2 replicas
    c = predict(st, {"all": 2}, {"actor": ("all", 1), "rollout": ("all", 2), "ref": ("all", 2)})
    assert c == pytest.approx(0.5 + (0.2 + 0.15) + 0.5 + 0.05)
    s = predict(st, {"train": 1, "gen": 1}, {"actor": ("train", 1), "ref": ("train", 1), "rollout": ("gen", 1)}, 0.01)
    assert s == pytest.approx(1.0 + 0.5 + 0.5 + 0.1 + 5 * 0.01)
    # every role on both processes: the fused dispatch, two round trips
    f = predict(st, {"all": 2}, {"actor": ("all", 2), "rollout": ("all", 2), "ref": ("all", 2)}, 0.01)
    assert f == pytest.approx(0.5 + (0.1 + 0.15) + 0.25 + 2 * 0.01)
    ranked = search(st, 2)
    assert ranked[0][0] == "colocated(2, actor=2)" and [r[1] for r in ranked] == sorted(r[1] for r in ranked)


def test_cluster_plan_is_a_labelled_model():
    spec = parse_cluster("16xH100, actor 7B, critic 7B, batch 512")
    assert (spec.gpus, spec.gpu, spec.actor, spec.critic, spec.batch) == (16, "H100", 7e9, 7e9, 512)
    plans = plan_cluster(spec)
    feasible = [p for p in plans if p.feasible]
    assert feasible and feasible == sorted(feasible, key=lambda p: p.seconds)
    # training FLOPs: 6·N·tokens at the stated MFU on all 16 GPUs
    col = next(p for p in plans if p.name.startswith("colocated"))
    assert col.stages["update"] == pytest.approx(2 * 6 * 7e9 * 512 * 2048 / (16 * 989e12 * 0.4))
    assert "MODEL" in format_plan(spec, plans) and "not a measurement" in format_plan(spec, plans)
    assert not next(p for p in plan_cluster(parse_cluster("2xA100, actor 70B")) if p.name.startswith("colocated")).feasible
    for bad, msg in (("H100, actor 7B", "count"), ("8xT4, actor 7B", "unknown GPU"), ("8xH100", "actor's size"),
                     ("8xH100, actor 7B, critc 7B", "critc")):
        with pytest.raises(ValueError, match=msg):
            parse_cluster(bad)


def test_cli_plan_and_bad_flags():
    run = lambda *a: subprocess.run([sys.executable, "-m", "lmlab.cli", "align", "rl", *a], cwd=ROOT,
                                    capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    r = run("--plan", "16xH100, actor 7B, critic 7B")
    assert r.returncode == 0 and "not a measurement" in r.stdout and "chosen:" in r.stdout
    for args, msg in ((["--plan", "16xT4, actor 7B"], "T4"), (["rl.iterations=1", "--ray", "--rollout-workers", "0"],
                      "--rollout-workers=0"), (["--ray", "--placement", "colocated", "--actor-workers", "3"], "actor workers")):
        r = run(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_batches_and_tensor_dicts_cross_processes_as_one_buffer():
    """Pickling (what Ray does to call arguments and answers) keeps every dtype, shape and value; a small payload
    travels as bytes, a large one as a single numpy buffer, never as per-tensor torch pickles."""
    import pickle

    from lmlab.align.hybridflow.workers import Tensors, _pack

    g = torch.Generator().manual_seed(0)
    b = Batch({"f64": torch.randn(3, 5, dtype=torch.float64, generator=g), "mask": torch.rand(3, 2, generator=g) > 0.5,
               "bf16": torch.randn(3, 7, generator=g).bfloat16(), "ids": torch.arange(3), "none": torch.empty(3, 0),
               "strided": torch.randn(4, 3, generator=g).t()[:, :3]}, {"prompt_len": 4})
    c = pickle.loads(pickle.dumps(b))
    assert c.meta == b.meta and list(c.tensors) == list(b.tensors)
    for k in b.tensors:
        assert c[k].dtype == b[k].dtype and torch.equal(c[k], b[k]), k
    c.tensors["f64"].add_(1)                                         # owned, writable memory
    big = Tensors(w=torch.randn(200, 200, generator=g), step=torch.tensor(3))
    assert isinstance(_pack(b.tensors)[1], bytes) and not isinstance(_pack(big)[1], bytes)
    back = pickle.loads(pickle.dumps(big))
    assert isinstance(back, Tensors) and all(torch.equal(back[k], big[k]) for k in big)
    assert b"torch._utils" not in pickle.dumps(b)                    # no torch tensor pickling inside
