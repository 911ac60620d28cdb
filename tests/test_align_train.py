"""SFT masking/packing/accumulation invariance, reward models on a spurious-length preference set,
PPO on a 1-token bandit, cached rollouts, DPO training, JSONL loaders and synthetic tasks."""
import copy
import json
import random

import pytest
import torch

from lmlab.align.data import ByteTokenizer, load_chat, load_preferences
from lmlab.align.dpo import build_dpf_pairs, completion_logps, train_dpo
from lmlab.align.envs import ArithmeticTask, CountdownTask, PreferenceWorld, SortingTask
from lmlab.align.ppo import PolicyWithValue, RLConfig, rl_train
from lmlab.align.reward import RewardModel, pad_batch, pearson, train_reward_model
from lmlab.align.rollout import cached_sample, naive_sample
from lmlab.align.sft import IGNORE, ChatTemplate, pack, pad_examples, sft_step, tokenize_chat
from lmlab.config import ModelConfig
from lmlab.models.decoder import Decoder


def tiny(vocab=32, d=32, layers=1, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=vocab, d_model=d, n_layer=layers, n_head=2, max_seq_len=64)).to(dtype)


# ---------------------------------------------------------------------------------------------- SFT
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]


def test_sft_masks_exactly_the_prompt_tokens():
    tok = ByteTokenizer()
    ids, labels = tokenize_chat(CHAT, tok.encode, eos_id=tok.eos_id)
    assert len(ids) == len(labels)
    labelled = [i for i, l in enumerate(labels) if l != IGNORE]
    # the labelled tokens are exactly the two assistant bodies (content + "\n" + EOS), in order
    assert [ids[i] for i in labelled] == tok.encode("hello\n") + [256] + tok.encode("4\n") + [256]
    text = tok.decode(ids)
    assert text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello\n<|user|>\n2+2?\n<|assistant|>\n4\n"
    # every unlabelled token belongs to a header, a system/user message or their end markers
    prompt_text = tok.decode([ids[i] for i in range(len(ids)) if labels[i] == IGNORE])
    assert prompt_text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n<|user|>\n2+2?\n<|assistant|>\n"
    for i in labelled:
        assert labels[i] == ids[i]


def test_packing_keeps_labels_with_their_tokens():
    tok = ByteTokenizer()
    ex = [tokenize_chat(CHAT, tok.encode, tok.eos_id), tokenize_chat(CHAT[1:3], tok.encode, tok.eos_id)]
    x, y = pack(ex, seq_len=16, pad_id=tok.pad_id)
    flat_ids = sum((e[0] for e in ex), [])
    flat_lab = sum((e[1] for e in ex), [])
    assert x.reshape(-1)[:len(flat_ids)].tolist() == flat_ids
    # target of position j is the label of token j+1
    assert y.reshape(-1)[:len(flat_lab) - 1].tolist() == flat_lab[1:]
    assert (y.reshape(-1)[len(flat_lab) - 1:] == IGNORE).all()
    assert (y != IGNORE).sum() == sum(l != IGNORE for l in flat_lab[1:])


def test_accumulation_invariance_batch1x8_equals_batch8x1():
    tok = ByteTokenizer()
    rng = random.Random(0)
    exs = []
    for i in range(8):   # different lengths and different numbers of labelled tokens per example
        exs.append(tokenize_chat([{"role": "user", "content": "q" * rng.randint(1, 6)},
                                  {"role": "assistant", "content": "a" * rng.randint(1, 9)}],
                                 tok.encode, tok.eos_id))
    x, y = pad_examples(exs, tok.pad_id)
    m1 = tiny(vocab=258, dtype=torch.float64)
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.SGD(m1.parameters(), lr=0.5)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.5)
    l1 = sft_step(m1, o1, [(x, y)])
    l2 = sft_step(m2, o2, [(x[i:i + 1], y[i:i + 1]) for i in range(8)])
    # RMSNorm computes in fp32 even for float64 models, so "equal" means to ~1e-7 here
    assert l1 == pytest.approx(l2, rel=1e-6)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-7, rtol=0), n
    # the test has power: averaging per-micro-batch mean losses (the common bug) gives a different update
    m3 = tiny(vocab=258, dtype=torch.float64)
    o3 = torch.optim.SGD(m3.parameters(), lr=0.5)
    o3.zero_grad()
    from lmlab.align.sft import sft_loss_sum
    for i in range(8):
        s_, n_ = sft_loss_sum(m3, x[i:i + 1], y[i:i + 1])
        (s_ / n_ / 8).backward()
    o3.step()
    gap = max((p1 - p3).abs().max().item() for p1, p3 in zip(m1.parameters(), m3.parameters()))
    assert gap > 1e-4
    moved = 0.0
    for p1, p0 in zip(m1.parameters(), tiny(vocab=258, dtype=torch.float64).parameters()):
        moved += (p1 - p0).abs().sum().item()
    assert moved > 1e-3          # the step did change the parameters


