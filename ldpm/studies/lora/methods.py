"""LDPM with LoRA-adapted denoisers and fewer sampling steps as registry methods.

Every method here is LDPM (Sketcher -> MR-VAE -> Dual-Stage Sampler, :mod:`ldpm.methods.ldpm`)
with the same frozen denoiser ``eps_theta``, plus low-rank adapters on its attention projections
(:mod:`ldpm.studies.lora.models`):

- ``ldpm_lora_r4``, ``ldpm_lora_r16``: the rank study; the adapter and a control branch trained
  *jointly* (stages ``lora_r4``/``lora_r16``), same data, loss (eq. 7), steps and seed as the
  ``controlnet`` stage of plain LDPM.
- ``ldpm_lora_t1``, ``ldpm_lora_t2``: one adapter per contrast group (T1-weighted; T2/FLAIR), each
  trained on its group's slices only, on top of the ``controlnet`` stage's control branch (kept
  frozen), so that both adapters fit the same generator.
- ``ldpm_lora_mix``: both group adapters at once, each LoRA layer adding ``w1 ΔW1 + w2 ΔW2`` with
  ``inference.lora.mix_weights`` ``(w1, w2)`` (two combined LoRAs).
- ``<method>_s<N>`` for ``ldpm`` or any method above: the same method with ``N`` Dual-Stage Sampler
  steps (quality vs. steps, as a "Lightning" model trades them).

Importing this module registers the methods (:func:`ldpm.methods.load_registry` asks the study).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Mapping

from ...errors import LdpmInputError
from ...methods.registry import register
from .graph import LORA_METHODS

# ----------------------------------------------------------------------------- reconstruction

def load_lora_ldpm(checkpoints: Mapping[str, Path], method: str, weights, sd_path: str | None):
    """``(sketcher, vae, mrcn)`` of a LoRA method: the frozen prior with its adapters loaded and
    combined with ``weights``, under the control branch of ``LORA_METHODS[method][0]``."""
    from ...checkpoints import load_controlnet, load_prior, load_sketcher, load_vae
    from .models import combine_adapters, load_lora

    control, adapters = LORA_METHODS[method]
    for name in ("sketcher", "vae", control, *adapters):
        if name not in checkpoints:
            raise LdpmInputError(f"method {method}", f"no {name} checkpoint folder given",
                                 f"pass --checkpoint {name}=<its training folder>")
    denoiser, _null = load_prior(checkpoints, sd_path)
    for stage in adapters:
        load_lora(denoiser, Path(checkpoints[stage]) / "final", stage)
    combine_adapters(denoiser, adapters, weights)
    mrcn = load_controlnet(checkpoints[control], denoiser)  # freezes the denoiser and its adapters
    return load_sketcher(checkpoints["sketcher"]), load_vae(checkpoints["vae"]), mrcn


def lora_reconstruct(k_u, mask, checkpoints: Mapping[str, Path], options: dict[str, Any],
                     method: str):
    """LDPM's reconstruction (:func:`ldpm.methods.ldpm.ldpm_reconstruct`) with a LoRA generator."""
    from ...methods.ldpm import ldpm_reconstruct

    adapters = LORA_METHODS[method][1]
    weights = options.get("adapter_weights") or [1.0] * len(adapters)
    models = load_lora_ldpm(checkpoints, method, weights, options.get("sd_path"))
    return ldpm_reconstruct(k_u, mask, checkpoints, options, "ldpm", models=models)


for _name in LORA_METHODS:
    register(_name)(partial(lora_reconstruct, method=_name))
