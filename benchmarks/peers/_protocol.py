"""The line protocol between benchmarks/peers.py and one engine's worker (standard library only: every
worker imports it inside its own environment).

A worker is started as `ENV_PYTHON worker_X.py --workloads FILE --threads T ...`. It loads its model, then
writes one line `@@READY {json}` (engine name, versions, optional server url) on the protocol stream and
answers each command line read from stdin:

    {"workload": "a", "seed": 3}  ->  @@RESULT {"wall_s": …, "cpu_s": …, "tokens": [new tokens of each sequence]}
    {"quit": true}                ->  exits

The protocol stream is the process's original stdout; everything else the engine prints goes to stderr
(file descriptor 1 is pointed at 2 once the protocol stream is saved), so library chatter cannot corrupt it.
A workload (from FILE) is {"prompts": [[token ids], …], "n": samples per prompt, "new": new tokens per
sequence, "temperature": 0 for greedy}; every sequence must get exactly `new` tokens (EOS ignored).

Each run's prompts start with a token picked by its seed (`salted`): engines that keep a prompt cache across
requests (vLLM's prefix cache, llama.cpp's slots) would otherwise skip the prefill of every repetition after
the first, while lmlab and transformers prefill each call. Prefix sharing inside one call is unaffected.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Callable

READY, RESULT = "@@READY ", "@@RESULT "
SALT_BASE, SALT_SPAN = 1000, 20000   # token ids used as the first token of a run's prompts


def worker_parser(model_default: str | None = None) -> argparse.ArgumentParser:
    """The options every worker takes: --workloads FILE, --threads T, --model (required without a default)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", required=True)
    ap.add_argument("--threads", type=int, default=1)
    if model_default is None:
        ap.add_argument("--model", required=True)
    else:
        ap.add_argument("--model", default=model_default, help="smollm2 (the GGUF) or an HF folder with the same weights")
    return ap


def salted(w: dict, seed: int) -> dict:
    """The workload with every prompt's first token replaced by one that depends on `seed` only."""
    salt = SALT_BASE + seed % SALT_SPAN
    return {**w, "prompts": [[salt] + list(p[1:]) for p in w["prompts"]]}


def serve_worker(load: Callable[[], tuple[Callable[[dict, int], list[int]], dict]], workloads_path: str) -> None:
    """Run a worker: `load()` -> (run(workload, seed) -> token counts, info); then answer commands forever."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    workloads = json.load(open(workloads_path))
    try:
        run, info = load()
    except Exception as e:  # reported to the driver as the engine's error, in one line
        proto.write(READY + json.dumps({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}) + "\n")
        traceback.print_exc()
        return
    proto.write(READY + json.dumps(info) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        w = salted(workloads[cmd["workload"]], int(cmd.get("seed", 0)))
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            tokens = run(w, int(cmd.get("seed", 0)))
            out = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "tokens": tokens}
        except Exception as e:
            traceback.print_exc()
            out = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        proto.write(RESULT + json.dumps(out) + "\n")
