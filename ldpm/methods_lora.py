"""LDPM with LoRA-adapted denoisers and fewer sampling steps (seed 003, issue #9) as registry methods.

Every method here is LDPM (Sketcher -> MR-VAE -> Dual-Stage Sampler, :mod:`ldpm.methods_ldpm`)
with the same frozen denoiser ``eps_theta``, plus low-rank adapters on its attention projections
(:mod:`ldpm.models.lora`):

- ``ldpm_lora_r4``, ``ldpm_lora_r16``: the rank study; the adapter and a control branch trained
  *jointly* (stages ``lora_r4``/``lora_r16``), same data, loss (eq. 7), steps and seed as the
  ``controlnet`` stage of plain LDPM.
- ``ldpm_lora_t1``, ``ldpm_lora_t2``: one adapter per contrast group (T1-weighted; T2/FLAIR), each
  trained on its group's slices only, on top of the ``controlnet`` stage's control branch (kept
  frozen), so that both adapters fit the same generator.
- ``ldpm_lora_mix``: both group adapters at once, each LoRA layer adding ``w1 ΔW1 + w2 ΔW2`` with
  ``inference.lora.mix_weights`` ``(w1, w2)`` (the seed's two combined LoRAs).
- ``<method>_s<N>`` for ``ldpm`` or any method above: the same method with ``N`` Dual-Stage Sampler
  steps (the seed's "Lightning" point: quality vs. steps).

This module is imported by the Snakefile (stage graph): it must not import torch at import time.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from .errors import LdpmInputError
from .methods import register

#: adapter + fresh control branch trained jointly (rank study); the name gives the default rank
LORA_JOINT_STAGES = ("lora_r4", "lora_r16")
#: one adapter per contrast group on the controlnet stage's frozen control branch
LORA_GROUP_STAGES = ("lora_t1", "lora_t2")
LORA_STAGES = LORA_JOINT_STAGES + LORA_GROUP_STAGES

#: method -> (training stage whose control branch it samples with, adapters (= stages) it activates)
LORA_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ldpm_lora_r4": ("lora_r4", ("lora_r4",)),
    "ldpm_lora_r16": ("lora_r16", ("lora_r16",)),
    "ldpm_lora_t1": ("controlnet", ("lora_t1",)),
    "ldpm_lora_t2": ("controlnet", ("lora_t2",)),
    "ldpm_lora_mix": ("controlnet", ("lora_t1", "lora_t2")),
}
#: methods that take a ``_s<N>`` step-count suffix
STEP_BASES = ("ldpm", *LORA_METHODS)
_STEPS = re.compile(r"^(?P<base>.+)_s(?P<steps>[1-9][0-9]*)$")


def step_variant(method: str) -> tuple[str, int | None]:
    """``"ldpm_lora_r4_s10"`` -> ``("ldpm_lora_r4", 10)``; any other name -> ``(method, None)``."""
    m = _STEPS.match(method)
    if m and m["base"] in STEP_BASES:
        return m["base"], int(m["steps"])
    return method, None


def lora_stage_dependencies(stage: str, with_sd: bool) -> list[str]:
    """Training stages a LoRA stage starts from ([] for any other stage)."""
    prior = [] if with_sd else ["denoiser"]
    if stage in LORA_JOINT_STAGES:
        return ["sketcher", "vae", *prior]
    if stage in LORA_GROUP_STAGES:
        return ["sketcher", "vae", *prior, "controlnet"]
    return []


def lora_method_stages(method: str, with_sd: bool) -> list[str]:
    """Training stages whose checkpoints a LoRA or step-count method uses ([] if not one)."""
    from .methods import method_stages

    base, steps = step_variant(method)
    if steps is not None:
        return method_stages(base, with_sd)
    if method not in LORA_METHODS:
        return []
    control, adapters = LORA_METHODS[method]
    stages = ["sketcher", "vae", *([] if with_sd else ["denoiser"]), control, *adapters]
    return list(dict.fromkeys(stages))


def lora_method_options(method: str, inference: Mapping, opts: dict) -> dict:
    """``opts`` plus what a LoRA or step-count method takes from the config's ``inference``."""
    from .methods import method_options

    base, steps = step_variant(method)
    if steps is not None:
        return {**method_options(base, inference), "n_steps": steps}
    if method in LORA_METHODS:
        opts = {**opts, **(inference.get("ldpm") or {})}
        adapters = LORA_METHODS[method][1]
        weights = (inference.get("lora") or {}).get("mix_weights", [1.0] * len(adapters))
        opts["adapter_weights"] = [float(w) for w in weights] if len(adapters) > 1 else [1.0]
    return opts


def own_stages(method: str) -> list[str]:
    """The training stage(s) that trained what a study row's generator adds to the frozen prior:
    ``controlnet`` for LDPM, the adapter stage(s) for a LoRA method (same for ``_s<N>`` rows)."""
    base, _ = step_variant(method)
    return list(LORA_METHODS[base][1]) if base in LORA_METHODS else ["controlnet"]


def study_methods(config: Mapping[str, Any]) -> list[str]:
    """The LoRA table's rows (all reconstructed and evaluated): ``ldpm`` (frozen denoiser), the
    configured ``lora.methods``, then ``<m>_s<N>`` for ``m`` in ``lora.step_methods`` and ``N`` in
    ``lora.step_counts`` (a count equal to ``inference.ldpm.n_steps`` is its base row). [] when
    ``lora.enabled`` is false."""
    lora = config.get("lora") or {}
    if not lora.get("enabled"):
        return []
    default_steps = int((config.get("inference", {}).get("ldpm") or {}).get("n_steps", 25))
    rows = ["ldpm", *lora.get("methods", list(LORA_METHODS))]
    for m in lora.get("step_methods", ["ldpm"]):
        rows += [f"{m}_s{n}" for n in lora.get("step_counts", []) if int(n) != default_steps]
    return list(dict.fromkeys(rows))


# ----------------------------------------------------------------------------- reconstruction

def load_lora_ldpm(checkpoints: Mapping[str, Path], method: str, weights, sd_path: str | None):
    """``(sketcher, vae, mrcn)`` of a LoRA method: the frozen prior with its adapters loaded and
    combined with ``weights``, under the control branch of ``LORA_METHODS[method][0]``."""
    from .models.lora import combine_adapters, load_lora
    from .train.controlnet import load_controlnet
    from .train.sketcher import load_sketcher
    from .train.stages import load_prior
    from .train.vae import load_vae

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
    """LDPM's reconstruction (:func:`ldpm.methods_ldpm.ldpm_reconstruct`) with a LoRA generator."""
    from .methods_ldpm import ldpm_reconstruct

    adapters = LORA_METHODS[method][1]
    weights = options.get("adapter_weights") or [1.0] * len(adapters)
    models = load_lora_ldpm(checkpoints, method, weights, options.get("sd_path"))
    return ldpm_reconstruct(k_u, mask, checkpoints, options, "ldpm", models=models)


for _name in LORA_METHODS:
    register(_name)(partial(lora_reconstruct, method=_name))
