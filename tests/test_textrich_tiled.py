"""Text-rich images are deterministic with words inside the image in reading order; tiled training splices
each example's images in order (a batch equals its examples one by one) and the MM1.5 arms differ only in
the grid choice."""
import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from lmlab.data.textrich import BUCKETS, TextRichGenerator, aspect_bucket, textrich_dataset  # noqa: E402


def test_deterministic_words_inside_in_reading_order_and_buckets_covered():
    a, b = TextRichGenerator(seed=2), TextRichGenerator(seed=2)
    seen = set()
    for i in range(40):
        s, t = a.scene(i), b.scene(i)
        assert np.asarray(s.image).tobytes() == np.asarray(t.image).tobytes() and s.words == t.words
        W, H = s.size
        assert abs(W / H - s.aspect) / s.aspect < 0.05 and max(W, H) == 512
        for (x0, y0, x1, y1) in s.boxes:
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            px = np.asarray(s.image)[y0:y1, x0:x1]
            assert px.min() < 150                                    # ink is there
        key = 1 if s.kind == "receipt" else 0
        starts = [bx[key] for bx in s.boxes]
        assert starts == sorted(starts)                              # reading order
        assert len(set(s.words)) == len(s.words)
        seen.add(aspect_bucket(s.aspect))
    assert seen == set(BUCKETS)
    assert aspect_bucket(1 / 5) == aspect_bucket(5) == "4–8" and aspect_bucket(1.0) == "1–2"
    rows = textrich_dataset(2, 3)
    assert [q.answer for q in rows[0][1] if q.kind == "text"] == rows[0][0].words
    with pytest.raises(ValueError, match="unknown split"):
        TextRichGenerator(split="test")


def test_tiled_batch_equals_examples_one_by_one():
    from lmlab.config import ModelConfig
    from lmlab.models.decoder import Decoder
    from lmlab.models.vlm import VLM, ByteTokenizer, Projector, VLMConfig, collate, encode_example

    torch.manual_seed(0)
    tok = ByteTokenizer()
    lm = Decoder(ModelConfig(d_model=32, n_layer=1, n_head=2, max_seq_len=128, vocab_size=257))
    vlm = VLM(torch.nn.Identity(), Projector(8, 32, "mlp"), lm, tok, VLMConfig(), n_image_tokens=3).eval()
    prompts = ["<image>\n(1,1) <image> (1,2) <image>\nQ?", "<image>\n(1,1) <image>\nQ?"]
    feats = [torch.randn(3, 3, 8), torch.randn(2, 3, 8)]
    enc = [encode_example(tok, p, "ab", 3) for p in prompts]
    b = collate(enc, tok.eos_id)
    both = vlm(b["input_ids"], b["image_mask"], features=torch.cat(feats), targets=b["targets"]).logits
    for i, (e, f) in enumerate(zip(enc, feats)):
        one = collate([e], tok.eos_id)
        lo = vlm(one["input_ids"], one["image_mask"], features=f, targets=one["targets"]).logits
        assert torch.allclose(both[i, :lo.shape[1]], lo[0], atol=1e-5)


def test_mm15_arms_differ_only_in_the_grid():
    from lmlab.experiments import vlm_mm15 as M

    cfgs = {a: M.arm_config(a, "quick", 0) for a in M.ARMS}
    facts = M._invariants(cfgs)
    assert facts["fixed_grid"]["grid"] == "2x2" and facts["dynamic"]["n_max"] == 4
    rows = textrich_dataset(0, 12, long_side=512)
    _, _, _, _, _, fixed = M._examples(rows, cfgs["fixed_grid"], True)
    _, _, _, _, _, dyn = M._examples(rows, cfgs["dynamic"], False)
    assert set(fixed) == {(2, 2)} and len(set(dyn)) > 1 and all(c * r <= 4 for c, r in dyn)


def test_locvlm_arms_share_everything_but_the_objectives():
    from lmlab.experiments import vlm_locvlm as L

    facts = L._same_scenes_and_steps({a: L.objectives_config(a, "quick", 0) for a in L.OBJECTIVE_ARMS})
    assert facts["vqa_only"]["format"] is None and facts["loc"]["format"] == "bins100"
    facts = L._same_scenes_and_steps({a: L.formats_config(a, "quick", 0) for a in L.FORMAT_ARMS})
    assert [facts[a]["format"] for a in L.FORMAT_ARMS] == L.FORMAT_ARMS
