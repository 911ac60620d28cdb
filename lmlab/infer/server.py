"""OpenAI-compatible HTTP server over lmlab's Engine: /v1/models, /v1/completions, /v1/chat/completions,
SSE streaming, bearer-token auth, request limits. vLLM's `ignore_eos` extension is accepted (true: generate
max_tokens tokens whatever the model's EOS, as load tests of vLLM and llama.cpp's servers ask for), and so is
OpenAI's `stream_options: {"include_usage": true}` (a last chunk with no choices and the token counts).

    lmlab serve --model smollm2                       # 127.0.0.1:8000
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x").chat.completions.create(model="smollm2", ...)

Concurrent requests are batched: a worker thread waits `batch_window_s` after the first queued request,
then runs every queued request with the same sampling settings as one engine call (up to `max_batch`
sequences), so n samples and prompts that share a system prompt across requests hit Hydragen's shared
prefix decode. Streamed tokens travel from the worker to each request's SSE response through an asyncio
queue. Every bad request gets a 4xx JSON error {"error": {"message", "type", "code"}}; nothing crashes.

Images (a saved VLM served with `lmlab serve --model DIR`): chat messages may carry OpenAI vision content
parts, [{"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}].
Only base64 `data:` URLs are read (the server fetches nothing); bad base64, a non-image, an image over
`max_image_bytes` / `max_image_pixels` or more than `max_images` images is a 400 with a one-line message. The
VLM answers the last user message's text, with every image of the conversation in its prompt template. The
batcher gives equal images (by pixel digest) one slot of the engine's image-token table across requests, so
questions about one image share its prefix.
"""
import json
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lmlab.backend import GenerationConfig


@dataclass
class ServerLimits:
    max_tokens: int = 1024            # per request
    max_prompt_tokens: int = 4096
    max_concurrency: int = 128        # requests in flight; more get 429
    max_body_bytes: int = 1 << 20
    max_n: int = 16
    batch_window_s: float = 0.01
    max_batch: int = 64               # sequences per engine call
    max_image_bytes: int = 4 << 20    # decoded bytes of one image_url
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8               # per request


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------- batching
@dataclass
class _Request:
    prompt_ids: list[int]
    gen: GenerationConfig
    emit: Any                                   # emit(kind, payload) -> thread-safe push to the request
    done: threading.Event = field(default_factory=threading.Event)
    images: list = field(default_factory=list)  # [(digest, PIL image)]; ids >= vocab name them by position
    ignore_eos: bool = False                    # vLLM's extension: EOS does not end the sequence


