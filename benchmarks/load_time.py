"""Load time of SmolLM2-135M-Instruct (the embedded Q4_1 GGUF): converted every time vs read from the weights
cache, and `lmlab serve --model smollm2` time to ready, each in a fresh Python process.

    python benchmarks/load_time.py                # 3 interleaved rounds
    python benchmarks/load_time.py --reps 5 --serve-convert

Sides (each a new interpreter, so imports count, as for a user; the load_pretrained call alone, after the
imports of torch and transformers, is timed inside the child too):

    convert       load_pretrained("smollm2", cache=False): transformers dequantises the GGUF and converts its
                  tokenizer (what every load did before the cache)
    cached        load_pretrained("smollm2") with the cache entry present (sha256 of the GGUF, safetensors read
                  and checked, tokenizer from its tokenizer.json)
    hf_folder     load_pretrained(<the cache entry as an HF folder>): the safetensors path, not cached, for
                  comparison (does an HF folder need a cache?)
    serve_cached  `python -m lmlab.cli serve --model smollm2` from start until GET /v1/models answers 200
                  on 127.0.0.1, with the entry present
    int4_cached   lmlab.models.gguf_quant.load_gguf_quantized("smollm2", "int4") with its converted-model entry
                  present (the packed codes, scales and tokenizer; no GGUF parsing)
    serve_int4_cached  `lmlab serve --model smollm2 --quantize int4` to ready, entries present

Before the rounds, `lmlab serve` is timed once on an empty cache (it converts and writes the entry: the first
start's time to ready); `--serve-convert` adds a side serving with LMLAB_WEIGHTS_CACHE=0. Each figure is the
median over rounds of the child's wall time and of its CPU time (user + system: the fairer clock while
other jobs load the machine); the load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))
from benchmarks._interleave import interleaved, median_of  # noqa: E402

LOAD = ("import sys, time, torch, transformers; torch.set_num_threads(1); from lmlab.models.hf import load_pretrained; "
        "t0, c0 = time.perf_counter(), time.process_time(); "
        "m, t = load_pretrained(sys.argv[1], cache=sys.argv[2] == '1'); assert t.vocab_size == 49152; "
        "print(time.perf_counter() - t0, time.process_time() - c0)")


LOAD_INT4 = ("import sys, time, torch, transformers; torch.set_num_threads(1); "
             "from lmlab.models.gguf_quant import load_gguf_quantized; t0, c0 = time.perf_counter(), time.process_time(); "
             "m, t = load_gguf_quantized(sys.argv[1], 'int4'); assert t.vocab_size == 49152; "
             "print(time.perf_counter() - t0, time.process_time() - c0)")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _env(cache_dir: str, cache: bool) -> dict:
    env = dict(os.environ, LMLAB_CACHE_DIR=cache_dir, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["LMLAB_WEIGHTS_CACHE"] = "1" if cache else "0"
    return env


def load_once(spec: str, cache_dir: str, cache: bool, code: str = LOAD) -> dict:
    c0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, spec, "1" if cache else "0"], env=_env(cache_dir, cache),
                         check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    call_wall, call_cpu = map(float, out.split()[-2:])   # load_pretrained alone, after the imports
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _children_cpu() - c0, "call_wall_s": call_wall,
            "call_cpu_s": call_cpu}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(cache_dir: str, cache: bool, timeout: float = 900.0, extra: tuple = ()) -> dict:
    port = _free_port()
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "serve", "--model", "smollm2", "--port", str(port),
                             *extra],
                            env=_env(cache_dir, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lmlab serve exited with {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"lmlab serve not ready after {timeout:.0f} s")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"wall_s": wall, "cpu_s": _children_cpu() - c0}   # CPU up to exit (a few ms after ready)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--serve-convert", action="store_true", help="also time `lmlab serve` without the cache")
    ap.add_argument("--no-convert", action="store_true", help="leave the convert side out of the rounds (the first "
                    "serve on an empty cache is then the only cold figure)")
    ap.add_argument("--cache-dir", default=None, help="use (and keep) this cache dir instead of a temporary one")
    a = ap.parse_args(argv)
    from lmlab.models.hf import gguf_cache_entry, smollm2_path

    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="lmlab-load-") as tmp:
        cache_dir = a.cache_dir or tmp
        os.environ["LMLAB_CACHE_DIR"] = cache_dir
        entry = str(gguf_cache_entry(os.path.join(*smollm2_path())))
        cold = not os.path.exists(entry)
        first = serve_once(cache_dir, True)
        print(f"first `lmlab serve` ({'converts and writes the entry' if cold else 'the entry was there'}): ready "
              f"after {first['wall_s']:.1f} s wall, {first['cpu_s']:.1f} s CPU", flush=True)
        sides = {} if a.no_convert else {"convert": lambda: load_once("smollm2", cache_dir, False)}
        sides |= {"cached": lambda: load_once("smollm2", cache_dir, True),
                  "hf_folder": lambda: load_once(entry, cache_dir, True),
                  "serve_cached": lambda: serve_once(cache_dir, True),
                  "int4_cached": lambda: load_once("smollm2", cache_dir, True, LOAD_INT4),
                  "serve_int4_cached": lambda: serve_once(cache_dir, True, extra=("--quantize", "int4"))}
        load_once("smollm2", cache_dir, True, LOAD_INT4)                # writes the int4 entry before the rounds
        if a.serve_convert:
            sides["serve_convert"] = lambda: serve_once(cache_dir, False)
        def shown(name, fn):
            def run():
                r = fn()
                call = f" (load_pretrained call: {r['call_wall_s']:.2f} s wall, {r['call_cpu_s']:.2f} s CPU)" \
                    if "call_wall_s" in r else ""
                print(f"  {name}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU{call}", flush=True)
                return r
            return run

        times = interleaved({n: shown(n, f) for n, f in sides.items()}, reps=a.reps, warmup=0,
                            log=lambda s: print(s.split(":")[0], "done", flush=True))
    load1 = os.getloadavg()
    res = {"serve_first": {**first, "cold": cold}, "load_avg_start": load0[0], "load_avg_end": load1[0]}
    print(f"\nmedian of {a.reps} rounds (fresh process each; wall / child CPU):")
    for name, samples in times.items():
        wall, cpu = median_of(samples, "wall_s"), median_of(samples, "cpu_s")
        res[name] = {"wall_s": wall, "cpu_s": cpu}
        line = f"  {name:14s} {wall:7.2f} s wall  {cpu:7.2f} s CPU"
        if "call_wall_s" in samples[0].extra:
            res[name] |= {k: median_of(samples, k) for k in ("call_wall_s", "call_cpu_s")}
            line += f"   of which load_pretrained {res[name]['call_wall_s']:.2f} s wall, {res[name]['call_cpu_s']:.2f} s CPU"
        print(line)
    print(f"load average at end: {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}")
    return res


if __name__ == "__main__":
    main()
