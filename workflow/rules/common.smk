# Shared definitions: the volume list, output paths, shell quoting.
#
# Shell commands quote every value they interpolate: `{x:q}` (Snakemake's shlex.quote, applied to
# each element of a list), or, for params built below by quoted/as_json/named_args, which are
# shell words already, plain `{params.x}`. Paths and config strings may hold spaces, quotes or $(...).
import json
import shlex
import sys

from ldpm.methods import BASELINES, MULTICOIL_METHODS, method_options, method_stages, stage_dependencies
from ldpm.methods.graph import study_methods, table1_methods

# `config` was validated by the Snakefile (ldpm.config.validate_config) before this file.

ENV = str(REPO / "environment.yml")
NOTEBOOKS = REPO / "workflow" / "notebooks"
CAPTIONS = REPO / "workflow" / "report"
DATA = "results/data"
SHARDS = list(range(config["inference"]["n_shards"]))
METHODS = config["methods"]
# the studies' rows (ldpm.studies, registered by the Snakefile; none for a study turned off)
# are reconstructed like any method
STUDY_METHODS = study_methods(config)
RECON_METHODS = list(dict.fromkeys(METHODS + STUDY_METHODS))
WITH_SD = bool(config["pretrained"].get("sd_path"))
TRAIN_STAGES = sorted({s for m in RECON_METHODS for s in method_stages(m, WITH_SD)}
                      | {d for m in RECON_METHODS for s in method_stages(m, WITH_SD)
                         for d in stage_dependencies(s, WITH_SD)})
# the baselines' stages train in `train_baseline`, the control branch in `train_controlnet`, the
# rest (LDPM's chain before it, the studies' stages) in `train`
BASELINE_STAGES = [s for s in TRAIN_STAGES if s in BASELINES]
CHAIN_STAGES = [s for s in TRAIN_STAGES if s not in BASELINES and s != "controlnet"]


def _volumes():
    """Volume stems and, for each, where its raw multicoil HDF5 comes from."""
    if config["data"]["source"] == "embedded":
        from ldpm.data.embedded import embedded_volumes

        return {v.name: f"{DATA}/raw/{v.subject}/{v.name}.h5"
                for v in embedded_volumes(config["embedded"])}
    from ldpm.data.fastmri import list_volumes

    return {p.stem: str(p) for p in list_volumes(config["data"]["fastmri_root"])}


RAW = _volumes()
VOLUMES = sorted(RAW)

# The out-of-distribution set (Table III's OOD column): reconstructed and scored by every Table I
# method, with its own manifest and masks, and never read by training or val. From
# data.ood_root, or for the embedded data dipy's real scans (embedded.ood).
OOD = f"{DATA}/ood"


def _ood_volumes():
    """OOD volume stems and where each raw multicoil HDF5 comes from ({} when there is none)."""
    if config["data"].get("ood_root"):
        from ldpm.data.fastmri import list_volumes

        return {p.stem: str(p) for p in list_volumes(config["data"]["ood_root"])}
    if config["data"]["source"] == "embedded" and config["embedded"].get("ood"):
        from ldpm.data.ood import VOLUMES as DIPY_VOLUMES

        return {name: f"{OOD}/raw/{name}.h5" for name in DIPY_VOLUMES}
    return {}


OOD_RAW = _ood_volumes()
OOD_VOLUMES = sorted(OOD_RAW)
# Table III's methods reconstruct it (not LDPM's ablations)
OOD_METHODS = table1_methods(METHODS) if OOD_VOLUMES else []
if set(OOD_VOLUMES) & set(VOLUMES):
    print(LdpmInputError("config: data.ood_root", f"volume {sorted(set(OOD_VOLUMES) & set(VOLUMES))[0]} "
                         "has the name of a volume of the training data",
                         "keep only out-of-distribution files under data.ood_root"), file=sys.stderr)
    sys.exit(2)


def quoted(value) -> str:
    """str(value) as one shell word; an empty value becomes '' (Snakemake's {x:q} drops it)."""
    return shlex.quote(str(value))


def as_json(value) -> str:
    """A config block as one shell-quoted JSON argument."""
    return quoted(json.dumps(value, sort_keys=True))


def named_args(flag, pairs) -> str:
    """`flag NAME=PATH` for each (name, path) pair, each NAME=PATH one shell-quoted word."""
    return " ".join(f"{flag} {quoted(f'{name}={path}')}" for name, path in pairs)


def method_models(wildcards):
    """The trained stages a method's job reads: each stage's ``final/`` folder."""
    return [f"results/models/{s}/final" for s in method_stages(wildcards.method, WITH_SD)]


def method_checkpoints(wildcards):
    """``--checkpoint STAGE=results/models/STAGE`` for each stage the method reconstructs with."""
    return named_args("--checkpoint", ((s, f"results/models/{s}")
                                       for s in method_stages(wildcards.method, WITH_SD)))


def multicoil_inputs(method, manifest=f"{DATA}/manifest.csv"):
    """What a multicoil method's reconstruct job reads besides its shard: the manifest (which
    leads to the raw files) and the configured weights."""
    if method not in MULTICOIL_METHODS:
        return []
    return [manifest, config["inference"][method]["checkpoint"]]


def recon_options(method, manifest=f"{DATA}/manifest.csv"):
    """``ldpm reconstruct --options`` of ``method``: its config options, the SD folder, and for
    a multicoil method the manifest that leads to the raw files."""
    return as_json({**method_options(method, config["inference"]),
                    "sd_path": config["pretrained"].get("sd_path"),
                    **({"manifest": manifest} if method in MULTICOIL_METHODS else {})})


def raw_input(wildcards):
    """What the preprocess job of one volume waits for: its subject folder or its file."""
    if config["data"]["source"] == "embedded":
        return str(Path(RAW[wildcards.volume]).parent)
    return RAW[wildcards.volume]


def ood_raw_input(wildcards):
    """The same for an OOD volume: dipy's scans' folder, or the file under data.ood_root."""
    if config["data"].get("ood_root"):
        return OOD_RAW[wildcards.volume]
    return f"{OOD}/raw"


def reported(path, caption, category, subcategory=None, **labels):
    """``path`` flagged for Snakemake's HTML report (``snakemake --report``, ``make report``)
    with the caption ``workflow/report/<caption>.rst`` under ``category``."""
    return report(path, caption=str(CAPTIONS / f"{caption}.rst"), category=category,
                  subcategory=subcategory, labels=labels or None)
