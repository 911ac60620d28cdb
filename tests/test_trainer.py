"""Trainer: schedules, exact resume (in-process and after kill -9), atomic checkpoints, NaN handling,
gradient-accumulation invariance."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.train import checkpoint as ckpt
from lmlab.train.schedules import lr_at
from lmlab.train.trainer import TrainingError, train

sys.path.insert(0, str(Path(__file__).parent))
import _train_script as ts  # noqa: E402


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_schedules():
    from lmlab.config import TrainConfig

    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0)
    assert lr_at(c, 10) == pytest.approx(1.0) and lr_at(c, 100) == pytest.approx(0.1)
    w = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(w, 50) == 1.0 and lr_at(w, 79) == 1.0 and lr_at(w, 90) == pytest.approx(0.5)
    assert lr_at(w, 100) == pytest.approx(0.0)


def test_training_lowers_loss_and_writes_run_files(tmp_path, synthetic_data):
    cfg = ts.cfg(steps=100, ckpt_interval=0, dropout=0.0, lr=1e-2)
    cfg.train.tensorboard = True
    res = train(cfg, tmp_path, data=synthetic_data)
    first = res.curves["train_loss"][0][1]
    assert res.curves["train_loss"][-1][1] < first - 0.3
    assert set(res.val_losses) == {"a", "b"}
    for f in ("config.yaml", "meta.json", "metrics.jsonl", "result.json"):
        assert (tmp_path / f).exists(), f
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"] and "git_commit" in meta
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_exact_resume_in_process(tmp_path, synthetic_data):
    straight = train(ts.cfg(steps=20, ckpt_interval=0), tmp_path / "a", data=synthetic_data)
    cfg = ts.cfg(steps=20, ckpt_interval=10)

    class Stop(Exception):
        pass

    def boom(step, rec):
        if step > 10:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "b", data=synthetic_data, callback=boom)
    assert ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000010"
    resumed = train(cfg, tmp_path / "b", data=synthetic_data)
    _assert_bitwise(_weights(straight.model), _weights(resumed.model))
    assert straight.curves["train_loss"] == resumed.curves["train_loss"]


def test_exact_resume_after_kill_9(tmp_path):
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(Path(ts.__file__)), str(run), "slow"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        last = ckpt.latest_checkpoint(run / "checkpoints")
        if last is not None and int(last.name.split("_")[1]) >= 10:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = ckpt.latest_checkpoint(run / "checkpoints")
    assert killed_at is not None and int(killed_at.name.split("_")[1]) < 40
    torch.set_num_threads(1)
    resumed = train(ts.cfg(), run, data=ts.data())
    straight = train(ts.cfg(), tmp_path / "straight", data=ts.data())
    _assert_bitwise(_weights(straight.model), _weights(resumed.model))
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records past the checkpoint were dropped, not duplicated


def test_kill_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch, synthetic_data):
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    first = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"data_position": 8})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    real = ckpt.save_file
    calls = {"n": 0}

    def dying_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # model written, optimizer half-way: the process "dies"
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model, opt, {"data_position": 16})
    monkeypatch.setattr(ckpt, "save_file", real)
    assert ckpt.latest_checkpoint(tmp_path) == first
    fresh = torch.nn.Linear(4, 4)
    meta = ckpt.load_checkpoint(first, fresh, torch.optim.AdamW(fresh.parameters()))
    assert meta["data_position"] == 8
    for k, v in before.items():
        assert torch.equal(fresh.state_dict()[k], v)
    # a later successful save supersedes it, and keep=N prunes old ones
    for s in (3, 4, 5):
        ckpt.save_checkpoint(tmp_path, s, model, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000005"]


def test_checkpoint_files_are_not_pickles(tmp_path, synthetic_data):
    train(ts.cfg(steps=5, ckpt_interval=0), tmp_path, data=synthetic_data)
    d = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    names = sorted(p.name for p in d.iterdir())
    assert names == ["model.safetensors", "optim.safetensors", "rng.safetensors", "state.json"]


def test_nan_steps_skipped_then_abort(synthetic_data):
    class NaNAfter:
        def __init__(self, start, stop):
            self.start, self.stop = start, stop

        def __call__(self, model, batch, step):
            out = model(batch["input_ids"], targets=batch["targets"])
            bad = self.start <= step < self.stop
            return (out.loss * float("nan") if bad else out.loss), {}

    cfg = ts.cfg(steps=12, ckpt_interval=0)
    res = train(cfg, data=synthetic_data, objective=NaNAfter(3, 5))
    assert res.bad_steps == 2 and torch.isfinite(torch.tensor(res.val_loss))
    with pytest.raises(TrainingError, match="not finite for 5 steps"):
        train(cfg, data=synthetic_data, objective=NaNAfter(2, 100))


def test_grad_accumulation_invariance(synthetic_data):
    """batch 8 × accumulation 1 == batch 8 as 4 micro-batches of 2 (float64, one step)."""
    from lmlab.config import RunConfig

    def run(accum):
        torch.set_default_dtype(torch.float64)
        try:
            cfg = RunConfig(model=dict(vocab_size=64, d_model=32, n_layer=1, n_head=4, max_seq_len=64),
                            train=dict(steps=1, batch_size=8, grad_accum=accum, warmup_steps=0, progress=False,
                                       tensorboard=False, grad_clip=0))
            return _weights(train(cfg, data=synthetic_data).model)
        finally:
            torch.set_default_dtype(torch.float32)

    a, b = run(1), run(4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
