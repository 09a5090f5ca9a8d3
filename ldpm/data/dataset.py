"""One split of the manifest for torch training code (kept apart so numpy jobs skip torch).

* :class:`SliceDataset`: a ``torch.utils.data.Dataset``; item ``i`` is the ``i``-th row of
  :func:`ldpm.data.store.split_rows` (sorted by volume and slice), read from its store when
  asked for (one slice, not the volume) as [1, H, W] float32; ``normalize=True`` divides it by
  its volume's ``volume_max``, which gives the values of
  :func:`ldpm.train.stages.training_images`'s row ``i`` bit for bit. Each process (DataLoader
  worker) opens the stores it reads on first use and keeps them open.
* :class:`EpochShardSampler`: a seeded permutation of the dataset per epoch (keys ``(seed,
  epoch)``), padded by its own first indices to a multiple of the number of data-parallel
  ranks and dealt out to them (``rank::world_size``), as ``DistributedSampler`` does;
  :meth:`~EpochShardSampler.set_epoch` picks the epoch.
* :class:`SliceStream`: what a training stage with ``loader: stream`` reads batches from:
  consecutive batches of this rank's shard of epoch 0, 1, ... (a batch may run over into the
  next epoch), loaded by a ``DataLoader`` with ``workers`` worker processes. Its position,
  ``{"epoch", "index"}`` (the next sample of this rank's shard), is saved in the stage's
  ``last.pt`` (:func:`ldpm.train.loop.train`), so a resumed run reads the batches an
  uninterrupted one would. :meth:`~SliceStream.chunks` reads the whole split in order, for
  what a stage computes once over every image (latents, a scale).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import LdpmInputError
from ..io import open_hdf5
from ..seeding import seeded_generator
from .store import REBUILD_STORE, split_rows

#: first key of the sampler's generators, so they never repeat a training step's
#: (``ldpm.seeding.step_generator`` keys start with the seed)
_SAMPLER_KEY = 0x53414D50


class SliceDataset(Dataset):
    """The slices of ``split`` in ``manifest_csv``, read lazily from their stores (see the
    module). ``transform`` (optional) is applied to each tensor."""

    def __init__(self, manifest_csv: str | Path, split: str, normalize: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        rows = split_rows(manifest_csv, split)
        self.manifest_csv, self.normalize, self.transform = manifest_csv, normalize, transform
        self.stores = sorted(set(rows["store"]))
        index: dict[str, dict[int, int]] = {}
        shape = None
        for store in self.stores:
            with open_hdf5(store, "slice store", "run the preprocess step first", REBUILD_STORE) as f:
                if "target" not in f or "slice_index" not in f or f["target"].ndim != 3:
                    raise LdpmInputError(store, "is not a slice store (no 3-D 'target' or no "
                                         "'slice_index')", REBUILD_STORE)
                if shape is None:
                    shape = tuple(f["target"].shape[1:])
                elif tuple(f["target"].shape[1:]) != shape:
                    raise LdpmInputError(store, f"slices are {tuple(f['target'].shape[1:])}, the "
                                         f"first store's are {shape}", "preprocess every volume "
                                         "with the same data.crop_size")
                index[store] = {int(s): i for i, s in enumerate(f["slice_index"][()])}
        self.image_shape: tuple[int, ...] = shape or (0, 0)
        number = {store: k for k, store in enumerate(self.stores)}
        self._items: list[tuple[int, int]] = []
        for store, s in zip(rows["store"], rows["slice"]):
            if int(s) not in index[store]:
                raise LdpmInputError(store, f"has no slice {int(s)} listed in {manifest_csv}",
                                     f"rebuild the stores and {manifest_csv}")
            self._items.append((number[store], index[store][int(s)]))
        self._scale = rows["volume_max"].to_numpy(np.float32)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._items)

    def _file(self, k: int):
        import h5py

        if self._pid != os.getpid():  # a forked worker: never share the parent's handles
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = h5py.File(self.stores[k], "r")
        return self._files[k]

    def __getitem__(self, i: int) -> torch.Tensor:
        k, row = self._items[i]
        image = self._file(k)["target"][row]
        if not np.isfinite(image).all():
            raise LdpmInputError(self.stores[k], f"target row {row} contains NaN or inf",
                                 REBUILD_STORE)
        if self.normalize:
            image = image / self._scale[i]
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        return self.transform(x) if self.transform else x

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:  # what a spawned worker gets: no open handles
        return {**self.__dict__, "_files": {}}


class EpochShardSampler(Sampler[int]):
    """This rank's share of a seeded per-epoch permutation of ``range(n)`` (see the module)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("EpochShardSampler needs n >= 1")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def permutation(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s order of every index, padded to a multiple of ``world_size``."""
        g = seeded_generator(_SAMPLER_KEY, self.seed & 0xFFFFFFFF, epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = len(self) * self.world_size
        while len(order) < total:
            order += order[:total - len(order)]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation(self.epoch)[self.rank::self.world_size])


