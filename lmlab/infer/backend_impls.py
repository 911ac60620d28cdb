"""Backend implementations of the protocol in `lmlab.backend` (which also holds `load_backend(spec)`).

    "smollm2"                          embedded SmolLM2-135M-Instruct GGUF, in lmlab's Decoder + Engine
    "lmlab:/path/to/run_or_ckpt"       an lmlab checkpoint (or an HF Llama dir / GGUF), in the Engine
    "hf:/path/or/hub-id" | "x.gguf"    the transformers model itself (generate / forward)
    "openai:http://host:port/v1#model" any OpenAI-compatible endpoint (e.g. `lmlab serve`)

`score(texts)` is the rolling log-likelihood of the whole text: the sum of log p(token_j | tokens_<j) over
every token after the first (the first has no context unless the tokenizer prepends a BOS token, which is
then added and the first token scored too).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from lmlab.backend import GenerationConfig
from lmlab.config import ConfigError
from lmlab.registry import BACKENDS


def _chat_prompt(tok, messages: list[dict]) -> str:
    fn = getattr(tok, "apply_chat_template", None)
    if fn is not None:
        return fn(messages, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def _with_bos(tok, ids: list[int]) -> list[int]:
    """Prepend BOS where the tokenizer would (attribute `add_bos`, default: whenever it has `bos_id`)."""
    bos = getattr(tok, "bos_id", None)
    return [bos] + ids if bos is not None and getattr(tok, "add_bos", True) else ids


def _load_lmlab_checkpoint(path: str):
    """An lmlab run dir (trainer layout: config.yaml + checkpoints/step_*/model.safetensors), a checkpoint
    step dir, or a torch file {"model": state_dict, "config": {...}} -> (Decoder, tokenizer or None)."""
    import json

    from lmlab.config import ModelConfig, RunConfig, read_yaml, validate
    from lmlab.models.decoder import Decoder

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"lmlab checkpoint {path!r} does not exist")
    cfg, weights = None, None
    if p.is_dir():
        from lmlab.train.checkpoint import latest_checkpoint, load_model_state

        step = p if (p / "state.json").exists() else (latest_checkpoint(p / "checkpoints") or latest_checkpoint(p))
        if step is not None:
            cfg = json.loads((step / "state.json").read_text(encoding="utf-8")).get("config")
            weights = ("safetensors", step / "model.safetensors")
            for d in (step.parent.parent, step.parent):
                if cfg is None and (d / "config.yaml").exists():
                    cfg = read_yaml(d / "config.yaml")
    if weights is None:
        files = [p] if p.is_file() else sorted(p.glob("**/*.pt"), key=lambda f: f.stat().st_mtime)
        if not files:
            raise ConfigError(f"lmlab checkpoint {path!r}: no checkpoints/step_*/ or *.pt inside")
        ckpt = torch.load(files[-1], map_location="cpu", weights_only=True)  # tensors and plain data only
        weights = ("state", ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt)
        cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
        for d in (files[-1].parent, files[-1].parent.parent):
            if cfg is None and (d / "config.yaml").exists():
                cfg = read_yaml(d / "config.yaml")
    if cfg is None:
        raise ConfigError(f"lmlab checkpoint {path!r}: no model config (config.yaml beside it or 'config' key)")
    mcfg = validate(ModelConfig, cfg["model"]) if "model" in cfg else validate(ModelConfig, cfg)
    model = Decoder(mcfg)
    if weights[0] == "safetensors":
        load_model_state(model, weights[1])
    else:
        model.load_state_dict(weights[1])
    tok = None
    if "data" in cfg:
        try:
            from lmlab.data.pipeline import get_tokenizer

            tok = get_tokenizer(validate(RunConfig, cfg).data)
        except Exception:  # a model without its tokenizer can still be scored on ids
            tok = None
    return model.eval(), tok


# --------------------------------------------------------------------------------------------- local
ENGINE_OPTIONS = ("hydragen", "fused", "head_dtype")   # LocalBackend's engine settings; other backends drop them


@BACKENDS.register("lmlab")
class LocalBackend:
    """An lmlab Decoder driven by lmlab's Engine (Hydragen on by default): the fused layer loop
    (lmlab.infer.fused.FusedEngine) when the model allows it and `fused`, with an optional `head_dtype` copy of
    the LM head (e.g. torch.bfloat16), else the module path."""

    def __init__(self, model, tokenizer, name: str = "lmlab", hydragen: bool = True, fused: bool = True,
                 head_dtype: Optional[torch.dtype] = None):
        from lmlab.infer.fused import make_engine

        if tokenizer is None:
            raise ConfigError(f"backend {name!r}: a tokenizer is needed for text generation")
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self._engine_kw = dict(hydragen=hydragen, fused=fused, **({"head_dtype": head_dtype} if head_dtype else {}))
        self.engine = make_engine(model, tokenizer, **self._engine_kw)

    def refresh_engine(self) -> None:
        """A new engine over the model as it is now (the fused engine copies the layers it fuses: call this
        after replacing the model's layers, e.g. by `quantize_`)."""
        from lmlab.infer.fused import make_engine

        self.engine = make_engine(self.model, self.tokenizer, **self._engine_kw)

    @classmethod
    def from_spec(cls, spec: str, **kw) -> "LocalBackend":
        if spec == "smollm2" or spec.endswith(".gguf") or (Path(spec) / "config.json").exists():
            from lmlab.models.hf import load_pretrained

            model, tok = load_pretrained(spec)
            return cls(model, tok, name=Path(spec).stem if spec != "smollm2" else "smollm2", **kw)
        model, tok = _load_lmlab_checkpoint(spec)
        return cls(model, tok, name=Path(spec).name, **kw)

    def generate(self, prompts: list[str], gen: GenerationConfig, stream=None) -> list[list[str]]:
        return self.engine.generate(prompts, gen, stream)

    def chat(self, conversations: list[list[dict]], gen: GenerationConfig, stream=None) -> list[list[str]]:
        return self.generate([_chat_prompt(self.tokenizer, c) for c in conversations], gen, stream)

    def loglikelihood(self, prompts: list[str], continuations: list[str]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | prompt), continuation is the greedy one) per pair: lm-eval's request,
        scored in batches with each distinct prompt prefilled once (lmlab.infer.scoring)."""
        from lmlab.infer.scoring import score_loglikelihood

        ctx = [_with_bos(self.tokenizer, self.tokenizer.encode(p)) for p in prompts]
        tgt = [self.tokenizer.encode(c) for c in continuations]
        for c, p in zip(ctx, prompts):
            if not c:
                raise ValueError("logprobs: empty prompt (no tokens and no BOS to condition on)")
        return score_loglikelihood(self.model, list(zip(ctx, tgt)))

    def logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        return [lp for lp, _ in self.loglikelihood(prompts, continuations)]

    def score(self, texts: list[str]) -> list[float]:
        from lmlab.infer.scoring import score_loglikelihood

        ids = [_with_bos(self.tokenizer, self.tokenizer.encode(t)) for t in texts]
        return [lp for lp, _ in score_loglikelihood(self.model, [(i[:1], i[1:]) for i in ids])]


# ------------------------------------------------------------------------------------------ HF / GGUF
@BACKENDS.register("hf")
class HFBackend:
    """The transformers model as loaded by transformers (a reference for lmlab's own path)."""

    def __init__(self, hf_model, tokenizer, name: str = "hf"):
        self.name, self.model, self.tokenizer = name, hf_model, tokenizer

    @classmethod
    def from_spec(cls, spec: str, **kw) -> "HFBackend":
        from lmlab.models.hf import load_hf

        for k in ENGINE_OPTIONS:   # lmlab engine options; transformers decodes its own way
            kw.pop(k, None)
        model, tok = load_hf(spec)
        return cls(model, tok, name=spec, **kw)

    @torch.no_grad()
    def generate(self, prompts: list[str], gen: GenerationConfig, stream=None) -> list[list[str]]:
        from lmlab.infer.engine import validate_gen

        validate_gen(gen)
        if gen.seed is not None:
            torch.manual_seed(gen.seed)
        out = []
        for p in prompts:
            ids = torch.tensor([self.tokenizer.encode(p)])
            kw: dict[str, Any] = dict(max_new_tokens=gen.max_new_tokens, num_return_sequences=gen.n,
                                      repetition_penalty=gen.repetition_penalty,
                                      pad_token_id=self.tokenizer.eos_id, eos_token_id=self.tokenizer.eos_id)
            if gen.temperature > 0:
                kw.update(do_sample=True, temperature=gen.temperature, top_k=gen.top_k or None, top_p=gen.top_p)
            else:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            res = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            row = []
            for r in res:
                toks = [t for t in r[ids.shape[1]:].tolist() if t != self.tokenizer.eos_id]
                text = self.tokenizer.decode(toks)
                for s in gen.stop:
                    j = text.find(s) if s else -1
                    text = text[:j] if j >= 0 else text
                row.append(text)
            out.append(row)
        return out

    def chat(self, conversations: list[list[dict]], gen: GenerationConfig, stream=None) -> list[list[str]]:
        return self.generate([_chat_prompt(self.tokenizer, c) for c in conversations], gen)

    @torch.no_grad()
    def _token_logprobs(self, ctx: list[int], tgt: list[int]) -> float:
        x = torch.tensor([ctx + tgt])
        logp = torch.log_softmax(self.model(x).logits[0].float(), -1)
        pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(tgt))
        return float(logp[pos, torch.tensor(tgt)].sum())

    def logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        return [self._token_logprobs(_with_bos(self.tokenizer, self.tokenizer.encode(p)), self.tokenizer.encode(c))
                for p, c in zip(prompts, continuations)]

    def score(self, texts: list[str]) -> list[float]:
        out = []
        for t in texts:
            ids = _with_bos(self.tokenizer, self.tokenizer.encode(t))
            out.append(self._token_logprobs(ids[:1], ids[1:]))
        return out


