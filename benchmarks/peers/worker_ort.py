"""benchmarks/peers.py worker: onnxruntime-genai on the ONNX model its builder made from the HF folder.

    ~/.cache/lmlab/peers/ort/bin/python benchmarks/peers/worker_ort.py --workloads W.json --threads 1 \\
        --model ~/.cache/lmlab/peers/ort-int4

Prompts of one workload have one length, so a batch is a plain (batch, P) array; n samples are n copies of
the prompt; min_length = max_length = P + new forces the output length.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _protocol import serve_worker, worker_parser  # noqa: E402


def main() -> None:
    ap = worker_parser()
    a = ap.parse_args()

    def load():
        import numpy as np
        import onnxruntime_genai as og

        cfg = og.Config(a.model)
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
        model = og.Model(cfg)
        precision = Path(a.model).name

        def run(w: dict, seed: int) -> list[int]:
            rows = [p for p in w["prompts"] for _ in range(w["n"])]
            P = len(rows[0])
            if any(len(r) != P for r in rows):
                raise ValueError("worker_ort: prompts of one workload must have one length")
            params = og.GeneratorParams(model)
            opts = dict(max_length=P + w["new"], min_length=P + w["new"], batch_size=len(rows), random_seed=seed)
            if w["temperature"] > 0:
                opts.update(do_sample=True, temperature=w["temperature"], top_k=0, top_p=1.0)
            else:
                opts.update(do_sample=False)
            params.set_search_options(**opts)
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(rows, dtype=np.int32))
            while not gen.is_done():
                gen.generate_next_token()
            return [len(gen.get_sequence(i)) - P for i in range(len(rows))]

        return run, {"engine": f"onnxruntime-genai {precision}", "version": og.__version__, "threads": a.threads}

    serve_worker(load, a.workloads)


if __name__ == "__main__":
    main()
