"""`lmlab eval` end to end on a fake backend (patched in where lmlab.backend.load_backend lives)."""
import json

import pytest

import lmlab.backend
from lmlab.cli import main


class LetterBackend:
    """Always prefers the continuation " B" (log-likelihood 0 vs −3)."""
    name = "letter-b"

    def logprobs(self, prompts, continuations):
        return [0.0 if c == " B" else -3.0 for c in continuations]


def test_eval_cli_mmlu_loglikelihood(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lmlab.backend, "load_backend", lambda spec: LetterBackend(), raising=False)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "mmlu", "--mode", "loglikelihood", "--model", "fake", "--limit", "50",
              "--out", str(tmp_path), "--no-progress"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    res = json.loads(files[0].read_text())
    from lmlab.eval.tasks.mmlu import load_mmlu
    expect = sum(d["correct_answer"] == "B" for d in load_mmlu()[:50]) / 50
    assert res["n"] == 50 and res["metrics"]["acc"] == pytest.approx(expect)
    lo, hi = res["ci"]["acc"]
    assert lo <= expect <= hi and f"| acc | {expect:.4f} | [{lo:.4f}, {hi:.4f}] |" in out
    assert set(res["categories"]) <= {"stem", "humanities", "social_sciences", "other"}


@pytest.mark.parametrize("argv,msg", [
    (["--task", "gsm8k"], "needs --data"),
    (["--task", "mmlx"], "unknown"),
    (["--task", "mmlu", "--limit", "0"], "argument --limit: 0 is out of range"),
])
def test_eval_cli_bad_input_is_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "fake"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1
