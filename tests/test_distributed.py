"""DDP with 2 CPU processes (gloo) gives the same weights as one process with the same global batch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


@pytest.mark.slow
def test_ddp_two_processes_match_single(tmp_path):
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": str(here.parent), "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port=29533", str(here / "_ddp_script.py"),
                        str(tmp_path / "ddp.safetensors")], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    env1 = {k: v for k, v in env.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, str(here / "_ddp_script.py"), str(tmp_path / "one.safetensors")],
                       env=env1, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(tmp_path / "ddp.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # and training really moved the weights away from the (seeded) initialisation
    sys.path.insert(0, str(here))
    import _train_script as ts
    from lmlab.models import build_model
    from lmlab.train.trainer import seed_everything

    seed_everything(0)
    init = build_model(ts.cfg().model).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
