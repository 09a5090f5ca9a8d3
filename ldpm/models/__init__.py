"""Networks of LDPM: SwinIR repair model, Sketcher (eq. 2-3), MR-VAE (eq. 5), MRControlNet (eq. 6-7).

Models are built from config dicts and know nothing of data files or training.
"""

import importlib

# Names are imported lazily (PEP 562): ``from ldpm.models.unet import ...`` (e.g. by a study's
# stages) does not pull in diffusers through the ControlNet/VAE modules.
_HOMES = {
    **dict.fromkeys(["MRControlNet", "NullContextEps", "build_controlnet", "build_denoiser",
                     "load_controlnet_model", "null_text_embedding", "save_controlnet"], "controlnet"),
    "Sketcher": "sketcher",
    **dict.fromkeys(["RSTB", "SwinBlock", "SwinIR", "SwinLayer", "WindowAttention"], "swinir"),
    **dict.fromkeys(["PatchDiscriminator", "VGGPerceptual", "build_vae", "from_vae_output",
                     "to_vae_input", "vae_decode", "vae_encode"], "vae"),
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SwinIR", "RSTB", "SwinLayer", "SwinBlock", "WindowAttention", "Sketcher",
    "build_vae", "vae_encode", "vae_decode", "to_vae_input", "from_vae_output",
    "PatchDiscriminator", "VGGPerceptual",
    "build_denoiser", "null_text_embedding", "build_controlnet", "save_controlnet",
    "load_controlnet_model", "MRControlNet", "NullContextEps",
]
