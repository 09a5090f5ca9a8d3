# Report: one papermill notebook renders Tables I-III, Figs. 2-3 and results/report.md from
# results/ (no reconstruction model is rerun; Fig. 3's VAE pass is its own rule below).

# Fig. 3 needs the MR-VAE, which is only trained when a configured method uses it.
WITH_FIG3 = "vae" in TRAIN_STAGES
VAE_KINDS = ["untuned", "mr"]
PAPER_VALUES = REPO / "config" / "paper_values.yaml"
TABLES = ["table1", "table2", "table3"] + (["fig3_vae"] if WITH_FIG3 else []) + ["cost"]
# the training stages of the report's methods (their log.csv: the training-curves figure)
REPORT_STAGES = sorted({s for m in METHODS for s in method_stages(m, WITH_SD)}
                       | {d for m in METHODS for s in method_stages(m, WITH_SD)
                          for d in stage_dependencies(s, WITH_SD)})
FIGURES = (["fig2_examples"] + (["fig3_vae"] if WITH_FIG3 else [])
           + (["training_curves"] if REPORT_STAGES else [])
           + ["per_volume", "subsets", "cost", "quality_time"])
# the HTML report's category of each table and figure (captions: workflow/report/<name>.rst)
REPORT_CATEGORY = {"table1": "Table I", "table2": "Table II", "table3": "Table III",
                   "subsets": "Table III", "fig2_examples": "Figures", "fig3_vae": "Figures",
                   "per_volume": "Figures", "training_curves": "Training curves",
                   "cost": "Cost per job", "quality_time": "Cost per job"}

REPORT_OUTPUTS = [
    *expand("results/tables/{table}.{ext}", table=TABLES, ext=["csv", "md", "tex"]),
    *expand("results/figures/{figure}.{ext}", figure=FIGURES, ext=["png", "pdf"]),
    "results/notebooks/report.ipynb",
    "results/report.md",
    "results/provenance.json",
]


rule provenance:
    """Config, git commit, package versions and data hashes of this run."""
    input:
        manifest=f"{DATA}/manifest.csv",
        shards=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
    output:
        "results/provenance.json",
    params:
        cfg=as_json(config),
    log:
        "results/logs/provenance.log",
    conda:
        ENV
    shell:
        "python -m ldpm.cli provenance --output {output:q} --config {params.cfg} --hash {input:q}"
        " --manifest {input.manifest:q} > {log:q} 2>&1"


rule vae_recon:
    """Fig. 3: every ground-truth test slice through the MR-VAE and the untuned (or SD) VAE."""
    input:
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
        vae="results/models/vae/final",
        untuned=[] if WITH_SD else "results/models/vae_natural/final",
    output:
        expand("results/vae_recon/{kind}.h5", kind=VAE_KINDS),
    params:
        sd=quoted(config["pretrained"].get("sd_path") or ""),
        untuned=quoted("" if WITH_SD else "results/models/vae_natural"),
        outputs=named_args("--output", ((k, f"results/vae_recon/{k}.h5") for k in VAE_KINDS)),
    log:
        "results/logs/vae_recon.log",
    conda:
        ENV
    threads: 1
    priority: 8  # before the OOD set's jobs
    resources:
        gpu=1,
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli vae-recon --data {input.data:q} --vae-dir results/models/vae"
        " --sd-path {params.sd} --untuned-dir {params.untuned} {params.outputs} > {log:q} 2>&1"


# results/metrics/vae_<kind>/ is scored by the same `ldpm evaluate` as every method: the VAE
# file holds both `recon` and the `target` it encoded, so it is its own data shard.
ruleorder: evaluate_vae > evaluate


rule evaluate_vae:
    """PSNR/SSIM/NMSE, LPIPS, rFID, KID of one VAE's reconstructions of the test set."""
    input:
        recon="results/vae_recon/{kind}.h5",
        manifest=f"{DATA}/manifest.csv",
        reference=REFERENCE_FEATURES,
    output:
        summary="results/metrics/vae_{kind}/summary.json",
        per_volume="results/metrics/vae_{kind}/per_volume.csv",
        per_slice="results/metrics/vae_{kind}/per_slice.csv",
    wildcard_constraints:
        kind="|".join(VAE_KINDS),
    params:
        lpips=quoted(config["metrics"].get("lpips_backbone") or ""),
        inception=quoted(config["metrics"].get("inception_weights") or ""),
        kid=config["metrics"]["kid_subset_size"],
    log:
        "results/logs/evaluate/vae_{kind}.log",
    conda:
        ENV
    threads: 1
    priority: 8
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli evaluate --method vae_{wildcards.kind:q} --recon {input.recon:q}"
        " --data {input.recon:q} --manifest {input.manifest:q} --out-dir results/metrics/vae_{wildcards.kind:q}"
        " --lpips-backbone {params.lpips} --inception-weights {params.inception}"
        " --kid-subset-size {params.kid:q} --reference-features {input.reference:q} > {log:q} 2>&1"


rule report:
    """Tables I-III (paper values beside ours), Figs. 2-3 and results/report.md, via papermill."""
    input:
        summaries=expand("results/metrics/{method}/summary.json", method=METHODS),
        per_volume=expand("results/metrics/{method}/per_volume.csv", method=METHODS),
        ood=expand("results/metrics/{method}/ood/per_volume.csv", method=OOD_METHODS),
        recon=expand("results/recon/{method}/shard{shard}.h5", method=METHODS, shard=SHARDS),
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
        vae=expand("results/vae_recon/{kind}.h5", kind=VAE_KINDS) if WITH_FIG3 else [],
        vae_metrics=expand("results/metrics/vae_{kind}/summary.json", kind=VAE_KINDS) if WITH_FIG3 else [],
        provenance="results/provenance.json",
        paper=PAPER_VALUES,
        notebook=NOTEBOOKS / "report.ipynb",
        models=expand("results/models/{stage}/final", stage=REPORT_STAGES),
    output:
        tables=[reported(f"results/tables/{t}.csv", f"table_{t}", REPORT_CATEGORY[t], "tables")
                for t in TABLES] + expand("results/tables/{table}.{ext}", table=TABLES, ext=["md", "tex"]),
        figures=[reported(f"results/figures/{f}.png", f, REPORT_CATEGORY[f], "figures")
                 for f in FIGURES] + expand("results/figures/{figure}.pdf", figure=FIGURES),
        notebook=reported("results/notebooks/report.ipynb", "notebook", "Notebooks"),
        report=reported("results/report.md", "report_md", "Notebooks"),
    params:
        methods=",".join(METHODS),
        fig3=int(WITH_FIG3),
        ood=int(bool(OOD_METHODS)),
        stages=quoted(",".join(REPORT_STAGES)),
    log:
        "results/logs/report.log",
    conda:
        ENV
    shell:
        "papermill --no-progress-bar --kernel python3 {input.notebook:q} {output.notebook:q}"
        " -p methods {params.methods:q} -p results_dir results -p paper_values {input.paper:q}"
        " -p with_fig3 {params.fig3:q} -p with_ood {params.ood:q} -p stages {params.stages} > {log:q} 2>&1"
