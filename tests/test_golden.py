"""A committed reference loss curve: any change to the model, init, data order, optimizer or schedule
that alters training shows up here. Regenerate deliberately with LMLAB_UPDATE_GOLDEN=1."""
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _train_script as ts  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "synthetic_train_loss.json"


def test_reference_loss_curve():
    from lmlab.train.trainer import train

    cfg = ts.cfg(steps=30, ckpt_interval=0, dropout=0.0, lr=1e-2)
    res = train(cfg, data=ts.data())
    curve = [[s, round(v, 6)] for s, v in res.curves["train_loss"]]
    if os.environ.get("LMLAB_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "train_loss": curve}, indent=1))
    ref = json.loads(GOLDEN.read_text())["train_loss"]
    assert [s for s, _ in curve] == [s for s, _ in ref]
    for (_, a), (_, b) in zip(curve, ref):
        assert a == pytest.approx(b, abs=2e-3)