class Batcher:
    """One worker thread; groups queued requests by sampling settings and runs each group as one batch."""

    def __init__(self, engine, limits: ServerLimits, vlm=None):
        self.engine, self.limits, self.vlm = engine, limits, vlm
        self.queue: list[_Request] = []
        self.cv = threading.Condition()
        self.stopped = False
        self.batches: list[int] = []            # sequences per engine call (for tests / load reports)
        self.thread = threading.Thread(target=self._loop, name="lmlab-batcher", daemon=True)
        self.thread.start()

    def submit(self, req: _Request) -> None:
        with self.cv:
            self.queue.append(req)
            self.cv.notify()

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()

    @staticmethod
    def _key(r: _Request) -> str:
        return json.dumps([asdict(r.gen), r.ignore_eos], sort_keys=True)

    def _take(self) -> list[_Request]:
        with self.cv:
            while not self.queue and not self.stopped:
                self.cv.wait()
            if self.stopped:
                return []
        time.sleep(self.limits.batch_window_s)   # let concurrent requests arrive
        with self.cv:
            key = self._key(self.queue[0])
            batch, rest, seqs = [], [], 0
            for r in self.queue:
                if self._key(r) == key and seqs + r.gen.n <= max(self.limits.max_batch, r.gen.n) and \
                        (not batch or seqs + r.gen.n <= self.limits.max_batch):
                    batch.append(r)
                    seqs += r.gen.n
                else:
                    rest.append(r)
            self.queue = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            gen = batch[0].gen
            try:
                prompts, extra = [r.prompt_ids for r in batch], None
                if self.vlm is not None and any(r.images for r in batch):
                    from lmlab.infer.vlm import merge_image_requests

                    prompts, extra = merge_image_requests(self.vlm, [(r.prompt_ids, r.images) for r in batch])
                stop_ids = self.engine.stop_ids         # this thread is the engine's only caller
                if batch[0].ignore_eos:
                    self.engine.stop_ids = set()
                try:
                    out = self.engine.generate_ids(prompts, gen, stream=lambda i, j, s: batch[i].emit("delta", (j, s)),
                                                   extra_embeds=extra)
                finally:
                    self.engine.stop_ids = stop_ids
                self.batches.append(len(batch) * gen.n)
                for r, row in zip(batch, out):
                    r.emit("done", row)
            except Exception as e:  # a failed batch answers its requests; the worker lives on
                for r in batch:
                    r.emit("error", f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------------------- validation
MAX_SEED = 2**63 - 1
MAX_TOP_K = 1 << 20


def _num(body: dict, key: str, default, kind=float, lo=None, hi=None, hi_msg=None):
    v = body.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
            (kind is int and int(v) != v):
        raise ApiError(400, f"'{key}' must be a{'n integer' if kind is int else ' finite number'}, got {v!r}",
                       param=key)
    v = kind(v)
    if lo is not None and v < lo:
        raise ApiError(400, f"'{key}'={v} must be >= {lo}", param=key)
    if hi is not None and v > hi:
        raise ApiError(400, hi_msg or f"'{key}'={v} must be <= {hi}", param=key)
    return v


def parse_gen(body: dict, limits: ServerLimits, default_max: int) -> GenerationConfig:
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    for s in stop:
        _text(s, "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ApiError(400, f"'seed' must be an integer in [0, {MAX_SEED}], got {seed!r}", param="seed")
    for flag in ("stream", "echo", "ignore_eos"):
        if body.get(flag) is not None and not isinstance(body.get(flag), bool):
            raise ApiError(400, f"'{flag}' must be true or false, got {body.get(flag)!r}", param=flag)
    mt = _num(body, "max_tokens", default_max, int, 0, limits.max_tokens,
              f"'max_tokens'={body.get('max_tokens')} exceeds this server's limit of {limits.max_tokens}")
    if "max_completion_tokens" in body:
        mt = _num(body, "max_completion_tokens", default_max, int, 1, limits.max_tokens,
                  f"'max_completion_tokens' exceeds this server's limit of {limits.max_tokens}")
    return GenerationConfig(
        max_new_tokens=mt,
        temperature=_num(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, float, 0.0, 1.0),
        top_k=_num(body, "top_k", 0, int, 0, MAX_TOP_K),
        repetition_penalty=_num(body, "repetition_penalty", 1.0, float, 0.01, 10.0),
        n=_num(body, "n", 1, int, 1, limits.max_n), stop=stop, seed=seed)


def stream_extras(body: dict) -> dict:
    """The request fields beyond GenerationConfig, as `generation_response` keywords: vLLM's ignore_eos (checked by
    parse_gen) and OpenAI's stream_options.include_usage (an object with a boolean, or absent/null)."""
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool)):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}", param="stream_options")
    return {"ignore_eos": bool(body.get("ignore_eos")), "include_usage": bool((opts or {}).get("include_usage"))}


