"""Bad input to every command ends in one line on stderr, `lmlab <cmd>: error: ...` naming the culprit, a
nonzero exit, and nothing half-written; bad requests to `lmlab serve` get a 4xx with a one-line JSON error.

Most cases call `lmlab.cli.main` in-process (fast); the SUBPROCESS ones run `python -m lmlab.cli` for the
real exit path (interpreter start, argv bytes, exit status).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
HUGE = str(10**12)


def _files(tmp: Path) -> None:
    """Inputs every case may point at (relative to the case's working directory)."""
    (tmp / "empty.yaml").write_text("")
    (tmp / "comments.yaml").write_text("# nothing but a comment\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "bad.yaml").write_text("model:\n  n_layer: [1\n")
    (tmp / "binary.yaml").write_bytes(bytes(range(128, 256)) * 4)
    (tmp / "binary.txt").write_bytes(bytes(range(128, 256)) * 40)
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.txt").write_text("\n\n   \n\t\n")
    (tmp / "afile").write_text("a regular file\n")
    (tmp / "garbage.pt").write_bytes(bytes(range(256)) * 2)
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "text.pt").write_text("hello\n")
    (tmp / "garbage.gguf").write_bytes(b"not a gguf" * 10)
    step = tmp / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "state.json").write_text('{"step": 1, "config": {"model": {}}}')
    (step / "model.safetensors").write_bytes(b"\xff" * 64)
    (tmp / "confdir").mkdir()
    (tmp / "wrong.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    (tmp / "notjson.jsonl").write_text("this is not json\n")
    (tmp / "list.jsonl").write_text("[1, 2]\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage" * 20)
    (tmp / "notext.jsonl").write_text('{"id": 1, "body": "x"}\n')
    (tmp / "docs.jsonl").write_text('{"text": "some words to score"}\n')
    (tmp / "spec_ok.yaml").write_text("name: t\ndata: docs.jsonl\nkind: loglikelihood_rolling\nprompt: '{text}'\n")
    (tmp / "spec_fields.yaml").write_text("name: t\ndata: wrong.jsonl\nkind: loglikelihood_rolling\nprompt: '{text}'\n")
    (tmp / "spec_missing.yaml").write_text("name: t\ndata: nope.jsonl\nkind: loglikelihood_rolling\nprompt: '{text}'\n")
    (tmp / "spec_kind.yaml").write_text("name: t\ndata: docs.jsonl\nkind: bogus\nprompt: '{text}'\n")


# (id, argv, needles that the one error line must contain, run in a subprocess)
CASES = [
    # ---- train: config files
    ("train-empty-config", ["train", "empty.yaml"], ["empty.yaml", "empty"], True),
    ("train-comment-only-config", ["train", "comments.yaml"], ["comments.yaml", "empty"], False),
    ("train-list-config", ["train", "list.yaml"], ["list.yaml", "mapping"], False),
    ("train-invalid-yaml", ["train", "bad.yaml"], ["bad.yaml", "line"], False),
    ("train-binary-config", ["train", "binary.yaml"], ["binary.yaml", "UTF-8"], False),
    ("train-config-is-dir", ["train", "confdir"], ["confdir", "directory"], False),
    ("train-missing-config", ["train", "nope.yaml"], ["nope.yaml", "does not exist"], False),
    # ---- train: values, cross-field checks, sizes
    ("train-negative-layers", ["train", "model.n_layer=-2"], ["model.n_layer", "-2"], False),
    ("train-override-no-equals", ["train", "x.yaml", "model.n_layer"], ["x.yaml"], False),
    ("train-bad-lr", ["train", "train.lr=-1"], ["train.lr"], False),
    ("train-head-divisibility", ["train", "model.n_head=7"], ["n_head=7"], False),
    ("train-seq-longer-than-model", ["train", "model.max_seq_len=16"], ["model.max_seq_len=16", "data.seq_len"], False),
    ("train-window-longer-than-model", ["train", "model.sliding_window=100000"], ["model.sliding_window=100000"], False),
    ("train-vocab-mismatch", ["train", "model.vocab_size=1000", "data.vocab_size=2000"],
     ["model.vocab_size=1000", "data.vocab_size=2000"], False),
    ("train-huge-n_layer", ["train", "model.n_layer=100000"], ["model.n_layer=100000", "exceeds", "--allow-large"], False),
    ("train-huge-d_model", ["train", "model.d_model=100000000", "model.n_head=1"], ["model.d_model=100000000"], False),
    ("train-huge-vocab", ["train", "model.vocab_size=10000000000", "data.vocab_size=10000000000"],
     ["vocab_size=10000000000", "exceeds"], False),
    ("train-huge-batch", ["train", "train.batch_size=1000000000"], ["train.batch_size=1000000000", "exceeds"], False),
    ("train-out-under-file", ["train", "--out", "afile/run"], ["afile"], False),
    ("train-override-not-utf8", ["train", "name=\udcff\udcfe"], ["UTF-8"], False),
    # ---- generate
    ("generate-pickle-garbage", ["generate", "--model", "lmlab:garbage.pt", "--prompt", "hi"], ["garbage.pt"], False),
    ("generate-empty-weights", ["generate", "--model", "lmlab:empty.pt", "--prompt", "hi"], ["empty.pt"], False),
    ("generate-text-as-weights", ["generate", "--model", "lmlab:text.pt", "--prompt", "hi"], ["text.pt"], False),
    ("generate-corrupt-safetensors", ["generate", "--model", "lmlab:run", "--prompt", "hi"], ["run", "Safetensor"],
     False),
    ("generate-not-gguf", ["generate", "--model", "garbage.gguf", "--prompt", "hi"], ["garbage.gguf"], False),
    ("generate-missing-model", ["generate", "--model", "lmlab:nope", "--prompt", "hi"], ["nope"], False),
    ("generate-prompt-not-utf8", [b"generate", b"--model", b"lmlab:nope", b"--prompt", b"\xff\xfe bad"],
     ["--prompt", "UTF-8"], True),
    ("generate-negative-max-tokens", ["generate", "--prompt", "hi", "--max-tokens", "-3"], ["--max-tokens", "-3"],
     False),
    ("generate-huge-max-tokens", ["generate", "--prompt", "hi", "--max-tokens", HUGE], ["--max-tokens", HUGE], False),
    ("generate-nan-temperature", ["generate", "--prompt", "hi", "--temperature", "nan"], ["--temperature"], False),
    ("generate-top-p-range", ["generate", "--prompt", "hi", "--top-p", "1.5"], ["--top-p", "1.5"], False),
    ("generate-zero-samples", ["generate", "--prompt", "hi", "-n", "0"], ["-n", "0"], False),
    ("generate-bad-int", ["generate", "--prompt", "hi", "--top-k", "many"], ["--top-k", "many"], False),
    # ---- eval
    ("eval-wrong-fields", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "wrong.jsonl"],
     ["wrong.jsonl", "question"], True),
    ("eval-not-json", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "notjson.jsonl"],
     ["notjson.jsonl:1", "JSON"], False),
    ("eval-json-not-object", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "list.jsonl"],
     ["list.jsonl:1", "object"], False),
    ("eval-empty-data", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "empty.jsonl"],
     ["empty.jsonl", "no documents"], False),
    ("eval-binary-data", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "binary.jsonl"],
     ["binary.jsonl", "UTF-8"], False),
    ("eval-missing-data", ["eval", "--task", "gsm8k", "--model", "smollm2", "--data", "nope.jsonl"],
     ["--data", "nope.jsonl"], False),
    ("eval-empty-task-yaml", ["eval", "--task", "empty.yaml", "--model", "smollm2"], ["empty.yaml", "empty"], False),
    ("eval-invalid-task-yaml", ["eval", "--task", "bad.yaml", "--model", "smollm2"], ["bad.yaml", "line"], False),
    ("eval-list-task-yaml", ["eval", "--task", "list.yaml", "--model", "smollm2"], ["list.yaml", "mapping"], False),
    ("eval-spec-wrong-fields", ["eval", "--task", "spec_fields.yaml", "--model", "smollm2"],
     ["document 0", "'text'"], False),
    ("eval-spec-missing-data", ["eval", "--task", "spec_missing.yaml", "--model", "smollm2"], ["nope.jsonl"], False),
    ("eval-spec-bad-kind", ["eval", "--task", "spec_kind.yaml", "--model", "smollm2"], ["kind", "bogus"], False),
    ("eval-corrupt-model", ["eval", "--task", "spec_ok.yaml", "--model", "lmlab:garbage.pt", "--no-progress"],
     ["--model", "garbage.pt"], False),
    ("eval-out-under-file", ["eval", "--task", "spec_ok.yaml", "--model", "smollm2", "--out", "afile/x"], ["afile"],
     False),
    ("eval-negative-limit", ["eval", "--task", "mmlu", "--model", "smollm2", "--limit", "-1"], ["--limit", "-1"], False),
    ("eval-zero-batch", ["eval", "--task", "mmlu", "--model", "smollm2", "--batch-size", "0"], ["--batch-size"], False),
    # ---- serve (command line; requests are in SERVE_REQUESTS below)
    ("serve-port-range", ["serve", "--port", "70000"], ["--port", "70000"], True),
    ("serve-zero-concurrency", ["serve", "--max-concurrency", "0"], ["--max-concurrency"], False),
    ("serve-corrupt-model", ["serve", "--model", "lmlab:garbage.pt"], ["garbage.pt"], False),
    ("serve-negative-window", ["serve", "--batch-window-ms", "-1"], ["--batch-window-ms"], False),
    # ---- data
    ("data-embedded-negative-chars", ["data", "embedded", "--max-chars", "-5"], ["--max-chars", "-5"], False),
    ("data-embedded-small-vocab", ["data", "embedded", "--vocab-size", "10"], ["--vocab-size", "10"], False),
    ("data-rephrase-empty-input", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in", "empty.txt",
                                   "--out", "reph"], ["empty.txt", "empty"], False),
    ("data-rephrase-blank-input", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in", "blank.txt",
                                   "--out", "reph"], ["blank.txt"], False),
    ("data-rephrase-binary-input", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in",
                                    "binary.txt", "--out", "reph"], ["binary.txt", "UTF-8"], False),
    ("data-rephrase-no-text-field", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in",
                                     "notext.jsonl", "--out", "reph"], ["notext.jsonl:1", "text"], False),
    ("data-rephrase-missing-input", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in",
                                     "nope.txt", "--out", "reph"], ["nope.txt"], False),
    ("data-rephrase-zero-shard", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in", "docs.jsonl",
                                  "--out", "reph", "--shard-size", "0"], ["--shard-size"], False),
    ("data-rephrase-out-under-file", ["data", "rephrase", "--style", "easy", "--backend", "smollm2", "--in",
                                      "docs.jsonl", "--out", "afile/reph"], ["afile"], False),
    ("data-rephrase-bad-style", ["data", "rephrase", "--style", "poem", "--backend", "smollm2", "--in", "docs.jsonl",
                                 "--out", "reph"], ["--style", "poem"], False),
    # ---- tokenizer
    ("tokenizer-empty-input", ["tokenizer", "train", "--input", "empty.txt", "--out", "tok"], ["empty.txt", "no text"],
     True),
    ("tokenizer-blank-input", ["tokenizer", "train", "--input", "blank.txt", "--out", "tok"], ["blank.txt", "no text"],
     False),
    ("tokenizer-binary-input", ["tokenizer", "train", "--input", "binary.txt", "--out", "tok"],
     ["binary.txt", "UTF-8"], False),
    ("tokenizer-missing-input", ["tokenizer", "train", "--input", "nope.txt", "--out", "tok"], ["nope.txt"], False),
    ("tokenizer-small-vocab", ["tokenizer", "train", "--input", "docs.jsonl", "--out", "tok", "--vocab-size", "100"],
     ["--vocab-size", "100"], False),
    ("tokenizer-out-under-file", ["tokenizer", "train", "--input", "docs.jsonl", "--out", "afile/tok"], ["afile"],
     False),
    # ---- align
    ("align-huge-model", ["align", "sft", "model.n_layer=100000"], ["model.n_layer=100000", "exceeds"], True),
    ("align-bad-lr", ["align", "sft", "sft.lr=-1"], ["sft.lr=-1"], False),
    ("align-zero-iterations", ["align", "ppo", "rl.iterations=0"], ["rl.iterations"], False),
    ("align-missing-config", ["align", "sft", "--config", "nope.yaml"], ["nope.yaml"], False),
    ("align-unknown-key", ["align", "dpo", "bogus=1"], ["bogus"], False),
    ("align-empty-config", ["align", "sft", "--config", "empty.yaml"], ["empty.yaml"], False),
    ("align-invalid-yaml", ["align", "sft", "--config", "bad.yaml"], ["bad.yaml"], False),
    ("align-no-data", ["align", "sft", "sft.steps=1"], ["data"], False),
    # ---- reproduce
    ("reproduce-zero-seeds", ["reproduce", "--seeds", "0"], ["--seeds", "0"], True),
    ("reproduce-unknown-experiment", ["reproduce", "--only", "nope", "--out", "rep"], ["nope"], False),
    ("reproduce-out-under-file", ["reproduce", "--only", "hydragen", "--out", "afile/rep"], ["afile"], False),
    ("reproduce-bad-scale", ["reproduce", "--scale", "huge"], ["--scale", "huge"], False),
    ("reproduce-zero-jobs", ["reproduce", "--jobs", "0"], ["--jobs", "0"], False),
    ("reproduce-ray-address-alone", ["reproduce", "--only", "hydragen", "--ray-address", "h:1"], ["--ray-address"],
     False),
    ("report-diff-missing", ["report", "diff", "nope", "confdir"], ["nope"], False),
    ("report-diff-not-claims", ["report", "diff", "notjson.jsonl", "list.jsonl"], ["notjson.jsonl"], False),
]


