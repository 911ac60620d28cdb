"""Shared set-up of the HybridFlow tests: a tiny float64 decoder, a prompt source and a rule reward."""
import copy

import torch

from lmlab.align import rollout
from lmlab.align.hybridflow.sampling import row_seeded_sample
from lmlab.align.ppo import PolicyWithValue, RLConfig, rl_train
from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder

V = 32
TOL = 1e-12   # float64 parameters; the single-process loop and the dataflow run the same ops on the same rows


def setup(algo: str, iterations: int = 1, seed: int = 3):
    torch.manual_seed(0)
    dec = Decoder(ModelConfig(vocab_size=V, d_model=16, n_layer=1, n_head=2, max_seq_len=32)).double()
    ref = copy.deepcopy(dec)
    pol = PolicyWithValue(dec).double() if algo == "ppo" else dec
    cfg = RLConfig(algo=algo, iterations=iterations, prompts_per_iter=4, samples_per_prompt=2, max_new_tokens=4,
                   lr=1e-2, seed=seed)
    return pol, ref, cfg


def prompt_fn(n, g):
    return torch.randint(2, V, (n, 3), generator=g)


def reward_fn(prompts, responses):
    return (responses % 2 == 0).double().mean(1)          # fraction of even token ids


def single_process(algo: str, iterations: int = 1):
    """rl_train with the row-seeded sampler: the reference the dataflow must match."""
    pol, ref, cfg = setup(algo, iterations)
    rollout.set_sampler(row_seeded_sample)
    try:
        hist = rl_train(pol, ref, prompt_fn, reward_fn, cfg)
    finally:
        rollout.set_sampler(rollout.cached_sample)
    return pol, hist


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))