def _text(s: str, param: str) -> str:
    """A request string must be encodable text: JSON may carry lone surrogates (\\ud800) and NULs."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"'{param}' is not valid Unicode text (lone surrogate at character {e.start})",
                       param=param) from None
    return s


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# ------------------------------------------------------------------------------------------------ app
def create_app(engine, model_name: str, tokenizer, api_key: Optional[str] = None,
               limits: Optional[ServerLimits] = None, vlm=None):
    import asyncio

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    limits = limits or ServerLimits()
    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None)
    batcher = Batcher(engine, limits, vlm)
    app.state.batcher = batcher
    state = {"in_flight": 0}

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):  # a bug: one line to the client, the traceback to the log
        import logging

        logging.getLogger("lmlab.server").exception("unhandled error on %s", request.url.path)
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {first[:200]}", "server_error").body(),
                            status_code=500)

    @app.exception_handler(404)
    async def _not_found(request, exc):
        return JSONResponse(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").body(),
                            status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request, exc):
        return JSONResponse(ApiError(405, f"method {request.method} not allowed on {request.url.path}").body(),
                            status_code=405)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or auth[7:].strip() != api_key:
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", "invalid_api_key")

    async def read_json(request: Request) -> dict:
        check_auth(request)
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > limits.max_body_bytes:
            raise ApiError(413, f"request body of {cl} bytes exceeds the limit of {limits.max_body_bytes}")
        raw = await request.body()
        if len(raw) > limits.max_body_bytes:
            raise ApiError(413, f"request body exceeds the limit of {limits.max_body_bytes} bytes")
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except UnicodeDecodeError as e:
            raise ApiError(400, f"request body is not UTF-8 ({e.reason} at byte {e.start})") from None
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"request body is not valid JSON: {str(e).splitlines()[0] if str(e) else e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        model = body.get("model")
        if not model:
            raise ApiError(400, "missing 'model'", param="model")
        if model != model_name:
            raise ApiError(404, f"model {model!r} not found; this server has {model_name!r}", code="model_not_found",
                           param="model")
        return body

    def encode(text: str) -> list[int]:
        ids = tokenizer.encode(text)
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(400, f"prompt has {len(ids)} tokens, over this server's limit of "
                                f"{limits.max_prompt_tokens}", param="prompt")
        if not ids:
            raise ApiError(400, "prompt is empty", param="prompt")
        return ids

    async def run(prompt_ids: list[list[int]], gen: GenerationConfig, on_delta=None, images=None,
                  ignore_eos: bool = False) -> list[list]:
        """Submit every prompt; await the completions. on_delta(prompt_idx, sample_idx, text) as they come."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        for i, ids in enumerate(prompt_ids):
            emit = (lambda i_: lambda kind, payload: loop.call_soon_threadsafe(q.put_nowait, (i_, kind, payload)))(i)
            batcher.submit(_Request(ids, gen, emit, images=list(images or []), ignore_eos=ignore_eos))
        results: list = [None] * len(prompt_ids)
        pending = len(prompt_ids)
        while pending:
            i, kind, payload = await q.get()
            if kind == "delta":
                if on_delta is not None:
                    await on_delta(i, *payload)
            elif kind == "done":
                results[i] = payload
                pending -= 1
            else:
                raise ApiError(400, f"generation failed: {payload}")
        return results

    def admit() -> None:
        if state["in_flight"] >= limits.max_concurrency:
            raise ApiError(429, f"too many concurrent requests (limit {limits.max_concurrency})",
                           "rate_limit_error", "rate_limited")
        state["in_flight"] += 1

    def usage(rows, prompt_ids) -> dict:
        p = sum(len(x) for x in prompt_ids)
        c = sum(len(cmp.token_ids) for row in rows for cmp in row)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "lmlab"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": state["in_flight"]}

    def echo_logprobs(ids: list[int], text: str) -> dict:
        """Token log-probs of the prompt itself (OpenAI's echo=True, max_tokens=0) for scoring."""
        lp = engine.token_logprobs([ids[:1]], [ids[1:]])[0] if len(ids) > 1 else []
        toks = [tokenizer.decode([t]) for t in ids]
        offsets, pos = [], 0
        for t in toks:
            j = text.find(t, pos) if t else -1
            offsets.append(j if j >= 0 else pos)
            pos = (j + len(t)) if j >= 0 else pos
        return {"tokens": toks, "token_logprobs": [None] + lp, "top_logprobs": None, "text_offset": offsets}

    async def generation_response(kind: str, prompts_text: list[str], gen: GenerationConfig, stream: bool,
                                  echo: bool = False, logprobs: bool = False, images=None, ignore_eos: bool = False,
                                  include_usage: bool = False):
        if images:
            from lmlab.infer.vlm import request_prompt_ids

            prompt_ids = [request_prompt_ids(vlm, prompts_text[0], len(images))]
            if len(prompt_ids[0]) > limits.max_prompt_tokens:
                raise ApiError(400, f"prompt has {len(prompt_ids[0])} tokens (with image tokens), over this "
                                    f"server's limit of {limits.max_prompt_tokens}", param="messages")
        else:
            prompt_ids = [encode(p) for p in prompts_text]
        rid = ("cmpl-" if kind == "text" else "chatcmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "text_completion" if kind == "text" else "chat.completion"
        if gen.max_new_tokens == 0:
            if not (kind == "text" and echo):
                raise ApiError(400, "'max_tokens' must be >= 1 (0 only with echo=true)", param="max_tokens")
            choices = [{"index": i, "text": t, "finish_reason": "length",
                        "logprobs": echo_logprobs(ids, t) if logprobs else None}
                       for i, (ids, t) in enumerate(zip(prompt_ids, prompts_text))]
            n = sum(len(x) for x in prompt_ids)
            return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices,
                    "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}}
        admit()
        if not stream:
            try:
                rows = await run(prompt_ids, gen, images=images, ignore_eos=ignore_eos)
            finally:
                state["in_flight"] -= 1
            choices = []
            for i, row in enumerate(rows):
                for j, c in enumerate(row):
                    ch = {"index": i * gen.n + j, "finish_reason": c.finish_reason, "logprobs": None}
                    if kind == "text":
                        ch["text"] = (prompts_text[i] if echo else "") + c.text
                    else:
                        ch["message"] = {"role": "assistant", "content": c.text}
                    choices.append(ch)
            return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices,
                    "usage": usage(rows, prompt_ids)}

        chunk_obj = "text_completion" if kind == "text" else "chat.completion.chunk"

        def chunk(index: int, text: Optional[str], finish: Optional[str], first: bool = False) -> dict:
            if kind == "text":
                ch = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            else:
                delta = {} if text is None else {"content": text}
                if first:
                    delta = {"role": "assistant", "content": ""}
                ch = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": chunk_obj, "created": created, "model": model_name, "choices": [ch]}

        async def events():
            out: asyncio.Queue = asyncio.Queue()

            async def on_delta(i, j, text):
                await out.put(sse(chunk(i * gen.n + j, text, None)))

            async def producer():
                try:
                    rows = await run(prompt_ids, gen, on_delta, images=images, ignore_eos=ignore_eos)
                    for i, row in enumerate(rows):
                        for j, c in enumerate(row):
                            await out.put(sse(chunk(i * gen.n + j, None if kind == "chat" else "", c.finish_reason)))
                    if include_usage:
                        await out.put(sse({"id": rid, "object": chunk_obj, "created": created, "model": model_name,
                                           "choices": [], "usage": usage(rows, prompt_ids)}))
                except ApiError as e:
                    await out.put(sse(e.body()))
                finally:
                    await out.put(None)

            try:
                if kind == "chat":
                    for idx in range(len(prompt_ids) * gen.n):
                        yield sse(chunk(idx, None, None, first=True))
                task = asyncio.create_task(producer())
                while True:
                    item = await out.get()
                    if item is None:
                        break
                    yield item
                await task
                yield "data: [DONE]\n\n"
            finally:
                state["in_flight"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
        for p in prompts:
            _text(p, "prompt")
        gen = parse_gen(body, limits, default_max=16)
        lp = body.get("logprobs")
        return await generation_response("text", prompts, gen, bool(body.get("stream")), bool(body.get("echo")),
                                         lp is not None and lp is not False, **stream_extras(body))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), (str, list))
                for m in msgs):
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects with string content",
                           param="messages")
        for m in msgs:
            _text(m["role"], "messages")
            for part in m["content"] if isinstance(m["content"], list) else [m["content"]]:
                text_of_part = part.get("text") if isinstance(part, dict) else part
                if isinstance(text_of_part, str):
                    _text(text_of_part, "messages")
        gen = parse_gen(body, limits, default_max=limits.max_tokens)
        msgs, images = content_parts(msgs, limits, vlm is not None)
        if images:
            prompt = vlm.format_prompt(next((m["content"] for m in reversed(msgs) if m["role"] == "user"), ""),
                                       len(images))
            return await generation_response("chat", [prompt], gen, bool(body.get("stream")), images=images,
                                             **stream_extras(body))
        from lmlab.infer.backend_impls import _chat_prompt

        prompt = _chat_prompt(tokenizer, [{"role": m["role"], "content": m["content"]} for m in msgs])
        return await generation_response("chat", [prompt], gen, bool(body.get("stream")), **stream_extras(body))

    return app


