# Reconstruction: every method on every test shard, with the same stored masks.


rule reconstruct:
    """One method on one test shard."""
    input:
        data=f"{DATA}/test/shard{{shard}}.h5",
        models=method_models,
        # a multicoil method reads the raw k-space (found through the manifest) and its weights
        multicoil=lambda wc: multicoil_inputs(wc.method),
    output:
        "results/recon/{method}/shard{shard}.h5",
    wildcard_constraints:
        method="|".join(RECON_METHODS),
    params:
        checkpoints=method_checkpoints,
        options=lambda wc: recon_options(wc.method),
    log:
        "results/logs/reconstruct/{method}_{shard}.log",
    benchmark:
        "results/benchmarks/reconstruct/{method}_{shard}.tsv"
    conda:
        ENV
    threads: 1
    priority: 10
    resources:
        gpu=lambda wc: 1 if method_stages(wc.method, WITH_SD) or wc.method in MULTICOIL_METHODS else 0,
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli reconstruct --method {wildcards.method:q} --shard-data {input.data:q}"
        " {params.checkpoints} --options {params.options} --output {output:q} > {log:q} 2>&1"


if OOD_METHODS:

    use rule reconstruct as reconstruct_ood with:
        input:
            data=f"{OOD}/test/shard0.h5",
            models=method_models,
            multicoil=lambda wc: multicoil_inputs(wc.method, f"{OOD}/manifest.csv"),
        output:
            "results/recon/{method}/ood.h5",
        wildcard_constraints:
            method="|".join(OOD_METHODS),
        params:
            checkpoints=method_checkpoints,
            options=lambda wc: recon_options(wc.method, f"{OOD}/manifest.csv"),
        log:
            "results/logs/reconstruct/{method}_ood.log",
        benchmark:
            "results/benchmarks/reconstruct/{method}_ood.tsv"
        # after the test set's reconstructions and evaluations: the OOD set fills idle cores
        priority: 2
