"""The method registry: name -> reconstruction function. Each method module registers its
functions with :func:`register` when imported (:func:`ldpm.methods.load_registry`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Reconstruction:
    """A method's images [N, H, W] float32 with its own timings in seconds (e.g.
    ``sampling_seconds``: the time spent sampling, networks' loading excluded), which go to the
    shard's timing file (:func:`ldpm.methods.timing_path`), never into the images' file."""

    images: np.ndarray
    timings: Mapping[str, float] = field(default_factory=dict)


#: (k_u [N,H,W] complex64, mask [N,W] float32, checkpoints {stage: folder}, options) -> [N,H,W]
#: float32, or a :class:`Reconstruction` of them with the method's timings.
#: ``options["slice_seeds"]`` holds one integer seed per slice (from its volume and slice
#: index), so a sampling method gives the same result however the test set is sharded.
Method = Callable[[np.ndarray, np.ndarray, Mapping[str, Path], dict], "np.ndarray | Reconstruction"]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Decorator: ``METHODS[name] = fn``."""
    def deco(fn: Method) -> Method:
        METHODS[name] = fn
        return fn
    return deco
