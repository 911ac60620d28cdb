"""RLOO iterations per second: lmlab's single-process loop vs the HybridFlow dataflow on Ray (colocated and
split) vs TRL's RLOOTrainer, on the same tiny model and batch; per-stage time breakdown; placement search
checked against the measured placements; verl tried in its own venv.

    OMP_NUM_THREADS=1 python benchmarks/rl_dataflow.py [--reps 5] [--iters 4] [--gen 16] [--prompts 8] [--k 4]
        [--no-trl] [--verl-python /work/venvs/verl/bin/python] [--plot benchmarks/results/rl_dataflow.png]

Model and settings are benchmarks/rl_throughput.py's (d=64, 2 layers, 4 heads, vocab 64, prompt 8 tokens,
`--gen` new tokens, KL β = 0.05, one optimizer step per batch, fp32, 1 torch thread per process). Sides:

    single        rl_train, stock sampler (cached_sample)
    single_rs     rl_train with the row-seeded sampler the dataflow uses (the equal-work baseline)
    local         the dataflow's controller with in-process workers (colocated, 1 worker): controller cost
    ray_col1      Ray, colocated, 1 worker hosting every role: the same work as single_rs on one process
    ray_col2      Ray, colocated, 2 workers (rollout and ref split in two, the actor on worker 0)
    ray_split     Ray, split: actor + ref on 1 worker, rollout on 2 others
    trl           TRL RLOOTrainer (same model shape, Llama in transformers)

Every side runs `--iters` consecutive iterations of one training per round (per-iteration figures are the
round's totals / iters: a training's steady state, in which the dataflow sends rollout k+1 before update k's
answer is back), order rotating (benchmarks/_interleave.py); 1 warm-up round, then `--reps` (≥ 5) rounds;
medians. Clocks: wall seconds per iteration (samples/s = batch / wall) and CPU seconds
of every process that worked on it (the controller plus, on Ray, each worker's own process_time), since on
a shared machine CPU time is the steadier measure of work. Dataflow overhead = (ray_col1 − single_rs) /
single_rs, on both clocks.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(HERE.parent))
sys.path.insert(1, str(HERE))

from _interleave import interleaved  # noqa: E402
from rl_throughput import D, H, L, TP, V, reward_of, trl_in_thread  # noqa: E402

STAGES = ["t_generate", "t_old_logp", "t_ref_logp", "t_reward", "t_advantage", "t_update", "t_weight_sync"]


def make(iters: int, gen: int, prompts: int, k: int):
    from lmlab.align.ppo import RLConfig
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder

    torch.manual_seed(0)
    pol = Decoder(ModelConfig(vocab_size=V, d_model=D, n_layer=L, n_head=H, max_seq_len=64, tie_embeddings=False))
    cfg = RLConfig(algo="rloo", iterations=iters, prompts_per_iter=prompts, samples_per_prompt=k,
                   max_new_tokens=gen, ppo_epochs=1, minibatches=1, kl_coef=0.05, lr=1e-4, seed=0)
    return pol, copy.deepcopy(pol), cfg


def prompt_fn(n, g):
    return torch.randint(2, V, (n, TP), generator=g)


def reward_fn(p, y):
    return torch.tensor([reward_of(r) for r in y.tolist()])


def _per_iter(ms: list[dict], keys: list[str]) -> dict:
    return {k: sum(m.get(k, 0.0) for m in ms) / len(ms) for k in keys}


def single_side(a, row_seeded: bool):
    from lmlab.align import rollout
    from lmlab.align.hybridflow.sampling import row_seeded_sample
    from lmlab.align.ppo import rl_train

    def run():
        pol, ref, cfg = make(a.iters, a.gen, a.prompts, a.k)
        if row_seeded:
            rollout.set_sampler(row_seeded_sample)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            ms = rl_train(pol, ref, prompt_fn, reward_fn, cfg)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            rollout.set_sampler(rollout.cached_sample)
        return {**_per_iter(ms, ["t_generate", "t_score", "t_train"]), "iter_wall": wall / a.iters,
                "iter_cpu": cpu / a.iters}
    return run


def flow_side(flow, a):
    """`--iters` iterations of one training per round (a fresh session: its model loading is not timed), so the
    pipelined rollouts run as in a training run and none is left running into the next side's turn."""
    flow.checkpoint_every = 0                     # the benchmark measures iterations, not checkpoints

    def run():
        pol, ref, cfg = make(a.iters, a.gen, a.prompts, a.k)
        sess = flow.session(pol, ref, prompt_fn, reward_fn, cfg)
        flow._all("pop_timings")                  # workers' CPU counts from here (not while other sides ran)
        c0, t0 = time.process_time(), time.perf_counter()
        ms = [sess.step() for _ in range(a.iters)]
        sess.finish()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0 + sum(m.get("cpu_workers", 0.0) for m in ms)
        rest = flow._all("pop_timings") if flow.backend == "ray" else []   # the final get_weights' share
        cpu += sum(d.get("cpu_workers", 0.0) for d in rest)
        return {**_per_iter(ms, STAGES + ["bytes_total", "bytes_weight_sync"]), "iter_wall": wall / a.iters,
                "iter_cpu": cpu / a.iters}
    return run


