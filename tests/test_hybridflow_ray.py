"""HybridFlow on Ray: one simulated two-node cluster (ray.cluster_utils.Cluster) for the module.

- equivalence: three iterations of PPO and of RLOO through the dataflow (2 rollout workers, 1 actor; colocated
  and split; rollouts pipelined) give the parameters rl_train gives (same seed, float64, |Δθ| <= 1e-12);
- the split placement puts the actor (+ ref) on one node and the rollout workers on the other;
- a data-parallel actor (2 workers, gloo all-reduce) gives the same update up to float64 summation order;
- kill -9 of the actor's process mid-iteration: the controller restarts the groups from the last checkpoint,
  the metrics show the restart, the checkpoint file is intact, the final weights equal an uninterrupted run.
"""
import json
import os
import signal
import tempfile

import pytest
import torch

ray = pytest.importorskip("ray")

from _hybridflow_setup import TOL, max_diff, prompt_fn, reward_fn, setup, single_process  # noqa: E402
from lmlab.align.hybridflow.controller import HybridFlow  # noqa: E402
from lmlab.align.hybridflow.workers import colocated, split  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    import ray._private.utils as ru
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="lmhf_")
    orig = ru.write_ray_address
    ru.write_ray_address = lambda *a, **k: None      # keep /tmp/ray/ray_current_cluster for others' clusters
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 8},
                                                          "include_dashboard": False, "temp_dir": tmp})
        c.add_node(num_cpus=1, resources={"node_b": 8})
    finally:
        ru.write_ray_address = orig
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def flows(cluster):
    """Both placements' workers, started together."""
    fs = (HybridFlow(colocated(2, 1)).start(wait=False),
          HybridFlow(split(1, 2, resources={"train": {"node_a": 1}, "gen": {"node_b": 1}})).start(wait=False))
    yield tuple(f.ready() for f in fs)
    for f in fs:
        f.shutdown()


@pytest.fixture(scope="module")
def colocated_flow(flows):
    return flows[0]


@pytest.fixture(scope="module")
def split_flow(flows):
    return flows[1]


@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_colocated_and_split_match_single_process(algo, colocated_flow, split_flow):
    """Three iterations, so the pipelined rollouts (sent before the previous update's answer) and the chained
    forward passes (colocated ref) are exercised; they must still be on-policy, i.e. equal rl_train."""
    want, _ = single_process(algo, iterations=3)
    for flow in (colocated_flow, split_flow):
        pol, ref, cfg = setup(algo, iterations=3)
        hist = flow.train(pol, ref, prompt_fn, reward_fn, cfg)
        assert max_diff(want, pol) <= TOL, flow.placement.name
        assert max_diff(setup(algo)[0], pol) > 1e-3            # and the update is not empty
        assert [h["iter"] for h in hist] == [0, 1, 2]
        assert hist[0]["bytes_weight_sync"] > 0 and hist[0]["restarts"] == 0


def test_split_roles_on_different_nodes(split_flow):
    info = split_flow.info()
    nodes = {i["pool"]: {w["node"] for w in info if w["pool"] == i["pool"]} for i in info}
    assert len(nodes["train"]) == 1 and len(nodes["gen"]) == 1 and nodes["train"] != nodes["gen"]
    assert {tuple(sorted(i["roles"])) for i in info} == {("actor", "ref"), ("rollout",)}


def test_data_parallel_actor_with_gloo(colocated_flow):
    want, _ = single_process("ppo", iterations=2)
    pol, ref, cfg = setup("ppo", iterations=2)
    colocated_flow.use(colocated(2, 2))            # the hybrid engine: every role on both workers
    try:
        hist = colocated_flow.train(pol, ref, prompt_fn, reward_fn, cfg)
    finally:
        colocated_flow.use(colocated(2, 1))
    assert max_diff(want, pol) <= 1e-10            # gradients summed across ranks: float64 rounding only
    assert hist[0]["bytes_weight_sync"] == 0       # both rollout replicas are the actor itself


