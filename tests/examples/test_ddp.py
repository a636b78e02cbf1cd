"""train_coco.py under torchrun (2 gloo processes on the CPU): trains, and rank 0 writes the outputs."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from .helpers import make_precomp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "loss",
    [["--max_violation"], ["--loss", "infonce", "--learn_temperature"]],
    ids=["mh", "infonce-learned-temperature"],
)
def test_torchrun_two_processes(tmp_path, loss):
    make_precomp(str(tmp_path / "data"))
    log_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(ROOT, "examples", "train_coco.py"),
        "--data_path",
        str(tmp_path / "data"),
        "--data_name",
        "toy_precomp",
        "--embed_size",
        "32",
        "--word_dim",
        "16",
        "--batch_size",
        "8",
        "--workers",
        "0",
        "--num_epochs",
        "2",
        "--val_step",
        "0",
        "--logger_name",
        str(log_dir),
    ] + loss
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes (torchrun)" in out.stdout
    assert out.stdout.count("epoch 2/2") == 1  # only rank 0 logs
    metrics = json.loads((log_dir / "test_metrics.json").read_text())
    assert set(metrics) >= {"i2t_r1", "t2i_r1", "rsum"}
    assert (log_dir / "checkpoint.pth.tar").is_file() and (log_dir / "model_best.pth.tar").is_file()
    if "--learn_temperature" in loss:  # its gradient averaged over the ranks, as DDP does the model's
        ckpt = torch.load(log_dir / "checkpoint.pth.tar", weights_only=True)
        assert ckpt["logit_scale"].item() != pytest.approx(math.log(1 / 0.07), abs=1e-4)
