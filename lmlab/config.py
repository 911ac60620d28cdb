"""Typed configs, YAML loading, dotted overrides and one-line validation errors.

A run is described by `RunConfig` = model + data + train (+ free-form `extra` for experiments). Every
model is pydantic with `extra="forbid"`, so a misspelt key fails loudly. `ConfigError` always carries a
single line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterable, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from lmlab.registry import CHANNEL_MIXERS, RESIDUALS, TOKEN_MIXERS, RegistryError


class ConfigError(ValueError):
    """A bad config: the message is one line naming the culprit."""


class UnknownNameError(ConfigError, KeyError):
    """A config names a component no registry knows (a KeyError too, like `RegistryError`)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0])


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    _section: ClassVar[str] = ""    # where this model sits in a RunConfig ("model", "train", ...)

    def __init__(self, **data: Any) -> None:
        """Direct construction (`ModelConfig(d_model=7, ...)`) fails with the same one line as a YAML file."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(e, type(self), type(self).__name__, prefix=self._section) from None

    # Tell pydantic this is its own __init__ (as RootModel does): validation of a nested config
    # (RunConfig.model) then builds it directly and keeps the full error location (model.ffn_args...).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ component arguments
@dataclass(frozen=True)
class Dims:
    """The model-wide sizes a block component is built with, and where it sits (`layer_idx`).

    Every registered component is built as `cls(dims, args)` (residual policies: `cls(dims, args,
    sublayer_idx)`): one uniform constructor, so `lmlab.nn.block` needs no per-class knowledge and a new
    component plugs in by registering itself. A component reads the sizes it needs from here and its own
    options from `args` (its `Args`); it never sees the whole ModelConfig, another component's arguments
    or the initialisation scale (initialisation is the decoder's: `Decoder.reset_parameters`).
    """

    d_model: int
    n_head: int
    n_kv_head: int                  # model.n_kv_head resolved: n_head for MHA
    head_dim: int
    ffn_hidden: int                 # model.d_ff resolved
    n_layer: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    dropout: float
    sliding_window: Optional[int]   # model.sliding_window (attention mixers' default window)
    layer_idx: int = 0


class ArgError(ValueError):
    """Raised by `ComponentArgs.check`: names the argument (`field`) and says what is wrong."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


class ComponentArgs(BaseModel):
    """Base of every component's nested `Args`: the keys `model.<kind>_args.<name>` may hold, typed, with
    their defaults and ranges. Unknown keys are errors. Cross-field rules that need no model sizes are
    pydantic validators; rules that need them (e.g. `expand` divides d_model) go in `check(dims)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check(self, dims: Dims) -> None:
        """Raise `ArgError(field, why)` when these arguments do not fit the model's sizes."""


def at_most_n_experts(v: int, info: ValidationInfo) -> int:
    """`top_k` of a mixture (MoE, MoA): at most `n_experts` (declare n_experts first)."""
    n = info.data.get("n_experts")
    if n is not None and v > n:
        raise ValueError(f"must be <= n_experts={n}")
    return v


TopK = Annotated[int, AfterValidator(at_most_n_experts)]


def one_of(choices: Callable[[], Iterable[str]], what: str = "allowed") -> AfterValidator:
    """A string argument that must be one of `choices()` (called at validation, so registries can fill late)."""
    def check(v: str) -> str:
        names = list(choices())
        if v not in names:
            raise ValueError(f"{what}: {', '.join(names)}")
        return v
    return AfterValidator(check)


class KVHeadsArg(ComponentArgs):
    """`n_kv_head` of an attention-like mixer. The one rule for it: the mixer's own value, else the model's."""

    n_kv_head: Optional[int] = Field(None, ge=1, description="K/V heads; None = model.n_kv_head")

    def kv_heads(self, dims: Dims) -> int:
        return self.n_kv_head or dims.n_kv_head


class WindowArg(ComponentArgs):
    """`window` of an attention mixer. The one rule for it: the mixer's own value, else model.sliding_window."""

    window: Optional[int] = Field(None, ge=1, description="sliding window; None = model.sliding_window")

    def window_for(self, dims: Dims) -> Optional[int]:
        return self.window if self.window is not None else dims.sliding_window


# model.<kind> / <kind>_pattern / <kind>_args, and the registry each name is looked up in
COMPONENT_KINDS = {"mixer": ("layer_pattern", "mixer_args", TOKEN_MIXERS),
                   "ffn": ("ffn_pattern", "ffn_args", CHANNEL_MIXERS),
                   "residual": (None, "residual_args", RESIDUALS)}


def _line(loc: tuple, value: Any, why: str, kind: str = "component_arg") -> dict:
    return {"type": PydanticCustomError(kind, "{why}", {"why": why}), "loc": loc, "input": value}


def _prefixed(e: ValidationError, prefix: tuple, args_cls: type[BaseModel]) -> list[dict]:
    """`args_cls`'s validation errors re-rooted at `prefix` (e.g. ('ffn_args', 'moe'))."""
    out = []
    for err in e.errors():
        line = {"type": err["type"], "loc": prefix + tuple(err["loc"]), "input": err.get("input")}
        if err["type"] == "value_error":  # a validator's ValueError: keep its text, not the exception object
            line = _line(line["loc"], line["input"], err["msg"].replace("Value error, ", "", 1))
        elif err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            line = _line(line["loc"], line["input"],
                         f"unknown key (known keys: {', '.join(sorted(args_cls.model_fields)) or 'none'})")
        elif "ctx" in err:
            line["ctx"] = err["ctx"]
        out.append(line)
    return out


class ModelConfig(_Base):
    """Decoder-only LM: a stack of blocks, each = token mixer + channel mixer + residual policy."""

    vocab_size: int = Field(4096, ge=2, description="left out: the tokenizer's size when training (see "
                                                    "resolve_vocab_size); written: must equal it")
    d_model: int = Field(128, ge=1)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: Optional[int] = Field(None, ge=1, description="None = n_head (MHA); 1 = MQA; else GQA")
    d_ff: Optional[int] = Field(None, ge=1, description="None = 8/3·d_model rounded up to a multiple of 32")
    max_seq_len: int = Field(256, ge=1)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = True
    sliding_window: Optional[int] = Field(None, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)
    head_rank: Optional[int] = Field(None, ge=1, description="rank-constrained LM head W = A·B")
    # Block composition: names are looked up in lmlab.registry.
    mixer: str = "attn"
    layer_pattern: Optional[list[str]] = Field(None, description="token mixer per layer, cycled over n_layer")
    mixer_args: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per mixer name: kwargs")
    ffn: str = "swiglu"
    ffn_pattern: Optional[list[str]] = Field(None, description="channel mixer per layer, cycled")
    ffn_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    residual: str = "prenorm"
    residual_args: dict[str, Any] = Field(default_factory=dict)

    _section: ClassVar[str] = "model"

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={kv}")
        errors = self._component_errors()
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def _component_errors(self) -> list[dict]:
        """Every component name resolves in its registry; every `*_args` entry validates against that
        component's `Args`; the components in use pass their `Args.check(dims)`. Locations are relative to
        this model (`ffn_args.moe.top_k`), so errors read `model.ffn_args.moe.top_k` in a RunConfig."""
        errors: list[dict] = []
        used: dict[str, set[str]] = {}
        for kind, (pattern, args_key, reg) in COMPONENT_KINDS.items():
            named = [((kind,), getattr(self, kind))]
            if pattern and getattr(self, pattern):
                named += [((pattern, i), n) for i, n in enumerate(getattr(self, pattern))]
            for loc, name in named:
                try:
                    reg.get(name)
                except RegistryError as e:
                    errors.append(_line(loc, name, str(e), "unknown_component"))
            used[kind] = set(self._in_use(kind))
        dims = self.dims()
        for kind, (_, args_key, reg) in COMPONENT_KINDS.items():
            if kind == "residual":
                entries = {self.residual: (self.residual_args, (args_key,))}
            else:
                entries = {n: (a, (args_key, n)) for n, a in getattr(self, args_key).items()}
                entries.update({n: ({}, (args_key, n)) for n in sorted(used[kind]) if n not in entries})
            for name, (raw, loc) in entries.items():
                try:
                    cls = reg.get(name)
                except RegistryError as e:
                    if kind != "residual" and name not in used[kind]:  # an *_args key naming no component
                        errors.append(_line(loc, raw, str(e), "unknown_component"))
                    continue                                           # (else reported with the name above)
                try:
                    args = cls.Args.model_validate(raw)
                except ValidationError as e:
                    errors += _prefixed(e, loc, cls.Args)
                    continue
                if name in used[kind]:
                    try:
                        args.check(dims)
                    except ArgError as e:
                        errors.append(_line(loc + (e.field,), getattr(args, e.field, None), e.why))
        return errors

    def _in_use(self, kind: str) -> list[str]:
        pattern = COMPONENT_KINDS[kind][0]
        return list(getattr(self, pattern) or [getattr(self, kind)]) if pattern else [self.residual]

    def component_args(self, kind: str, name: Optional[str] = None) -> "ComponentArgs":
        """The validated `Args` instance of component `name` of `kind` ('mixer', 'ffn' or 'residual'; name
        defaults to model.mixer / model.ffn / model.residual), built from `model.<kind>_args` (the config
        itself keeps the dicts, so it serialises as written)."""
        _, args_key, reg = COMPONENT_KINDS[kind]
        name = name or (self.residual if kind == "residual" else getattr(self, kind))
        raw = self.residual_args if kind == "residual" else getattr(self, args_key).get(name, {})
        return reg.get(name).Args.model_validate(raw)

    def dims(self, layer_idx: int = 0) -> Dims:
        return Dims(d_model=self.d_model, n_head=self.n_head, n_kv_head=self.kv_heads, head_dim=self.head_dim,
                    ffn_hidden=self.ffn_hidden, n_layer=self.n_layer, max_seq_len=self.max_seq_len,
                    rope_theta=self.rope_theta, norm_eps=self.norm_eps, dropout=self.dropout,
                    sliding_window=self.sliding_window, layer_idx=layer_idx)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ffn_hidden(self) -> int:
        if self.d_ff:
            return self.d_ff
        h = int(8 * self.d_model / 3)
        return (h + 31) // 32 * 32

    def mixer_for(self, layer: int) -> str:
        return self.layer_pattern[layer % len(self.layer_pattern)] if self.layer_pattern else self.mixer

    def ffn_for(self, layer: int) -> str:
        return self.ffn_pattern[layer % len(self.ffn_pattern)] if self.ffn_pattern else self.ffn


class DataConfig(_Base):
    _section: ClassVar[str] = "data"
    source: str = Field("embedded", description="'embedded', a local file/dir, or a datasets hub name")
    domains: Optional[list[str]] = Field(None, description="embedded domains to use (None = all)")
    text_field: str = "text"
    tokenizer: str = Field("embedded", description="'embedded' (BPE trained on the corpus) or a tokenizer dir/file")
    vocab_size: int = Field(4096, ge=256)
    seq_len: int = Field(128, ge=2)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    max_train_tokens: Optional[int] = Field(None, ge=1)
    max_val_tokens_per_domain: int = Field(65536, ge=1)
    data_dir: Optional[str] = Field(None, description="cache dir (default: $LMLAB_DATA or ~/.cache/lmlab)")
    embedded_chars: Optional[int] = Field(None, ge=1000, description="embedded corpus: characters per domain (None = default)")
    mix: dict[str, float] = Field(default_factory=dict, description="domain -> sampling weight")
    seed: int = 0


class TrainConfig(_Base):
    _section: ClassVar[str] = "train"
    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step (global)")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0, le=10)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    schedule: str = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD: final fraction of steps spent decaying")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    objective: str = "clm"
    objective_args: dict[str, Any] = Field(default_factory=dict)
    aux_loss_weight: float = Field(1.0, ge=0)
    eval_interval: int = Field(50, ge=1)
    eval_batches: int = Field(8, ge=1)
    log_interval: int = Field(10, ge=1)
    ckpt_interval: int = Field(0, ge=0, description="0 = only at the end")
    keep_ckpts: int = Field(2, ge=1)
    max_bad_steps: int = Field(5, ge=1, description="abort after this many non-finite losses in a row")
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0
    tensorboard: bool = True
    progress: bool = True