# ---------------------------------------------------------------------------------------------- RM
def _rm_data(length_bias, n=384, seed=0):
    world = PreferenceWorld(n_prompts=2, n_content=8, min_len=2, max_len=14, label_scale=3.0,
                            length_bias=length_bias, seed=seed)
    c, r, _ = world.preference_pairs(n, seed=seed + 1)
    return world, c, r


def _len_corr(rm, seqs):
    ids, lens = pad_batch(seqs)
    with torch.no_grad():
        q = rm.quality(ids, lens)
    return pearson(lens.float(), q).item()


# Spread over seeds 0-9 (world, pairs, init and batch order; one run each): length correlation of the BT reward
# 0.699-0.970, mean 0.880, sd 0.094; of ODIN's quality head -0.374 to 0.354, mean 0.021, sd 0.189 (|corr| up to
# 0.37 for a single seed: the old one-seed bound |corr| < 0.15 failed 3 seeds of 10); |ODIN| / BT per seed mean
# 0.148, sd 0.135, max 0.395. So: BT above its mean - 3 sd (0.60) on each seed, and over three seeds the mean
# |ODIN| below half the mean BT (the sweep's mean ratio + 3 standard errors of a 3-seed mean is 0.38; the worst
# of all 120 3-seed subsets of the sweep is 0.33).
def test_odin_quality_head_decorrelates_from_length():
    corr = {"bt": [], "odin": []}
    for seed in (0, 1, 2):
        world, c, r = _rm_data(length_bias=0.6, seed=seed)
        held_c, held_r, _ = world.preference_pairs(200, seed=seed + 99, annotated=False)
        held = held_c + held_r
        for method in ("bt", "odin"):
            rm = RewardModel(tiny(vocab=world.vocab_size, seed=seed), n_heads=2 if method == "odin" else 1)
            train_reward_model(rm, c, r, method=method, epochs=6, batch_size=32, lr=3e-3, seed=seed)
            corr[method].append(_len_corr(rm, held))
    # length is spurious (gold quality is a per-token mean): BT picks it up, ODIN's quality head does not
    assert min(corr["bt"]) > 0.6, corr
    mean_abs_odin = sum(abs(v) for v in corr["odin"]) / 3
    assert mean_abs_odin < sum(corr["bt"]) / 3 / 2, corr


def test_ids_training_loop_labels_follow_closed_form_when_model_is_frozen():
    world, c, r = _rm_data(length_bias=0.0, n=96)
    rm = RewardModel(tiny(vocab=world.vocab_size))
    ids, lens = pad_batch(c + r)
    with torch.no_grad():
        q = rm.quality(ids, lens)
    # lr = 0: the reward gap stays fixed, so after 3 epochs every label took 3 IDS steps from y0 = 1
    out = train_reward_model(rm, c, r, method="ids", epochs=3, batch_size=32, lr=0.0, ids_beta=0.3, seed=0)
    from lmlab.align.reward import ids_closed_form
    expect = ids_closed_form(torch.ones(96), q[:96] - q[96:], 0.3, 3)
    assert torch.allclose(out["labels"], expect, atol=1e-5)
    # with learning, labels are soft, inside (0, 1) and spread out
    rm2 = RewardModel(tiny(vocab=world.vocab_size))
    y = train_reward_model(rm2, c, r, method="ids", epochs=2, batch_size=32, lr=3e-3, ids_beta=0.5, seed=0)["labels"]
    assert (y < 1).all() and (y > 0).all() and y.std() > 0.01


