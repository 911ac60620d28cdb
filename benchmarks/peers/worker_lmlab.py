"""benchmarks/peers.py worker: lmlab's engine on SmolLM2-135M, fp32 or weight-only int8/int4/bf16/int8g.

    PYTHONPATH=. .venv/bin/python benchmarks/peers/worker_lmlab.py --workloads W.json --threads 1 --quantize int4

Runs in the project's .venv. --quantize uses `lmlab.nn.quant.quantize_(model, scheme, group_size=)` (int8g: the LM
head too, as `lmlab serve --quantize int8g` does). --engine and
--head-dtype mean what they mean for `lmlab generate/serve` (lmlab.infer.cli): the fused engine
(lmlab.infer.fused) by default, its LM head in bf16 when quantized ("auto").
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))
from _protocol import serve_worker, worker_parser  # noqa: E402

from lmlab.infer.cli import HEAD_DTYPES, head_dtype_for  # noqa: E402


def main() -> None:
    ap = worker_parser("smollm2")
    ap.add_argument("--quantize", choices=["none", "int8", "int4", "bf16", "int8g"], default="none")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--engine", choices=["fused", "modules"], default="fused")
    ap.add_argument("--head-dtype", choices=HEAD_DTYPES, default="auto")
    a = ap.parse_args()

    def load():
        import torch

        torch.set_num_threads(a.threads)
        from lmlab.backend import GenerationConfig
        from lmlab.infer.fused import make_engine
        from lmlab.models.hf import load_pretrained

        model, tok = load_pretrained(a.model)
        if a.quantize != "none":
            from lmlab.nn.quant import head_skip, quantize_   # added by the weight-only quantization work (issue 21)

            quantize_(model, a.quantize, group_size=a.group_size, skip=head_skip(a.quantize))
        head = head_dtype_for(a.head_dtype, a.quantize)
        eng = make_engine(model.eval(), tok, fused=a.engine == "fused", **({"head_dtype": head} if head else {}))
        eng.stop_ids = set()   # EOS ignored: every sequence gets exactly `new` tokens

        def run(w: dict, seed: int) -> list[int]:
            gen = GenerationConfig(max_new_tokens=w["new"], n=w["n"], temperature=w["temperature"], seed=seed)
            out = eng.generate_ids(w["prompts"], gen)
            return [len(c.token_ids) for row in out for c in row]

        from importlib.metadata import version

        return run, {"engine": f"lmlab {a.quantize if a.quantize != 'none' else 'fp32'}", "engine_class": type(eng).__name__,
                     "head_dtype": str(getattr(eng, "head_dtype", None) or model.head.weight.dtype)
                     if hasattr(model.head, "weight") else type(model.head).__name__,
                     "version": version("lmlab"), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}

    serve_worker(load, a.workloads)


if __name__ == "__main__":
    main()