class RunConfig(_Base):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    out_dir: Optional[str] = None
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form, for experiments and plugins")

    @model_validator(mode="after")
    def _cross_check(self) -> "RunConfig":
        """Fields that must agree across sections (each section validates its own fields). The sequence
        length against data.seq_len is checked by load_config (a run from a file or the command line):
        Python callers and saved checkpoints may describe runs on their own data."""
        cross_check(self, seq_len=False)
        return self


def cross_check(cfg: RunConfig, seq_len: bool = True) -> None:
    """model.max_seq_len >= data.seq_len; every attention window <= model.max_seq_len (ValueError)."""
    m, d = cfg.model, cfg.data
    max_len = getattr(m, "max_seq_len", None)
    if seq_len and max_len is not None and max_len < d.seq_len:
        raise ValueError(f"model.max_seq_len={max_len} is shorter than data.seq_len={d.seq_len} "
                         f"(the model must accept a whole training sequence)")
    windows = [("model.sliding_window", getattr(m, "sliding_window", None))]
    for name, args in (getattr(m, "mixer_args", None) or {}).items():
        if isinstance(args, dict):
            windows.append((f"model.mixer_args.{name}.window", args.get("window")))
    for key, w in windows:
        if isinstance(w, int) and not isinstance(w, bool) and max_len is not None and w > max_len:
            raise ValueError(f"{key}={w} is longer than model.max_seq_len={max_len} "
                             f"(a window covers at most the whole sequence)")


