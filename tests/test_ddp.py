"""Data-parallel training through torchrun: two CPU processes talking over gloo."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from msrgan_core.modelfile import read_metadata
from msrgan_core.train import CHECKPOINT, load_checkpoint
from test_train import make_plate

pytestmark = pytest.mark.integration


def test_torchrun_two_cpu_processes_train_one_model(tmp_path):
    data = make_plate(tmp_path / "plate")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "msrgan_core.cli", "train", "--out", str(run), "-q", "--device", "cpu",
           "--set", f'data.train=["{data}"]', "--set", "generator.n_blocks=1", "--set", "generator.n_features=8",
           "--set", "discriminator.n_features=8", "--set", "train.patch_size=32", "--set", "train.batch_size=2",
           "--set", "train.pretrain_steps=2", "--set", "train.gan_steps=2", "--set", "train.checkpoint_every=2",
           "--set", "train.eval_every=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr
    state = load_checkpoint(run / CHECKPOINT)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["generator"].values())
    meta = read_metadata(run / "perceptual.safetensors")
    assert meta["training"]["hardware"].split(", ")[0].endswith(" x 2")  # "cpu (1 threads) x 2, x86_64, fp32"