def trl_side(n_steps: int, a):
    baton, _, err, _ = trl_in_thread(n_steps, a.gen, a.prompts, a.k)

    def run():
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(a.iters):     # the TRL step runs in this process while the call waits: its clocks count it
            baton.give("trl")
            baton.wait("lmlab")
            if err:
                raise err[0]
        return {"iter_wall": (time.perf_counter() - t0) / a.iters, "iter_cpu": (time.process_time() - c0) / a.iters}
    return run


def cpu_split(a, steps: int = 8) -> None:
    """Where the dataflow's CPU goes: controller vs worker process, in-process workers vs one Ray worker
    (same colocated(1, 1) placement), medians over `steps` iterations after 2 warm-up ones."""
    from lmlab.align.hybridflow.controller import HybridFlow
    from lmlab.align.hybridflow.workers import colocated

    for name, f in (("in-process", HybridFlow(colocated(1, 1), backend="local")), ("ray", HybridFlow(colocated(1, 1)).start())):
        pol, ref, cfg = make(10 ** 6, a.gen, a.prompts, a.k)
        f.checkpoint_every = 0
        sess = f.session(pol, ref, prompt_fn, reward_fn, cfg)
        ctl, wk = [], []
        for _ in range(steps + 2):
            f._all("pop_timings")
            c0 = time.process_time()
            m = sess.step()
            ctl.append(time.process_time() - c0)
            wk.append(m.get("cpu_workers", 0.0))
        print(f"{name:<10} controller process {statistics.median(ctl[2:]) * 1e3:6.1f} CPU-ms, worker process "
              f"{statistics.median(wk[2:]) * 1e3:6.1f} CPU-ms per iteration (median of {steps})")
        f.shutdown()


def noop_rtt(flow, n: int = 50) -> float:
    """Median seconds of one empty call to a started worker (the dispatch floor of every stage)."""
    import ray

    w = flow.workers()[0]
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(w.pop_timings.remote())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


VERL_SCRIPT = HERE / "_verl_cpu.py"


