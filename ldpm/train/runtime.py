"""Where a training job runs: its device, and its rank among data-parallel processes.

A job is one plain process (CPU or one GPU) or ``torchrun --nproc-per-node=N`` ranks, one per GPU
(``ldpm/launch.py`` picks). :func:`current_runtime` reads torchrun's environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), joins the process group (NCCL on GPUs, Gloo on CPU)
and pins ``cuda:LOCAL_RANK``. With N ranks the training loop is data-parallel through
``torch.nn.parallel.DistributedDataParallel``:

* every rank starts from the same weights: seeded initialisation, then
  :meth:`Runtime.broadcast_parameters` of every module the loop checkpoints (after a resume
  too, and including what DDP does not wrap: an EMA copy, adapter states);
* step ``i`` of rank ``r`` draws its own batch of ``batch_size / N`` samples from
  :meth:`Runtime.generator` ``(seed, i)`` (seeded by ``(seed, i, r, N)``; one process: exactly
  ``ldpm.seeding.step_generator(seed, i)``), so the N ranks together see ``batch_size`` samples
  (with ``loader: stream``: the next ``batch_size / N`` samples of rank ``r``'s shard of the
  epoch, :class:`ldpm.data.dataset.EpochShardSampler`);
* a stage's step function runs each loss computation through :meth:`Runtime.replicate` of the
  modules that loss trains (:class:`Replicas`): one small module holding them, wrapped in DDP,
  whose ``forward(fn, *args)`` is ``fn(*args)``. The stages call parts of their models
  (``Sketcher.repair``; ``vae.encode``/``decode``, with ``torch.autograd.grad`` of the
  decoder's last layer for LDM's adaptive GAN weight), which a DDP-wrapped model's own
  ``forward`` would not see; run inside the wrapper's ``forward``, the whole loss computation
  prepares DDP's reducer, and the backward pass that follows averages the gradients over the
  ranks, bucket by bucket as they are computed. ``torch.autograd.grad`` with ``inputs`` (the
  adaptive weight) accumulates into no ``.grad``, so it runs none of DDP's gradient hooks and
  reduces nothing (and it runs inside the ``forward``, before the reducer expects any); the
  averaged gradient equals the mean of the ranks' gradients exactly in
  ``tests/test_distributed.py``, the GAN term included. MR-VAE's generator and its
  discriminator (its own optimizer and backward pass) each have their own :class:`Replicas`.
  With ``grad_accum``
  micro-batches (:func:`ldpm.train.loop.accumulate`) all but the last run in
  ``DistributedDataParallel.no_sync``, so the gradients accumulate on each rank and are
  averaged once per optimizer step; a baseline's ``grad_clip`` clips the averaged gradients;
* DDP runs with ``find_unused_parameters=True``: a parameter no rank has a gradient for keeps
  ``None`` (the optimizer skips it, as in one process), one that some ranks lack counts as
  zero there; frozen parameters (``requires_grad`` False) are not reduced;
* the logged scalars are averaged over the ranks (:meth:`Runtime.mean_scalars`, one
  all-reduce per step, so that every rank stops alike on a non-finite loss); only rank 0 writes
  checkpoints, logs and ``final/``; all ranks meet at the end.

In one process nothing is wrapped and no collective runs: each loss function is called
directly, and training is bit for bit the plain loop's.

Differences from one process with the full batch: BatchNorm is not synchronised (no
``SyncBatchNorm``, and DDP broadcasts no buffers), so each rank normalises by its own batch's
statistics and keeps its own running statistics (rank 0's are saved); and the ranks draw other
samples than one process does, so N-rank runs are seeded and repeatable for a given N, but not
bit-identical to 1-rank runs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from ..errors import LdpmInputError
from ..seeding import step_generator


@dataclass(frozen=True)
class Runtime:
    """The device of this process and its place among ``world_size`` data-parallel ranks."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def local_batch(self, batch_size: int) -> int:
        """This rank's share of a step's ``batch_size`` samples."""
        if batch_size % self.world_size:
            raise LdpmInputError(f"batch_size {batch_size}", f"does not split over {self.world_size} "
                                 "ranks", f"use a multiple of {self.world_size}, or fewer GPUs")
        return batch_size // self.world_size

    def generator(self, seed: int, step: int) -> torch.Generator:
        """The CPU generator of ``step`` on this rank (one process: ``step_generator(seed, step)``)."""
        if not self.distributed:
            return step_generator(seed, step)
        return step_generator(seed, step, self.rank, self.world_size)

    def broadcast_parameters(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if not self.distributed:
            return
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                dist.broadcast(t.data, src=0)

    def replicate(self, *modules: nn.Module) -> "Replicas":
        """The :class:`Replicas` of ``modules``: the trainable modules of one loss computation."""
        return Replicas(self, modules)

    def mean_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each logged scalar over the ranks (one process: unchanged)."""
        if not self.distributed or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world_size).tolist()))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class _Call(nn.Module):
    """Holds the modules whose gradients DDP averages; ``forward(fn, ...)`` is ``fn(...)``."""

    def __init__(self, modules: Iterable[nn.Module]):
        super().__init__()
        self.held = nn.ModuleList(modules)

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class Replicas:
    """Runs a stage's loss computations so that the next backward pass averages the gradients
    of ``modules`` over the ranks.

    With several ranks, ``modules`` are held by one :class:`_Call` wrapped in
    ``DistributedDataParallel``, and :meth:`__call__` runs ``fn(*args, **kwargs)`` inside its
    ``forward``, so the whole loss computation (however it calls the models: parts of them,
    ``torch.autograd.grad``, other modules) prepares DDP's reducer for the backward pass that
    follows. Settings: ``find_unused_parameters=True`` (a parameter no rank has a gradient for
    keeps ``None``; one some ranks lack counts as zero there), no buffer broadcasts (each rank
    keeps its own BatchNorm statistics; :meth:`Runtime.broadcast_parameters` makes the ranks
    start alike, so DDP's own initial broadcast is off), parameters with ``requires_grad``
    False ignored. In one process nothing is wrapped: :meth:`__call__` is ``fn(*args,
    **kwargs)`` and :meth:`no_sync` does nothing. A stage keeps its :class:`Replicas` for the
    whole run (DDP's backward pass holds only a weak reference to it)."""

    def __init__(self, runtime: Runtime, modules: Iterable[nn.Module]):
        self.ddp: DistributedDataParallel | None = None
        if runtime.distributed:
            self.ddp = DistributedDataParallel(_Call(modules), find_unused_parameters=True,
                                               init_sync=False, forward_sync_buffers=False)

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if self.ddp is None else self.ddp(fn, *args, **kwargs)

    def no_sync(self) -> contextlib.AbstractContextManager:
        """A context whose forward and backward passes accumulate gradients on this rank only
        (``DistributedDataParallel.no_sync``): all micro-batches of a step but the last."""
        return contextlib.nullcontext() if self.ddp is None else self.ddp.no_sync()


#: the values of a stage's ``amp`` key: None (float32 throughout) or bf16 autocast on CUDA
AMP_MODES = (None, "bf16")


def autocast(amp: str | None, device: torch.device, where: str = "amp"):
    """The context a training step's forward pass and loss run in: ``torch.autocast`` to
    bfloat16 for ``amp == "bf16"`` on a CUDA device (convolutions and matrix products in bf16,
    reductions and losses in float32; no gradient scaler is needed with bf16's float32
    exponent range), else a context that changes nothing. ``bf16`` on another device is
    refused, naming ``where``: CPU training stays float32 so that its results are reproducible
    bit for bit."""
    if amp not in AMP_MODES:
        raise LdpmInputError(where, f"unknown value {amp!r}", "use bf16 or null")
    if amp is None:
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise LdpmInputError(where, f"bf16 autocast needs a CUDA device, and this job trains on "
                             f"{device.type}", "set it to null to train on the CPU in float32, "
                             "or run the job where a GPU is visible")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def current_runtime(device: str = "auto") -> Runtime:
    """The runtime of this process: torchrun's rank (if launched by it) and ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world)