# ----------------------------------------------------------------------------------------------- errors
def _allowed(err: dict) -> str:
    ctx = err.get("ctx") or {}
    t = err.get("type", "")
    if t == "extra_forbidden":
        return "unknown key"
    for k, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if k in ctx:
            return f"must be {sym} {ctx[k]}"
    if "expected" in ctx:
        return f"allowed: {ctx['expected']}"
    return err.get("msg", "invalid").replace("Value error, ", "")


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        f = getattr(cur, "model_fields", {}).get(part)
        ann = getattr(f, "annotation", None)
        if ann is None or not hasattr(ann, "model_fields"):
            return []
        cur = ann
    return sorted(getattr(cur, "model_fields", {}))


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{…}"
    vtxt = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return vtxt[:57] + "..." if len(vtxt) > 60 else vtxt


def format_validation_error(e: ValidationError, model: type[BaseModel], source: str = "config",
                            prefix: str = "") -> str:
    """`source: key=value: what is allowed` for the first error; `prefix` is prepended to the key (the
    section of a RunConfig that `model` is, for a direct construction)."""
    err = e.errors()[0]
    loc = tuple(err["loc"])
    if not loc and err.get("type") == "value_error":  # a cross-field check: its message names the keys
        return f"{source}: {_allowed(err)}"
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(root)"
    msg = f"{source}: {key}={_value_text(err.get('input'))}: {_allowed(err)}"
    if err.get("type") == "extra_forbidden":
        keys = _known_keys(model, loc)
        if keys:
            msg += f" (known keys: {', '.join(keys)})"
    more = len(e.errors()) - 1
    if more:
        msg += f" (+{more} more error{'s' if more > 1 else ''})"
    return msg


