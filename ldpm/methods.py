"""Reconstruction methods as one registry: name -> function(shard, checkpoints, options) -> images.

Every method sees exactly the same input: the test shard's ground truth is only used to
simulate the measurement ``k_u = M * F(x)`` with the stored mask; the method then gets
``(k_u, M)`` and returns magnitude images. Reconstructions are written with the shard's keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from .errors import LdpmInputError
from .io import atomic_path
from .mri import undersample, zero_filled

#: signature: (k_u [N,H,W] complex64, mask [N,W] float32, checkpoints, options) -> [N,H,W] float32
Method = Callable[[np.ndarray, np.ndarray, Sequence[Path], dict], np.ndarray]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return deco


@register("zero_filled")
def zero_filled_recon(k_u: np.ndarray, mask: np.ndarray, checkpoints: Sequence[Path],
                      options: dict) -> np.ndarray:
    """Zero-filled reconstruction ``|F^-1(k_u)|``: the lower bound of Table I."""
    return np.abs(zero_filled(k_u)).astype(np.float32)


def measure(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The simulated measurement of each slice: ``k_u = M * F(x)`` (nPI, single-coil RSS)."""
    return undersample(target.astype(np.complex64), mask[:, None, :]).astype(np.complex64)


def reconstruct_shard(method: str, shard_path: Path, out_path: Path,
                      checkpoints: Sequence[Path] = (), options: dict | None = None) -> None:
    """Reconstruct every slice of a test shard with ``method``; write ``recon`` + keys."""
    if method not in METHODS:
        raise LdpmInputError(f"method {method!r}", "unknown method",
                             f"use one of: {', '.join(sorted(METHODS))}")
    with h5py.File(shard_path, "r") as f:
        target = f["target"][()]
        mask = f["mask"][()]
        volume = f["volume"][()]
        slices = f["slice"][()]
    if len(target):
        recon = METHODS[method](measure(target, mask), mask, list(checkpoints), options or {})
    else:
        recon = np.zeros_like(target, dtype=np.float32)
    if recon.shape != target.shape:
        raise LdpmInputError(f"method {method!r}", f"returned shape {recon.shape}, expected "
                             f"{target.shape}", "fix the method's output size")
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("recon", data=recon.astype(np.float32))
            f.create_dataset("volume", data=volume)
            f.create_dataset("slice", data=slices)
            f.attrs["method"] = method
