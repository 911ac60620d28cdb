"""`lmlab align` config: one typed, nested config for every stage, loaded like any other lmlab config.

    name, out_dir, seed, tensorboard, init_from     the run (init_from: a model an earlier stage wrote)
    model                                            the decoder built when init_from is not set
    data                                             path: JSONL chat rows (sft) or preference rows (rm, dpo);
                                                     task, task_args: the rl prompts and their exact checker
    sft, rm, dpo, rl                                 each stage's hyperparameters; a stage reads only its own
    peft                                             sft and dpo: LoRA / Partial LoRA / SpIEL (lmlab.nn.peft)

`load_align_config(path, overrides)` is `lmlab.config.load_config(path, overrides, model=AlignConfig)`: unknown
keys and bad values stop with one line naming the dotted key. Names (`rm.method`, `dpo.loss_type`, `rl.algo`)
are looked up in lmlab.registry (REWARD_MODELS, ALIGN_ALGOS). The flat layout of earlier versions
(`lr: ...`, `rm_method: ...` at the top level) is refused with one line naming the key's new place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, model_validator

from lmlab.config import ModelConfig, _Base, load_config
from lmlab.registry import RegistryError


def _byte_model() -> ModelConfig:
    """A small decoder over the byte tokenizer (lmlab.align.data.ByteTokenizer: 256 bytes + pad + eos)."""
    return ModelConfig(vocab_size=258, d_model=64, n_layer=2, n_head=4, max_seq_len=256)


class AlignData(_Base):
    path: Optional[str] = Field(None, description="JSONL: chat rows (sft) or preference rows (rm, dpo)")
    task: Literal["arithmetic", "countdown", "sorting"] = Field(
        "arithmetic", description="rl: the task that makes prompts and checks answers (lmlab.align.envs)")
    task_args: dict[str, Any] = Field(default_factory=dict, description="rl: keyword arguments of the task")


# names a stage can run, checked through the registry when the config loads
RMKind = Annotated[str, AfterValidator(lambda v: _registered("rm", v))]
DPOLoss = Annotated[str, AfterValidator(lambda v: _registered("dpo", v))]
RLAlgo = Annotated[str, AfterValidator(lambda v: _registered("rl", v))]


class SFTSection(_Base):
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(256, ge=8, description="packing length")
    lr: float = Field(1e-3, gt=0)


class RMSection(_Base):
    method: RMKind = Field("bt", description="a reward-model kind of lmlab.registry.REWARD_MODELS: bt | ids | odin")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    ids_beta: float = Field(0.3, gt=0, le=1)
    odin_lambda_l: float = Field(1.0, ge=0)
    odin_lambda_o: float = Field(1.0, ge=0)


class DPOSection(_Base):
    loss_type: DPOLoss = Field("sigmoid", description="a dpo loss of lmlab.registry.ALIGN_ALGOS: sigmoid | ipo | hinge")
    beta: float = Field(0.1, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)


class RLSection(_Base):
    algo: RLAlgo = Field("ppo", description="an rl algorithm of lmlab.registry.ALIGN_ALGOS: ppo | rloo | grpo")
    iterations: int = Field(20, ge=1)
    prompts_per_iter: int = Field(8, ge=1)
    samples_per_prompt: int = Field(4, ge=1)
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    adaptive_kl: bool = False
    kl_target: float = Field(6.0, gt=0)
    clip_eps: float = Field(0.2, gt=0)
    lr: float = Field(1e-3, gt=0)


def _registered(stage: str, name: str) -> str:
    """`name` if the `stage` stage can run it (a REWARD_MODELS entry for rm, an ALIGN_ALGOS one otherwise)."""
    from lmlab.align import algorithms

    try:
        algorithms.reward_kind(name) if stage == "rm" else algorithms.algorithm(stage, name)
    except RegistryError as e:
        raise ValueError(str(e)) from None
    return name


# Where each key of the old flat layout lives now.
_MOVED = {
    "task": "data.task", "task_args": "data.task_args",
    "steps": "sft.steps", "grad_accum": "sft.grad_accum", "seq_len": "sft.seq_len",
    "rm_method": "rm.method", "ids_beta": "rm.ids_beta", "odin_lambda_l": "rm.odin_lambda_l",
    "odin_lambda_o": "rm.odin_lambda_o",
    "beta": "dpo.beta", "loss_type": "dpo.loss_type",
    "iterations": "rl.iterations", "prompts_per_iter": "rl.prompts_per_iter",
    "samples_per_prompt": "rl.samples_per_prompt", "max_new_tokens": "rl.max_new_tokens",
    "temperature": "rl.temperature", "kl_coef": "rl.kl_coef", "adaptive_kl": "rl.adaptive_kl",
    "kl_target": "rl.kl_target", "clip_eps": "rl.clip_eps",
    "lr": "sft.lr, rm.lr, dpo.lr or rl.lr", "epochs": "rm.epochs or dpo.epochs",
    "batch_size": "sft.batch_size, rm.batch_size or dpo.batch_size",
}


class AlignConfig(_Base):
    name: str = "align"
    out_dir: str = "runs/align"
    seed: int = 0
    tensorboard: bool = True
    init_from: Optional[str] = Field(None, description="model.safetensors (or its dir) written by an earlier stage")
    model: ModelConfig = Field(default_factory=_byte_model)
    data: AlignData = Field(default_factory=AlignData)
    sft: SFTSection = Field(default_factory=SFTSection)
    rm: RMSection = Field(default_factory=RMSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    rl: RLSection = Field(default_factory=RLSection)
    peft: dict[str, Any] = Field(default_factory=dict, description="sft/dpo: parameter-efficient fine-tuning, e.g. "
                                 "{method: lora, r: 8, alpha: 16, target: [q_proj, v_proj]} (see lmlab.nn.peft)")

    @model_validator(mode="before")
    @classmethod
    def _refuse_flat_layout(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key in _MOVED:
                raise ValueError(f"{key} is now {_MOVED[key]} (align configs have one section per stage)")
        if isinstance(data.get("data"), str):
            raise ValueError("data: <file> is now data.path: <file>")
        return data


def load_align_config(path: Optional[str | Path], overrides: Optional[list[str]] = None) -> AlignConfig:
    """YAML file (None: defaults) + dotted overrides -> AlignConfig; one-line ConfigError on bad input."""
    return load_config(path, overrides or [], model=AlignConfig)
