"""The training launcher: plain process by default, torchrun per GPU when the loop is parallel."""

import subprocess
import sys

import pytest

from ldpm.launch import DISTRIBUTED_TRAINING, train_command

ARGS = ["--stage", "unet", "--manifest", "m.csv", "--out-dir", "results/models/unet"]


@pytest.mark.parametrize("gpus", [0, 1])
def test_cpu_or_one_gpu_is_one_plain_process(gpus):
    assert train_command(ARGS, gpus, python="py") == ["py", "-m", "ldpm.cli", "train", *ARGS]


def test_several_gpus_start_one_torchrun_rank_per_gpu():
    assert train_command(ARGS, 4, distributed=True, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "ldpm.cli", "train", *ARGS]


def test_single_process_loop_keeps_one_process_on_several_gpus():
    assert DISTRIBUTED_TRAINING is False  # ldpm/train/loop.py has no DDP yet (docs/cluster.md)
    assert train_command(ARGS, 4, python="py") == ["py", "-m", "ldpm.cli", "train", *ARGS]


def test_negative_gpu_count_is_rejected():
    with pytest.raises(ValueError):
        train_command(ARGS, -1)


def test_module_execs_the_trainer_and_says_why_it_uses_one_process():
    proc = subprocess.run([sys.executable, "-m", "ldpm.launch", "--gpus", "2", "--", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--stage" in proc.stdout  # `ldpm train --help` ran
    assert "single-process" in proc.stderr
