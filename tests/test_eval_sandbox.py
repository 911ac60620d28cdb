"""The code sandbox: limits hold, each OS-level layer on its own where the machine allows it."""
import os
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from lmlab.eval.sandbox import run_python
from lmlab.eval.tasks.humaneval import build_program, load_humaneval

ROOT = os.geteuid() == 0


def test_runs_plain_code_and_captures_output():
    r = run_python("import math\nprint(math.factorial(10))")
    assert r.status == "passed" and r.stdout.strip() == "3628800"
    r = run_python("raise ValueError('boom')")
    assert r.status == "failed" and "ValueError: boom" in r.stderr


def test_kills_infinite_loop():
    t0 = time.perf_counter()
    r = run_python("while True:\n    pass", timeout=1.0)
    assert r.status == "timed out" and not r.passed
    assert time.perf_counter() - t0 < 5.0


def test_kills_sleeping_process_on_wall_clock():
    t0 = time.perf_counter()
    r = run_python("import time\ntime.sleep(60)", timeout=1.0)     # no CPU used: only the wall clock catches it
    assert r.status == "timed out" and time.perf_counter() - t0 < 5.0


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                pass
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    th.join(1)
    srv.close()


def test_listener_is_reachable_outside_the_sandbox(listener):
    port, accepted = listener
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    time.sleep(0.3)
    assert len(accepted) == 1


@pytest.mark.parametrize("audit_hook", [True, False] if ROOT else [True])
def test_blocks_socket_connect(listener, audit_hook):
    port, accepted = listener
    code = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
    r = run_python(code, timeout=5.0, audit_hook=audit_hook)
    time.sleep(0.3)
    assert r.status == "failed" and "connected" not in r.stdout
    assert accepted == []
    if audit_hook:
        assert "network access is disabled" in r.stderr
    else:                                  # the network namespace alone: loopback is down inside it
        assert "Network is unreachable" in r.stderr or "Connection refused" in r.stderr


def test_blocks_write_outside_its_directory():
    target = tempfile.mkdtemp()
    os.chmod(target, 0o777)               # the file system would allow it: only the sandbox stops it
    try:
        r = run_python(f"open({target!r} + '/pwned.txt', 'w').write('x')")
        assert r.status == "failed" and "write outside the sandbox directory" in r.stderr
        r2 = run_python(f"import os\nos.mkdir({target!r} + '/d')")
        assert r2.status == "failed"
        r3 = run_python(f"import shutil\nshutil.rmtree({target!r})")
        assert r3.status == "failed"
        assert os.listdir(target) == []
    finally:
        os.rmdir(target)


def test_writes_inside_its_directory_and_cleans_up():
    r = run_python("import os\nopen('a.txt','w').write('hi')\nos.mkdir('sub')\nprint(os.getcwd())")
    assert r.passed
    assert not os.path.exists(r.stdout.strip())           # the temporary directory is gone


def test_survives_fork_bomb():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.perf_counter()
    r = run_python(code, timeout=2.0, max_procs=16)
    assert r.status == "timed out" and time.perf_counter() - t0 < 15
    time.sleep(0.2)
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout   # the host still forks
    assert "program.py" not in out                          # and nothing of the bomb is left running


def test_memory_limit():
    r = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_humaneval_canonical_solutions_pass_and_broken_fail():
    probs = load_humaneval()[:3]
    for p in probs:
        assert run_python(build_program(p, p["canonical_solution"], chat=False)).passed
        fenced = "Sure!\n```python\n" + p["prompt"] + p["canonical_solution"] + "```\n"
        assert run_python(build_program(p, fenced, chat=True)).passed
        assert not run_python(build_program(p, "    return None\n", chat=False)).passed
