"""The official openai client against `lmlab serve` (tiny random model), and 4xx answers to bad requests."""
import sys
from pathlib import Path
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "openai",
                                                                                    "httpx")),
                                reason="needs the serve extra (fastapi, uvicorn, openai, httpx)")

from lmlab.backend import GenerationConfig  # noqa: E402
from lmlab.config import ModelConfig  # noqa: E402
from lmlab.models.decoder import Decoder  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import CharTok, serving  # noqa: E402

KEY = "test-key"


def tiny(dtype):
    torch.manual_seed(0)
    m = Decoder(ModelConfig(vocab_size=256, d_model=48, n_layer=2, n_head=6, n_kv_head=2, max_seq_len=256,
                            tie_embeddings=False)).to(dtype)
    with torch.no_grad():
        m.head.weight.mul_(8.0)
    return m.eval()


@pytest.fixture(scope="module")
def server():
    from lmlab.infer.engine import Engine
    from lmlab.infer.server import ServerLimits, create_app

    model, tok = tiny(torch.float32), CharTok()
    engine = Engine(model, tok)
    app = create_app(engine, "tiny", tok, api_key=KEY,
                     limits=ServerLimits(max_tokens=32, max_body_bytes=4096, batch_window_s=0.05))
    with serving(app) as url:
        yield url, engine, app


def client(url, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_models_completions_chat_and_streaming(server):
    url, engine, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    want = engine.generate(["hello"], GenerationConfig(max_new_tokens=8))[0][0]
    r = c.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0)
    assert r.choices[0].text == want and r.usage.prompt_tokens == 5
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model="tiny", prompt="hello", max_tokens=8, temperature=0, stream=True))
    assert streamed == want
    msgs = [{"role": "user", "content": "hi there"}]
    chat_want = engine.generate(["user: hi there\nassistant: "], GenerationConfig(max_new_tokens=6))[0][0]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert r.choices[0].message.content == chat_want and r.choices[0].message.role == "assistant"
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, stream=True)]
    assert "".join(parts) == chat_want
    r = c.completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=1.0, n=3, seed=3)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]


def test_concurrent_requests_are_batched(server):
    url, engine, app = server
    c = client(url)
    prompts = [f"shared system prompt; question {i}" for i in range(6)]
    before = len(app.state.batcher.batches)
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda p: c.completions.create(model="tiny", prompt=p, max_tokens=6, temperature=0)
                          .choices[0].text, prompts))
    want = [row[0] for row in engine.generate(prompts, GenerationConfig(max_new_tokens=6))]
    assert got == want
    assert max(app.state.batcher.batches[before:]) > 1     # at least two requests shared one engine call


def test_openai_backend_scores_through_echo(server):
    from lmlab.infer.backend_impls import LocalBackend, OpenAIBackend

    url, engine, _ = server
    remote = OpenAIBackend(url, "tiny", api_key=KEY)
    local = LocalBackend(engine.model, engine.tok)
    assert remote.logprobs(["hello"], [" world"])[0] == pytest.approx(local.logprobs(["hello"], [" world"])[0], abs=1e-4)
    assert remote.score(["some text"])[0] == pytest.approx(local.score(["some text"])[0], abs=1e-4)
    assert remote.generate(["hello"], GenerationConfig(max_new_tokens=4)) == local.generate(
        ["hello"], GenerationConfig(max_new_tokens=4))


def test_bad_requests_get_4xx_json(server):
    import httpx
    import openai

    url, _, _ = server
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def post(path, content, headers=h):
        r = httpx.post(url + path, content=content, headers=headers, timeout=30)
        return r.status_code, r.json()["error"]["message"]

    code, msg = post("/completions", "{not json")
    assert code == 400 and "JSON" in msg
    code, msg = post("/completions", json.dumps({"model": "nope", "prompt": "x"}))
    assert code == 404 and "nope" in msg
    code, msg = post("/completions", json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 999}))
    assert code == 400 and "max_tokens" in msg
    code, msg = post("/completions", json.dumps({"model": "tiny", "prompt": "x"}), {"Content-Type": "application/json"})
    assert code == 401
    code, msg = post("/chat/completions", json.dumps({"model": "tiny", "messages": "hi"}))
    assert code == 400 and "messages" in msg
    code, msg = post("/completions", json.dumps({"model": "tiny", "prompt": "x" * 5000}))
    assert code == 413
    code, msg = post("/completions", json.dumps({"model": "tiny", "prompt": "x", "temperature": "hot"}))
    assert code == 400 and "temperature" in msg
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        client(url).completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client(url).completions.create(model="tiny", prompt="x", max_tokens=100)
    # the server is still fine afterwards
    assert client(url).completions.create(model="tiny", prompt="ok", max_tokens=2, temperature=0).choices


def test_ignore_eos_generates_max_tokens_and_is_validated():
    from fastapi.testclient import TestClient

    from lmlab.infer.fused import FusedEngine
    from lmlab.infer.server import ServerLimits, create_app

    model, tok = tiny(torch.float32), CharTok()
    first = FusedEngine(model, tok, stop_token_ids=[]).generate_ids([tok.encode("hello")],
                                                                    GenerationConfig(max_new_tokens=1))[0][0]
    engine = FusedEngine(model, tok, stop_token_ids=first.token_ids)   # the greedy first token is a stop id
    stop_ids = set(engine.stop_ids)
    with TestClient(create_app(engine, "tiny", tok, limits=ServerLimits(max_tokens=32))) as tc:
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 7, "temperature": 0}
        r = tc.post("/v1/completions", json=body).json()
        assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 0
        r = tc.post("/v1/completions", json={**body, "ignore_eos": True}).json()
        assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 7
        assert engine.stop_ids == stop_ids                              # restored after the batch
        r = tc.post("/v1/completions", json={**body, "ignore_eos": "yes"})
        assert r.status_code == 400 and "ignore_eos" in r.json()["error"]["message"]
        streamed = tc.post("/v1/completions", json={**body, "ignore_eos": True, "stream": True,
                                                    "stream_options": {"include_usage": True}}).text
        events = [json.loads(ln[6:]) for ln in streamed.splitlines() if ln.startswith("data: {")]
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 7
        assert all(e["choices"] for e in events[:-1])
        r = tc.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": 1}})
        assert r.status_code == 400 and "stream_options" in r.json()["error"]["message"]


def test_concurrency_limit_answers_429():
    from fastapi.testclient import TestClient

    from lmlab.infer.engine import Engine
    from lmlab.infer.server import ServerLimits, create_app

    tok = CharTok()
    app = create_app(Engine(tiny(torch.float32), tok), "tiny", tok, limits=ServerLimits(max_concurrency=0))
    r = TestClient(app).post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 429 and "concurrent" in r.json()["error"]["message"]
    app.state.batcher.stop()
