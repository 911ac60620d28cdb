"""`lmlab generate` and `lmlab serve`."""
from __future__ import annotations

import sys

from lmlab.argtypes import float_range, int_range, nonneg_int, port, positive_int, text

MAX_NEW_TOKENS = 1 << 20


def _gen_args(p) -> None:
    p.add_argument("--model", type=text, default="smollm2",
                   help="smollm2 | lmlab:PATH | hf:PATH | PATH.gguf | openai:URL#MODEL")
    p.add_argument("--max-tokens", type=int_range(1, MAX_NEW_TOKENS), default=128)
    p.add_argument("--temperature", type=float_range(0.0, 100.0), default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=nonneg_int, default=0)
    p.add_argument("--top-p", type=float_range(0.0, 1.0, lo_open=True), default=1.0)
    p.add_argument("--repetition-penalty", type=float_range(0.0, 100.0, lo_open=True), default=1.0)
    p.add_argument("--seed", type=int_range(0, 2**63 - 1), default=None)
    p.add_argument("--no-hydragen", action="store_true", help="plain per-sequence KV cache for decode")
    _quant_args(p)


def _quant_args(p) -> None:
    p.add_argument("--quantize", choices=["none", "int8", "int4", "bf16", "int8g"], default="none",
                   help="weight-only quantized linear layers (lmlab.nn.quant); smollm2/GGUF Q4_1 loads int4 directly; "
                        "bf16: bf16 weights and GEMMs (fastest for batches of 16+ sequences and long prompts); "
                        "int8g: group-wise int8 in fp32 math, LM head included (Q4_1/Q8_0 GGUFs load losslessly)")
    p.add_argument("--group-size", type=int, choices=[32, 64, 128, 256], default=32,
                   help="int4/int8g: input features sharing one scale")
    p.add_argument("--quant-compute", choices=["bf16", "bf16x2", "fp32"], default="bf16",
                   help="how --quantize layers feed their bf16 kernels: bf16 (fastest), bf16x2 (fp32 activations as "
                        "two bf16 halves in one call: closer to fp32, slower), fp32 (exact, scalar loop)")
    p.add_argument("--int8-input-group", type=positive_int, default=None, metavar="N",
                   help="--quantize int8: a scale per N input features as well as per output row (carried by the "
                        "activation) and per-block zero points (lmlab.nn.quant); N must divide each layer's inputs")
    p.add_argument("--engine", choices=["fused", "modules"], default="fused",
                   help="fused: one linear for q/k/v and one for gate/up per layer, no per-kernel casts "
                        "(lmlab.infer.fused; models it cannot run use modules); modules: the model's own layers")
    p.add_argument("--head-dtype", choices=HEAD_DTYPES, default="auto",
                   help="dtype of the LM head's weights in the fused engine; auto: bfloat16 with --quantize "
                        "int8/int4/bf16 (half the bytes of the largest matmul of a decode step), else the model's")


HEAD_DTYPES = ("auto", "float32", "bfloat16")


def head_dtype_for(choice: str, quantize: str):
    """--head-dtype's torch dtype for the fused engine's LM head, None = the model's own head: "auto" is bfloat16
    when the weights are quantized (int8/int4/bf16), else the model's (int8g quantizes the head itself)."""
    import torch

    from lmlab.config import ConfigError

    if choice not in HEAD_DTYPES:
        raise ConfigError(f"--head-dtype {choice!r}: use auto, float32 or bfloat16")
    if choice == "auto":
        return torch.bfloat16 if quantize not in ("none", "int8g") else None
    return getattr(torch, choice)


def _quant_kw(args) -> dict:
    """`load_model`'s quantization arguments from the flags `_quant_args` adds."""
    return {"quantize": args.quantize, "group_size": args.group_size, "quant_compute": args.quant_compute,
            "int8_input_group": args.int8_input_group, "engine": args.engine, "head_dtype": args.head_dtype}


