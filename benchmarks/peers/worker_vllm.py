"""benchmarks/peers.py worker: vLLM's CPU build (offline `LLM`) on the HF folder written by export_hf.py.

    ~/.cache/lmlab/peers/vllm-cpu/bin/python benchmarks/peers/worker_vllm.py --workloads W.json --threads 1 \\
        --model ~/.cache/lmlab/peers/smollm2-hf

Runs in the vllm-cpu venv made by setup.sh. ignore_eos=True and min_tokens=max_tokens force every output's
length; n samples per prompt share the prompt through vLLM's prefix cache, as vLLM does by itself.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _protocol import serve_worker, worker_parser  # noqa: E402


def main() -> None:
    ap = worker_parser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--enforce-eager", action="store_true",
                    help="skip torch.compile (its first compile takes > 25 min on a loaded 2-core machine)")
    a = ap.parse_args()

    def load():
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(model=a.model, dtype=a.dtype, max_model_len=a.max_model_len, seed=0, enforce_eager=a.enforce_eager)

        def run(w: dict, seed: int) -> list[int]:
            sp = SamplingParams(n=w["n"], temperature=w["temperature"], top_k=0 if w["temperature"] > 0 else -1,
                                top_p=1.0, max_tokens=w["new"], min_tokens=w["new"], ignore_eos=True, seed=seed)
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in w["prompts"]], sp, use_tqdm=False)
            return [len(c.token_ids) for o in outs for c in o.outputs]

        import torch
        return run, {"engine": "vLLM-CPU", "version": vllm.__version__, "torch": torch.__version__,
                     "dtype": a.dtype, "threads": a.threads, "enforce_eager": a.enforce_eager,
                     "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")}

    serve_worker(load, a.workloads)


if __name__ == "__main__":   # vLLM starts its engine core in a child process (spawn)
    main()