# --------------------------------------------------------------------------------------------- openai
@BACKENDS.register("openai")
class OpenAIBackend:
    """Any OpenAI-compatible endpoint. logprobs/score need `echo` + `logprobs` on /v1/completions (lmlab
    serve and vLLM support them)."""

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None, timeout: float = 120.0):
        from openai import OpenAI

        self.name = model
        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "none"),
                             timeout=timeout, max_retries=1)

    @classmethod
    def from_spec(cls, spec: str, **kw) -> "OpenAIBackend":
        for k in ENGINE_OPTIONS:
            kw.pop(k, None)
        url, _, model = spec.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"openai backend {spec!r}: expected openai:http(s)://host:port/v1#model")
        if not model:
            from openai import OpenAI

            models = OpenAI(base_url=url, api_key=kw.get("api_key") or "none").models.list().data
            if not models:
                raise ConfigError(f"openai backend {url}: the endpoint lists no models")
            model = models[0].id
        return cls(url, model, **kw)

    def _kw(self, gen: GenerationConfig) -> dict:
        kw: dict[str, Any] = dict(model=self.model, max_tokens=gen.max_new_tokens, n=gen.n,
                                  temperature=gen.temperature, top_p=gen.top_p)
        if gen.stop:
            kw["stop"] = gen.stop
        if gen.seed is not None:
            kw["seed"] = gen.seed
        extra = {}
        if gen.top_k:
            extra["top_k"] = gen.top_k
        if gen.repetition_penalty != 1.0:
            extra["repetition_penalty"] = gen.repetition_penalty
        if extra:
            kw["extra_body"] = extra
        return kw

    def generate(self, prompts: list[str], gen: GenerationConfig, stream=None) -> list[list[str]]:
        out = []
        for p in prompts:
            r = self.client.completions.create(prompt=p, **self._kw(gen))
            out.append([c.text for c in sorted(r.choices, key=lambda c: c.index)])
        return out

    def chat(self, conversations: list[list[dict]], gen: GenerationConfig, stream=None) -> list[list[str]]:
        out = []
        for conv in conversations:
            r = self.client.chat.completions.create(messages=conv, **self._kw(gen))
            out.append([c.message.content or "" for c in sorted(r.choices, key=lambda c: c.index)])
        return out

    def _echo_logprob(self, text: str, start_char: int) -> float:
        r = self.client.completions.create(model=self.model, prompt=text, max_tokens=0, echo=True, logprobs=0)
        lp = r.choices[0].logprobs
        return float(sum(l for l, off in zip(lp.token_logprobs, lp.text_offset) if l is not None and off >= start_char))

    def logprobs(self, prompts: list[str], continuations: list[str]) -> list[float]:
        return [self._echo_logprob(p + c, len(p)) for p, c in zip(prompts, continuations)]

    def score(self, texts: list[str]) -> list[float]:
        return [self._echo_logprob(t, 0) for t in texts]
