"""Parallel `lmlab reproduce`: every (experiment, arm, seed) run is an independent task.

`LocalPool(jobs)` keeps `jobs` worker processes (spawned, each with `threads` torch threads so that
jobs × threads ≤ the machine's cores); `RayPool(address)` submits the same tasks as Ray tasks to a local or
an existing cluster. Both only *execute* runs: the driver (`lmlab.experiments.runner`) decides which runs are
stale exactly as the sequential path does, hands the runs to execute to `run_tasks`, gathers the results and
computes the verdicts. A task runs `runner._run_one` in its worker, which writes the run folder
(`arm_result.json` with its key) and returns that file's content too, so a driver on another machine than
the workers still gets every result. A task that raises or whose worker dies (killed, out of memory) is
retried once; a second failure is reported as a failure of that run, never dropped.

The first run of each experiment is executed before the experiment's other runs start, so a cache that an
experiment shares between its runs (`<out>/<exp>/_*`, e.g. Rho-1's reference model) is built once.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

RETRIES = 1      # a failed or killed task is run once more, then reported as a failure
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class RunTask:
    """One run to execute: everything a worker needs, picklable."""
    exp: str                    # experiment name (EXPERIMENTS)
    module: Optional[str]       # module of the experiment's run function (imported by a fresh worker)
    arm: str
    seed: int
    scale: str
    run_dir: str
    want: dict                  # the run key known before the run (runner.run_key)
    roots: tuple                # RunDeps roots of the reproduce call
    version: dict               # runkey.code_version() of the driver
    syspath: list = field(default_factory=list)
    threads: int = 1
    attempt: int = 0

    @property
    def label(self) -> str:
        return f"{self.exp}/{self.arm}/seed {self.seed}"


def threads_per_worker(jobs: int, cores: Optional[int] = None) -> int:
    """Torch threads of each of `jobs` workers: as many as fit, jobs × threads ≤ cores, at least 1."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def execute(task: RunTask) -> dict:
    """Run one task in this process (a worker): {"ok", "seconds", "result" (arm_result.json text) | "error"}."""
    import json

    for p in reversed(task.syspath):
        if p not in sys.path:
            sys.path.insert(0, p)
    t0 = time.time()
    for k in THREAD_VARS:           # read by torch (and BLAS) when first imported in this worker
        os.environ[k] = str(task.threads)
    try:
        from lmlab.experiments.runkey import RunDeps
        from lmlab.experiments.runner import _run_one
        from lmlab.registry import EXPERIMENTS

        if task.module:
            __import__(task.module)
        exp = EXPERIMENTS.get(task.exp)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(task.threads)
        d = Path(task.run_dir)
        _run_one(exp, task.arm, task.seed, task.scale, d, task.want, RunDeps(tuple(task.roots)), task.version)
        text = (d / "arm_result.json").read_text()
        json.loads(text)
        return {"ok": True, "seconds": time.time() - t0, "result": text}
    except BaseException as e:  # noqa: BLE001 - reported to the driver, which retries or records it
        return {"ok": False, "seconds": time.time() - t0,
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


# ------------------------------------------------------------------------------------------- local pool
def _worker_main(conn, threads: int) -> None:
    for k in THREAD_VARS:
        os.environ[k] = str(threads)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(execute(task))


class _Worker:
    def __init__(self, ctx, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
        self.proc.start()
        child.close()
        self.task: Optional[RunTask] = None

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class LocalPool:
    """`jobs` spawned worker processes; a worker that dies is replaced and its task reported as failed."""

    def __init__(self, jobs: int, threads: Optional[int] = None):
        import multiprocessing as mp

        self.jobs = max(1, int(jobs))
        self.threads = threads or threads_per_worker(self.jobs)
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []

    def describe(self) -> str:
        return f"{self.jobs} local worker processes × {self.threads} torch threads"

    def __enter__(self):
        self.workers = [_Worker(self.ctx, self.threads) for _ in range(self.jobs)]
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()

    def slots(self) -> int:
        return sum(w.task is None for w in self.workers)

    def submit(self, task: RunTask) -> None:
        w = next(w for w in self.workers if w.task is None)
        task.threads = self.threads
        w.task = task
        w.conn.send(task)

    def wait(self, timeout: float) -> list[tuple[RunTask, dict]]:
        from multiprocessing.connection import wait

        busy = [w for w in self.workers if w.task is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout))
        done = []
        for i, w in enumerate(self.workers):
            if w.task is None or (w.conn not in ready and w.proc.sentinel not in ready):
                continue
            res = None
            if w.conn in ready:
                try:
                    res = w.conn.recv()
                except (EOFError, OSError):
                    res = None
            if res is None:             # the worker died with its task (killed, out of memory, crashed)
                w.proc.join(timeout=5)
                code = w.proc.exitcode
                res = {"ok": False, "seconds": 0.0, "error": f"worker process died (exit code {code})",
                       "traceback": f"worker pid {w.proc.pid} exited with code {code} while running "
                                    f"{w.task.label}\n"}
                self.workers[i] = _Worker(self.ctx, self.threads)
                done.append((w.task, res))
                continue
            done.append((w.task, res))
            w.task = None
        return done


# --------------------------------------------------------------------------------------------- Ray pool
def _ray_execute(task: RunTask) -> dict:
    return execute(task)


class RayPool:
    """Ray tasks on an existing cluster (`address`) or on a local one started here with `jobs` slots."""

    def __init__(self, jobs: int = 2, address: Optional[str] = None, threads: Optional[int] = None):
        self.jobs = max(1, int(jobs))
        self.address = address
        self.threads = threads or (threads_per_worker(self.jobs) if address is None else 1)
        self.started = False
        self.pending: dict = {}

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
        return f"Ray tasks on {where} ({self.jobs} at a time × {self.threads} torch threads)"

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            # a busy machine can take more than Ray's default minute to register the local node
            os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    path = os.pathsep.join(p for p in sys.path if p)
                    ray.init(num_cpus=self.jobs * self.threads, include_dashboard=False, log_to_driver=False,
                             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(self.threads)}})
            except Exception as e:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
                raise ConnectionError(f"--ray: could not start or reach {where}: {str(e).splitlines()[0]}") from None
            self.started = True
        self.remote = ray.remote(max_retries=0, num_cpus=self.threads)(_ray_execute)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for ref in list(self.pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        if self.started:
            ray.shutdown()

    def slots(self) -> int:
        return self.jobs - len(self.pending)

    def submit(self, task: RunTask) -> None:
        task.threads = self.threads
        self.pending[self.remote.remote(task)] = task

    def wait(self, timeout: float) -> list[tuple[RunTask, dict]]:
        import ray

        if not self.pending:
            return []
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            task = self.pending.pop(ref)
            try:
                res = ray.get(ref)
            except Exception as e:        # the worker died (WorkerCrashedError) or the task could not run
                res = {"ok": False, "seconds": 0.0, "error": f"Ray task failed: {type(e).__name__}",
                       "traceback": f"{type(e).__name__}: {e}\n"}
            done.append((task, res))
        return done


# ------------------------------------------------------------------------------------------- scheduling
def run_tasks(tasks: list[RunTask], pool, on_start: Callable[[RunTask], None],
              on_done: Callable[[RunTask, dict], None], on_retry: Callable[[RunTask, dict], None],
              tick: Callable[[], None] = lambda: None, poll: float = 0.5) -> None:
    """Execute `tasks` on `pool` (entered). Calls on_start when a task is submitted, on_retry when a failed task
    is resubmitted, on_done with its final result (ok or failed after the retry). The first task of each
    experiment finishes before that experiment's other tasks start."""
    queue = list(tasks)
    first_done: set[str] = set()
    leader: dict[str, RunTask] = {}
    for t in queue:
        leader.setdefault(t.exp, t)
    running: dict[str, int] = {}

    def ready(t: RunTask) -> bool:
        return t.exp in first_done or (leader[t.exp] is t and not running.get(t.exp))

    while queue or any(running.values()):
        while pool.slots() > 0:
            t = next((t for t in queue if ready(t)), None)
            if t is None:
                break
            queue.remove(t)
            running[t.exp] = running.get(t.exp, 0) + 1
            on_start(t)
            pool.submit(t)
        for t, res in pool.wait(poll):
            running[t.exp] -= 1
            if not res.get("ok") and t.attempt < RETRIES:
                t.attempt += 1
                on_retry(t, res)
                queue.insert(0, t)
                if leader[t.exp] is t:
                    continue
            else:
                on_done(t, res)
            if leader[t.exp] is t:
                first_done.add(t.exp)
        tick()
