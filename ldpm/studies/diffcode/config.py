"""DiffCode's stages and methods, and the config each stage is trained with.

Stages (each trained by ``ldpm diffcode-train --stage S`` into ``results/models/diffcode_S/``):

* ``bank`` / ``bank_single``: stage I with one codebook per task / one shared codebook;
* ``retrieval`` / ``retrieval_single``: stage II (latent diffusion) on ``bank`` / ``bank_single``;
  ``retrieval_direct``: ``E_lq`` alone on ``bank`` (no diffusion, Table 2a's V3);
* ``restore`` (DiffCode) and ``restore_<variant>``: stage III of each method;
* ``unet`` / ``swinir``: the all-in-one comparison restorers.

Methods (rows of DiffCode's tables): ``diffcode`` and the variants of Table 2, which share
stages I and II wherever the paper's setup allows (one bank and one retrieval feed DiffCode,
top-2 and top-3; the single codebook has its own stages I and II), and the baselines.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ...errors import LdpmInputError
from .data import task_availability
from .presets import hyperparameters

#: method -> (prior: None | 'diffusion' | 'direct', codebook: None | 'bank' | 'single', TARS, top-k
#: (None: the config's model.top_k))
TABLE2_VARIANTS: dict[str, dict[str, Any]] = {
    "diffcode": {"prior": "diffusion", "codebook": "bank", "tars": True, "top_k": None},
    "v1": {"prior": None, "codebook": None, "tars": False, "top_k": None},
    "v2": {"prior": None, "codebook": None, "tars": True, "top_k": None},
    "v3": {"prior": "direct", "codebook": "bank", "tars": True, "top_k": None},
    "single": {"prior": "diffusion", "codebook": "single", "tars": True, "top_k": None},
    "top2": {"prior": "diffusion", "codebook": "bank", "tars": True, "top_k": 2},
    "top3": {"prior": "diffusion", "codebook": "bank", "tars": True, "top_k": 3},
}
#: the all-in-one comparison restorers (DiffCode's own U-Net and SwinIR stages)
RESTORERS = ("unet", "swinir")
#: the LQ image itself, scored like a method (Table 1's reference row, nothing trained)
INPUT = "lq"
#: DiffCode's trained stages with the true task id choosing the prior's codebook instead of TARS's
#: classifier (a labelled reference row: the paper's routing works from the LQ image alone)
ORACLE = "diffcode_oracle"
METHOD_NAMES = {
    "lq": "LQ input",
    "diffcode": "DiffCode",
    ORACLE: "DiffCode, oracle task id (not TARS)",
    "v1": "V1",
    "v2": "V2",
    "v3": "V3",
    "single": "single codebook, top-1",
    "top2": "bank, top-2",
    "top3": "bank, top-3",
    "unet": "U-Net (all-in-one)",
    "swinir": "SwinIR (all-in-one)",
}
STAGE_KINDS = ("bank", "retrieval", "restore", "unet", "swinir")


def methods(dc: Mapping) -> list[str]:
    """The configured methods: the LQ input, DiffCode, its variants, the all-in-one baselines."""
    return [INPUT, "diffcode", ORACLE, *[v for v in dc["variants"] if v != "diffcode"], *dc["baselines"]]


def _bank_stage(codebook: str) -> str:
    return "bank" if codebook == "bank" else "bank_single"


def _retrieval_stage(prior: str, codebook: str) -> str:
    if prior == "direct":
        if codebook != "bank":
            raise LdpmInputError(f"prior {prior!r}", "direct retrieval is only set up on the bank",
                                 "use codebook 'bank'")
        return "retrieval_direct"
    return "retrieval" if codebook == "bank" else "retrieval_single"


def method_stage(method: str) -> str:
    """The stage whose weights a method restores with (its stage III, or the baseline)."""
    if method in RESTORERS:
        return method
    if method == ORACLE:
        return "restore"
    if method not in TABLE2_VARIANTS:
        raise LdpmInputError(f"diffcode method {method!r}", "unknown",
                             f"use one of {', '.join([*TABLE2_VARIANTS, *RESTORERS])}")
    return "restore" if method == "diffcode" else f"restore_{method}"


def _variant_of_stage(stage: str) -> str | None:
    if stage == "restore":
        return "diffcode"
    if stage.startswith("restore_") and stage[len("restore_"):] in TABLE2_VARIANTS:
        return stage[len("restore_"):]
    return None


def stage_kind(stage: str) -> str:
    if stage in ("bank", "bank_single"):
        return "bank"
    if stage in ("retrieval", "retrieval_direct", "retrieval_single"):
        return "retrieval"
    if stage in RESTORERS:
        return stage
    if _variant_of_stage(stage) is not None:
        return "restore"
    raise LdpmInputError(f"diffcode stage {stage!r}", "unknown",
                         "use bank, bank_single, retrieval[_direct|_single], restore[_<variant>], unet, swinir")


def stage_dependencies(stage: str) -> list[str]:
    """The stages whose ``final/`` weights ``stage`` is trained from (frozen)."""
    kind = stage_kind(stage)
    if kind == "retrieval":
        return ["bank_single" if stage == "retrieval_single" else "bank"]
    if kind == "restore":
        v = TABLE2_VARIANTS[_variant_of_stage(stage)]  # type: ignore[index]
        if v["prior"] is None:
            return []
        return [_bank_stage(v["codebook"]), _retrieval_stage(v["prior"], v["codebook"])]
    return []


def method_stages(method: str) -> list[str]:
    """Every stage a method needs at test time: its own and those it was trained from."""
    if method == INPUT:
        return []
    stage = method_stage(method)
    return [*stage_dependencies(stage), stage]


def stages_of(method_names: Sequence[str]) -> list[str]:
    """Every stage the methods ``method_names`` use, sorted."""
    return sorted({s for m in method_names for s in method_stages(m)})


def all_stages(dc: Mapping) -> list[str]:
    return stages_of(methods(dc))


def available_tasks(dc: Mapping) -> list[str]:
    """Configured tasks that have data (CT/PET only with their folder)."""
    return [t for t, reason in task_availability(dc).items() if reason is None]


def levels(dc: Mapping, masks: Mapping) -> dict[str, Any]:
    """The degradation levels: SR scale, noise sigma, and the 1-D masks' acceleration/centre."""
    return {"sr_scale": int(dc["sr_scale"]), "denoise_sigma": float(dc["denoise_sigma"]),
            "acceleration": int(masks["acceleration"]), "center_fraction": float(masks["center_fraction"])}


