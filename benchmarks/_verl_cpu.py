"""Try verl's PPO trainer (RLOO advantages) on CPU with benchmarks/rl_throughput.py's model shape; run with
verl's own interpreter (a separate venv: verl pins packages the project does not use).

    /work/venvs/verl/bin/python benchmarks/_verl_cpu.py [--gen 16] [--steps 3]

Prints `VERL_RESULT {json}` with seconds per step when verl trains; otherwise verl's own error is the output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

V, D, L, H, TP = 64, 64, 2, 4, 8

REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    toks = solution_str.split()
    return sum(1.0 for t in toks if t[1:].isdigit() and int(t[1:]) % 2 == 0) / max(len(toks), 1)
'''


def build(d: Path) -> None:
    import pandas as pd
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, V)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=192, num_hidden_layers=L,
                                         num_attention_heads=H, max_position_embeddings=64, pad_token_id=0,
                                         eos_token_id=1, bos_token_id=None, tie_word_embeddings=False))
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    g = torch.Generator().manual_seed(0)
    rows = [{"data_source": "even", "prompt": [{"role": "user", "content": " ".join(
        f"t{int(t)}" for t in torch.randint(2, V, (TP,), generator=g))}], "reward_model": {"ground_truth": ""},
        "extra_info": {"index": i}} for i in range(64)]
    pd.DataFrame(rows).to_parquet(d / "train.parquet")
    (d / "reward.py").write_text(REWARD)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2, help="Ray num_cpus (verl's GPU bundles ask for 3 CPUs each)")
    ap.add_argument("--fake-gpu", action="store_true",
                    help="declare one Ray GPU resource (none exists) to get past verl's GPU check and see the next blocker")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="verl_cpu_"))
    build(d)
    ov = [
        "algorithm.adv_estimator=rloo", f"data.train_files={d}/train.parquet", f"data.val_files={d}/train.parquet",
        f"data.train_batch_size={a.prompts}", "data.max_prompt_length=16", f"data.max_response_length={a.gen}",
        f"actor_rollout_ref.model.path={d}/model", f"actor_rollout_ref.rollout.n={a.k}",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32",
        "actor_rollout_ref.actor.use_kl_loss=False", "algorithm.use_kl_in_reward=True", "algorithm.kl_ctrl.kl_coef=0.05",
        "actor_rollout_ref.actor.optim.lr=1e-4", f"custom_reward_function.path={d}/reward.py",
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.logger=['console']",
        f"trainer.total_training_steps={a.steps}", "trainer.val_before_train=False", "trainer.test_freq=-1",
        "trainer.save_freq=-1", f"ray_kwargs.ray_init.num_cpus={a.cpus}", "critic.enable=False", "trainer.use_v1=False",
    ]
    ov += ["+ray_kwargs.ray_init.include_dashboard=False", f"+ray_kwargs.ray_init._temp_dir={d}/ray"]
    if a.fake_gpu:
        ov.append("+ray_kwargs.ray_init.num_gpus=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *ov], capture_output=True, text=True, env=env)
    out = r.stdout + r.stderr
    print(out[-6000:])
    if r.returncode == 0:
        steps = [l for l in out.splitlines() if "timing_s/step" in l]
        print("VERL_RESULT " + json.dumps({"seconds": time.time() - t0, "step_lines": steps[-3:]}))
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
