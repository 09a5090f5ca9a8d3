"""The LoRA study's stages and methods, torch-free: what each stage starts from and which
checkpoints each method reconstructs with (declared to the core in :mod:`ldpm.studies.lora`).

``lora_r4``/``lora_r16`` train an adapter and a fresh control branch jointly (the rank study);
``lora_t1``/``lora_t2`` one adapter per contrast group on the ``controlnet`` stage's frozen
control branch, with the control loss (eq. 7); ``lora_eps_t1``/``lora_eps_t2`` one adapter per
contrast group on the denoiser alone, with its own ε-loss on that group's MR latents (adapting
the generative prior to a domain); ``ldpm_lora_mix`` and ``ldpm_lora_eps_mix`` combine the two
group adapters of each kind. Every method also runs as ``<method>_s<N>`` (``N`` Dual-Stage
Sampler steps).
"""

from __future__ import annotations

from typing import Any, Mapping

from ...methods.graph import prior_stages, step_variant

#: adapter + fresh control branch trained jointly (rank study); the name gives the default rank
LORA_JOINT_STAGES = ("lora_r4", "lora_r16")
#: one adapter per contrast group on the controlnet stage's frozen control branch
LORA_GROUP_STAGES = ("lora_t1", "lora_t2")
#: one adapter per contrast group on the denoiser alone, trained with its ε-loss (the prior)
LORA_EPS_STAGES = ("lora_eps_t1", "lora_eps_t2")
LORA_STAGES = LORA_JOINT_STAGES + LORA_GROUP_STAGES + LORA_EPS_STAGES
#: LoRA method -> (training stage whose control branch it samples with, adapters it activates)
LORA_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ldpm_lora_r4": ("lora_r4", ("lora_r4",)),
    "ldpm_lora_r16": ("lora_r16", ("lora_r16",)),
    "ldpm_lora_t1": ("controlnet", ("lora_t1",)),
    "ldpm_lora_t2": ("controlnet", ("lora_t2",)),
    "ldpm_lora_mix": ("controlnet", ("lora_t1", "lora_t2")),
    "ldpm_lora_eps_t1": ("controlnet", ("lora_eps_t1",)),
    "ldpm_lora_eps_t2": ("controlnet", ("lora_eps_t2",)),
    "ldpm_lora_eps_mix": ("controlnet", ("lora_eps_t1", "lora_eps_t2")),
}


def stage_dependencies(stage: str, with_sd: bool) -> list[str]:
    """Training stages that LoRA stage ``stage`` starts from."""
    if stage in LORA_JOINT_STAGES:
        return ["sketcher", "vae", *prior_stages(with_sd)]
    if stage in LORA_GROUP_STAGES:
        return ["sketcher", "vae", *prior_stages(with_sd), "controlnet"]
    return ["vae", *prior_stages(with_sd)]


def method_stages(method: str, with_sd: bool) -> list[str]:
    """Training stages whose checkpoints LoRA method ``method`` reconstructs with."""
    control, adapters = LORA_METHODS[method]
    return list(dict.fromkeys(["sketcher", "vae", *prior_stages(with_sd), control, *adapters]))


def mix_weights(inference: Mapping) -> list[float]:
    """The weights of two combined adapters: ``inference.lora.mix_weights`` (default 1, 1)."""
    return [float(w) for w in (inference.get("lora") or {}).get("mix_weights", [1.0, 1.0])]


def method_options(method: str, inference: Mapping) -> dict:
    """LDPM's sampler options (``inference.ldpm``) and the weights of the method's adapters
    (:func:`mix_weights` for two, else 1)."""
    opts = dict(inference.get("ldpm") or {})
    opts["adapter_weights"] = mix_weights(inference) if len(LORA_METHODS[method][1]) > 1 else [1.0]
    return opts


def own_stages(method: str) -> list[str]:
    """The training stage(s) that trained what a row's generator adds to the frozen prior:
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
