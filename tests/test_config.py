"""Malformed configs -> one-line ConfigError naming the key, the value and what is allowed."""
import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import ConfigError, RunConfig, apply_overrides, load_config

BAD = [  # (yaml text or None, overrides, substrings the one-line message must contain)
    ("model:\n  n_layr: 4\n", [], ["model.n_layr", "unknown key", "n_layer"]),
    ("model:\n  n_layer: four\n", [], ["model.n_layer", "four"]),
    ("model:\n  n_layer: 0\n", [], ["model.n_layer", ">= 1"]),
    ("model:\n  d_model: 100\n  n_head: 3\n", [], ["divisible", "n_head=3"]),
    ("model:\n  n_head: 4\n  n_kv_head: 3\n", [], ["n_kv_head", "divisible"]),
    ("train:\n  lr: -1\n", [], ["train.lr", "-1", "> 0"]),
    ("train:\n  lr: 100\n", [], ["train.lr", "<= 10"]),
    ("train:\n  precision: fp8\n", [], ["train.precision", "fp8", "auto"]),
    ("train:\n  batch_size: 2.5\n", [], ["train.batch_size", "2.5"]),
    ("data:\n  seq_len: 1\n", [], ["data.seq_len", ">= 2"]),
    ("data:\n  val_fraction: 1.5\n", [], ["data.val_fraction", "< 1"]),
    ("data:\n  vocab_size: 10\n", [], ["data.vocab_size", ">= 256"]),
    ("optimizer:\n  lr: 1\n", [], ["optimizer", "unknown key"]),
    ("model: 5\n", [], ["model", "5"]),
    ("- just\n- a list\n", [], ["top level must be a mapping"]),
    ("model:\n  n_layer: [1\n", [], ["line"]),
    ("name: run\n", ["model.n_layer=-2"], ["model.n_layer", "-2"]),
    ("name: run\n", ["train.steps"], ["expected key=value"]),
    ("name: run\n", ["model.dropout=1.0"], ["model.dropout", "< 1"]),
    ("name: run\n", ["train.weight_decay=abc"], ["train.weight_decay", "abc"]),
    ("name: run\n", ["model.layer_pattern=attn"], ["model.layer_pattern", "attn"]),
]


@pytest.mark.parametrize("text,overrides,needles", BAD)
def test_malformed_config_one_line(tmp_path, text, overrides, needles):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "b.yaml"
    p.write_bytes(b"model:\n  n_layer: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config(None, ["model.n_layer=6", "train.lr=3e-4", "model.layer_pattern=[attn, attn]", "name=x"])
    assert cfg.model.n_layer == 6 and cfg.train.lr == 3e-4 and cfg.model.layer_pattern == ["attn", "attn"]
    from lmlab.config import save_config

    save_config(cfg, tmp_path / "r.yaml")
    assert load_config(tmp_path / "r.yaml") == cfg
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_unknown_component_name_is_one_line():
    from lmlab.models import build_model

    with pytest.raises(KeyError) as e:
        cfg = RunConfig(model={"mixer": "nosuchmixer", "n_layer": 1}).model
        build_model(cfg)
    assert "nosuchmixer" in str(e.value) and "attn" in str(e.value)
    with pytest.raises(ConfigError, match="mixer_args.attn"):
        cfg = RunConfig(model={"n_layer": 1, "mixer_args": {"attn": {"windw": 4}}}).model
        build_model(cfg)


def test_cli_bad_config_no_traceback(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: -1\n")
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "train", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "train.lr" in r.stderr


# Sub-folders whose YAML files follow another schema, each validated by its own test.
OWN_SCHEMA = {"align": "tests/test_align_cli.py::test_every_config_validates",
              "vlm": "tests/test_vlm.py::test_every_vlm_config_validates"}


def test_every_shipped_config_validates():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(f for f in root.rglob("*.yaml") if f.relative_to(root).parts[0] not in OWN_SCHEMA)
    assert files, "configs/ has no YAML files"
    for f in files:
        load_config(f)
