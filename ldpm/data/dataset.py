"""A torch ``Dataset`` over one split of the manifest (kept apart so numpy jobs skip torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .store import _load_store, _resolve_store, _select_split, read_manifest


class SliceDataset(torch.utils.data.Dataset):
    """Targets of one split as float32 tensors [1, H, W]; each volume store is read once.

    ``normalize=True`` divides each slice by its volume's max (``volume_max``).
    ``transform`` (optional) is applied to the tensor.
    """

    def __init__(self, manifest_csv: str | Path, split: str, normalize: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.manifest_csv = manifest_csv
        self.rows = _select_split(read_manifest(manifest_csv), split, manifest_csv)
        self.normalize = normalize
        self.transform = transform
        self._cache: dict[str, tuple[np.ndarray, dict[int, int]]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self.rows.iloc[i]
        if row["store"] not in self._cache:
            self._cache[row["store"]] = _load_store(_resolve_store(row["store"],
                                                                   self.manifest_csv))
        targets, index = self._cache[row["store"]]
        image = targets[index[int(row["slice"])]]
        if self.normalize:
            image = image / np.float32(row["volume_max"])
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        return self.transform(x) if self.transform else x