# ---------------------------------------------------------------------------------------------- RL
def test_cached_rollout_equals_uncached():
    m = tiny(vocab=16, layers=2).eval()
    p = torch.randint(0, 16, (3, 4), generator=torch.Generator().manual_seed(0))
    a = naive_sample(m, p, 6, n=2, generator=torch.Generator().manual_seed(1), eos_id=1)
    b = cached_sample(m, p, 6, n=2, generator=torch.Generator().manual_seed(1), eos_id=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.response_mask, b.response_mask)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert torch.equal(b.tokens[0::2, :4], p) and torch.equal(b.tokens[1::2, :4], p)   # n samples per prompt


# Spread over seeds 0-9 (init, sampling, reward noise), for PPO and RLOO alike: p(best arm) 0.9996-1.0000
# (sd 1e-4); final mean reward 0.884-0.912 (sd 0.009; arm 3 pays 0.9, the runner-up 0.6); first-iteration reward
# 0.270-0.458 (sd 0.057). The bounds below sit 7 or more sd from those means; three seeds each.
@pytest.mark.parametrize("algo", ["ppo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_token_bandit_converges_to_best_arm(algo, seed):
    arm_reward = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.0, 0.4, 0.6])   # arm 3 is best
    dec = tiny(vocab=8, d=16, seed=seed)
    policy = PolicyWithValue(dec) if algo == "ppo" else dec
    ref = copy.deepcopy(dec)
    cfg = RLConfig(algo=algo, iterations=30, prompts_per_iter=16, samples_per_prompt=4, max_new_tokens=1,
                   lr=2e-2, kl_coef=0.0, ppo_epochs=2, minibatches=2, seed=seed)
    g_noise = torch.Generator().manual_seed(seed + 5)

    def reward_fn(prompts, responses):
        return arm_reward[responses[:, 0]] + 0.1 * torch.randn(len(responses), generator=g_noise)

    hist = rl_train(policy, ref, lambda n, g: torch.zeros(n, 1, dtype=torch.long), reward_fn, cfg)
    with torch.no_grad():
        p = torch.softmax(dec(torch.zeros(1, 1, dtype=torch.long)).logits[0, -1], -1)
    assert p.argmax().item() == 3 and p[3].item() > 0.99
    assert hist[-1]["reward"] > 0.8 > hist[0]["reward"]


def test_dpo_training_raises_chosen_margin():
    world = PreferenceWorld(n_prompts=2, n_content=8, seed=0)
    c, r, _ = world.preference_pairs(32, seed=1, annotated=False)
    pol = tiny(vocab=world.vocab_size)
    ref = copy.deepcopy(pol)
    pairs = [(ci[:2], ci[2:], ri[2:]) for ci, ri in zip(c, r)]
    hist = train_dpo(pol, ref, pairs, beta=0.5, lr=3e-3, epochs=4, batch_size=8)
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.2
    assert hist[-1]["rewards/accuracy"] > 0.8