class _Batches(Sampler[list[int]]):
    """Endless batches of ``size`` consecutive indices of ``sampler``'s epochs from
    ``(epoch, index)`` on."""

    def __init__(self, sampler: EpochShardSampler, epoch: int, index: int, size: int):
        self.sampler, self.epoch, self.index, self.size = sampler, epoch, index, size

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip, batch = self.epoch, self.index, []
        while True:
            self.sampler.set_epoch(epoch)
            for i in list(self.sampler)[skip:]:
                batch.append(i)
                if len(batch) == self.size:
                    yield batch
                    batch = []
            epoch, skip = epoch + 1, 0


class SliceStream:
    """Batches of a :class:`SliceDataset` for one data-parallel rank (see the module).

    Training stages read it through :func:`ldpm.train.loop.random_batch`; it also offers what
    they ask of an image tensor (``len``, ``shape``, ``to``). ``workers``: DataLoader worker
    processes (0: read in this process).
    """

    ndim = 4

    def __init__(self, dataset: SliceDataset, seed: int, rank: int = 0, world_size: int = 1,
                 workers: int = 0, device: torch.device | str = "cpu"):
        if len(dataset) == 0:
            raise LdpmInputError(dataset.manifest_csv, "has no slices in the split to train on",
                                 "add subjects or raise data.split_fractions.train")
        self.dataset, self.workers = dataset, int(workers)
        self.sampler = EpochShardSampler(len(dataset), seed, rank, world_size)
        self.device = torch.device(device)
        self.epoch, self.index = 0, 0
        self._it: Iterator[torch.Tensor] | None = None
        self._size = 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.dataset), 1, *self.dataset.image_shape)

    def to(self, device: torch.device | str) -> "SliceStream":
        """Deliver batches on ``device`` (the stream itself, as ``Tensor.to`` would be)."""
        self.device = torch.device(device)
        return self

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < len(self.sampler):
            raise ValueError(f"loader position {state} is outside the split's "
                             f"{len(self.sampler)} samples per epoch and rank")
        self._stop()
        self.epoch, self.index = epoch, index

    def next_batch(self, size: int) -> torch.Tensor:
        """The next ``size`` samples [size, 1, H, W] float32 on :attr:`device`."""
        if self._it is None or size != self._size:
            self._stop()
            cuda = self.device.type == "cuda"
            loader = DataLoader(self.dataset, batch_sampler=_Batches(self.sampler, self.epoch,
                                                                     self.index, size),
                                num_workers=self.workers, pin_memory=cuda)
            self._it, self._size = iter(loader), size
        batch = next(self._it)
        self.index += size
        self.epoch += self.index // len(self.sampler)
        self.index %= len(self.sampler)
        return batch.to(self.device, non_blocking=self.device.type == "cuda")

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Every slice of the split (not only this rank's shard) in the dataset's order,
        ``size`` at a time [<= size, 1, H, W] on :attr:`device`, read by a DataLoader of its
        own (:attr:`workers` workers): the rows of :func:`ldpm.train.stages.training_images`
        chunk by chunk. The stream's position is left as it is."""
        cuda = self.device.type == "cuda"
        for batch in DataLoader(self.dataset, batch_size=size, shuffle=False,
                                num_workers=self.workers, pin_memory=cuda):
            yield batch.to(self.device, non_blocking=cuda)

    def _stop(self) -> None:
        self._it = None  # the DataLoader iterator shuts its workers down when collected

    def close(self) -> None:
        self._stop()
        self.dataset.close()

    def __enter__(self) -> "SliceStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
