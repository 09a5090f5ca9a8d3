"""The graph of training stages and methods, torch-free: which stages exist, which stages each
one starts from, which stages' checkpoints each method reconstructs with, and which config
options it takes. The Snakefile, the trainers and the registry all ask this module. The trained
baselines' names come from their declarations in :mod:`ldpm.baselines` (torch-free); a baseline
or a multicoil method takes the config's ``inference.<name>`` block, if there is one.

LoRA study (seed 003): ``lora_r4``/``lora_r16`` train an adapter and a fresh control branch
jointly (the rank study); ``lora_t1``/``lora_t2`` one adapter per contrast group on the
``controlnet`` stage's frozen control branch, with the control loss (eq. 7); ``lora_eps_t1`` /
``lora_eps_t2`` one adapter per contrast group on the denoiser alone, with its own ε-loss on that
group's MR latents (the seed's "adapt the generative prior to a domain"); ``ldpm_lora_mix`` and
``ldpm_lora_eps_mix`` combine the two group adapters of each kind.
``<method>_s<N>`` is ``ldpm`` or a LoRA method with ``N`` Dual-Stage Sampler steps.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ..baselines import baselines
from ..errors import LdpmInputError

#: LDPM (Table I) and its Table II ablations
LDPM_VARIANTS = ("ldpm", "ldpm_wo_mrvae", "ldpm_wo_skm", "ldpm_wo_dss")
#: Table II's "Sketcher only" row: the condition c = |DC[R(x_u), k_u, M]| itself (eq. 2-3)
SKETCHER_ONLY = "sketcher_only"
#: Table II's rows besides LDPM, in the paper's order; every other configured method is a Table I row
ABLATIONS = (SKETCHER_ONLY, "ldpm_wo_mrvae", "ldpm_wo_skm", "ldpm_wo_dss")
#: the trained baselines of Table I, one module each in ldpm.baselines (one training stage and
#: one method each, of the same name)
BASELINES = tuple(baselines())
#: methods that read the raw multicoil k-space of each test slice (``options["manifest"]``
#: leads to the volumes' source files) instead of the single-coil ``k_u``; no training stage
MULTICOIL_METHODS = ("unet_official", "varnet_official")

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
#: methods that take a ``_s<N>`` step-count suffix
STEP_BASES = ("ldpm", *LORA_METHODS)

#: LDPM's training stages in DAG order (``vae_natural`` and ``denoiser`` only without SD weights)
LDPM_STAGES = ("sketcher", "vae_natural", "vae", "denoiser", "controlnet")
STAGES = LDPM_STAGES + BASELINES + LORA_STAGES

_CLASH = sorted(set(BASELINES) & {"zero_filled", *LDPM_STAGES, *LORA_STAGES, *LDPM_VARIANTS,
                                  *ABLATIONS, *MULTICOIL_METHODS, *LORA_METHODS})
if _CLASH:
    raise LdpmInputError(f"baseline {_CLASH[0]!r}", "has the name of another stage or method",
                         "rename it in its module (ldpm.baselines)")


def table1_methods(methods) -> list[str]:
    """Table I's rows: every configured method except LDPM's ablations, in config order (also
    the methods that reconstruct the out-of-distribution set for Table III)."""
    return [m for m in methods if m not in ABLATIONS]


_STEPS = re.compile(r"^(?P<base>.+)_s(?P<steps>[1-9][0-9]*)$")


def step_variant(method: str) -> tuple[str, int | None]:
    """``"ldpm_lora_r4_s10"`` -> ``("ldpm_lora_r4", 10)``; any other name -> ``(method, None)``."""
    m = _STEPS.match(method)
    if m and m["base"] in STEP_BASES:
        return m["base"], int(m["steps"])
    return method, None


def stage_dependencies(stage: str, with_sd: bool) -> list[str]:
    """Training stages that ``stage`` starts from (the DAG's edges between training rules)."""
    prior = [] if with_sd else ["denoiser"]
    if stage in LORA_JOINT_STAGES:
        return ["sketcher", "vae", *prior]
    if stage in LORA_GROUP_STAGES:
        return ["sketcher", "vae", *prior, "controlnet"]
    if stage in LORA_EPS_STAGES:
        return ["vae", *prior]
    return {"denoiser": ["vae"], "controlnet": ["sketcher", "vae", *prior],
            "vae": [] if with_sd else ["vae_natural"]}.get(stage, [])


def method_stages(method: str, with_sd: bool) -> list[str]:
    """Training stages whose checkpoints ``method`` reconstructs with."""
    prior = [] if with_sd else ["denoiser"]
    base, steps = step_variant(method)
    if steps is not None:
        return method_stages(base, with_sd)
    if method in LDPM_VARIANTS:
        untuned = ["vae_natural"] if method == "ldpm_wo_mrvae" and not with_sd else []
        return ["sketcher", "vae", "controlnet", *prior, *untuned]
    if method == SKETCHER_ONLY:
        return ["sketcher"]
    if method in BASELINES:
        return [method]
    if method in LORA_METHODS:
        control, adapters = LORA_METHODS[method]
        return list(dict.fromkeys(["sketcher", "vae", *prior, control, *adapters]))
    return []


def method_options(method: str, inference: Mapping) -> dict:
    """The config's ``inference`` options that ``method`` takes."""
    base, steps = step_variant(method)
    if steps is not None:
        return {**method_options(base, inference), "n_steps": steps}
    opts = {"seed": inference.get("seed", 0)}
    if method in LDPM_VARIANTS:
        opts.update(inference.get("ldpm") or {})
    elif method in BASELINES or method in MULTICOIL_METHODS:
        opts.update(inference.get(method) or {})
    elif method in LORA_METHODS:
        opts.update(inference.get("ldpm") or {})
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