# ----------------------------------------------------------------------------------- data and tasks
def test_jsonl_loaders_common_formats(tmp_path):
    p = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {"chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "g"}],
             "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "b"}]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prefs = load_preferences(p)
    assert prefs[0] == {"prompt": [{"role": "user", "content": "Q"}], "chosen": "good", "rejected": "bad"}
    assert prefs[1]["prompt"] == [{"role": "user", "content": "Q2"}] and prefs[1]["chosen"] == "g"
    q = tmp_path / "chat.jsonl"
    q.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
                 + "\n" + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    chats = load_chat(q)
    assert chats[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert chats[1][-1] == {"role": "assistant", "content": "b"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_chat(bad)


def test_tasks_exact_checkers():
    rng = random.Random(0)
    for task in (ArithmeticTask(), CountdownTask(), SortingTask()):
        for _ in range(20):
            prob = task.sample(rng)
            assert task.check(prob, prob.answer) == 1.0
    a = ArithmeticTask().sample(random.Random(1))
    assert a.answer == str(eval(a.prompt[len("Compute "):-1]))
    assert ArithmeticTask().check(a, str(int(a.answer) + 1)) == 0.0
    cd = CountdownTask()
    prob = cd.sample(random.Random(2))
    assert cd.check(prob, "__import__('os')") == 0.0
    n = prob.meta["numbers"]
    assert cd.check(prob, "+".join(map(str, n + n))) == 0.0           # numbers reused
    s = SortingTask().sample(random.Random(3))
    assert SortingTask().check(s, " ".join(reversed(s.answer.split()))) == float(s.answer.split() == s.answer.split()[::-1])


def test_gold_reward_of_token_rows_matches_python():
    world = PreferenceWorld(n_prompts=3, n_content=6, seed=0)
    content = [[0, 3, 5], [2, 2]]
    rows = [world.encode(1, content[0]), world.encode(2, content[1]) + [7]]
    t = max(len(r) for r in rows)
    ids = torch.tensor([r + [1] * (t - len(r)) for r in rows])
    got = world.gold_tokens(ids[:, :2], ids[:, 2:])
    assert got.tolist() == pytest.approx([world.gold(1, content[0]), world.gold(2, content[1])], abs=1e-6)


class _EchoBackend:
    """Stands in for an LLM: critiques are fixed, revisions replace the entity by 'it'."""
    name = "echo"

    def generate(self, prompts, gen):
        out = []
        for p in prompts:
            if p.startswith("Response:"):
                body = p.split("\n")[1]
                out.append([body.replace("Paris", "it")])
            else:
                out.append(["mentions the entity"])
        return out


def test_dpf_pairs_revision_preferred_over_original():
    items = [{"prompt": "city?", "response": "Visit Paris now", "entity": "Paris"},
             {"prompt": "x", "response": "nothing here", "entity": "Paris"}]
    pairs = build_dpf_pairs(_EchoBackend(), items)
    assert pairs == [{"prompt": "city?", "chosen": "Visit it now", "rejected": "Visit Paris now", "entity": "Paris",
                      "critique": "mentions the entity"}]


def test_align_experiments_registered_with_computed_verdicts():
    from lmlab.experiments.base import REPRODUCED, NOT_REPRODUCED, ArmResult
    from lmlab.registry import EXPERIMENTS

    for name in ("ids_vs_bt", "odin_vs_bt", "contrastive_rewards", "dpo_winrate", "dpf_forbidden"):
        assert EXPERIMENTS.get(name).name == name
    odin = EXPERIMENTS.get("odin_vs_bt")
    mk = lambda c, a: ArmResult(metrics={"abs_len_corr": c, "gold_acc": a})
    good = {"bt": [mk(0.9, 0.6), mk(0.95, 0.62), mk(0.92, 0.58)], "odin": [mk(0.05, 0.6), mk(0.1, 0.61), mk(0.0, 0.59)]}
    assert odin.decide(good).verdict == REPRODUCED
    # decorrelated but accuracy lost by more than 0.05 -> not reproduced
    lost = {"bt": good["bt"], "odin": [mk(0.05, 0.5), mk(0.1, 0.51), mk(0.0, 0.49)]}
    assert odin.decide(lost).verdict == NOT_REPRODUCED


def test_offline_baseline_scores_k_samples_per_prompt():
    from lmlab.align.ppo import contrastive_rewards, offline_baseline

    m = tiny(vocab=16).eval()
    prompts = torch.tensor([[0, 2], [0, 3], [0, 4]])
    score = lambda p, y: (y == 5).float().sum(1) + p[:, 1].float()          # depends on prompt and response
    off = offline_baseline(m, prompts, score, k=6, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    ro = cached_sample(m, prompts, 4, n=6, generator=torch.Generator().manual_seed(0))
    assert off.shape == (3, 6)
    assert torch.equal(off, score(ro.tokens[:, :2], ro.responses).view(3, 6))
    r = torch.tensor([4.0, 4.0, 4.0])
    assert torch.allclose(contrastive_rewards(r, off), r - off.mean(1))


def test_sft_mask_with_hf_chat_template():
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lmlab.align.sft import tokenize_chat_hf

    words = ["<pad>", "<s>", "</s>", "user", "assistant", "system", "hi", "hello", "2+2?", "4", "be", "brief", ":"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant : {% endif %}")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    ids, labels = tokenize_chat_hf(msgs, tok)
    assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False).strip()
    # labelled = exactly each assistant message's content and its end token
    assert [words[i] for i, l in zip(ids, labels) if l != IGNORE] == ["hello", "</s>", "4", "</s>"]
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE)
