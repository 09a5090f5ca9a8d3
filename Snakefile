# ldpm: undersampled MRI reconstruction with a latent diffusion prior, end to end.
#
#   snakemake --profile workflow/profiles/local all     # laptop, embedded data (README)
#   snakemake --profile slurm all                       # GPU cluster, fastMRI
#
# Rules only orchestrate: each calls one `ldpm <command>` entry point (ldpm/cli.py).

from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

REPO = Path(workflow.basedir)


configfile: str(REPO / "config" / "config.yaml")


validate(config, str(REPO / "config" / "schemas" / "config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/recon.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/diffcode.smk"
include: "workflow/rules/lora.smk"


rule all:
    input:
        REPORT_OUTPUTS,
        DIFFCODE_OUTPUTS,
        LORA_OUTPUTS,
    default_target: True


rule val:
    """Every method scored on the val split (for tuning: docs/tuning.md)."""
    input:
        VAL_OUTPUTS,
