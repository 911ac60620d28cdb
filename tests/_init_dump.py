"""Fingerprint of every shipped model config (and a few extra component mixes) built with seed 0: a sha256 of
each parameter/buffer after initialisation, and of the loss and every gradient on one fixed batch.

    python tests/_init_dump.py OUT.json

Only the public API that every version since the registry refactor shares is used (load_config, validate,
build_model), so the same script can run against an older checkout (PYTHONPATH=<checkout>) and the results
compared exactly: tests/test_init_equivalence.py does that.
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OWN_SCHEMA = {"align"}           # configs/align/*.yaml follow the alignment schema, not RunConfig

# Component mixes the shipped configs do not cover (every argument here has existed since the registry).
EXTRA = {
    "attn_own_window_kv": {"n_layer": 2, "mixer_args": {"attn": {"window": 5, "n_kv_head": 1}}},
    "gqa_window_dropout": {"n_layer": 2, "n_kv_head": 2, "sliding_window": 6, "dropout": 0.1},
    "swiglu_own_dff_bias": {"n_layer": 2, "ffn_args": {"swiglu": {"d_ff": 80, "bias": True}}},
    "moe_shared_granular": {"n_layer": 2, "ffn": "moe", "ffn_args": {"moe": {
        "router": "softmax_tc", "n_experts": 4, "top_k": 2, "granularity": 2, "n_shared": 1, "out_bias": True,
        "capacity_factor": 1.0, "batch_priority": True}}},
    "moe_sinkhorn_ec": {"n_layer": 2, "ffn": "moe", "ffn_args": {"moe": {
        "router": "sinkhorn_ec", "n_experts": 4, "top_k": 1, "capacity_factor": 2.0, "d_expert": 64}}},
    "moe_sparse_ec_pattern": {"n_layer": 3, "ffn_pattern": ["swiglu", "moe"], "ffn_args": {"moe": {
        "router": "sparse_ec", "n_experts": 2, "top_k": 1}}},
    "moe_soft": {"n_layer": 2, "ffn": "moe", "ffn_args": {"moe": {"router": "soft", "n_experts": 4,
                                                                  "slots_per_expert": 2}}},
    "moa_default_heads": {"n_layer": 2, "n_kv_head": 2, "mixer": "moa", "mixer_args": {"moa": {"n_experts": 4}}},
    "hgrn2_naive_nolb": {"n_layer": 3, "layer_pattern": ["hgrn2", "attn"],
                         "mixer_args": {"hgrn2": {"expand": 2, "chunk": 4, "lower_bound": False, "mode": "naive"}}},
    "rglru_naive_heads": {"n_layer": 2, "layer_pattern": ["rglru", "local_attn"],
                          "mixer_args": {"rglru": {"lru_width": 96, "heads": 3, "scan": "naive", "doc_reset": False},
                                         "local_attn": {"window": 7, "n_kv_head": None}}},
    "hyper_static": {"n_layer": 2, "residual": "hyper", "residual_args": {"n": 3, "dynamic": False}},
    "lowrank_untied": {"n_layer": 2, "head_rank": 16, "tie_embeddings": False},
}
SMALL = {"vocab_size": 97, "d_model": 48, "n_head": 4, "max_seq_len": 32}


def _sha(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:24] + \
        f"/{t.numel()}/{t.dtype}"


def fingerprint(model_cfg) -> dict:
    from lmlab.models.decoder import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg)
    out = {"init": {k: _sha(v) for k, v in model.state_dict().items()}}
    g = torch.Generator().manual_seed(1)
    t = min(12, model_cfg.max_seq_len)
    idx = torch.randint(0, model_cfg.vocab_size, (2, t + 1), generator=g)
    torch.manual_seed(2)                      # dropout / router noise draw from the global RNG
    res = model(idx[:, :-1], targets=idx[:, 1:])
    loss = res.loss + (res.aux_loss if res.aux_loss is not None else 0)
    loss.backward()
    out["loss"] = float(loss.detach()).hex()
    out["grads"] = {n: _sha(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    return out


def main(path: str) -> None:
    from lmlab.config import RunConfig, load_config, validate

    result = {}
    root = ROOT / "configs"
    for f in sorted(root.rglob("*.yaml")):
        if f.relative_to(root).parts[0] in OWN_SCHEMA:
            continue
        result[str(f.relative_to(root))] = fingerprint(load_config(f).model)
    for name, model in EXTRA.items():
        result["extra/" + name] = fingerprint(validate(RunConfig, {"model": {**SMALL, **model}}).model)
    Path(path).write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
