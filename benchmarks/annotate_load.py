"""Load test of `lmlab annotate serve` on 127.0.0.1: N annotators (threads, one logged-in session each) write
original annotations in a bounded loop for S seconds against a server process on SQLite, then every write is
checked against the database.

    PYTHONPATH=. python benchmarks/annotate_load.py --users 20 --seconds 60 [--out benchmarks/results/annotate_load.json]

Each write is one POST of the annotation form with a fresh client_key; every `--retry-every`-th write is
posted a second time with the same key (a client retry after a lost response), which must return the same
pair. Checked afterwards, in the database: every acknowledged write (303 -> /pairs/ID) is there exactly once
with its text and id ("lost" counts the missing ones), no client_key has two rows and no row exists that no
request asked for ("duplicated"/"unexpected"); PRAGMA integrity_check. Latency: p50/p99/max per POST.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANGS = ("en", "ar", "fr", "sw")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int | None = None, timeout: float = 60.0):
    """`lmlab annotate serve` in a subprocess; returns (process, base URL) once /healthz answers."""
    import httpx

    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), LMLAB_ANNOTATE_SECRET="load-test-secret-0123456789")
    proc = subprocess.Popen([sys.executable, "-m", "lmlab.cli", "annotate", "serve", "--db", db_url, "--port",
                             str(port), "--log-level", "error"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1).text == "ok":
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_users(db_url: str, n: int, password: str = "load-test-pw") -> list[str]:
    """n annotators; their passwords are hashed with argon2id at its smallest cost, so that 20 logins do not
    take the time of the measurement (the server verifies with the parameters stored in each hash)."""
    from argon2 import PasswordHasher

    from lmlab.annotate import ops, security
    from lmlab.annotate.db import open_db, write

    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

    engine, factory = open_db(db_url)
    names = [f"load{i:02d}" for i in range(n)]
    with write(factory) as s:
        for i, name in enumerate(names):
            ops.create_user(s, name, password, "annotator", LANGS[i % len(LANGS)])
    engine.dispose()
    return names


def login(base: str, username: str, password: str = "load-test-pw"):
    import httpx

    c = httpx.Client(base_url=base, timeout=60)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"csrf": csrf, "username": username, "password": password, "next": "/"})
    if r.status_code != 303:
        raise RuntimeError(f"login {username}: HTTP {r.status_code}")
    # logging in starts a new session with a new CSRF token: read it from the next page
    return c, re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)


class Clock:
    """Starts the writing when every annotator has logged in: `deadline` is set then, `seconds` later."""

    def __init__(self, n: int, seconds: float):
        self.barrier, self.started, self.seconds, self.deadline = threading.Barrier(n + 1), threading.Event(), seconds, 0.0

    def arrive(self):
        self.barrier.wait()
        self.started.wait()

    def start(self):
        self.barrier.wait()
        self.deadline = time.time() + self.seconds
        self.started.set()


class Annotator(threading.Thread):
    """Writes pairs until `deadline` or `max_writes`; records (key, prompt, completion, pair id, seconds)."""

    def __init__(self, base, username, lang, clock, max_writes=10**6, retry_every=7, stop=None):
        super().__init__(daemon=True)
        self.base, self.username, self.lang, self.clock = base, username, lang, clock
        self.max_writes, self.retry_every, self.stop = max_writes, retry_every, stop or threading.Event()
        self.acked, self.attempted, self.errors, self.latency = [], set(), [], []
        self.retry_mismatch = 0

    def post(self, c, csrf, key, prompt, completion):
        t = time.perf_counter()
        r = c.post("/annotate/new", data={"csrf": csrf, "client_key": key, "language": self.lang, "prompt": prompt,
                                          "completion": completion, "action": "submit"})
        self.latency.append(time.perf_counter() - t)
        if r.status_code != 303 or not r.headers.get("location", "").startswith("/pairs/"):
            raise RuntimeError(f"HTTP {r.status_code}")
        return int(r.headers["location"].split("/")[2].split("?")[0])

    def run(self):
        try:
            c, csrf = login(self.base, self.username)
        except Exception as e:  # noqa: BLE001 - counted, reported
            self.errors.append(f"login: {e}")
            c = None
        self.clock.arrive()
        if c is None:
            return
        i = 0
        while time.time() < self.clock.deadline and i < self.max_writes and not self.stop.is_set():
            key = f"{self.username}-{i:06d}"
            prompt = f"[{self.username} #{i}] " + ("اكتب جملة" if self.lang == "ar" else "Write a sentence")
            completion = f"answer {i} of {self.username}"
            self.attempted.add(key)
            try:
                pid = self.post(c, csrf, key, prompt, completion)
                self.acked.append((key, prompt, completion, pid))
                if self.retry_every and i % self.retry_every == self.retry_every - 1:
                    if self.post(c, csrf, key, prompt, completion) != pid:
                        self.retry_mismatch += 1
            except Exception as e:  # noqa: BLE001 - a killed server ends the loop; counted and reported
                self.errors.append(f"{key}: {type(e).__name__}: {e}")
                if self.stop.is_set():
                    break
            i += 1
        c.close()


def check(db_url: str, annotators) -> dict:
    """Compare what the clients were told with what the database holds."""
    from sqlalchemy import create_engine, text

    e = create_engine(db_url)
    with e.connect() as con:
        rows = con.execute(text("SELECT id, client_key, prompt, completion FROM pairs")).all()
        revs = dict(con.execute(text("SELECT pair_id, count(*) FROM revisions GROUP BY pair_id")).all())
        integrity = con.exec_driver_sql("PRAGMA integrity_check").scalar() if e.dialect.name == "sqlite" else "ok"
    e.dispose()
    by_key: dict = {}
    for r in rows:
        by_key.setdefault(r.client_key, []).append(r)
    acked = [a for t in annotators for a in t.acked]
    attempted = set().union(*[t.attempted for t in annotators]) if annotators else set()
    lost = [k for k, p, c, pid in acked if not any((r.id, r.prompt, r.completion) == (pid, p, c)
                                                   for r in by_key.get(k, []))]
    return {"acked_writes": len(acked), "rows": len(rows), "lost": len(lost),
            "duplicated": sum(len(v) - 1 for v in by_key.values()),
            "unexpected": sum(1 for k in by_key if k not in attempted),
            "pairs_without_revision": sum(1 for r in rows if revs.get(r.id, 0) != 1),
            "retry_mismatch": sum(t.retry_mismatch for t in annotators), "integrity": integrity}


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def run(db_path: Path, users: int = 20, seconds: float = 60.0, retry_every: int = 7) -> dict:
    db_url = f"sqlite:///{db_path}"
    names = make_users(db_url, users)
    proc, base = start_server(db_url)
    try:
        clock = Clock(users, seconds)
        ts = [Annotator(base, n, LANGS[i % len(LANGS)], clock, retry_every=retry_every) for i, n in enumerate(names)]
        for t in ts:
            t.start()
        clock.start()
        t0 = time.time()
        for t in ts:
            t.join(seconds + 120)
        wall = time.time() - t0
    finally:
        stop_server(proc)
    lat = [x for t in ts for x in t.latency]
    out = check(db_url, ts)
    out.update({"users": users, "seconds": round(wall, 2), "posts": len(lat),
                "errors": sum(len(t.errors) for t in ts), "first_errors": [e for t in ts for e in t.errors][:5],
                "writes_per_s": round(out["acked_writes"] / wall, 1),
                "latency_ms": {"p50": round(1000 * percentile(lat, 50), 1), "p99": round(1000 * percentile(lat, 99), 1),
                               "max": round(1000 * max(lat), 1) if lat else None}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--retry-every", type=int, default=7)
    ap.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    a = ap.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        res = run(Path(a.db) if a.db else Path(d) / "load.db", a.users, a.seconds, a.retry_every)
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    ok = res["acked_writes"] > 0 and res["lost"] == 0 and res["duplicated"] == 0 and res["unexpected"] == 0 and res["integrity"] == "ok" \
        and res["retry_mismatch"] == 0 and res["pairs_without_revision"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
