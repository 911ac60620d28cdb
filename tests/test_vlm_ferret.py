"""FerretVLM over feature views with <region> tokens: placeholder placement and the table splice equal a
per-prompt naive build (float64), and the training loop + engine answers learn a tiny region-naming task."""
import torch

from lmlab.config import ModelConfig
from lmlab.infer.vlm_views import answer_views
from lmlab.models.decoder import Decoder
from lmlab.models.vlm import ByteTokenizer, StageSpec
from lmlab.models.vlm_ferret import (IMAGE, REGION, FerretVLM, encode_views_example, encode_views_prompt,
                                     naive_embed_ids, place)
from lmlab.train.vlm_views import ViewExample, batch_inputs, train_views


def _vlm(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    lm = Decoder(ModelConfig(d_model=32, n_layer=1, n_head=2, max_seq_len=64, vocab_size=257))
    return FerretVLM(lm, ByteTokenizer(), [8, 6], [2, 3], region_dim=5).to(dtype)


def test_prompt_codes_and_place():
    tok = ByteTokenizer()
    ids = encode_views_prompt(tok, "<image>Q <region>?", 5)
    assert ids == [IMAGE] * 5 + list(b"Q ") + [REGION] + list(b"?")
    placed = place(ids, image_slot=2, region_slots=[1], n=5, vocab=257, region_base=15)
    assert placed[:5] == [257 + 10 + j for j in range(5)] and placed[7] == 257 + 15 + 1
    x, y = encode_views_example(tok, "<image>Q", "ab", 2)
    assert x == [IMAGE, IMAGE] + list(b"Q") + list(b" ab") and y == [-100, -100] + list(b" ab") + [256]


def test_table_splice_equals_naive_float64():
    vlm = _vlm(torch.float64)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 2, 8, generator=g, dtype=torch.float64), torch.randn(4, 3, 6, generator=g, dtype=torch.float64)]
    regions = torch.randn(6, 5, generator=g, dtype=torch.float64)
    tok = vlm.tokenizer
    batch = []
    for k, (img, regs) in enumerate([(3, [0, 4]), (1, [5]), (3, [2, 2])]):
        ids, tgt = encode_views_example(tok, "<image>what <region> and <region>?" if len(regs) == 2 else
                                        "<image>what <region>?", "x" * (k + 1), 5)
        batch.append(ViewExample(ids, tgt, img, regs))
    ids, tgt, table = batch_inputs(vlm, batch, views, regions, pad=256)
    emb = vlm.embed_ids(ids, table)
    for b, e in enumerate(batch):
        want = naive_embed_ids(vlm, e.ids, views, e.image, regions[torch.tensor(e.regions)])
        torch.testing.assert_close(emb[b, :len(e.ids)], want)
        assert tgt[b, :len(e.targets)].tolist() == e.targets
    out = vlm(ids, table, targets=tgt)
    out.loss.backward()
    assert vlm.region_projector.fc1.weight.grad.abs().sum() > 0 and vlm.projectors[1].fc1.weight.grad.abs().sum() > 0


def test_training_loop_learns_region_names_and_engine_answers():
    vlm = _vlm()
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(2, 2, 8, generator=g), torch.randn(2, 3, 6, generator=g)]
    regions = torch.randn(4, 5, generator=g) * 3
    names = ["cat", "dog", "sun", "key"]
    ex = [ViewExample(*encode_views_example(vlm.tokenizer, "<image>What is <region>?", n, 5), r % 2, [r])
          for r, n in enumerate(names)]
    stage = StageSpec(name="all", train=["projector", "lm"], steps=150, batch_size=4, lr=1e-2, warmup_steps=5,
                      log_interval=50)
    hist = train_views(vlm, [stage], ex, views, regions, seed=0)
    assert hist[-1]["train_loss"] < 0.1 * hist[0]["train_loss"]
    prompts = [(encode_views_prompt(vlm.tokenizer, "<image>What is <region>?", 5), r % 2, [r]) for r in range(4)]
    assert [o.strip() for o in answer_views(vlm, prompts, views, regions, max_new_tokens=5)] == names
