"""What one (experiment, arm, seed) run depends on, so `lmlab reproduce` reruns exactly the stale runs.

A run's key has three parts that decide reuse, and one that only labels it:

    config   hash of the arm's resolved config (`Experiment.arm_config(arm, scale, seed)` when the
             experiment has it, else experiment name, arm, scale, seed and the run function's name)
    code     {module or file: sha256} of every source the run depends on (see below); a module is hashed by
             its syntax tree, so comments and layout do not count
    env      python major.minor, torch and numpy versions, device kind
    commit   git commit of the checkout (+ a hash of the source tree when it has uncommitted changes);
             recorded, never compared: an unaffected run stays valid across commits

A cached run is reused only when config and env are equal and every recorded source still hashes the same.

Sources of a run (`RunDeps`):
  - the experiment module, at the granularity of its top-level definitions: the run function and every
    top-level name it reaches (functions, constants, imports), so two experiments in one file, or an edited
    experiment declaration (description, arms list), do not invalidate each other;
  - every module those definitions import (at any depth, imports inside functions included, plus dotted
    "lmlab.x.y" strings such as "module:function" tables), file by file, transitively, within `lmlab` and
    the experiment's own top-level package; parent packages' `__init__.py` are included;
  - what the run looked up in a registry (e.g. a Block asks TOKEN_MIXERS for "attn"): the looked-up
    object's module and its imports, recorded while the run executes. A helper that caches across runs (a
    loaded backend, a pretrained reference) is decorated with `cached`, not functools.lru_cache: it replays
    what its first call recorded into every later run that gets the cached value, so the second run of a
    process carries the same sources as the first;
  - files under the checkout's `configs/` that the run opened (recorded by an audit hook while it runs).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
_DOTTED = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+):\w+$")  # "pkg.module:function" tables


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def canonical(obj: Any) -> Any:
    """JSON-able, order-stable form of a config (pydantic model, dataclass, dict, Path, tuple …)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj) if not isinstance(obj, Path) else str(obj)


def hash_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(canonical(obj), sort_keys=True, default=str).encode())


def env_key() -> dict:
    import numpy
    import torch

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "torch": torch.__version__,
            "numpy": numpy.__version__, "device": "cuda" if torch.cuda.is_available() else "cpu"}


def code_version() -> dict:
    """Git commit of the checkout; with uncommitted changes also a hash of the source tree (lmlab/, configs/)."""
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "lmlab", "configs"], cwd=REPO,
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except Exception:
        pass
    out: dict = {"commit": commit, "dirty": dirty}
    if commit is None or dirty:
        h = hashlib.sha256()
        for root in (REPO / "lmlab", CONFIGS):
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".json") and "__pycache__" not in p.parts:
                    h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
        out["tree"] = h.hexdigest()
    return out


def code_version_label(v: dict) -> str:
    if v.get("commit") and not v.get("dirty"):
        return v["commit"]
    return f"{v.get('commit') or 'no-git'}+uncommitted:{v.get('tree', '?')[:12]}"


# ---------------------------------------------------------------------------------------------------------
# static dependencies


def _defined_names(stmt: ast.stmt) -> set[str]:
    """Top-level names a statement binds or mutates (`X = …`, `def X`, `import X`, `X[k] = …`, `X.update()`)."""
    names: set[str] = set()
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            base = node.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                names.add(base.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):  # X.update(...), X.append(...)
        f = stmt.value.func
        while isinstance(f, (ast.Attribute, ast.Subscript)):
            f = f.value
        if isinstance(f, ast.Name) and f is not stmt.value.func:
            names.add(f.id)
    return names


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