def test_kill_actor_mid_iteration_restarts_from_checkpoint(split_flow, tmp_path):
    want, _ = single_process("rloo", iterations=3)
    pol, ref, cfg = setup("rloo", iterations=3)
    killed, records = [], []

    def hook(stage, it, flow):
        if it == 1 and stage == "update" and not killed:          # after rollout and scoring of iteration 1
            pid = flow.info()[0]["pid"]                              # the train pool's worker: the actor
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    split_flow.checkpoint_dir = tmp_path / "ckpt"
    hist = split_flow.train(pol, ref, prompt_fn, reward_fn, cfg, log=records.append, hook=hook)
    assert killed and split_flow.restarts == 1
    restart = [r for r in records if r.get("event") == "restart"]
    assert len(restart) == 1 and restart[0]["iter"] == 1 and restart[0]["resume_from"] == 1
    assert restart[0]["rebuilt_pools"] == ["train"]                 # the rollout pool kept its processes
    assert [h["iter"] for h in hist] == [0, 1, 2] and hist[-1]["restarts"] == 1
    assert max_diff(want, pol) <= TOL                               # same weights as the uninterrupted run
    ck = torch.load(tmp_path / "ckpt" / "dataflow_ckpt.pt", weights_only=True)
    assert ck["iter"] == 2 and ck["history_len"] == 3
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["dataflow_ckpt.pt"]   # no half-written temp file
    assert all(json.dumps(r) for r in records)


def test_kill_during_fused_colocated_iteration_restarts(colocated_flow, tmp_path):
    """Every role on both processes (the fused two-call dispatch, data-parallel actor): kill -9 of one process
    while update 1 (+ the rollout of iteration 2) runs -> the pool is rebuilt from the checkpoint of iteration 0
    and the run ends with the uninterrupted run's weights."""
    want, _ = single_process("rloo", iterations=3)
    pol, ref, cfg = setup("rloo", iterations=3)
    killed, records = [], []

    def hook(stage, it, flow):
        if it == 1 and stage == "update" and not killed:
            pid = flow.info()[1]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    colocated_flow.use(colocated(2, 2))
    colocated_flow.checkpoint_dir = tmp_path / "ckpt"
    try:
        hist = colocated_flow.train(pol, ref, prompt_fn, reward_fn, cfg, log=records.append, hook=hook)
    finally:
        colocated_flow.use(colocated(2, 1))
        colocated_flow.checkpoint_dir = None
    assert colocated_flow._fused() is False                    # back to the placement the other tests use
    restart = [r for r in records if r.get("event") == "restart"]
    assert killed and len(restart) == 1 and restart[0]["iter"] == 1 and restart[0]["resume_from"] == 1
    assert [h["iter"] for h in hist] == [0, 1, 2]
    assert max_diff(want, pol) <= 1e-10                         # gradients summed across ranks: float64 rounding only


def test_peer_death_is_reported_over_the_survivors_collective_error(cluster):
    """A survivor's collective fails (connection reset) before Ray marks its killed peer dead: the group call
    raises the peer's RayActorError, which the controller restarts from, not the survivor's RayTaskError."""
    from lmlab.align.hybridflow.workers import _ray_get_all

    @ray.remote(num_cpus=0)
    class Peer:
        def die_after(self, s):
            import time
            time.sleep(s)
            os.kill(os.getpid(), signal.SIGKILL)

        def fail(self):
            raise RuntimeError("Connection reset by peer")

        def ok(self):
            return 1

    survivor = Peer.remote()
    for get, want in ((ray.get, ray.exceptions.RayTaskError),           # a bare ray.get reports the symptom
                      (_ray_get_all, ray.exceptions.RayActorError)):   # the group call, the death
        dying = Peer.remote()
        ray.get([dying.ok.remote(), survivor.ok.remote()])
        with pytest.raises(want):
            get([dying.die_after.remote(1.0), survivor.fail.remote()])
    with pytest.raises(ray.exceptions.RayTaskError, match="Connection reset"):
        _ray_get_all([survivor.fail.remote(), survivor.ok.remote()])   # nobody died: the error itself
    ray.kill(survivor)
