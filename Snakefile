# ldpm: undersampled MRI reconstruction with a latent diffusion prior, end to end.
#
#   snakemake --profile workflow/profiles/local all     # laptop, embedded data (README)
#   snakemake --profile slurm all                       # GPU cluster, fastMRI
#
# Rules only orchestrate: each calls one `python -m ldpm.cli <command>` entry point (ldpm/cli.py).

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

REPO = Path(workflow.basedir)

# Every job imports the ldpm of this checkout, in whichever environment it runs: the local venv,
# or a `--sdm conda` environment from environment.yml, which holds only the dependencies. The
# rules call `python -m ldpm.cli`, never an installed `ldpm` script.
if str(REPO) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this file imports it too, wherever Snakemake was installed

import ldpm.studies  # noqa: E402,F401  (registers the studies' stages, methods and config checks)
from ldpm.config import validate_config  # noqa: E402
from ldpm.errors import LdpmInputError  # noqa: E402


configfile: str(REPO / "config" / "config.yaml")


# The whole config (config/config.yaml, then --configfile files, then --config) is checked
# against config/schemas/config.schema.yaml, with its cross-key rules and the paths it names,
# before any rule is read: a bad config prints one line naming the key and the fix and exits 2
# with nothing written. The schema sets no defaults: config/config.yaml holds every key.
try:
    _checked = validate_config(config, source="config")
except LdpmInputError as _error:
    print(_error, file=sys.stderr)
    sys.exit(2)
config.clear()
config.update(_checked)  # in place: --config strings read as the numbers the schema wants


# `snakemake --report results/report.html` (make report): the tables, figures and notebooks
# flagged with report() in the rules, each with its caption from workflow/report/
report: "workflow/report/workflow.rst"


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
