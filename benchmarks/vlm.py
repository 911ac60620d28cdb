"""VLM throughput, lmlab vs a naive per-sample loop: training images/s and batched VQA answers/s.

    python benchmarks/vlm.py                  # tiny VLM of configs/vlm/tiny.yaml, batch 32, 5 rounds
    python benchmarks/vlm.py --reps 5 --batch 16 --questions-per-image 4 --new 8
    python benchmarks/vlm.py --only-anyres    # any-resolution encoding rows only

Model: configs/vlm/tiny.yaml (frozen MobileNetV2 at 128 px -> 16 image tokens of 1280 channels, MLP projector,
2-layer d=128 lmlab decoder, byte tokenizer), untrained weights (speed does not depend on them).

Training (one AdamW step on `--batch` examples, one image each, frozen-encoder features precomputed as the
cache gives them):
    lmlab   collate + one batched forward (image tokens spliced by the mask, fused head + loss) + backward
    naive   per example: build the sequence by concatenating embeddings (naive_build_batch), forward, loss,
            backward (gradients accumulated), then the same optimizer step
VQA (`--batch` questions, `--questions-per-image` about each image, exactly `--new` greedy tokens, EOS ignored):
    lmlab      lmlab.infer.vlm.generate: each image encoded once, one engine call, image prefix shared (Hydragen)
    per-q      the same engine, one question per call (image encoded per question)
    naive      per question: full VLM forward for every new token, no KV cache

Any-resolution encoding (Ferret-v2, lmlab.vision.anyres; `--anyres-batch` canvases of 2 × 2 native tiles, frozen
MobileNetV2 in both roles at `--anyres-native` px):
    lmlab      AnyResEncoder.views: the global view, then every tile of every canvas in one batched encoder call
    per-pos    naive_views: the encoder called once per tile position, on that tile of every canvas
    per-tile   the encoder called once per tile of each canvas (batch 1: the plain loop)
    reported as tiles/s (global views not counted as tiles)

One warm-up call of each side, then `--reps` interleaved rounds (benchmarks/_interleave.py); figures are
medians over rounds of process CPU time with one torch thread, ratios the median of per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))
from benchmarks._interleave import interleaved, median_of, ratio  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "vlm" / "tiny.yaml"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--questions-per-image", type=int, default=4)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--anyres-batch", type=int, default=8)
    ap.add_argument("--anyres-native", type=int, default=128)
    ap.add_argument("--only-anyres", action="store_true", help="time the any-resolution encoding rows only")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.only_anyres:
        res = anyres_rows(a)
        if a.json:
            a.json.write_text(json.dumps(res, indent=2))
        return res

    from lmlab.backend import GenerationConfig
    from lmlab.config import load_config
    from lmlab.infer.engine import Engine
    from lmlab.infer.vlm import generate_completions, image_tokens
    from lmlab.models.vlm import VLMConfig, build_vlm, collate, encode_example, encode_prompt, naive_build_batch
    from lmlab.train.vlm import image_inputs, scene_vqa
    from lmlab.vision.preprocess import preprocess_batch

    cfg = load_config(a.config, model=VLMConfig)
    vlm = build_vlm(cfg)
    n_img = -(-a.batch // a.questions_per_image)
    data = scene_vqa(cfg.data, "train", max(n_img, a.batch // 2))
    tok = vlm.tokenizer
    B = a.batch
    prompts = [vlm.format_prompt(q) for q in data.questions[:B]]
    answers = data.answers[:B]
    feats_all = image_inputs(vlm, data.images)["features"]
    feats = feats_all[torch.tensor(data.image_of[:B])]
    params = [p for n, p in vlm.named_parameters() if not n.startswith("encoder.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    enc = [encode_example(tok, p, ans, vlm.n_image_tokens) for p, ans in zip(prompts, answers)]
    vlm.train()

    def train_lmlab():
        b = collate(enc, tok.eos_id)
        out = vlm(b["input_ids"], b["image_mask"], features=feats, targets=b["targets"])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return {"loss": float(out.loss.detach())}

    def train_naive():
        opt.zero_grad(set_to_none=True)
        n_tgt = sum(sum(t != -100 for t in e[2]) for e in enc)
        total = 0.0
        for i in range(B):
            E, M, Y = naive_build_batch(vlm, prompts[i:i + 1], answers[i:i + 1], feats[i:i + 1], tok.eos_id)
            logits = vlm.lm(torch.zeros(E.shape[:2], dtype=torch.long), embeds=E).logits
            loss = F.cross_entropy(logits.flatten(0, 1), Y.flatten(), ignore_index=-100, reduction="sum") / n_tgt
            loss.backward()
            total += float(loss)
        opt.step()
        return {"loss": total}

    print(f"training: batch {B}, {vlm.n_image_tokens} image tokens, sequence ≤ {max(len(e[0]) for e in enc)} tokens")
    t_train = interleaved({"lmlab": train_lmlab, "naive": train_naive}, reps=a.reps, warmup=1)

    vlm.eval()
    imgs = [data.images[i // a.questions_per_image] for i in range(B)]
    qs = [data.questions[i % len(data.questions)] for i in range(B)]
    gen = GenerationConfig(max_new_tokens=a.new)
    eng = Engine(vlm.lm, tok)
    eng.stop_ids = set()                      # exactly `new` tokens per answer on every side

    def vqa_lmlab():
        generate_completions(vlm, imgs, qs, gen, engine=eng)

    def vqa_per_question():
        for im, q in zip(imgs, qs):
            generate_completions(vlm, [im], [q], gen, engine=eng)

    @torch.no_grad()
    def vqa_naive():
        for im, q in zip(imgs, qs):
            ids, mask = encode_prompt(tok, vlm.format_prompt(q), vlm.n_image_tokens)
            x = preprocess_batch([im], cfg.encoder.size, cfg.encoder.mode)
            f = vlm.image_features(x)
            out: list[int] = []
            for _ in range(a.new):
                seq = torch.tensor([ids + out])
                m = torch.tensor([mask + [False] * len(out)])
                out.append(int(vlm(seq, m, features=f).logits[0, -1].argmax()))

    print(f"VQA: {B} questions about {n_img} images, {a.new} new tokens each")
    with torch.no_grad():
        image_tokens(vlm, imgs[:1])
    t_vqa = interleaved({"lmlab": vqa_lmlab, "per_question": vqa_per_question, "naive": vqa_naive},
                        reps=a.reps, warmup=1)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE.parent).stdout.strip()
    res = {"commit": commit, "batch": B, "image_tokens": vlm.n_image_tokens, "threads": a.threads, "reps": a.reps,
           "train_images_per_s": {k: B / median_of(v) for k, v in t_train.items()},
           "train_speedup": ratio(t_train, "naive", "lmlab")["median_ratio"],
           "vqa_answers_per_s": {k: B / median_of(v) for k, v in t_vqa.items()},
           "vqa_speedup_vs_naive": ratio(t_vqa, "naive", "lmlab")["median_ratio"],
           "vqa_speedup_vs_per_question": ratio(t_vqa, "per_question", "lmlab")["median_ratio"]}
    print(f"\ntraining images/s (CPU-s median): lmlab {res['train_images_per_s']['lmlab']:.1f}, "
          f"naive {res['train_images_per_s']['naive']:.1f}  -> {res['train_speedup']:.2f}x")
    print(f"VQA answers/s: lmlab {res['vqa_answers_per_s']['lmlab']:.1f}, per-question engine "
          f"{res['vqa_answers_per_s']['per_question']:.1f}, naive {res['vqa_answers_per_s']['naive']:.1f}  -> "
          f"{res['vqa_speedup_vs_per_question']:.2f}x vs per-question, {res['vqa_speedup_vs_naive']:.2f}x vs naive")
    res.update(anyres_rows(a))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


def anyres_rows(a) -> dict:
    """Any-resolution encoding throughput: batched tiles (AnyResEncoder.views) vs a per-tile loop."""
    from lmlab.vision.anyres import AnyResEncoder

    S, B = a.anyres_native, a.anyres_batch
    enc = AnyResEncoder("mobilenet_v2", "mobilenet_v2", native=S)
    x = torch.randn(B, 3, 2 * S, 2 * S, generator=torch.Generator().manual_seed(0))
    n_tiles = B * 4
    with torch.no_grad():
        g, local = enc.views(x)
        g2, local2 = enc.naive_views(x)
        err = float((local - local2).abs().max())
        from lmlab.vision.anyres import split_tiles

        def per_tile():
            enc.a.features(torch.nn.functional.interpolate(x, size=(S, S), mode="bilinear", antialias=True))
            return [enc.b.features(t[None]) for t in split_tiles(x, S)]

        t = interleaved({"lmlab": lambda: enc.views(x), "per_position": lambda: enc.naive_views(x),
                         "per_tile": per_tile}, reps=a.reps, warmup=1)
    res = {"anyres_canvas": [2 * S, 2 * S], "anyres_tiles": n_tiles, "anyres_max_abs_diff": err,
           "anyres_tiles_per_s": {k: n_tiles / median_of(v) for k, v in t.items()},
           "anyres_speedup": ratio(t, "per_tile", "lmlab")["median_ratio"],
           "anyres_speedup_vs_per_position": ratio(t, "per_position", "lmlab")["median_ratio"]}
    print(f"any-res encoding ({B} canvases of {2 * S}² = {n_tiles} tiles + {B} global views): tiles/s lmlab "
          f"{res['anyres_tiles_per_s']['lmlab']:.1f}, per-position {res['anyres_tiles_per_s']['per_position']:.1f}, "
          f"per-tile loop {res['anyres_tiles_per_s']['per_tile']:.1f} -> {res['anyres_speedup']:.2f}x vs per-tile, "
          f"{res['anyres_speedup_vs_per_position']:.2f}x vs per-position (max |diff| {err:.2g})")
    return res


if __name__ == "__main__":
    main()
