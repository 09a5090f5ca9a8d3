"""Training stages of LDPM, in order: sketcher -> vae -> denoiser (no SD only) -> controlnet.

Each stage has ``train_<stage>(images, cfg, ckpt_dir, seed, n_steps, ...)`` and
``load_<stage>(ckpt_dir, ...)``; all share the resumable loop in :mod:`ldpm.train.loop`.
"""

from .controlnet import load_controlnet, train_controlnet
from .denoiser import load_denoiser, train_denoiser
from .loop import random_batch, step_generator, train, undersampled_batch
from .presets import DEFAULT_CONFIG, PAPER_CONFIG, stage_config
from .sketcher import load_sketcher, train_sketcher
from .vae import load_vae, train_vae

__all__ = [
    "train", "step_generator", "random_batch", "undersampled_batch",
    "train_sketcher", "load_sketcher", "train_vae", "load_vae", "train_denoiser",
    "load_denoiser", "train_controlnet", "load_controlnet",
    "DEFAULT_CONFIG", "PAPER_CONFIG", "stage_config",
]
