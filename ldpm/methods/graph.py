"""The graph of training stages and methods, torch-free: which stages exist, which stages each
one starts from, which stages' checkpoints each method reconstructs with, and which config
options it takes. The Snakefile, the trainers and the registry all ask this module. The trained
baselines' names come from their declarations in :mod:`ldpm.baselines` (torch-free); a baseline
or a multicoil method takes the config's ``inference.<name>`` block, if there is one.

A study adds its own stages and methods through a :class:`Study` declaration, which whoever runs
it (the command line, the Snakefile, a test) registers with :func:`register_study`; this module
then answers for them as for LDPM's own. ``<method>_s<N>`` is ``ldpm`` or a study's step method
with ``N`` Dual-Stage Sampler steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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

#: LDPM's training stages in DAG order (``vae_natural`` and ``denoiser`` only without SD weights)
LDPM_STAGES = ("sketcher", "vae_natural", "vae", "denoiser", "controlnet")
#: every name of a stage or method of LDPM, its ablations and the baselines
CORE_NAMES = frozenset({"zero_filled", *LDPM_STAGES, *BASELINES, *LDPM_VARIANTS, *ABLATIONS,
                        *MULTICOIL_METHODS})

_CLASH = sorted(set(BASELINES) & {"zero_filled", *LDPM_STAGES, *LDPM_VARIANTS, *ABLATIONS,
                                  *MULTICOIL_METHODS})
if _CLASH:
    raise LdpmInputError(f"baseline {_CLASH[0]!r}", "has the name of another stage or method",
                         "rename it in its module (ldpm.baselines)")


def _nothing(*args: Any) -> list[str]:
    return []


def _no_options(method: str, inference: Mapping) -> dict:
    return {}


def _no_check(config: Mapping[str, Any], source: str) -> None:
    return None


@dataclass(frozen=True)
class Study:
    """A study's stages and methods, as the core asks for them.

    ``name``: the study's config block. ``stages``: the training stages it adds (``ldpm train
    --stage``); ``methods``: the reconstruction methods it adds (``ldpm reconstruct --method``);
    ``step_methods``: those of its methods that also run as ``<method>_s<N>``.
    ``stage_dependencies(stage, with_sd)``, ``method_stages(method, with_sd)`` and
    ``method_options(method, inference)`` answer as this module's functions of the same names,
    for the study's own stages and methods (``method_options``: the options besides ``seed``).
    ``rows(config)``: the methods that a run of ``config`` reconstructs and evaluates for the
    study, in order. ``presets(preset)``: ``{stage: config}`` of the ``default`` or ``paper``
    preset. ``train(stage, manifest, images, cfg, out_dir, deps, sd_path, seed, runtime)``:
    trains one of its stages. ``load_methods()``: registers its reconstruction methods
    (:func:`ldpm.methods.registry.register`). ``check_paths(config, source)``: checks the files
    and folders that its config block names. Only ``presets``, ``train`` and ``load_methods``
    may import torch.
    """

    name: str
    stages: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    step_methods: tuple[str, ...] = ()
    stage_dependencies: Callable[[str, bool], list[str]] = _nothing
    method_stages: Callable[[str, bool], list[str]] = _nothing
    method_options: Callable[[str, Mapping], dict] = _no_options
    rows: Callable[[Mapping[str, Any]], list[str]] = _nothing
    presets: Callable[[str], Mapping[str, Mapping[str, Any]]] | None = None
    train: Callable[..., Any] | None = None
    load_methods: Callable[[], None] | None = None
    check_paths: Callable[[Mapping[str, Any], str], None] = _no_check


_STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    """Add ``study`` to the graph (a study of the same name is replaced: a module read again);
    its stage and method names must be new."""
    taken = set(CORE_NAMES)
    for other in _STUDIES.values():
        if other.name != study.name:
            taken |= {*other.stages, *other.methods}
    clash = sorted(taken & {*study.stages, *study.methods})
    if clash:
        raise LdpmInputError(f"study {study.name!r}", f"adds {clash[0]!r}, the name of another "
                             "stage or method", "rename it in the study's declaration")
    _STUDIES[study.name] = study
    return study


def studies() -> tuple[Study, ...]:
    """The registered studies, in the order they were registered."""
    return tuple(_STUDIES.values())


def stage_study(stage: str) -> Study | None:
    """The registered study that adds training stage ``stage`` (None: LDPM's or a baseline's)."""
    return next((s for s in _STUDIES.values() if stage in s.stages), None)


def _method_study(method: str) -> Study | None:
    return next((s for s in _STUDIES.values() if method in s.methods), None)


def all_stages() -> tuple[str, ...]:
    """Every training stage: LDPM's, the baselines', then the registered studies'."""
    return LDPM_STAGES + BASELINES + tuple(st for s in _STUDIES.values() for st in s.stages)