def data_config(config: Mapping) -> dict[str, Any]:
    """What every stage and the evaluation need to build the tasks' data."""
    dc = config["diffcode"]
    if not available_tasks(dc):
        raise LdpmInputError("config: diffcode.tasks", "no configured task has data",
                             "keep an MRI task (mri_sr, mri_recon, mri_denoise) or set ct_path/pet_path")
    return {"tasks": available_tasks(dc), "all_tasks": list(dc["tasks"]),
            "levels": levels(dc, config["masks"]), "ct_path": dc.get("ct_path"),
            "pet_path": dc.get("pet_path"), "split_fractions": dict(config["data"]["split_fractions"]),
            "split_seed": int(config["seed"]), "degradation_seed": int(dc["degradation_seed"])}


def diffcode_stage_config(config: Mapping, stage: str) -> dict[str, Any]:
    """The resolved config of one stage (what ``ldpm diffcode-train`` gets, and what its
    checkpoint must match to be resumed): data, training settings and only its own model keys,
    from the preset ``train.preset`` names with ``diffcode.overrides`` (:mod:`.presets`)."""
    hp = hyperparameters(config)
    kind = stage_kind(stage)
    tr = hp["train"]
    out: dict[str, Any] = {"stage": stage, "kind": kind, **data_config(config),
                           "patch": int(tr["patch"]), "batch_size": int(tr["batch_size"]),
                           "lr": float(tr["lr"]), "lr_min": float(tr["lr_min"]),
                           "ckpt_every": int(tr["ckpt_every"]), "n_steps": int(hp["steps"][kind])}
    m = hp["model"]
    naf = {"channels": list(m["channels"]), "naf_blocks": list(m["naf_blocks"])}
    vq = {**naf, "code_dim": m["code_dim"], "codebook_size": m["codebook_size"], "rq_depth": m["rq_depth"]}
    if kind == "bank":
        out.update(codebook="single" if stage == "bank_single" else "bank",
                   model={**vq, "commitment": m["commitment"],
                          "dead_code_threshold": m["dead_code_threshold"]})
    elif kind == "retrieval":
        out.update(mode="direct" if stage == "retrieval_direct" else "diffusion",
                   model={**vq, **{k: m[k] for k in ("diffusion_steps", "beta", "denoiser_layers",
                                                     "denoiser_hidden", "reverse_noise")}})
    elif kind == "restore":
        variant = TABLE2_VARIANTS[_variant_of_stage(stage)]  # type: ignore[index]
        out.update(variant=dict(variant), model={**naf, "experts": m["experts"], "top_k": m["top_k"],
                                                 "cls_weight": m["cls_weight"]})
    else:
        out.update(model=dict(hp[kind]))
    return out


def evaluation_config(config: Mapping, method: str) -> dict[str, Any]:
    """What ``ldpm diffcode-evaluate`` needs: the tasks' data and the method's name."""
    return {"method": method, "name": METHOD_NAMES.get(method, method), **data_config(config),
            "batch_size": int(config["diffcode"]["eval_batch_size"])}


def check_paths(config: Mapping[str, Any], source: str) -> None:
    """The folders of the config's ``diffcode`` block (``ct_path``, ``pet_path``), if set, must
    exist and be folders."""
    from ...config import check_folder

    dc = config.get("diffcode") or {}
    for key, what in (("ct_path", "the AAPM LDCT folder (patients/{quarter*,full*}/ DICOM series)"),
                      ("pet_path", "the PET folder (subjects/{low_dose,full_dose}.nii[.gz])")):
        if dc.get(key):
            check_folder(dc[key], f"diffcode.{key}", source, f"{what}, or null")
