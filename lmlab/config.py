"""Typed configs, YAML loading, dotted overrides and one-line validation errors.

A run is described by `RunConfig` = model + data + train (+ free-form `extra` for experiments). Every
model is pydantic with `extra="forbid"`, so a misspelt key fails loudly. `ConfigError` always carries a
single line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A bad config: the message is one line naming the culprit."""


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Base):
    """Decoder-only LM: a stack of blocks, each = token mixer + channel mixer + residual policy."""

    vocab_size: int = Field(4096, ge=2)
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

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={kv}")
        return self

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


def format_validation_error(e: ValidationError, model: type[BaseModel], source: str = "config") -> str:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    if not loc and err.get("type") == "value_error":  # a cross-field check: its message names the keys
        return f"{source}: {_allowed(err)}"
    key = ".".join(str(p) for p in loc) or "(root)"
    value = err.get("input")
    vtxt = json.dumps(value, default=str) if not isinstance(value, dict) else "{…}"
    if len(vtxt) > 60:
        vtxt = vtxt[:57] + "..."
    msg = f"{source}: {key}={vtxt}: {_allowed(err)}"
    if err.get("type") == "extra_forbidden":
        keys = _known_keys(model, loc)
        if keys:
            msg += f" (known keys: {', '.join(keys)})"
    more = len(e.errors()) - 1
    if more:
        msg += f" (+{more} more error{'s' if more > 1 else ''})"
    return msg


def validate(model: type[BaseModel], data: dict, source: str = "config"):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


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
