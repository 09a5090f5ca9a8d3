"""Training stages of LDPM, in order: sketcher -> vae -> denoiser (no SD only) -> controlnet.

Each stage has ``train_<stage>(images, cfg, ckpt_dir, seed, n_steps, ...)``; all share the
resumable loop in :mod:`ldpm.train.loop`. What they write is read back by :mod:`ldpm.checkpoints`.
"""

import importlib

# Names are imported lazily (PEP 562), so that ``import ldpm.train.loop`` (e.g. by a study's
# stages) does not pull in diffusers through the LDPM stage modules.
_HOMES = {
    "train_controlnet": "controlnet", "train_denoiser": "denoiser",
    "random_batch": "loop", "train": "loop", "undersampled_batch": "loop",
    "DEFAULT_CONFIG": "presets", "PAPER_CONFIG": "presets",
    "train_sketcher": "sketcher", "train_vae": "vae",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "train", "random_batch", "undersampled_batch",
    "train_sketcher", "train_vae", "train_denoiser", "train_controlnet",
    "DEFAULT_CONFIG", "PAPER_CONFIG",
]
