"""Registry entries of the Table I baselines: each trained baseline of :mod:`ldpm.baselines`
(``unet``, ``varnet``, ``swinmr``, ``score_mri``), and ``unet_official``/``varnet_official``
(fastMRI's published multicoil weights, as the paper used; on the raw multicoil k-space of each
test slice).

Each trained baseline's method loads its model from ``checkpoints[name]`` (the training folder
written by :func:`ldpm.train.baselines.train_baseline`, or its ``final/``;
:mod:`ldpm.checkpoints`) and reconstructs every slice with :func:`reconstruct`. ``options``:
``batch_size``, ``seed`` and the baseline's own (Score-MRI: ``n_steps`` (N), ``snr``,
``n_corrector``, ``predictor``). Deterministic given the seed. Import this module to register them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..baselines import baseline
from ..checkpoints import load_baseline
from ..data.fastmri import read_kspace_slices
from ..data.store import raw_sources
from ..errors import LdpmInputError
from ..io import progress
from ..mri import center_crop, ifft2c, measurement_scale
from ..seeding import derived_seed
from .graph import BASELINES
from .registry import register


def reconstruct(name: str, model: nn.Module, cfg: Mapping[str, Any], k_u: np.ndarray,
                mask: np.ndarray, options: Mapping[str, Any] | None = None) -> np.ndarray:
    """``k_u`` [N, H, W] complex, ``mask`` [N, W] -> magnitudes [N, H, W] float32.

    ``options``: ``batch_size`` (8), ``slice_seeds`` (one seed per slice, for a baseline that
    samples; default: slice ``i`` of this call draws its noise from ``(seed, i)``), and the
    baseline's own (:attr:`ldpm.baselines.Baseline.forward`).
    """
    forward = baseline(name).forward
    opts = dict(options or {})
    dev = torch.device(opts.get("device", "cpu"))
    model = model.to(dev)
    k_all = torch.from_numpy(np.ascontiguousarray(k_u)).to(device=dev, dtype=torch.complex64)
    m_all = torch.from_numpy(np.ascontiguousarray(mask)).to(device=dev, dtype=torch.float32)
    bs = int(opts.get("batch_size", 8))
    seed = int(opts.get("seed", 0))
    slice_seeds = opts.get("slice_seeds") or [derived_seed(seed & 0xFFFFFFFF, i)
                                              for i in range(len(k_u))]
    out = []
    with torch.no_grad(), progress(len(k_all), name) as bar:
        for i0 in range(0, len(k_all), bs):
            k, m = k_all[i0:i0 + bs], m_all[i0:i0 + bs]
            x_u = ifft2c(k).abs()[:, None]
            s = measurement_scale(x_u)
            batch = {"k_u": k / s[:, 0], "mask": m, "x_u": x_u / s,
                     "seeds": slice_seeds[i0:i0 + len(k)]}
            rec = forward(model, batch, cfg, opts)
            out.append((rec * s)[:, 0].float().cpu().numpy())
            bar.update(len(k))
    h, w = k_all.shape[-2:]
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


def _make(name: str):
    def method(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
               options: dict) -> np.ndarray:
        if name not in checkpoints:
            raise LdpmInputError(f"method {name!r}", "no checkpoint folder given",
                                 f"pass --checkpoint {name}=<its training folder>")
        model, _, cfg = load_baseline(checkpoints[name], expect=name)
        return reconstruct(name, model, cfg, k_u, mask, options).astype(np.float32)

    method.__name__ = f"{name}_recon"
    method.__doc__ = f"Trained {name} baseline (ldpm.baselines.{name})."
    return method


for _name in BASELINES:
    register(_name)(_make(_name))


def multicoil_recon(k_u: np.ndarray, mask: np.ndarray, options: dict, run) -> np.ndarray:
    """Each test slice from its raw multicoil k-space under the slice's stored mask.

    ``options``: ``manifest`` (leads to the raw files), ``volumes``/``slices`` (each row's raw
    slice, set by :func:`ldpm.methods.reconstruct_shard`). ``run(k [1, C, H, W] complex, m [1, W])
    -> image [H, W]`` (torch) is the network; its output is centre-cropped like the targets.
    The mask must span the raw phase-encoding width (fastMRI brain: 320, so
    ``data.crop_size: 320``). ``k_u`` (the nPI measurement) gives only the output shape.
    """
    import torch

    volumes, slices = np.asarray(options["volumes"]), np.asarray(options["slices"])
    sources = raw_sources(options["manifest"], sorted(set(volumes)))
    if set(volumes) - set(sources):
        raise LdpmInputError(options["manifest"], "does not list the test volumes "
                             f"{sorted(set(volumes) - set(sources))[:3]}", "pass the manifest "
                             "the test shards were written from")
    out = np.empty(k_u.shape, dtype=np.float32)
    for volume, source in sources.items():  # one read of each raw file
        rows = np.flatnonzero(volumes == volume)
        kspace = read_kspace_slices(source, slices[rows].tolist())  # [n, C, H, W]
        if kspace.shape[-1] != mask.shape[-1]:
            raise LdpmInputError(
                source, f"raw k-space is {kspace.shape[-1]} lines wide but the stored "
                f"masks are {mask.shape[-1]}", "set data.crop_size to the raw phase-encoding "
                "width (fastMRI brain: 320) so the official model sees the same mask")
        for i, k in zip(rows, kspace):
            m = torch.from_numpy(mask[i:i + 1])
            with torch.no_grad():
                image = run(torch.from_numpy(k[None]) * m[:, None, None, :], m)
            out[i] = center_crop(image.cpu().numpy(), k_u.shape[-2:])
    return out


@register("unet_official")
def unet_official_recon(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                        options: dict) -> np.ndarray:
    """fastMRI's U-Net with its published multicoil weights: the RSS of the zero-filled coil
    images, centre-cropped to the target size, instance-normalised and clamped (fastMRI's
    ``UnetDataTransform``), through the U-Net, un-normalised. ``options``: ``checkpoint``,
    ``model`` (:func:`ldpm.models.unet.load_official_unet`), ``device``, and those of
    :func:`multicoil_recon`."""
    from ..device import resolve_device
    from ..models.unet import load_official_unet

    device = resolve_device(options.get("device", "auto"))
    model = load_official_unet(options["checkpoint"], options.get("model")).to(device)

    def run(k, m):
        x_zf = center_crop(ifft2c(k.to(device)).abs().pow(2).sum(dim=1).sqrt(), k_u.shape[-2:])
        return model(x_zf[:, None])[0, 0]

    return multicoil_recon(k_u, mask, options, run)


@register("varnet_official")
def varnet_official_recon(k_u: np.ndarray, mask: np.ndarray, checkpoints: Mapping[str, Path],
                          options: dict) -> np.ndarray:
    """fastMRI's E2E-VarNet with its published multicoil weights on the raw multicoil k-space
    (sensitivity maps from the ACS lines), RSS output. ``options``: ``checkpoint``, ``model``
    (:func:`ldpm.models.varnet.load_official_varnet`), ``device``, and those of
    :func:`multicoil_recon`."""
    from ..device import resolve_device
    from ..models.varnet import load_official_varnet

    device = resolve_device(options.get("device", "auto"))
    model = load_official_varnet(options["checkpoint"], options.get("model")).to(device)
    return multicoil_recon(k_u, mask, options, lambda k, m: model(k.to(device), m.to(device))[0])
