"""Networks of LDPM: SwinIR repair model, Sketcher (eq. 2-3), MR-VAE (eq. 5), MRControlNet (eq. 6-7).

Models are built from config dicts and know nothing of data files or training.
"""

from .controlnet import (MRControlNet, NullContextEps, build_controlnet, build_denoiser,
                         load_controlnet_model, null_text_embedding, save_controlnet)
from .sketcher import Sketcher
from .swinir import RSTB, SwinBlock, SwinIR, SwinLayer, WindowAttention
from .vae import (PatchDiscriminator, VGGPerceptual, build_vae, from_vae_output, to_vae_input,
                  vae_decode, vae_encode)

__all__ = [
    "SwinIR", "RSTB", "SwinLayer", "SwinBlock", "WindowAttention", "Sketcher",
    "build_vae", "vae_encode", "vae_decode", "to_vae_input", "from_vae_output",
    "PatchDiscriminator", "VGGPerceptual",
    "build_denoiser", "null_text_embedding", "build_controlnet", "save_controlnet",
    "load_controlnet_model", "MRControlNet", "NullContextEps",
]