def register_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a local or remote model")
    p.add_argument("text", nargs="*", type=text, help="prompt(s), as well as or instead of --prompt")
    p.add_argument("--prompt", type=text, action="append", default=[], help="repeat for a batch")
    p.add_argument("--image", action="append", default=[],
                   help="image file for a saved VLM (--model DIR); repeat for several images per prompt")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user message (chat template)")
    p.add_argument("-n", "--n", type=int_range(1, 1024), default=1, help="samples per prompt")
    p.add_argument("--stop", type=text, action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come (one prompt, n=1)")
    _gen_args(p)
    p.set_defaults(func=run_generate)


def _backend(args):
    kw = {"hydragen": False} if args.no_hydragen and not args.model.startswith(("hf:", "openai:")) else {}
    return load_model(args.model, **_quant_kw(args), **kw)


# What a weights file that is not one raises while it is read (torch.load's unpickler, safetensors, zip, GGUF).
def _unreadable() -> tuple[type[BaseException], ...]:
    import json
    import pickle
    import struct
    import zipfile

    kinds: list[type[BaseException]] = [pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile,
                                        UnicodeDecodeError, json.JSONDecodeError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def load_model(spec: str, flag: str = "--model", quantize: str = "none", group_size: int = 32,
               quant_compute: str = "bf16", int8_input_group: int | None = None, engine: str = "fused",
               head_dtype: str = "auto", **kw):
    """`lmlab.backend.load_backend(spec)`, with a file that is not a model (corrupt, truncated, pickled
    garbage, wrong format) reported in one line naming the flag and the spec. `quantize` int8/int4 swaps the
    local model's linear layers for weight-only quantized ones (`lmlab.nn.quant.quantize_`); a GGUF file
    (smollm2 included) is read straight into them (`lmlab.models.gguf_quant`); `quant_compute` is their
    `compute` mode (bf16, bf16x2, fp32); `int8_input_group` int8's input group size (`quantize_`). A local
    model runs on the fused engine (`engine="fused"`, lmlab.infer.fused) with its LM head in `head_dtype`
    ("auto": bfloat16 when quantized, else the model's), or on its own layers (`engine="modules"`)."""
    from lmlab.backend import load_backend
    from lmlab.config import ConfigError

    if engine not in ("fused", "modules"):
        raise ConfigError(f"--engine {engine!r}: use fused or modules")
    head = head_dtype_for(head_dtype, quantize)
    if engine != "fused":                      # the defaults are LocalBackend's own: pass only a change
        kw["fused"] = False
    if head is not None:
        kw["head_dtype"] = head

    def bad(e: BaseException) -> ConfigError:
        import pickle

        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        if isinstance(e, pickle.UnpicklingError):  # torch's message is a page on weights_only
            first = "not a weights-only torch file"
        return ConfigError(f"{flag} {spec}: not a readable model ({type(e).__name__}"
                           + (f": {first[:160]}" if first else "") + ")")

    if int8_input_group is not None and quantize != "int8":
        raise ConfigError(f"--int8-input-group {int8_input_group}: needs --quantize int8 (got {quantize})")
    try:
        if quantize == "none":
            return load_backend(spec, **kw)
        return _load_quantized(spec, flag, quantize, group_size, quant_compute, int8_input_group, **kw)
    except _unreadable() as e:
        raise bad(e) from None
    except KeyError as e:  # torch.load of a file that is not a checkpoint (e.g. text) fails on a missing key
        if not str(spec).startswith(("lmlab:", "hf:")) and not str(spec).endswith((".pt", ".gguf")):
            raise
        raise bad(e) from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e) and "zip archive" not in str(e):
            raise
        raise bad(e) from None


# The LM head under --quantize: None keeps it float (tied to the fp32 embedding), "int8" adds a per-channel int8
# copy. Measured on SmolLM2 (benchmarks/RESULTS.md, "Weight-only quantized decode"): the int8 head makes a batch-1 decode
# token 25 % cheaper (37.3 -> 27.9 CPU-ms) but moves perplexity by +0.10 (the int4 blocks alone: +0.013) and drops greedy
# agreement with fp32 from 65 % to 45 %; so the head stays float and `--quantize int4` on a Q4_1 GGUF runs
# exactly the file's weights. ("int8g" quantizes the head itself: it holds SmolLM2's Q8_0 head exactly.)
QUANT_HEAD = None


def _load_quantized(spec: str, flag: str, scheme: str, group_size: int, compute: str = "bf16",
                    int8_input_group: int | None = None, **kw):
    from lmlab.backend import load_backend
    from lmlab.config import ConfigError
    from lmlab.infer.backend_impls import LocalBackend
    from lmlab.nn.quant import head_skip, quantize_

    gguf = spec.removeprefix("lmlab:")
    if scheme != "bf16" and (gguf == "smollm2" or gguf.endswith(".gguf")):
        from pathlib import Path

        from lmlab.models.gguf_quant import load_gguf_quantized

        model, tok = load_gguf_quantized(gguf, scheme, group_size, compute=compute,
                                         input_group_size=int8_input_group)
        be = LocalBackend(model, tok, name="smollm2" if gguf == "smollm2" else Path(gguf).stem, **kw)
    else:
        be = load_backend(spec, **kw)
        if not isinstance(be, LocalBackend):
            raise ConfigError(f"--quantize {scheme}: {flag} {spec} is not a local lmlab model "
                              "(use smollm2, lmlab:PATH or PATH.gguf)")
        quantize_(be.model, scheme, group_size, compute=compute, input_group_size=int8_input_group,
                  skip=head_skip(scheme))
    if QUANT_HEAD is not None:
        quantize_(be.model, QUANT_HEAD, skip=(), compute=compute)   # all that is still an nn.Linear: the head
    be.refresh_engine()                                            # the engine runs the layers as replaced
    return be


def run_generate(args) -> int:
    from lmlab.backend import GenerationConfig

    gen = GenerationConfig(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=args.stop,
                           n=args.n, seed=args.seed)
    args.prompt = list(args.prompt) + list(args.text)
    if not args.prompt:
        raise ValueError("give a prompt (positional or --prompt)")
    if args.image:
        return run_generate_image(args, gen)
    be = _backend(args)
    streaming = args.stream and len(args.prompt) == 1 and args.n == 1
    cb = (lambda i, j, s: (sys.stdout.write(s), sys.stdout.flush())) if streaming else None
    if args.chat:
        out = be.chat([[{"role": "user", "content": p}] for p in args.prompt], gen, stream=cb)
    else:
        out = be.generate(args.prompt, gen, stream=cb)
    if streaming:
        print()
        return 0
    return _print_samples(args.prompt, out)


def _print_samples(prompts: list[str], out: list[list[str]], strip: bool = False) -> int:
    for prompt, row in zip(prompts, out):
        for j, text in enumerate(row):
            text = text.strip() if strip else text
            head = f"[{j}] " if len(row) > 1 else ""
            print(f"{head}{text}" if len(prompts) == 1 else f"{prompt!r} {head}-> {text}")
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
    return _print_samples(args.prompt, out, strip=True)


def register_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    p.add_argument("--model", type=text, default="smollm2", help="smollm2 | lmlab:PATH | PATH.gguf | a saved VLM dir")
    p.add_argument("--host", type=text, default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--api-key", type=text, default=None,
                   help="require 'Authorization: Bearer KEY' (or $LMLAB_API_KEY)")
    p.add_argument("--max-tokens-limit", type=int_range(1, MAX_NEW_TOKENS), default=1024)
    p.add_argument("--max-prompt-tokens", type=positive_int, default=4096)
    p.add_argument("--max-concurrency", type=positive_int, default=128, help="requests in flight; more get 429")
    p.add_argument("--max-body-bytes", type=int_range(64, 1 << 34), default=1 << 20)
    p.add_argument("--batch-window-ms", type=float_range(0.0, 60_000.0), default=10.0,
                   help="wait this long to batch requests")
    p.add_argument("--max-batch", type=positive_int, default=64, help="sequences per engine batch")
    p.add_argument("--no-hydragen", action="store_true")
    _quant_args(p)
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import os

    from lmlab.infer.server import ServerLimits, serve

    key = args.api_key or os.environ.get("LMLAB_API_KEY")
    limits = ServerLimits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                          max_concurrency=args.max_concurrency, max_body_bytes=args.max_body_bytes,
                          batch_window_s=args.batch_window_ms / 1000, max_batch=args.max_batch)
    spec = args.model
    be = load_model("lmlab:" + spec if spec.endswith(".gguf") and ":" not in spec else spec,
                    hydragen=not args.no_hydragen, **_quant_kw(args))
    serve(spec, host=args.host, port=args.port, api_key=key, limits=limits, hydragen=not args.no_hydragen,
          backend=be)
    return 0