class RunDeps:
    """Resolves modules to files and their imports; caches parses for the life of one `reproduce` call."""

    def __init__(self, extra_roots: tuple[str, ...] = ()):
        self.roots = {"lmlab", *extra_roots}
        self._spec: dict[str, Optional[tuple[Path, bool]]] = {}
        self._closure: dict[str, dict[str, str]] = {}
        self._defs: dict[tuple[str, str], dict[str, str]] = {}
        self._bytes: dict[Path, bytes] = {}
        self._trees: dict[Path, ast.Module] = {}

    # -- modules -> files
    def locate(self, mod: str) -> Optional[tuple[Path, bool]]:
        """(file, is_package) of a source module in a followed package, else None."""
        if mod in self._spec:
            return self._spec[mod]
        res = None
        if mod.split(".")[0] in self.roots:
            try:
                spec = importlib.util.find_spec(mod)
            except (ImportError, ValueError, AttributeError):
                spec = None
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                res = (Path(spec.origin), spec.submodule_search_locations is not None)
        self._spec[mod] = res
        return res

    def _read(self, p: Path) -> bytes:
        if p not in self._bytes:
            self._bytes[p] = p.read_bytes()
        return self._bytes[p]

    def _imports(self, nodes: list[ast.AST], mod: str, is_pkg: bool) -> set[str]:
        """Modules imported anywhere inside `nodes` (and dotted module strings), within followed packages."""
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        found: set[str] = set()
        for top in nodes:
            for n in ast.walk(top):
                if isinstance(n, ast.Import):
                    for a in n.names:
                        found.add(a.name)
                elif isinstance(n, ast.ImportFrom):
                    if n.level:
                        parts = pkg.split(".")
                        base_parts = parts[: len(parts) - (n.level - 1)] if n.level > 1 else parts
                        base = ".".join(base_parts + ([n.module] if n.module else []))
                    else:
                        base = n.module or ""
                    found.add(base)
                    for a in n.names:
                        if a.name != "*":
                            found.add(f"{base}.{a.name}")  # kept only when it is a module
                elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                    m = _DOTTED.match(n.value)
                    if m and m.group(1).split(".")[0] in self.roots:
                        found.add(m.group(1))
        return {m for m in found if m and m.split(".")[0] in self.roots and self.locate(m)}

    def _parents(self, mod: str) -> list[str]:
        parts = mod.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def _tree(self, p: Path) -> ast.Module:
        if p not in self._trees:
            self._trees[p] = ast.parse(self._read(p), filename=str(p))
        return self._trees[p]

    def _file_entry(self, mod: str) -> tuple[str, str]:
        """A module's hash is its syntax tree's (comments, blank lines and layout do not count)."""
        p, _ = self.locate(mod)
        return mod, sha256_bytes(ast.dump(self._tree(p), include_attributes=False).encode())

    def module_closure(self, mod: str) -> dict[str, str]:
        """{module: sha256 of its file} for `mod`, everything it imports transitively, and their parent
        packages' __init__ files (hashed, not followed: a package's own imports matter when it is imported
        for a name, which lists it directly)."""
        if mod in self._closure:
            return self._closure[mod]
        out: dict[str, str] = {}
        todo, seen = [mod], set()
        while todo:
            m = todo.pop()
            if m in seen or not self.locate(m):
                continue
            seen.add(m)
            p, is_pkg = self.locate(m)
            k, h = self._file_entry(m)
            out[k] = h
            for parent in self._parents(m):
                if self.locate(parent):
                    out.setdefault(*self._file_entry(parent))
            tree = self._tree(p)
            todo.extend(self._imports([tree], m, is_pkg) - seen)
        self._closure[mod] = out
        return out

    def function_closure(self, mod: str, func: str) -> Optional[dict[str, str]]:
        """Dependencies of one top-level function of `mod`: the top-level statements it reaches (hashed as
        one entry "mod::func"), plus the module closures of everything those statements import. None when
        `func` is not a top-level definition (then the caller falls back to the whole module)."""
        if (mod, func) in self._defs:
            return self._defs[(mod, func)]
        loc = self.locate(mod)
        if not loc:
            return None
        p, is_pkg = loc
        stmts = self._tree(p).body
        defs = [_defined_names(s) for s in stmts]
        if not any(func in d for d in defs):
            return None
        want, chosen, frontier = set(), set(), {func}
        while frontier:
            want |= frontier
            new = set()
            for i, s in enumerate(stmts):
                if i not in chosen and defs[i] & frontier:
                    chosen.add(i)
                    new |= _used_names(s)
            frontier = new - want
        # `from __future__` changes how the whole module compiles; a star import binds names we cannot see
        chosen |= {i for i, s in enumerate(stmts) if isinstance(s, ast.ImportFrom)
                   and (s.module == "__future__" or any(a.name == "*" for a in s.names))}
        picked = [stmts[i] for i in sorted(chosen)]
        digest = sha256_bytes("\n".join(ast.dump(s, include_attributes=False) for s in picked).encode())
        out = {f"{mod}::{func}": digest}
        for parent in self._parents(mod):
            if self.locate(parent):
                out.setdefault(*self._file_entry(parent))
        for m in sorted(self._imports(picked, mod, is_pkg)):
            if m != mod:
                out.update(self.module_closure(m))
        self._defs[(mod, func)] = out
        return out

    def for_callable(self, fn: Any) -> dict[str, str]:
        """Dependencies of a run function: definition-level in its own module when it is a plain top-level
        function, else its whole module."""
        if isinstance(fn, functools.partial):
            return self.for_callable(fn.func)
        mod = getattr(fn, "__module__", None)
        name = getattr(fn, "__name__", None)
        if not mod or not self.locate(mod):
            return {}
        if name and getattr(fn, "__qualname__", None) == name:
            deps = self.function_closure(mod, name)
            if deps is not None:
                return deps
        return self.module_closure(mod)

    def current(self, key: str) -> Optional[str]:
        """Hash now of one recorded entry ("mod", "mod::func" or "file:relative/path"); None when gone."""
        try:
            if key.startswith("file:"):
                p = REPO / key[5:]
                return sha256_bytes(self._read(p)) if p.is_file() else None
            if "::" in key:
                mod, func = key.split("::", 1)
                deps = self.function_closure(mod, func)
                return deps.get(key) if deps else None
            loc = self.locate(key)
            return self._file_entry(key)[1] if loc else None
        except (OSError, SyntaxError):
            return None

    def stale(self, recorded: dict[str, str]) -> list[str]:
        """Recorded sources whose hash changed (or that are gone)."""
        return [k for k, h in sorted(recorded.items()) if self.current(k) != h]


