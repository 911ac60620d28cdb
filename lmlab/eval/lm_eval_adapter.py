"""lm-evaluation-harness adapter: any lmlab Backend as an `lm_eval.api.model.LM`, so every lm-eval task runs on
lmlab models (optional extra `lmeval`; lm_eval is imported only when the adapter is built).

    from lmlab.eval.lm_eval_adapter import make_lm
    import lm_eval
    lm_eval.simple_evaluate(model=make_lm(load_backend("smollm2")), tasks=["hellaswag"], limit=100)

or by name after `register()`: `lm_eval --model lmlab --model_args spec=smollm2 --tasks arc_easy`.

Request mapping: loglikelihood (context, continuation) -> Backend.logprobs, returned as (logprob, is_greedy)
with is_greedy from `backend.is_greedy` when the backend offers it, else False (lm-eval only uses it for the
"acc" of a few perplexity-style tasks); loglikelihood_rolling (text,) -> Backend.score; generate_until
(context, {until, max_gen_toks, temperature, do_sample}) -> Backend.generate with stop strings.
"""
from __future__ import annotations

from typing import Any

_CLS = None


def _lm_class():
    global _CLS
    if _CLS is not None:
        return _CLS
    from lm_eval.api.model import LM  # noqa: optional dependency

    from lmlab.backend import GenerationConfig

    class LMLabLM(LM):
        def __init__(self, backend=None, spec: str | None = None, batch_size: int = 8, **kwargs: Any):
            super().__init__()
            if backend is None:
                if spec is None:
                    raise ValueError("LMLabLM: pass a backend or spec=<backend spec>")
                from lmlab.backend import load_backend
                backend = load_backend(spec)
            self.backend, self.bs = backend, int(batch_size)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            kv = dict(p.split("=", 1) for p in arg_string.split(",") if p)
            kv.update({k: v for k, v in (additional_config or {}).items() if v is not None and k == "batch_size"})
            return cls(**kv)

        def _chunks(self, xs):
            for i in range(0, len(xs), self.bs):
                yield xs[i:i + self.bs]

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            out = []
            for chunk in self._chunks([r.args for r in requests]):
                ctx, cont = [a[0] for a in chunk], [a[1] for a in chunk]
                lps = self.backend.logprobs(ctx, cont)
                greedy = self.backend.is_greedy(ctx, cont) if hasattr(self.backend, "is_greedy") else [False] * len(ctx)
                out += [(float(lp), bool(g)) for lp, g in zip(lps, greedy)]
            return out

        def loglikelihood_rolling(self, requests) -> list[float]:
            out = []
            for chunk in self._chunks([r.args[0] for r in requests]):
                out += [float(s) for s in self.backend.score(chunk)]
            return out

        def generate_until(self, requests) -> list[str]:
            out = []
            for ctx, kw in (r.args for r in requests):
                until = kw.get("until", [])
                until = [until] if isinstance(until, str) else list(until)
                temp = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
                gen = GenerationConfig(max_new_tokens=int(kw.get("max_gen_toks", 256)), temperature=temp,
                                       stop=until)
                text = self.backend.generate([ctx], gen)[0][0]
                for s in until:                      # backends may return the stop string itself
                    i = text.find(s)
                    if i >= 0:
                        text = text[:i]
                out.append(text)
            return out

    _CLS = LMLabLM
    return _CLS


def make_lm(backend, batch_size: int = 8):
    """An lm_eval LM wrapping `backend` (raises ImportError naming the extra when lm_eval is missing)."""
    try:
        return _lm_class()(backend=backend, batch_size=batch_size)
    except ImportError as e:
        raise ImportError(f"lm-evaluation-harness is not installed ({e}); pip install 'lmlab[lmeval]'") from None


def register(name: str = "lmlab") -> None:
    """Register the adapter with lm_eval's model registry under `name`."""
    from lm_eval.api.registry import register_model
    register_model(name)(_lm_class())
