"""benchmarks/peers.py worker: `transformers.generate` on SmolLM2-135M (the GGUF dequantised by transformers).

    .venv/bin/python benchmarks/peers/worker_transformers.py --workloads W.json --threads 1

Runs in the project's .venv. Prompts of one workload have one length (peers.py builds them so), so a batch
needs no padding; n samples per prompt are `num_return_sequences`; min_new_tokens = max_new_tokens forces the
length (EOS suppressed until then).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))
from _protocol import serve_worker, worker_parser  # noqa: E402


def main() -> None:
    ap = worker_parser("smollm2")
    a = ap.parse_args()

    def load():
        import torch
        import transformers

        torch.set_num_threads(a.threads)
        from lmlab.models.hf import load_hf

        hf, tok = load_hf(a.model)

        def run(w: dict, seed: int) -> list[int]:
            x = torch.tensor(w["prompts"])
            torch.manual_seed(seed)
            sample = w["temperature"] > 0
            kw = dict(do_sample=True, temperature=w["temperature"], top_k=0, top_p=1.0) if sample else \
                dict(do_sample=False, temperature=None, top_k=None, top_p=None)
            with torch.no_grad():
                o = hf.generate(x, attention_mask=torch.ones_like(x), num_return_sequences=w["n"],
                                max_new_tokens=w["new"], min_new_tokens=w["new"], pad_token_id=tok.eos_id, **kw)
            return [int(o.shape[1] - x.shape[1])] * int(o.shape[0])

        return run, {"engine": "transformers", "version": transformers.__version__, "torch": torch.__version__,
                     "threads": torch.get_num_threads()}

    serve_worker(load, a.workloads)


if __name__ == "__main__":
    main()
