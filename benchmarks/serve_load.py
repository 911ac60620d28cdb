"""N concurrent streaming chat clients against an lmlab server on 127.0.0.1: latency, tokens/s, errors.

    python benchmarks/serve_load.py                          # starts `lmlab serve --model smollm2` in-process
    python benchmarks/serve_load.py --model tiny --clients 64 # a random tiny model (tests the server only)
    python benchmarks/serve_load.py --url http://127.0.0.1:8000/v1 --model-name smollm2

Every client sends one streamed chat request (a shared system prompt + its own question), so concurrent
requests are batched by the server and share the system prompt's KV through Hydragen. Bounded: at most
--clients requests, each with --timeout seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEM = "You are a concise assistant. Answer in one short sentence."
QUESTIONS = ["What is the capital of France?", "Name a primary color.", "What is 3 times 4?", "Who wrote Hamlet?",
             "What gas do plants absorb?", "How many legs has a spider?", "What is the boiling point of water?",
             "Name a planet with rings."]


def start_server(model: str, max_tokens: int, window_ms: float):
    import uvicorn

    from lmlab.infer.engine import Engine
    from lmlab.infer.server import ServerLimits, create_app

    if model == "tiny":
        import torch

        from lmlab.config import ModelConfig
        from lmlab.models.decoder import Decoder

        class ByteTok:
            eos_id, vocab_size = 0, 256

            def encode(self, s):
                return list(s.encode())

            def decode(self, ids):
                return bytes(i for i in ids if i).decode("utf-8", "replace")

        torch.manual_seed(0)
        m = Decoder(ModelConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, max_seq_len=1024)).eval()
        engine, name, tok = Engine(m, ByteTok()), "tiny", ByteTok()
        engine.stop_ids = set()
    else:
        from lmlab.infer.backend_impls import LocalBackend

        be = LocalBackend.from_spec(model)
        engine, name, tok = be.engine, be.name, be.tokenizer
    app = create_app(engine, name, tok, limits=ServerLimits(max_tokens=max_tokens, max_concurrency=256,
                                                            max_batch=128, batch_window_s=window_ms / 1000))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", name, srv, app


async def one_client(http, url: str, model: str, i: int, max_tokens: int, timeout: float) -> dict:
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7, "seed": 0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
    t0 = time.perf_counter()
    first, chunks, text, completion_tokens = None, 0, "", None
    try:
        async with http.stream("POST", url + "/chat/completions", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if "error" in obj:
                    return {"error": obj["error"]["message"]}
                if obj.get("usage") and not obj.get("choices"):   # stream_options.include_usage's last chunk
                    completion_tokens = obj["usage"].get("completion_tokens")
                    continue
                piece = obj["choices"][0]["delta"].get("content")
                if piece:
                    first = first or time.perf_counter() - t0
                    chunks += 1
                    text += piece
    except Exception as e:  # timeouts, disconnects: counted, never fatal
        return {"error": f"{type(e).__name__}: {e}"}
    return {"latency": time.perf_counter() - t0, "ttft": first or float("nan"), "chunks": chunks, "text": text,
            "completion_tokens": completion_tokens}


async def load(url: str, model: str, clients: int, max_tokens: int, timeout: float) -> list[dict]:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as http:
        return await asyncio.gather(*(one_client(http, url, model, i, max_tokens, timeout) for i in range(clients)))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | lmlab:PATH (in-process server)")
    ap.add_argument("--url", default=None, help="an already running server instead")
    ap.add_argument("--model-name", default=None)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--batch-window-ms", type=float, default=50.0)
    a = ap.parse_args(argv)
    app = None
    if a.url:
        url, name = a.url.rstrip("/"), a.model_name or a.model
    else:
        url, name, _, app = start_server(a.model, a.max_tokens, a.batch_window_ms)
    t0 = time.perf_counter()
    res = asyncio.run(load(url, name, a.clients, a.max_tokens, a.timeout))
    wall = time.perf_counter() - t0
    ok = [r for r in res if "error" not in r]
    errs = [r["error"] for r in res if "error" in r]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok]
    chunks = sum(r["chunks"] for r in ok)
    out = {"clients": a.clients, "errors": len(errs), "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99),
           "ttft_p50_s": pct(ttft, 0.5), "stream_chunks_per_s": chunks / wall, "wall_s": wall}
    print(f"{a.clients} concurrent streams ({name}, {a.max_tokens} max tokens): errors {len(errs)}, "
          f"latency p50 {out['p50_s']:.2f} s p99 {out['p99_s']:.2f} s, first token p50 {out['ttft_p50_s']:.2f} s, "
          f"{out['stream_chunks_per_s']:.1f} streamed tokens/s, wall {wall:.1f} s")
    if app is not None:
        b = app.state.batcher.batches
        print(f"server ran {len(b)} engine batches, sizes {b}")
    for e in errs[:5]:
        print("error:", e)
    if ok:
        print("sample answer:", ok[0]["text"][:120].replace("\n", " "))
    return out


if __name__ == "__main__":
    main()