def _cmd(argv: list) -> str:
    first = argv[0].decode() if isinstance(argv[0], bytes) else argv[0]
    return first


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMLAB_DATA", str(tmp_path.parent / f"{tmp_path.name}-cache"))  # never inside the listing
    monkeypatch.delenv("LMLAB_DEBUG", raising=False)
    monkeypatch.delenv("LMLAB_ALLOW_LARGE", raising=False)
    return tmp_path


def _case_values(c) -> tuple:
    return tuple(c.values) if hasattr(c, "marks") else c


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory):
    """The subprocess cases, started together (interpreter start-up dominates): name -> (code, stderr, before,
    workdir)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LMLAB_DEBUG", None)
    env.pop("LMLAB_ALLOW_LARGE", None)
    procs = {}
    for name, argv, _, sub in map(_case_values, CASES):
        if not sub:
            continue
        wd = tmp_path_factory.mktemp(name)
        _files(wd)
        env_case = {**env, "LMLAB_DATA": str(wd.parent / f"{wd.name}-cache")}
        procs[name] = (subprocess.Popen([sys.executable.encode(), b"-m", b"lmlab.cli",
                                         *[a if isinstance(a, bytes) else a.encode() for a in argv]],
                                        cwd=wd, env=env_case, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                       _listing(wd), wd)
    out = {}
    for name, (proc, before, wd) in procs.items():
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        out[name] = (proc.returncode, err.decode("utf-8", "replace"), before, wd)
    return out


@pytest.mark.parametrize("name,argv,needles,sub", CASES,
                         ids=[c.values[0] if hasattr(c, "marks") else c[0] for c in CASES])
def test_bad_input_one_line(name, argv, needles, sub, request, capsys):
    if sub:
        code, err, before, workdir = request.getfixturevalue("subprocess_runs")[name]
    else:
        workdir = request.getfixturevalue("workdir")
        before = _listing(workdir)
        try:
            main(list(argv))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 - a traceback is exactly what this test forbids
            pytest.fail(f"{name}: raised {type(e).__name__}: {e}")
        err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None), f"{name}: exit {code}"
    assert len(lines) == 1, f"{name}: stderr has {len(lines)} lines:\n{err}"
    cmd = _cmd(argv)
    assert lines[0].startswith(f"lmlab {cmd}") and ": error: " in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    left = _listing(workdir) - before
    assert not left, f"{name}: left behind {sorted(left)}"


def test_allow_large_lets_the_estimate_pass(workdir, capsys):
    """--allow-large skips the memory refusal (the run then fails on the next check, not on memory)."""
    with pytest.raises(SystemExit):
        main(["train", "model.n_layer=100000", "model.max_seq_len=16", "--allow-large"])
    err = capsys.readouterr().err
    assert "model.max_seq_len=16" in err and "exceeds" not in err


def test_error_after_progress_bar_starts_on_its_own_line(capsys, monkeypatch):
    """A tqdm bar on screen when an error surfaces is closed (its line ended) before the error is printed."""
    from tqdm import tqdm

    import lmlab.cli as cli

    def boom(args):
        bar = tqdm(total=10, desc="work", leave=True, file=sys.stderr)
        bar.update(3)
        raise ValueError("data file x.jsonl: broken")

    monkeypatch.setattr(cli, "run_list", boom)
    with pytest.raises(SystemExit) as e:
        main(["list"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\nlmlab list: error: data file x.jsonl: broken\n"), repr(err[-200:])


# ------------------------------------------------------------------------------------------ serve requests
pytestmark_serve = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("fastapi", "httpx")),
                                      reason="needs the serve extra (fastapi, httpx)")

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
SERVE_REQUESTS = [
    # (id, path, raw body (bytes) or JSON-able object, status, needle in the error message)
    ("not-json", CMPL, b"{not json", 400, "not valid JSON"),
    ("not-utf8", CMPL, b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, "UTF-8"),
    ("not-object", CMPL, b"[1, 2, 3]", 400, "JSON object"),
    ("no-model", CMPL, {"prompt": "hi"}, 400, "model"),
    ("wrong-model", CMPL, {"model": "gpt-9", "prompt": "hi"}, 404, "gpt-9"),
    ("prompt-not-string", CMPL, {"model": "tiny", "prompt": 5}, 400, "prompt"),
    ("prompt-empty-list", CMPL, {"model": "tiny", "prompt": []}, 400, "prompt"),
    ("prompt-lone-surrogate", CMPL, b'{"model": "tiny", "prompt": "a\\ud800b"}', 400, "prompt"),
    ("nan-temperature", CMPL, b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', 400, "NaN"),
    ("infinite-max-tokens", CMPL, b'{"model": "tiny", "prompt": "hi", "max_tokens": 1e400}', 400, "max_tokens"),
    ("huge-max-tokens", CMPL, {"model": "tiny", "prompt": "hi", "max_tokens": 10**30}, 400, "max_tokens"),
    ("negative-max-tokens", CMPL, {"model": "tiny", "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("temperature-string", CMPL, {"model": "tiny", "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("top-p-range", CMPL, {"model": "tiny", "prompt": "hi", "top_p": 3}, 400, "top_p"),
    ("huge-top-k", CMPL, {"model": "tiny", "prompt": "hi", "top_k": 10**30}, 400, "top_k"),
    ("zero-n", CMPL, {"model": "tiny", "prompt": "hi", "n": 0}, 400, "'n'"),
    ("huge-seed", CMPL, {"model": "tiny", "prompt": "hi", "seed": 2**70}, 400, "seed"),
    ("stream-not-bool", CMPL, {"model": "tiny", "prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("stop-not-strings", CMPL, {"model": "tiny", "prompt": "hi", "stop": [1, 2]}, 400, "stop"),
    ("messages-missing", CHAT, {"model": "tiny"}, 400, "messages"),
    ("messages-content-not-string", CHAT, {"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400,
     "messages"),
    ("messages-lone-surrogate", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}',
     400, "messages"),
    ("body-too-large", CMPL, {"model": "tiny", "prompt": "x" * 5000}, 413, "exceeds"),
    ("prompt-too-long", CMPL, {"model": "tiny", "prompt": "x" * 300}, 400, "limit"),
]


@pytest.fixture(scope="module")
def serve_client():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from lmlab.infer.server import ServerLimits, create_app

    sys.path.insert(0, str(Path(__file__).parent))
    from _helpers import CharTok

    class NoEngine:  # every request here must be refused before generation
        def generate_ids(self, *a, **k):
            raise AssertionError("a bad request reached the engine")

    app = create_app(NoEngine(), "tiny", CharTok(), limits=ServerLimits(max_tokens=32, max_prompt_tokens=256,
                                                                         max_body_bytes=4096, batch_window_s=0.0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    app.state.batcher.stop()


@pytestmark_serve
@pytest.mark.parametrize("name,path,body,status,needle", SERVE_REQUESTS, ids=[r[0] for r in SERVE_REQUESTS])
def test_bad_request_is_a_4xx_with_one_line(name, path, body, status, needle, serve_client):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = serve_client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, (r.status_code, r.text)
    msg = r.json()["error"]["message"]
    assert "\n" not in msg and needle in msg, msg
