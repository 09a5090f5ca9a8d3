"""Reconstruction metrics: fastMRI pixel metrics per volume, offline LPIPS / rFID / KID, and scoring.

Heavy imports (torch, lpips, torch-fidelity) happen only when a perceptual metric is used.
"""

from ldpm.metrics.image import mse, nmse, psnr, rmse, ssim

__all__ = ["mse", "nmse", "psnr", "rmse", "ssim", "MetricValue", "MetricUnavailable", "lpips_score",
           "inception_features", "fid_from_features", "kid_from_features", "rfid_kid", "evaluate_method"]


def __getattr__(name: str):
    if name in ("MetricValue", "MetricUnavailable", "lpips_score", "inception_features",
                "fid_from_features", "kid_from_features", "rfid_kid"):
        from ldpm.metrics import perceptual
        return getattr(perceptual, name)
    if name == "evaluate_method":
        from ldpm.metrics.evaluate import evaluate_method
        return evaluate_method
    raise AttributeError(f"module 'ldpm.metrics' has no attribute {name!r}")
