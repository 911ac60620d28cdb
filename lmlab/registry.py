"""Name -> object registries, so a YAML config can pick any component by name.

Registries are plain dicts with a decorator. Modules register themselves on import; `load_plugins()`
imports every module of the packages that hold registered components, so adding a technique means adding
a file, never editing a central list.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterator


class RegistryError(KeyError):
    """Unknown name; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Callable:
        """Use as `@REG.register("name")` or `REG.register("name", obj)`."""

        def deco(o: Any) -> Any:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> Any:
        load_plugins()
        if name not in self._items:
            choices = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._items

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, Any]]:
        load_plugins()
        return iter(sorted(self._items.items()))


TOKEN_MIXERS = Registry("token mixer")      # attention, hgrn2, rglru, moa ...
CHANNEL_MIXERS = Registry("channel mixer")  # swiglu, moe ...
RESIDUALS = Registry("residual policy")     # prenorm, hyper ...
OBJECTIVES = Registry("objective")          # clm, slm ...
SCHEDULES = Registry("lr schedule")         # cosine, wsd, constant
BACKENDS = Registry("model backend")        # lmlab, hf, openai ...
EXPERIMENTS = Registry("experiment")        # one per paper claim

ALL = {
    "token_mixers": TOKEN_MIXERS,
    "channel_mixers": CHANNEL_MIXERS,
    "residuals": RESIDUALS,
    "objectives": OBJECTIVES,
    "schedules": SCHEDULES,
    "backends": BACKENDS,
    "experiments": EXPERIMENTS,
}

# Packages whose modules register components. Every module in them is imported once.
_PLUGIN_PACKAGES = ["lmlab.nn", "lmlab.train", "lmlab.infer", "lmlab.align", "lmlab.eval", "lmlab.experiments"]
_loaded = False


def _walk(pkg_name: str) -> None:
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        importlib.import_module(info.name)


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _PLUGIN_PACKAGES:
        _walk(name)
