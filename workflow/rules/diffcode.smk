# DiffCode (ldpm.studies.diffcode): all-in-one restoration as its own method family.
#   train (one rule, stage wildcard: bank[_single] -> retrieval[_direct|_single] -> restore*,
#   and the all-in-one unet/swinir) -> evaluate (one job per method: per-task PSNR/SSIM/RMSE)
#   -> report (papermill: DiffCode Tables 1 and 2, the stages' training curves). Nothing here
#   when diffcode.enabled is false.
from ldpm.studies.diffcode import config as dcc

DIFFCODE = config["diffcode"]
DIFFCODE_ON = bool(DIFFCODE.get("enabled"))
DC_METHODS = dcc.methods(DIFFCODE) if DIFFCODE_ON else []
DC_STAGES = dcc.all_stages(DIFFCODE) if DIFFCODE_ON else []
DC_TABLES = ["diffcode_table1", "diffcode_table2"]
PAPER_VALUES_DIFFCODE = REPO / "config" / "paper_values_diffcode.yaml"

DIFFCODE_OUTPUTS = [
    *expand("results/tables/{table}.{ext}", table=DC_TABLES, ext=["csv", "md", "tex"]),
    "results/notebooks/diffcode.ipynb",
    *expand("results/figures/diffcode_curves.{ext}", ext=["png", "pdf"]),
] if DIFFCODE_ON else []
# a stage's training folder
DC_MODEL = "results/models/diffcode_{}"


if DIFFCODE_ON:

    rule diffcode_train:
        """Train one DiffCode stage on the manifest's training split (frozen earlier stages as inputs)."""
        input:
            manifest=f"{DATA}/manifest.csv",
            deps=lambda wc: [f"{DC_MODEL.format(d)}/final" for d in dcc.stage_dependencies(wc.stage)],
        output:
            directory("results/models/diffcode_{stage}/final"),
        wildcard_constraints:
            stage="|".join(DC_STAGES),
        params:
            cfg=lambda wc: as_json(dcc.diffcode_stage_config(config, wc.stage)),
            deps=lambda wc: named_args("--dep", ((d, DC_MODEL.format(d)) for d in dcc.stage_dependencies(wc.stage))),
            seed=config["seed"],
        log:
            "results/logs/diffcode/train_{stage}.log",
        conda:
            ENV
        threads: 1
        # before the (short) evaluate jobs, so that the last training jobs do not run alone
        priority: 1
        resources:
            gpu=1,
            mem_mb=8000,
            runtime=720,
        shell:
            "OMP_NUM_THREADS={threads:q} python -m ldpm.cli diffcode-train --stage {wildcards.stage:q}"
            " --manifest {input.manifest:q} --out-dir results/models/diffcode_{wildcards.stage:q}"
            " --config {params.cfg} {params.deps} --seed {params.seed:q} > {log:q} 2>&1"

    rule diffcode_evaluate:
        """One method (or the LQ input) on every task's test set: per-task PSNR/SSIM/RMSE."""
        input:
            shards=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
            models=lambda wc: [f"{DC_MODEL.format(s)}/final" for s in dcc.method_stages(wc.method)],
        output:
            summary="results/diffcode/metrics/{method}.json",
            per_volume="results/diffcode/metrics/{method}_per_volume.csv",
        wildcard_constraints:
            method="|".join(DC_METHODS),
        params:
            cfg=lambda wc: as_json(dcc.evaluation_config(config, wc.method)),
            models=lambda wc: named_args("--model", ((s, DC_MODEL.format(s)) for s in dcc.method_stages(wc.method))),
        log:
            "results/logs/diffcode/evaluate_{method}.log",
        conda:
            ENV
        threads: 1
        shell:
            "OMP_NUM_THREADS={threads:q} python -m ldpm.cli diffcode-evaluate --method {wildcards.method:q}"
            " --shards {input.shards:q} {params.models} --config {params.cfg}"
            " --output {output.summary:q} --per-volume {output.per_volume:q} > {log:q} 2>&1"

    rule diffcode_report:
        """DiffCode Tables 1 and 2 (paper values beside ours) and each stage's training curve."""
        input:
            metrics=expand("results/diffcode/metrics/{method}.json", method=DC_METHODS),
            # each stage's log.csv (the training curves) is written with its final/ folder
            models=[f"{DC_MODEL.format(s)}/final" for s in DC_STAGES],
            paper=PAPER_VALUES_DIFFCODE,
            notebook=NOTEBOOKS / "diffcode.ipynb",
        output:
            tables=[*(reported(f"results/tables/{t}.csv", f"table_{t}", "DiffCode") for t in DC_TABLES),
                    *expand("results/tables/{table}.{ext}", table=DC_TABLES, ext=["md", "tex"])],
            figures=[reported("results/figures/diffcode_curves.png", "diffcode_curves", "DiffCode"),
                     "results/figures/diffcode_curves.pdf"],
            notebook=reported("results/notebooks/diffcode.ipynb", "notebook", "DiffCode"),
        params:
            methods=",".join(DC_METHODS),
            tasks=",".join(DIFFCODE["tasks"]),
            sr=DIFFCODE["sr_scale"],
            acc=config["masks"]["acceleration"],
            sigma=DIFFCODE["denoise_sigma"],
        log:
            "results/logs/diffcode/report.log",
        conda:
            ENV
        threads: 1
        shell:
            "OMP_NUM_THREADS={threads:q} papermill --no-progress-bar --kernel python3 {input.notebook:q}"
            " {output.notebook:q} -p results_dir results -p methods {params.methods:q}"
            " -p tasks {params.tasks:q} -p sr_scale {params.sr:q} -p acceleration {params.acc:q}"
            " -p denoise_sigma {params.sigma:q} -p paper_values {input.paper:q} > {log:q} 2>&1"