# ---------------------------------------------------------------------------------------------------------
# dynamic dependencies, recorded while a run executes

_RECORDING: Optional[set] = None
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    rec = _RECORDING
    if rec is None or event != "open":
        return
    try:
        p = args[0]
        if isinstance(p, (str, os.PathLike)):
            s = os.fspath(p)
            if s.startswith(str(CONFIGS)) or (not os.path.isabs(s) and os.path.abspath(s).startswith(str(CONFIGS))):
                rec.add(("file", os.path.relpath(os.path.abspath(s), REPO)))
    except Exception:  # an audit hook must never break the program it watches
        pass


@contextlib.contextmanager
def recording() -> Iterator[set]:
    """Collects ("registry", module) for every registry look-up and ("file", path) for every file opened
    under configs/ while the body runs."""
    global _RECORDING, _HOOKED
    from lmlab.registry import Registry

    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed; inert while _RECORDING is None
        _HOOKED = True
    seen: set = set()
    orig = Registry.get

    def get(self, name):
        obj = orig(self, name)
        m = getattr(obj, "__module__", None) or type(obj).__module__
        seen.add(("registry", m))
        return obj

    prev, _RECORDING = _RECORDING, seen
    Registry.get = get
    try:
        yield seen
    finally:
        Registry.get = orig
        _RECORDING = prev


def dynamic_closure(deps: RunDeps, seen: set) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, what in sorted(seen):
        if kind == "registry":
            if what and what != "__main__" and deps.locate(what):
                out.update(deps.module_closure(what))
        elif kind == "file":
            p = REPO / what
            if p.is_file():
                out[f"file:{what}"] = sha256_bytes(p.read_bytes())
    return out


def cached(maxsize: Optional[int] = 128):
    """`functools.lru_cache(maxsize)` for helpers whose value later runs reuse (module doc): the registry
    look-ups and configs/ files recorded while the value was computed are added to the recording of every call
    that returns it, the first included. Outside a recording it is a plain cache (and still records its first
    call, for the runs that reuse the value later). `cache_clear` and `cache_info` are lru_cache's."""
    def deco(fn):
        @functools.lru_cache(maxsize=maxsize)
        def compute(*args, **kwargs):
            with recording() as seen:
                value = fn(*args, **kwargs)
            return value, frozenset(seen)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            value, seen = compute(*args, **kwargs)
            if _RECORDING is not None:
                _RECORDING.update(seen)
            return value

        call.cache_clear, call.cache_info = compute.cache_clear, compute.cache_info
        return call
    return deco