def config_error(e: ValidationError, model: type[BaseModel], source: str = "config", prefix: str = "") -> ConfigError:
    """The one-line ConfigError for a pydantic ValidationError (an UnknownNameError, also a KeyError, when the
    first problem is a component name no registry knows)."""
    cls = UnknownNameError if e.errors()[0].get("type") == "unknown_component" else ConfigError
    return cls(format_validation_error(e, model, source, prefix))


def validate(model: type[BaseModel], data: dict, source: str = "config"):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(e, model, source) from None


def resolve_vocab_size(model: ModelConfig, tokenizer_vocab: int) -> ModelConfig:
    """The rule for model.vocab_size when a tokenizer is known: left out of the config, it is the
    tokenizer's size; written, it must equal it (a one-line ConfigError otherwise)."""
    if "vocab_size" not in model.model_fields_set:
        return model.model_copy(update={"vocab_size": tokenizer_vocab})
    if model.vocab_size != tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={model.vocab_size}: the tokenizer has {tokenizer_vocab} tokens; "
                          "leave model.vocab_size out to use the tokenizer's size")
    return model


# --------------------------------------------------------------------------------------------- loading
def parse_value(text: str) -> Any:
    """CLI override values are YAML scalars/lists: `4`, `3e-4`, `true`, `[attn, hgrn2]`, `null`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`model.n_layer=4 train.lr=3e-4` -> nested dict updates."""
    out = json.loads(json.dumps(data, default=str))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value, e.g. model.n_layer=4")
        key, _, raw = ov.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {ov!r}: empty key component")
        cur = out
        for p in parts[:-1]:
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: {p} is a value, not a section")
            cur = nxt
        cur[parts[-1]] = parse_value(raw)
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(p)!r}{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    if data is None:
        raise ConfigError(f"config file {str(p)!r} is empty (omit the config argument to use the defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = RunConfig) -> Any:
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    source = str(path) if path else "config"
    cfg = validate(model, data, source=source)
    if isinstance(cfg, RunConfig):
        try:
            cross_check(cfg)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
        _check_vocab(cfg, data, source)
    return cfg


def _check_vocab(cfg: RunConfig, data: dict, source: str) -> None:
    """A file or command line that sets both model.vocab_size and data.vocab_size (the embedded tokenizer's
    size) must make them agree; Python callers that bring their own data and tokenizer are not checked."""
    given_m = "vocab_size" in (data.get("model") or {})
    given_d = "vocab_size" in (data.get("data") or {})
    mv, dv = getattr(cfg.model, "vocab_size", None), cfg.data.vocab_size
    if given_m and given_d and cfg.data.tokenizer == "embedded" and mv != dv:
        raise ConfigError(f"{source}: model.vocab_size={mv} differs from data.vocab_size={dv}, the size of the "
                          f"embedded tokenizer (set one of them)")


def to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def save_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
