"""`lmlab generate` and `lmlab serve`."""
from __future__ import annotations

import sys


def _gen_args(p) -> None:
    p.add_argument("--model", default="smollm2", help="smollm2 | lmlab:PATH | hf:PATH | PATH.gguf | openai:URL#MODEL")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-hydragen", action="store_true", help="plain per-sequence KV cache for decode")


def register_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a local or remote model")
    p.add_argument("text", nargs="*", help="prompt(s), as well as or instead of --prompt")
    p.add_argument("--prompt", action="append", default=[], help="repeat for a batch")
    p.add_argument("--image", action="append", default=[],
                   help="image file for a saved VLM (--model DIR); repeat for several images per prompt")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message (chat template)")
    p.add_argument("-n", "--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt, n=1)")
    _gen_args(p)
    p.set_defaults(func=run_generate)


def _backend(args):
    from lmlab.backend import load_backend

    kw = {"hydragen": False} if args.no_hydragen and not args.model.startswith(("hf:", "openai:")) else {}
    return load_backend(args.model, **kw)


def run_generate(args) -> int:
    from lmlab.backend import GenerationConfig

    gen = GenerationConfig(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop,
                           n=args.n, seed=args.seed)
    args.prompt = list(args.prompt) + list(args.text)
    if not args.prompt:
        print("lmlab generate: error: give a prompt (positional or --prompt)", file=sys.stderr)
        return 2
    if args.image:
        return run_generate_image(args, gen)
    try:
        be = _backend(args)
        streaming = args.stream and len(args.prompt) == 1 and args.n == 1
        cb = (lambda i, j, s: (sys.stdout.write(s), sys.stdout.flush())) if streaming else None
        if args.chat:
            out = be.chat([[{"role": "user", "content": p}] for p in args.prompt], gen, stream=cb)
        else:
            out = be.generate(args.prompt, gen, stream=cb)
    except ValueError as e:
        print(f"lmlab generate: error: {e}", file=sys.stderr)
        return 2
    if streaming:
        print()
        return 0
    for prompt, row in zip(args.prompt, out):
        for j, text in enumerate(row):
            head = f"[{j}] " if len(row) > 1 else ""
            print(f"{head}{text}" if len(args.prompt) == 1 else f"{prompt!r} {head}-> {text}")
    return 0


def run_generate_image(args, gen) -> int:
    """`lmlab generate --image PATH --model DIR "question"`: each prompt about all the given images."""
    from PIL import Image, UnidentifiedImageError

    from lmlab.infer.vlm import generate
    from lmlab.train.vlm import is_vlm_dir, load_vlm

    path = args.model.removeprefix("lmlab:")
    try:
        if not is_vlm_dir(path):
            raise ValueError(f"--image needs a saved VLM directory as --model (got {args.model!r})")
        images = []
        for f in args.image:
            try:
                images.append(Image.open(f).convert("RGB"))
            except (OSError, UnidentifiedImageError) as e:
                raise ValueError(f"--image {f}: cannot read it as an image ({type(e).__name__})") from None
        vlm = load_vlm(path)
        out = generate(vlm, [images] * len(args.prompt), args.prompt, gen, hydragen=not args.no_hydragen)
    except ValueError as e:
        print(f"lmlab generate: error: {e}", file=sys.stderr)
        return 2
    for prompt, row in zip(args.prompt, out):
        for j, text in enumerate(row):
            head = f"[{j}] " if len(row) > 1 else ""
            print(f"{head}{text.strip()}" if len(args.prompt) == 1 else f"{prompt!r} {head}-> {text.strip()}")
    return 0


def register_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", default="smollm2", help="smollm2 | lmlab:PATH | PATH.gguf | a saved VLM dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or $LMLAB_API_KEY)")
    p.add_argument("--max-tokens-limit", type=int, default=1024)
    p.add_argument("--max-prompt-tokens", type=int, default=4096)
    p.add_argument("--max-concurrency", type=int, default=128, help="requests in flight; more get 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="wait this long to batch requests")
    p.add_argument("--max-batch", type=int, default=64, help="sequences per engine batch")
    p.add_argument("--no-hydragen", action="store_true")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import os

    from lmlab.infer.server import ServerLimits, serve

    key = args.api_key or os.environ.get("LMLAB_API_KEY")
    limits = ServerLimits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                          max_concurrency=args.max_concurrency, max_body_bytes=args.max_body_bytes,
                          batch_window_s=args.batch_window_ms / 1000, max_batch=args.max_batch)
    serve(args.model, host=args.host, port=args.port, api_key=key, limits=limits, hydragen=not args.no_hydragen)
    return 0
