# LoRA adaptation of LDPM's denoiser (ldpm.studies.lora). Its stages (lora_r4, lora_r16,
# lora_t1, lora_t2, lora_eps_t1, lora_eps_t2) go through the `train` rule and its rows
# (LORA_METHODS, among common.smk's STUDY_METHODS) through `reconstruct` and `evaluate`; this
# file only adds the table, rendered by papermill.

from ldpm.studies.lora.graph import mix_weights, own_stages, study_methods as lora_rows

LORA_ENABLED = bool(config.get("lora", {}).get("enabled"))
LORA_METHODS = lora_rows(config)
LORA_OUTPUTS = (
    [*expand("results/tables/lora.{ext}", ext=["csv", "md", "tex"]), "results/notebooks/lora.ipynb",
     *expand("results/figures/lora_curves.{ext}", ext=["png", "pdf"])]
    if LORA_ENABLED
    else []
)

# training folders whose meta.json the table reads and whose log.csv (written with final/) the
# training-curves figure reads: each row's own stage(s)
LORA_TABLE_MODELS = sorted({f"results/models/{s}/final" for m in LORA_METHODS for s in own_stages(m)})


if LORA_ENABLED:

    rule lora_table:
        """LDPM (frozen) vs LoRA adapters vs fewer steps, and the rows' own stages' training curves."""
        input:
            summaries=expand("results/metrics/{method}/summary.json", method=LORA_METHODS),
            per_volume=expand("results/metrics/{method}/per_volume.csv", method=LORA_METHODS),
            recon=expand("results/recon/{method}/shard{shard}.h5", method=LORA_METHODS, shard=SHARDS),
            models=LORA_TABLE_MODELS,
            notebook=NOTEBOOKS / "lora.ipynb",
        output:
            tables=[reported("results/tables/lora.csv", "table_lora", "LoRA"),
                    *expand("results/tables/lora.{ext}", ext=["md", "tex"])],
            figures=[reported("results/figures/lora_curves.png", "lora_curves", "LoRA"),
                     "results/figures/lora_curves.pdf"],
            notebook=reported("results/notebooks/lora.ipynb", "notebook", "LoRA"),
        params:
            methods=",".join(LORA_METHODS),
            n_steps=config["inference"]["ldpm"]["n_steps"],
            weights=",".join(str(w) for w in mix_weights(config["inference"])),
        log:
            "results/logs/lora_table.log",
        conda:
            ENV
        threads: 1
        shell:
            "OMP_NUM_THREADS={threads:q} papermill --no-progress-bar --kernel python3 {input.notebook:q}"
            " {output.notebook:q} -p results_dir results -p methods {params.methods:q}"
            " -p n_steps {params.n_steps:q} -p mix_weights {params.weights:q} > {log:q} 2>&1"
