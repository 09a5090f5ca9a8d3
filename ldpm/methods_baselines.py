"""Registry entries of the trained Table I baselines: ``unet``, ``varnet``, ``swinmr``, ``score_mri``.

Each method loads its model from ``checkpoints[name]`` (the training folder written by
:func:`ldpm.train.baselines.train_baseline`, or its ``final/``) and reconstructs every slice
with :func:`ldpm.train.baselines.reconstruct`. ``options``: ``batch_size``; for ``score_mri``
also ``n_steps`` (N), ``snr``, ``n_corrector`` and ``seed``. Deterministic given the seed.
Import this module to register them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import LdpmInputError
from .methods import register
from .train.baselines import BASELINES, load_baseline, reconstruct


def _make(name: str):
    def method(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
               options: dict) -> np.ndarray:
        if name not in checkpoints:
            raise LdpmInputError(f"method {name!r}", "no checkpoint folder given",
                                 f"pass --checkpoint {name}=<its training folder>")
        model, _, cfg = load_baseline(checkpoints[name], expect=name)
        return reconstruct(name, model, cfg, k_u, mask, options).astype(np.float32)

    method.__name__ = f"{name}_recon"
    method.__doc__ = f"Trained {name} baseline (see ldpm.train.baselines)."
    return method


for _name in BASELINES:
    register(_name)(_make(_name))
