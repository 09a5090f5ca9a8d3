# Report: papermill notebooks render tables and figures from results/ (no model is rerun).

REPORT_OUTPUTS = [
    *expand("results/tables/table1.{ext}", ext=["csv", "md", "tex"]),
    "results/figures/fig2_examples.png",
    "results/notebooks/table1.ipynb",
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
        "ldpm provenance --output {output} --config {params.cfg} --hash {input} > {log} 2>&1"


rule table1:
    """Table I (all methods x all metrics) and the example figure, via papermill."""
    input:
        summaries=expand("results/metrics/{method}/summary.json", method=METHODS),
        recon=expand("results/recon/{method}/shard{shard}.h5", method=METHODS, shard=SHARDS),
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
        notebook=NOTEBOOKS / "table1.ipynb",
    output:
        tables=expand("results/tables/table1.{ext}", ext=["csv", "md", "tex"]),
        figure="results/figures/fig2_examples.png",
        notebook="results/notebooks/table1.ipynb",
    params:
        methods=",".join(METHODS),
    log:
        "results/logs/table1.log",
    conda:
        ENV
    shell:
        "papermill --no-progress-bar {input.notebook} {output.notebook}"
        " -p methods {params.methods} -p results_dir results > {log} 2>&1"