def prior_stages(with_sd: bool) -> list[str]:
    """The stage that trains the frozen prior: ``denoiser``, or none with SD weights."""
    return [] if with_sd else ["denoiser"]


def table1_methods(methods) -> list[str]:
    """Table I's rows: every configured method except LDPM's ablations, in config order (also
    the methods that reconstruct the out-of-distribution set for Table III)."""
    return [m for m in methods if m not in ABLATIONS]


_STEPS = re.compile(r"^(?P<base>.+)_s(?P<steps>[1-9][0-9]*)$")


def step_variant(method: str) -> tuple[str, int | None]:
    """``"ldpm_s10"`` -> ``("ldpm", 10)`` (also for a study's step methods); any other name ->
    ``(method, None)``."""
    m = _STEPS.match(method)
    if m and (m["base"] == "ldpm" or any(m["base"] in s.step_methods for s in _STUDIES.values())):
        return m["base"], int(m["steps"])
    return method, None


def stage_dependencies(stage: str, with_sd: bool) -> list[str]:
    """Training stages that ``stage`` starts from (the DAG's edges between training rules)."""
    study = stage_study(stage)
    if study is not None:
        return list(study.stage_dependencies(stage, with_sd))
    return {"denoiser": ["vae"], "controlnet": ["sketcher", "vae", *prior_stages(with_sd)],
            "vae": [] if with_sd else ["vae_natural"]}.get(stage, [])


def method_stages(method: str, with_sd: bool) -> list[str]:
    """Training stages whose checkpoints ``method`` reconstructs with."""
    base, steps = step_variant(method)
    if steps is not None:
        return method_stages(base, with_sd)
    if method in LDPM_VARIANTS:
        untuned = ["vae_natural"] if method == "ldpm_wo_mrvae" and not with_sd else []
        return ["sketcher", "vae", "controlnet", *prior_stages(with_sd), *untuned]
    if method == SKETCHER_ONLY:
        return ["sketcher"]
    if method in BASELINES:
        return [method]
    study = _method_study(method)
    return list(study.method_stages(method, with_sd)) if study is not None else []


def method_options(method: str, inference: Mapping) -> dict:
    """The config's ``inference`` options that ``method`` takes."""
    base, steps = step_variant(method)
    if steps is not None:
        return {**method_options(base, inference), "n_steps": steps}
    opts = {"seed": inference.get("seed", 0)}
    study = _method_study(method)
    if method in LDPM_VARIANTS:
        opts.update(inference.get("ldpm") or {})
    elif method in BASELINES or method in MULTICOIL_METHODS:
        opts.update(inference.get(method) or {})
    elif study is not None:
        opts.update(study.method_options(method, inference))
    return opts


def study_methods(config: Mapping[str, Any]) -> list[str]:
    """The methods the registered studies reconstruct and evaluate in a run of ``config``
    (each study's rows, in registration order; [] for a study its config turns off)."""
    return list(dict.fromkeys(m for s in _STUDIES.values() for m in s.rows(config)))