def decode_image_url(url: Any, limits: ServerLimits):
    """(digest, RGB PIL image) of a base64 `data:image/...` URL, or a 400 ApiError saying what is wrong."""
    import base64
    import binascii
    import io

    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(400, "image_url: only base64 data: URLs are accepted (data:image/png;base64,...); "
                            "this server fetches nothing", param="messages")
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ApiError(400, "image_url: expected a base64 data URL (data:image/<type>;base64,...)", param="messages")
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise ApiError(400, f"image_url: image of about {len(payload) * 3 // 4} bytes exceeds the limit of "
                            f"{limits.max_image_bytes}", param="messages")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image_url: the data is not valid base64", param="messages") from None
    try:
        img = Image.open(io.BytesIO(raw))
        if img.size[0] * img.size[1] > limits.max_image_pixels:
            raise ApiError(400, f"image_url: {img.size[0]}x{img.size[1]} pixels exceeds the limit of "
                                f"{limits.max_image_pixels}", param="messages")
        img = img.convert("RGB")
    except ApiError:
        raise
    except Exception as e:  # PIL: UnidentifiedImageError, truncated data, decompression bomb
        raise ApiError(400, f"image_url: not a decodable image ({type(e).__name__})", param="messages") from None
    from lmlab.vision.cache import image_digest

    return image_digest(img), img


