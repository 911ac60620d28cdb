"""lm-eval adapter: request mapping checked against a stand-in `lm_eval` package with the same LM interface;
the real package is exercised when installed."""
import sys
import types

import pytest

import lmlab.eval.lm_eval_adapter as adapter


class Req:
    def __init__(self, *args):
        self.args = args


class Fake:
    name = "fake"

    def __init__(self):
        self.gens = []

    def logprobs(self, prompts, conts):
        return [-float(len(c)) for c in conts]

    def score(self, texts):
        return [-0.5 * len(t) for t in texts]

    def generate(self, prompts, gen):
        self.gens.append(gen)
        return [["42\nQuestion: next"] for _ in prompts]


@pytest.fixture
def stand_in_lm_eval(monkeypatch):
    lm_eval = types.ModuleType("lm_eval")
    api = types.ModuleType("lm_eval.api")
    model = types.ModuleType("lm_eval.api.model")
    registry = types.ModuleType("lm_eval.api.registry")

    class LM:
        def __init__(self):
            pass
    registered = {}
    model.LM = LM
    registry.register_model = lambda name: (lambda cls: registered.setdefault(name, cls))
    for n, m in {"lm_eval": lm_eval, "lm_eval.api": api, "lm_eval.api.model": model,
                 "lm_eval.api.registry": registry}.items():
        monkeypatch.setitem(sys.modules, n, m)
    monkeypatch.setattr(adapter, "_CLS", None)
    yield LM, registered
    adapter._CLS = None


def test_adapter_maps_requests(stand_in_lm_eval):
    LM, registered = stand_in_lm_eval
    be = Fake()
    lm = adapter.make_lm(be, batch_size=2)
    assert isinstance(lm, LM)
    assert lm.loglikelihood([Req("Q:", " yes"), Req("Q:", " no"), Req("x", "abc")]) == \
        [(-4.0, False), (-3.0, False), (-3.0, False)]
    assert lm.loglikelihood_rolling([Req("abcd"), Req("ab")]) == [-2.0, -1.0]
    got = lm.generate_until([Req("Question: 6*7?\nAnswer:", {"until": ["Question:"], "max_gen_toks": 16})])
    assert got == ["42\n"] and be.gens[0].max_new_tokens == 16 and be.gens[0].stop == ["Question:"]
    assert be.gens[0].temperature == 0.0
    adapter.register()
    assert registered["lmlab"] is type(lm)


def test_adapter_with_real_lm_eval():
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness (optional extra lmeval) is not installed")
    lm = adapter.make_lm(Fake())
    from lm_eval.api.model import LM
    assert isinstance(lm, LM)
    assert lm.loglikelihood_rolling([Req("abcd")]) == [-2.0]
