"""Reading what training wrote: each stage's ``final/`` folder, for training's later stages
and for inference alike (inference imports this module, never :mod:`ldpm.train`).

A ``final/`` holds the stage's weights (``model.safetensors`` or a diffusers folder) and its
``config.json``; a truncated or junk file there is refused with one error naming it and the fix
(:func:`check_final`). Every loader returns its network in eval mode with gradients off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .baselines import baseline
from .errors import LdpmInputError
from .models.pretrained import (check_checkpoint_folder, load_safetensors_file, loading_checkpoint,
                                read_json_file)


def final_fix(final: str | Path) -> str:
    """The fix for an unreadable file in a trained stage's ``final/``."""
    return (f"delete {final} and run that training stage again (it rewrites final/ from an "
            "intact last.pt, or retrains)")


def check_final(final: str | Path) -> Path:
    """``final`` after checking its JSON and safetensors files (:class:`LdpmInputError` naming
    the first unreadable one)."""
    final = Path(final)
    check_checkpoint_folder(final, final_fix(final))
    return final


def read_final(folder: str | Path, what: str, fix: str) -> tuple[Path, dict]:
    """``(final, config)`` of a trained stage: its ``final/`` (``folder`` itself or
    ``folder/final``, holding ``model.safetensors`` + ``config.json``) and that config.

    A truncated or junk file there is refused by name (:func:`check_final`)."""
    folder = Path(folder)
    final = folder if (folder / "model.safetensors").is_file() else folder / "final"
    if not (final / "model.safetensors").is_file() or not (final / "config.json").is_file():
        raise LdpmInputError(folder, f"no trained {what} here (final/model.safetensors + "
                             "config.json)", fix)
    check_final(final)
    return final, read_json_file(final / "config.json", final_fix(final))


def _frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def load_sketcher(ckpt_dir: str | Path):
    """The trained Sketcher (eq. 2-3) from ``ckpt_dir/final``."""
    from .models import Sketcher, SwinIR

    final = Path(ckpt_dir) / "final"
    if not (final / "model.safetensors").is_file():
        raise LdpmInputError(final, "no trained sketcher here", "run the sketcher training stage")
    fix = final_fix(check_final(final))
    config = read_json_file(final / "config.json", fix)
    state = load_safetensors_file(final / "model.safetensors", fix)
    with loading_checkpoint(final, fix):
        repair = SwinIR(config)
        repair.load_state_dict(state, strict=True)
    return _frozen(Sketcher(repair))


def load_vae(ckpt_dir: str | Path):
    """The trained MR-VAE (eq. 5), or ``vae_natural``, from ``ckpt_dir/final``."""
    from diffusers import AutoencoderKL

    final = Path(ckpt_dir) / "final"
    if not (final / "config.json").is_file():
        raise LdpmInputError(final, "no trained VAE here", "run the vae training stage")
    with loading_checkpoint(final, final_fix(check_final(final))):
        vae = AutoencoderKL.from_pretrained(final, local_files_only=True, low_cpu_mem_usage=False)
    return _frozen(vae)


def load_denoiser(ckpt_dir: str | Path) -> tuple[Any, torch.Tensor]:
    """``(unet, null_embedding)`` of the trained latent denoiser from ``ckpt_dir/final``."""
    from diffusers import UNet2DConditionModel

    from .models.controlnet import NULL_EMBEDDING_FILE

    final = Path(ckpt_dir) / "final"
    if not (final / "config.json").is_file():
        raise LdpmInputError(final, "no trained denoiser here", "run the denoiser training stage")
    fix = final_fix(check_final(final))
    with loading_checkpoint(final, fix):
        unet = UNet2DConditionModel.from_pretrained(final, local_files_only=True,
                                                    low_cpu_mem_usage=False)
        null = load_safetensors_file(final / NULL_EMBEDDING_FILE, fix)["null"]
    return _frozen(unet), null


def load_prior(deps: Mapping[str, Path], sd_path: str | None):
    """``(denoiser, null_embedding)``: the frozen prior eps_theta, SD's UNet (``sd_path``) or
    the trained ``denoiser`` stage's."""
    if sd_path:
        from .models import build_denoiser, null_text_embedding

        unet = build_denoiser(None, sd_path)
        return _frozen(unet), null_text_embedding(unet, sd_path)
    if "denoiser" not in deps:
        raise LdpmInputError("ldpm train", "no denoiser folder given and no pretrained.sd_path",
                             "pass --dep denoiser=<folder> or set pretrained.sd_path")
    return load_denoiser(deps["denoiser"])


def load_controlnet(ckpt_dir: str | Path, denoiser):
    """The trained :class:`~ldpm.models.MRControlNet` (control branch from ``ckpt_dir/final``
    on top of the frozen ``denoiser``)."""
    from .models import MRControlNet
    from .models.controlnet import NULL_EMBEDDING_FILE, load_controlnet_model

    final = Path(ckpt_dir) / "final"
    if not (final / NULL_EMBEDDING_FILE).is_file():
        raise LdpmInputError(final, "no trained controlnet here", "run the controlnet training stage")
    fix = final_fix(check_final(final))
    with loading_checkpoint(final, fix):
        cn = load_controlnet_model(final)
        model = MRControlNet(denoiser, cn, load_safetensors_file(final / NULL_EMBEDDING_FILE, fix)["null"])
    return _frozen(model)


def build_baseline(name: str, cfg: Mapping[str, Any]) -> nn.Module:
    """The network of baseline ``name`` from its stage config (``cfg['model']``)."""
    return baseline(name).build(cfg)


def load_baseline(ckpt: str | Path, expect: str | None = None) -> tuple[nn.Module, str, dict]:
    """``(model, name, cfg)`` of a trained baseline from its training folder (or ``final/``)."""
    from safetensors.torch import load_file

    final, meta = read_final(ckpt, "baseline", "run its training stage (ldpm train --stage NAME)")
    with loading_checkpoint(final / "config.json", final_fix(final)):
        name, cfg = str(meta["name"]), dict(meta["config"])
    if expect is not None and name != expect:
        raise LdpmInputError(final, f"holds a {name!r} model, not {expect!r}",
                             f"pass the {expect} training folder")
    with loading_checkpoint(final, final_fix(final)):
        model = build_baseline(name, cfg)
        model.load_state_dict(load_file(final / "model.safetensors"), strict=True)
    return _frozen(model), name, cfg