def try_verl(python: str, timeout: int = 900) -> dict:
    """Run verl's PPO trainer on CPU with the same model shape (benchmarks/_verl_cpu.py) in verl's own venv."""
    if not Path(python).exists():
        return {"ok": False, "error": f"{python}: no such interpreter (make a venv and pip install verl there)"}
    try:
        r = subprocess.run([python, str(VERL_SCRIPT), "--gen", "16"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    out = (r.stdout + r.stderr).strip().splitlines()
    res = next((json.loads(l[len("VERL_RESULT "):]) for l in out if l.startswith("VERL_RESULT ")), None)
    if r.returncode == 0 and res:
        return {"ok": True, **res}
    return {"ok": False, "returncode": r.returncode, "error": "\n".join(out[-25:])}


def plot(rows: dict, path: Path) -> None:
    """Stacked bars: each side's median stage times (wall ms); overlapping stages are drawn end to end, the
    rest of the iteration is `other`; the CPU ms of every process involved is written at the bar's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(rows)
    keys = STAGES + ["t_score", "t_train", "other (dispatch, controller)"]
    colors = dict(zip(keys, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(11.5, 0.55 * len(names) + 1.8))
    used = []
    for y, n in enumerate(names):
        left = 0.0
        for key in keys:
            v = rows[n]["stages"].get(key, 0.0) * 1e3
            if v <= 0:
                continue
            ax.barh(y, v, left=left, color=colors[key])
            used += [key] if key not in used else []
            left += v
        ax.text(left + 5, y, f"{rows[n]['samples_per_s']:.0f} samples/s, CPU {rows[n]['cpu_s'] * 1e3:.0f} ms",
                va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, ax.get_xlim()[1] * 1.3)
    ax.set_xlabel("median wall ms per iteration (stage medians over the same interleaved rounds)")
    ax.legend(handles=[Patch(color=colors[k], label=k[2:] if k.startswith("t_") else k) for k in used],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("RLOO iteration by stage: single process, dataflow (in-process, Ray colocated / split), TRL")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4, help="consecutive iterations of one training per side and round")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--verl-python", default="/work/venvs/verl/bin/python")
    ap.add_argument("--verl-from", help="reuse the verl attempt recorded in an earlier run's --json file")
    ap.add_argument("--plot", default=str(HERE / "results/rl_dataflow.png"))
    ap.add_argument("--json", default=str(HERE / "results/rl_dataflow.json"))
    ap.add_argument("--cpu-split", action="store_true", help="only split the dataflow's CPU into controller and worker")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plot from an earlier run's --json file")
    a = ap.parse_args()
    if a.replot:
        plot(json.loads(Path(a.replot).read_text())["rows"], Path(a.plot))
        return
    if a.cpu_split:
        from lmlab.align.hybridflow.controller import init_ray

        torch.set_num_threads(1)
        init_ray(num_cpus=2)
        cpu_split(a)
        return
    if a.reps < 5:
        ap.error("--reps: at least 5 for a figure")
    torch.set_num_threads(1)
    import ray

    from lmlab.align.hybridflow.controller import HybridFlow, init_ray
    from lmlab.align.hybridflow.plan import search
    from lmlab.align.hybridflow.workers import colocated, split

    b = a.prompts * a.k
    init_ray(num_cpus=2)
    flows = {"ray_col1": HybridFlow(colocated(1, 1)), "ray_col2": HybridFlow(colocated(2, 1)),
             "ray_split": HybridFlow(split(1, 2))}
    for f in flows.values():
        f.start(wait=False)
    for f in flows.values():
        f.ready()
    rtt = noop_rtt(flows["ray_col1"])
    print(f"Ray round trip of an empty actor call: {rtt * 1e3:.2f} ms (median of 50)")
    sides = {"single": single_side(a, False), "single_rs": single_side(a, True),
             "local": flow_side(HybridFlow(colocated(1, 1), backend="local"), a),
             **{n: flow_side(f, a) for n, f in flows.items()}}
    trl_err = None
    if not a.no_trl:
        try:
            import trl  # noqa: F401

            sides["trl"] = trl_side((a.reps + 1) * a.iters, a)
        except ImportError as e:
            trl_err = str(e)
    print(f"RLOO, batch {a.prompts}x{a.k}, {a.gen} new tokens, d={D} L={L} vocab={V}, 1 thread per process, "
          f"1 warm-up + {a.reps} interleaved rounds; ray {ray.__version__}, torch {torch.__version__}")
    times = interleaved(sides, reps=a.reps, warmup=1)
    try:
        for f in flows.values():
            f.shutdown()
    finally:
        ray.shutdown()

    rows = {}
    for n, ss in times.items():
        wall = statistics.median(s.extra.get("iter_wall", s.wall) for s in ss)   # the loop's own iteration clock
        cpu = statistics.median(s.extra.get("iter_cpu", s.cpu) for s in ss)
        stages = {k: statistics.median(s.extra.get(k, 0.0) for s in ss) for k in STAGES + ["t_score", "t_train"]}
        stages["other (dispatch, controller)"] = max(0.0, wall - sum(stages.values()))
        rows[n] = {"wall_s": wall, "cpu_s": cpu, "samples_per_s": b / wall, "samples_per_cpu_s": b / cpu,
                   "stages": stages, "walls": [s.extra.get("iter_wall", s.wall) for s in ss],
                   "cpus": [s.extra.get("iter_cpu", s.cpu) for s in ss]}
        if n not in ("single", "single_rs", "trl"):
            rows[n]["bytes_per_iter"] = statistics.median(s.extra.get("bytes_total", 0) for s in ss)
            rows[n]["weight_sync_bytes"] = statistics.median(s.extra.get("bytes_weight_sync", 0) for s in ss)
    print(f"\n{'side':<10} {'samples/s':>10} {'wall ms':>8} {'CPU ms':>8} {'samples/CPU-s':>14}  stages (median ms)")
    for n, r in rows.items():
        st = ", ".join(f"{k[2:] if k.startswith('t_') else k} {v * 1e3:.0f}" for k, v in r["stages"].items() if v > 5e-4)
        print(f"{n:<10} {r['samples_per_s']:>10.1f} {r['wall_s'] * 1e3:>8.0f} {r['cpu_s'] * 1e3:>8.0f} "
              f"{r['samples_per_cpu_s']:>14.1f}  {st}")
    if trl_err:
        print(f"trl        not installed ({trl_err})")
    base = rows["single_rs"]
    over = {clk: (rows["ray_col1"][clk] - base[clk]) / base[clk] for clk in ("wall_s", "cpu_s")}
    per_round = [(r1 - r0) / r0 for r0, r1 in zip(rows["single_rs"]["walls"], rows["ray_col1"]["walls"])]
    per_round_cpu = [(r1 - r0) / r0 for r0, r1 in zip(rows["single_rs"]["cpus"], rows["ray_col1"]["cpus"])]
    print(f"\ndataflow overhead at equal work (ray_col1 vs single_rs), per-round medians: wall "
          f"{statistics.median(per_round):+.1%}, CPU {statistics.median(per_round_cpu):+.1%} (ratio of medians: wall "
          f"{over['wall_s']:+.1%}, CPU {over['cpu_s']:+.1%}); in-process controller (local vs single_rs): CPU "
          f"{(rows['local']['cpu_s'] - base['cpu_s']) / base['cpu_s']:+.1%}; target <= 15%: "
          f"wall {'met' if statistics.median(per_round) <= 0.15 else 'MISSED'}, "
          f"CPU {'met' if statistics.median(per_round_cpu) <= 0.15 else 'MISSED'}")
    print(f"row-seeded sampler's own cost (single_rs vs single): wall "
          f"{(rows['single_rs']['wall_s'] - rows['single']['wall_s']) / rows['single']['wall_s']:+.1%}")
    # placement search: profile = the one-worker stages of ray_col1 (+ weight sync per replica of ray_split)
    from lmlab.align.hybridflow.plan import predict

    st1 = rows["ray_col1"]["stages"]   # one process hosts every role there: its stages are timed by the worker
    prof = {k: st1[f"t_{k}"] for k in ("generate", "old_logp", "ref_logp", "update")}
    prof["weight_sync"] = max(0.0, rows["ray_split"]["stages"]["t_weight_sync"] - rtt) / 2   # per replica
    pls = {"ray_col1": colocated(1, 1), "ray_col2": colocated(2, 1), "ray_split": split(1, 2)}
    pred = {n: predict(prof, p.pools, p.roles, rtt) for n, p in pls.items()}
    measured = {n: rows[n]["wall_s"] for n in pls}
    print(f"\nplacement model (stages timed inside ray_col1's worker, scaled stage/w, + {rtt * 1e3:.1f} ms per call):")
    for n in pls:
        print(f"  {n:<10} predicted {pred[n] * 1e3:6.0f} ms   measured {measured[n] * 1e3:6.0f} ms")
    pr, mr = sorted(pls, key=lambda n: pred[n]), sorted(pls, key=lambda n: measured[n])
    print(f"  ranking: predicted {pr}, measured {mr}: {'agree' if pr == mr else 'DISAGREE'}")
    print("  search over 2 workers: " + ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in search(prof, 2, rtt)))
    verl = json.loads(Path(a.verl_from).read_text())["verl"] if a.verl_from else try_verl(a.verl_python)
    print("\nverl:", "ran: " + json.dumps(verl) if verl["ok"] else "could not run its CPU path here; last lines:\n"
          + "\n".join("  " + l for l in verl["error"].splitlines()))
    plot(rows, Path(a.plot))
    Path(a.json).write_text(json.dumps({"rows": rows, "overhead": over, "overhead_per_round_wall": per_round, "overhead_per_round_cpu": per_round_cpu,
                                        "predicted": pred, "measured": measured, "verl": verl, "ray_rtt_s": rtt,
                                        "settings": vars(a)}, indent=1))
    print(f"\nplot: {a.plot}\njson: {a.json}")


if __name__ == "__main__":
    main()
