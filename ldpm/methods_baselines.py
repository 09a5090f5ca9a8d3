"""Registry entries of the Table I baselines: the trained ``unet``, ``varnet``, ``swinmr``,
``score_mri``, and ``varnet_official`` (fastMRI's published multicoil E2E-VarNet weights).

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

from .data.fastmri import read_kspace_slices
from .data.store import raw_sources
from .errors import LdpmInputError
from .methods import register
from .mri import center_crop
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


@register("varnet_official")
def varnet_official_recon(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                          options: dict) -> np.ndarray:
    """fastMRI's E2E-VarNet with its published weights, on each test slice's raw multicoil k-space.

    The same stored mask as every other method is applied to the raw k-space [coils, H, W] the
    slice's target was computed from (``options``: ``manifest`` leads to the raw files,
    ``volumes``/``slices`` name each row, ``checkpoint`` and ``model`` as in
    :func:`ldpm.models.varnet.load_official_checkpoint`); the RSS output is centre-cropped
    like the targets. ``k_u`` (the nPI measurement) is not used. The mask must span the raw
    phase-encoding width: fastMRI brain files are 320 wide, so ``data.crop_size: 320``.
    """
    import torch

    from .models.varnet import load_official_checkpoint
    from .train.runtime import resolve_device

    device = resolve_device(options.get("device", "auto"))
    model = load_official_checkpoint(options["checkpoint"], options.get("model")).to(device)
    sources = raw_sources(options["manifest"])
    out = np.empty(k_u.shape, dtype=np.float32)
    for i, (volume, s) in enumerate(zip(options["volumes"], options["slices"])):
        kspace = read_kspace_slices(sources[volume], [s])  # [1, C, H, W]
        if kspace.shape[-1] != mask.shape[-1]:
            raise LdpmInputError(
                sources[volume], f"raw k-space is {kspace.shape[-1]} lines wide but the stored "
                f"masks are {mask.shape[-1]}", "set data.crop_size to the raw phase-encoding "
                "width (fastMRI brain: 320) so the official model sees the same mask")
        m = torch.from_numpy(mask[i:i + 1]).to(device)
        k = torch.from_numpy(kspace).to(device) * m[:, None, None, :]
        with torch.no_grad():
            image = model(k, m)[0].cpu().numpy()
        out[i] = center_crop(image, k_u.shape[-2:])
    return out
