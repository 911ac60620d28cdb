"""benchmarks/peers.py's own parts, with fake engines: workload construction, the worker line protocol,
token-count verification, medians and the markdown table. No peer engine is installed or run here."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import peers  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
from _protocol import SALT_BASE, salted  # noqa: E402


def char_encode(text: str) -> list[int]:
    """A fake tokenizer: one token per character."""
    return [ord(c) for c in text]


def test_workloads_have_the_issue_shapes():
    w = peers.build_workloads(char_encode, peers.FULL)
    a, b, c = w["a"], w["b"], w["c"]
    assert (len(a["prompts"]), a["n"], a["new"], a["temperature"]) == (1, 1, 128, 0.0)
    assert a["prompts"][0] == char_encode(peers.CHAT.format(q=peers.QUESTION_A))
    assert (len(b["prompts"]), len(b["prompts"][0]), b["n"], b["new"]) == (1, 700, 16, 64)
    assert b["temperature"] > 0                                   # 16 samples, not 16 copies of one greedy answer
    assert len(c["prompts"]) == 32 and c["n"] == 1 and c["new"] == 64
    assert {len(p) for p in c["prompts"]} == {1024 + 16}          # one length: no engine needs padding
    system = c["prompts"][0][:1024]
    assert all(p[:1024] == system for p in c["prompts"])          # the shared system prompt
    assert len({tuple(p[1024:]) for p in c["prompts"]}) == 32     # 32 distinct questions
    assert [peers.expected_tokens(w[k]) for k in "abc"] == [128, 16 * 64, 32 * 64]


def test_exact_tokens_repeats_then_cuts():
    ids = peers.exact_tokens(char_encode, "abc", 8)
    assert ids == char_encode("abcabcab")
    assert peers.exact_tokens(char_encode, "abcdef", 2) == char_encode("ab")
    with pytest.raises(ValueError, match="no tokens"):
        peers.exact_tokens(lambda t: [], "abc", 4)


def test_questions_cut_to_the_same_tokens_are_rejected():
    s = peers.Sizes(c_prompts=3, c_question=4)      # " Que" for every question: not distinct
    with pytest.raises(ValueError, match="not distinct"):
        peers.build_workloads(char_encode, s)


def test_verify_tokens():
    w = {"prompts": [[1, 2], [3, 4]], "n": 2, "new": 5, "temperature": 0.0}
    assert peers.verify_tokens(w, [5, 5, 5, 5]) is None
    assert peers.verify_tokens(w, [5, 5, 5]) == "3 sequences returned, 4 expected"
    assert peers.verify_tokens(w, [5, 2, 5, 4]) == "2/4 sequences had 2–4 new tokens, not 5"


def test_salted_changes_only_the_first_token_per_seed():
    w = {"prompts": [[7, 8, 9], [7, 8, 10]], "n": 1, "new": 2, "temperature": 0.0}
    s3, s4 = salted(w, 3), salted(w, 4)
    assert s3["prompts"] == [[SALT_BASE + 3, 8, 9], [SALT_BASE + 3, 8, 10]]   # the shared prefix stays shared
    assert s4["prompts"][0][0] != s3["prompts"][0][0]
    assert w["prompts"][0][0] == 7                                           # the workload itself is untouched


def test_summarize_median_and_mismatch():
    w = {"prompts": [[1]], "n": 2, "new": 4, "temperature": 1.0}
    runs = [{"wall_s": 1.0, "tokens": [4, 4]}, {"wall_s": 2.0, "tokens": [4, 4]}, {"wall_s": 4.0, "tokens": [4, 4]}]
    r = peers.summarize(w, runs)
    assert r["tok_per_s"] == pytest.approx(4.0)        # 8/1, 8/2, 8/4 tokens/s -> median 4
    assert r["wall_s"] == 2.0 and r["tokens_ok"] and r["mismatch"] is None
    r = peers.summarize(w, runs[:2] + [{"wall_s": 1.0, "tokens": [4, 1]}])
    assert not r["tokens_ok"] and r["mismatch"] == "1/2 sequences had 1–1 new tokens, not 4"
    assert r["tok_per_s"] == pytest.approx(5.0)        # 8, 4, 5 -> 5: the tokens actually returned count


def test_d_verify_flags_eos_stops_and_errors():
    spec = {"clients": 2, "max_tokens": 3}
    run = {"wall_s": 2.0, "errors": 0, "tokens": [3, 3], "p50_s": 1.0, "ttft_p50_s": 0.1, "first_error": None}
    assert peers.d_verify(spec, [run])["tokens_ok"] and peers.d_verify(spec, [run])["tok_per_s"] == 3.0
    short = {**run, "tokens": [3, 1]}
    assert "the server stops at EOS" in peers.d_verify(spec, [short])["mismatch"]
    bad = {**run, "errors": 1, "tokens": [3], "first_error": "HTTP 500"}
    assert peers.d_verify(spec, [bad])["mismatch"] == "1 failed requests (first: HTTP 500)"


def test_format_table():
    res = {"a": {"x": {"tok_per_s": 12.345, "tokens_ok": True}, "y": {"error": "not available: no venv"}},
           "b": {"x": {"tok_per_s": 3.0, "tokens_ok": False, "mismatch": "1/2 sequences had 1–1 new tokens, not 4"}}}
    t = peers.format_table(res, ["x", "y"], ["a", "b"], {"a": "(a) one"})
    lines = t.splitlines()
    assert lines[0] == "| engine | (a) one | b |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[2] == "| x | 12.3 | 3.0 † |"
    assert lines[3] == "| y | — | — |"
    assert "- y, a: not available: no venv" in lines
    assert "- x, b: † 1/2 sequences had 1–1 new tokens, not 4" in lines


FAKE_WORKER = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {proto!r})
    from _protocol import serve_worker

    def load():
        if {fail!r}:
            raise OSError("no weights here")
        def run(w, seed):
            time.sleep(0.01)
            assert w["prompts"][0][0] == 1000 + seed      # salted by the protocol
            return [w["new"] - {short}] * (len(w["prompts"]) * w["n"])
        return run, {{"engine": "fake"}}

    serve_worker(load, sys.argv[sys.argv.index("--workloads") + 1])
''')


def fake_engine(tmp_path: Path, name: str, short: int = 0, fail: bool = False) -> peers.EngineSpec:
    script = tmp_path / f"{name}.py"
    script.write_text(FAKE_WORKER.format(proto=str(ROOT / "benchmarks" / "peers"), short=short, fail=fail))
    return peers.EngineSpec(name, Path(sys.executable), str(script))


def test_workers_over_the_protocol_interleaved(tmp_path):
    w = {"a": {"prompts": [[5, 6]], "n": 3, "new": 4, "temperature": 0.0}}
    wfile = tmp_path / "w.json"
    wfile.write_text(__import__("json").dumps(w))
    good = peers.Worker(fake_engine(tmp_path, "good"), wfile, 1, tmp_path, timeout=60)
    short = peers.Worker(fake_engine(tmp_path, "short", short=1), wfile, 1, tmp_path, timeout=60)
    try:
        good.wait_ready(60)
        short.wait_ready(60)
        assert good.info == {"engine": "fake"}
        from benchmarks._interleave import interleaved

        seeds = iter(range(1, 100))
        times = interleaved({n: (lambda wk=wk: wk.run("a", next(seeds))) for n, wk in
                             [("good", good), ("short", short)]}, reps=2, warmup=0, log=lambda m: None)
        r_good = peers.summarize(w["a"], [s.extra for s in times["good"]])
        r_short = peers.summarize(w["a"], [s.extra for s in times["short"]])
        assert r_good["tokens_ok"] and r_good["tok_per_s"] > 0
        assert r_short["mismatch"] == "3/3 sequences had 3–3 new tokens, not 4"
    finally:
        good.close()
        short.close()
    assert good.proc.returncode == 0 and short.proc.returncode == 0


def test_a_worker_that_cannot_load_says_why(tmp_path):
    wfile = tmp_path / "w.json"
    wfile.write_text("{}")
    wk = peers.Worker(fake_engine(tmp_path, "broken", fail=True), wfile, 1, tmp_path, timeout=60)
    with pytest.raises(RuntimeError, match="broken: OSError: no weights here"):
        wk.wait_ready(60)
    wk.close()


def test_missing_environment_is_reported(tmp_path):
    spec = peers.EngineSpec("ghost", tmp_path / "nope/bin/python", "worker_x.py")
    assert spec.missing() == f"{tmp_path / 'nope/bin/python'} not found (run benchmarks/peers/setup.sh)"
    names = [s.name for s in peers.engine_specs(tmp_path)]
    assert names == ["lmlab fp32", "lmlab int8", "lmlab int4", "lmlab bf16", "lmlab int8g", "vLLM-CPU", "llama.cpp",
                     "llama.cpp (node-llama-cpp)", "onnxruntime-genai int4", "onnxruntime-genai fp32", "transformers"]


def test_workers_are_pinned_to_the_cpus_asked(tmp_path):
    """--cpus: the worker (and what it starts) runs only on those CPUs; bad values exit naming them."""
    cpu = min(peers.os.sched_getaffinity(0))
    wfile = tmp_path / "w.json"
    wfile.write_text("{}")
    wk = peers.Worker(fake_engine(tmp_path, "pinned"), wfile, 1, tmp_path, timeout=60, cpus={cpu})
    try:
        wk.wait_ready(60)
        assert peers.os.sched_getaffinity(wk.proc.pid) == {cpu}
    finally:
        wk.close()
    assert peers.parse_cpus(None) is None and peers.parse_cpus(str(cpu)) == {cpu}
    with pytest.raises(SystemExit, match="--cpus 'x': use CPU ids"):
        peers.parse_cpus("x")
    with pytest.raises(SystemExit, match="--cpus '4096': this process may use CPUs"):
        peers.parse_cpus("4096")
