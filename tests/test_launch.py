"""The training launcher: one plain process on CPU or one GPU, one torchrun rank per GPU beyond."""

import subprocess
import sys

import pytest

from ldpm.launch import train_command

ARGS = ["--stage", "unet", "--manifest", "m.csv", "--out-dir", "results/models/unet"]


@pytest.mark.parametrize("gpus", [0, 1])
def test_cpu_or_one_gpu_is_one_plain_process(gpus):
    assert train_command(ARGS, gpus, python="py") == ["py", "-m", "ldpm.cli", "train", *ARGS]


def test_several_gpus_start_one_torchrun_rank_per_gpu():
    assert train_command(ARGS, 4, python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "ldpm.cli", "train", *ARGS]


def test_negative_gpu_count_is_rejected():
    with pytest.raises(ValueError):
        train_command(ARGS, -1)


def test_module_execs_the_trainer():
    proc = subprocess.run([sys.executable, "-m", "ldpm.launch", "--gpus", "1", "--", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--stage" in proc.stdout and "--device" in proc.stdout  # `ldpm train --help` ran
