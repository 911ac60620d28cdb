"""Name -> object registries, so a YAML config can pick any component by name.

Registries are plain dicts with a decorator. Modules register themselves on import. Each registry knows
the packages that hold its components and, on first look-up, imports every module of *those packages
only*: building a Decoder loads `lmlab.nn`, never experiments; asking for an experiment loads
`lmlab.experiments`. Adding a technique means adding a file, never editing a central list.

    @TOKEN_MIXERS.register("attn")                   # description = first line of the docstring
    class Attention(nn.Module): ...
    ROUTERS.register("top_k", TopK, help="...")      # or an explicit one-line description

`lmlab list` shows every registry in ALL with the one-line description of each entry.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterator, Optional


class RegistryError(KeyError):
    """Unknown name; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def _first_line(obj: Any) -> str:
    doc = getattr(obj, "description", None) if not callable(obj) else None
    if isinstance(doc, str) and doc.strip():
        return doc.strip().splitlines()[0]
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else getattr(obj, "__module__", "") or ""


class Registry:
    def __init__(self, kind: str, packages: tuple[str, ...] = ()):
        self.kind = kind
        self.packages = tuple(packages)   # packages whose modules register into this registry
        self._items: dict[str, Any] = {}
        self._help: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, obj: Any = None, *, help: Optional[str] = None) -> Callable:
        """Use as `@REG.register("name")` or `REG.register("name", obj)`; `help` is the one-line
        description `lmlab list` shows (default: the first line of the object's docstring)."""

        def deco(o: Any) -> Any:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            if help:
                self._help[name] = help
            return o

        return deco(obj) if obj is not None else deco

    def load(self) -> None:
        """Import every module of this registry's packages (once)."""
        if self._loaded:
            return
        self._loaded = True
        for pkg in self.packages:
            _walk(pkg)

    def get(self, name: str) -> Any:
        if name not in self._items:
            self.load()
        if name not in self._items:
            choices = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        if name not in self._items:
            self.load()
        return name in self._items

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, Any]]:
        self.load()
        return iter(sorted(self._items.items()))

    def describe(self, name: str) -> str:
        """One line: the registered help, else the object's `description` or docstring's first line."""
        obj = self.get(name)
        return self._help.get(name) or _first_line(obj)


TOKEN_MIXERS = Registry("token mixer", ("lmlab.nn",))          # attention, hgrn2, rglru, moa ...
CHANNEL_MIXERS = Registry("channel mixer", ("lmlab.nn",))      # swiglu, moe ...
RESIDUALS = Registry("residual policy", ("lmlab.nn",))         # prenorm, hyper ...
ROUTERS = Registry("MoE router", ("lmlab.nn.moe",))            # top_k, expert_choice, soft_moe ...
PEFT_METHODS = Registry("PEFT method", ("lmlab.nn.peft",))     # lora, partial_lora, spiel ...
OBJECTIVES = Registry("objective", ("lmlab.train",))           # clm, slm ...
SCHEDULES = Registry("lr schedule", ("lmlab.train",))          # cosine, wsd, constant
DATA_SOURCES = Registry("data source", ("lmlab.data",))        # embedded, txt, jsonl, parquet, hub ...
BACKENDS = Registry("model backend", ("lmlab.infer",))         # lmlab, hf, openai ...
EVAL_TASKS = Registry("eval task", ("lmlab.eval.tasks",))          # mmlu, gsm8k, humaneval ...
ALIGN_ALGOS = Registry("alignment algorithm", ("lmlab.align",))  # dpo, ipo, ppo, rloo, grpo ...
ALIGN_STAGES = Registry("alignment stage", ("lmlab.align",))   # sft, rm, dpo, rl
REWARD_MODELS = Registry("reward-model kind", ("lmlab.align",))  # bt, ids, contrastive ...
EXPERIMENTS = Registry("experiment", ("lmlab.experiments",))   # one per paper claim
VISION_ENCODERS = Registry("vision encoder", ("lmlab.vision",))  # mobilenet_v2, efficientnet_lite0, vit, fused

ALL = {
    "token_mixers": TOKEN_MIXERS,
    "channel_mixers": CHANNEL_MIXERS,
    "residuals": RESIDUALS,
    "routers": ROUTERS,
    "peft_methods": PEFT_METHODS,
    "objectives": OBJECTIVES,
    "schedules": SCHEDULES,
    "data_sources": DATA_SOURCES,
    "backends": BACKENDS,
    "eval_tasks": EVAL_TASKS,
    "align_algorithms": ALIGN_ALGOS,
    "align_stages": ALIGN_STAGES,
    "reward_models": REWARD_MODELS,
    "experiments": EXPERIMENTS,
    "vision_encoders": VISION_ENCODERS,
}


def _walk(pkg_name: str) -> None:
    pkg = importlib.import_module(pkg_name)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        importlib.import_module(info.name)


def load_plugins() -> None:
    """Load every registry's packages (what `lmlab list` shows)."""
    for reg in ALL.values():
        reg.load()
