"""Training stages of LDPM, in order: sketcher -> vae -> denoiser (no SD only) -> controlnet.

Each stage has ``train_<stage>(images, cfg, ckpt_dir, seed, n_steps, ...)`` and
``load_<stage>(ckpt_dir, ...)``; all share the resumable loop in :mod:`ldpm.train.loop`.
"""

import importlib

# Names are imported lazily (PEP 562), so that ``import ldpm.train.loop`` (e.g. by the DiffCode
# stages) does not pull in diffusers through the LDPM stage modules.
_HOMES = {
    "load_controlnet": "controlnet", "train_controlnet": "controlnet",
    "load_denoiser": "denoiser", "train_denoiser": "denoiser",
    "random_batch": "loop", "step_generator": "loop", "train": "loop", "undersampled_batch": "loop",
    "DEFAULT_CONFIG": "presets", "PAPER_CONFIG": "presets", "stage_config": "presets",
    "load_sketcher": "sketcher", "train_sketcher": "sketcher",
    "load_vae": "vae", "train_vae": "vae",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "train", "step_generator", "random_batch", "undersampled_batch",
    "train_sketcher", "load_sketcher", "train_vae", "load_vae", "train_denoiser",
    "load_denoiser", "train_controlnet", "load_controlnet",
    "DEFAULT_CONFIG", "PAPER_CONFIG", "stage_config",
]
