"""How a training job starts: one plain process, or one data-parallel process per GPU (torchrun).

The train rule runs ``python -m ldpm.launch --gpus {resources.gpu} -- <ldpm train arguments>``,
so the launcher follows the GPU count the rule was given (the slurm profile sets it from
``LDPM_TRAIN_GPUS``; the rule's default is 1):

* ``--gpus`` 0 or 1: ``python -m ldpm.cli train ...``, one plain process (CPU or one GPU).
* ``--gpus N > 1``: ``python -m torch.distributed.run --standalone --nproc-per-node=N -m
  ldpm.cli train ...`` (torchrun: one rank per GPU on the job's node). Each rank trains on its
  share of every batch and gradients are averaged before each optimizer step
  (:mod:`ldpm.train.runtime`); rank 0 writes the checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def train_command(train_args: Sequence[str], gpus: int, *, python: str = sys.executable) -> list[str]:
    """The argv that trains with ``train_args`` on ``gpus`` GPUs (0: CPU)."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "ldpm.cli", "train", *train_args]
    return [python, "-m", "ldpm.cli", "train", *train_args]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ldpm.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=0, help="GPUs given to this job (rule resource gpu)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then `ldpm train` arguments")
    a = p.parse_args(argv)
    args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    cmd = train_command(args, a.gpus)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # the job's exit status is the trainer's
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