def content_parts(msgs: list[dict], limits: ServerLimits, images_ok: bool) -> tuple[list[dict], list]:
    """Messages with string content (text parts joined) and the decoded images, in order."""
    out, images = [], []
    for m in msgs:
        c = m["content"]
        if isinstance(c, str):
            out.append({"role": m["role"], "content": c})
            continue
        texts = []
        for part in c:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                if not images_ok:
                    raise ApiError(400, "this model does not accept images (serve a saved VLM directory)",
                                   param="messages")
                iu = part.get("image_url")
                images.append(decode_image_url(iu.get("url") if isinstance(iu, dict) else iu, limits))
                if len(images) > limits.max_images:
                    raise ApiError(400, f"more than {limits.max_images} images in one request", param="messages")
            else:
                raise ApiError(400, "content parts must be {type: text, text} or {type: image_url, image_url: {url}}",
                               param="messages")
        out.append({"role": m["role"], "content": "".join(texts)})
    return out, images


def serve(spec: str = "smollm2", host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          limits: Optional[ServerLimits] = None, hydragen: bool = True, backend=None) -> None:
    """Serve `backend` (already loaded) or the model `spec` names."""
    import uvicorn

    from lmlab.backend import load_backend
    from lmlab.config import ConfigError
    from lmlab.infer.backend_impls import LocalBackend

    from lmlab.train.vlm import is_vlm_dir

    if is_vlm_dir(spec.removeprefix("lmlab:")):
        return serve_vlm(spec.removeprefix("lmlab:"), host, port, api_key, limits, hydragen)
    local = spec == "smollm2" or spec.endswith(".gguf")
    be = backend if backend is not None else (LocalBackend.from_spec(spec, hydragen=hydragen) if local
                                              else load_backend(spec, hydragen=hydragen))
    if not isinstance(be, LocalBackend):
        raise ConfigError(f"lmlab serve --model {spec!r}: serving needs a local model (smollm2, lmlab:PATH, PATH.gguf)")
    app = create_app(be.engine, be.name, be.tokenizer, api_key, limits)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without --api-key", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_vlm(path: str, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
              limits: Optional[ServerLimits] = None, hydragen: bool = True) -> None:
    """`lmlab serve --model DIR` for a saved VLM: chat requests may carry images (see the module doc)."""
    from pathlib import Path

    import uvicorn

    from lmlab.infer.engine import Engine
    from lmlab.train.vlm import load_vlm

    vlm = load_vlm(path)
    app = create_app(Engine(vlm.lm, vlm.tokenizer, hydragen=hydragen), Path(path).resolve().name, vlm.tokenizer,
                     api_key, limits, vlm=vlm)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without --api-key", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
