# Metrics: PSNR/SSIM/NMSE (fastMRI definitions, per volume), LPIPS, rFID, KID per method.


rule evaluate:
    """Score one method over all test shards; n/a with a reason where weights are missing."""
    input:
        recon=expand("results/recon/{{method}}/shard{shard}.h5", shard=SHARDS),
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
        manifest=f"{DATA}/manifest.csv",
    output:
        summary="results/metrics/{method}/summary.json",
        per_volume="results/metrics/{method}/per_volume.csv",
        per_slice="results/metrics/{method}/per_slice.csv",
    params:
        lpips=config["metrics"].get("lpips_backbone") or "",
        inception=config["metrics"].get("inception_weights") or "",
        kid=config["metrics"]["kid_subset_size"],
    log:
        "results/logs/evaluate/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{method}.tsv"
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} ldpm evaluate --method {wildcards.method} --recon {input.recon} --data {input.data}"
        " --manifest {input.manifest} --out-dir results/metrics/{wildcards.method}"
        " --lpips-backbone '{params.lpips}' --inception-weights '{params.inception}'"
        " --kid-subset-size {params.kid} > {log} 2>&1"


rule val_score:
    """Score one method on the val split (tuning: docs/tuning.md); the test split is not read."""
    input:
        manifest=f"{DATA}/manifest.csv",
        models=lambda wc: [f"results/models/{s}/final" for s in method_stages(wc.method, WITH_SD)],
    output:
        summary="results/val/{method}/summary.json",
    wildcard_constraints:
        method="|".join(m for m in RECON_METHODS if m not in MULTICOIL_METHODS),
    params:
        checkpoints=lambda wc: " ".join(f"--checkpoint {s}=results/models/{s}"
                                        for s in method_stages(wc.method, WITH_SD)),
        options=lambda wc: as_json({**method_options(wc.method, config["inference"]),
                                    "sd_path": config["pretrained"].get("sd_path")}),
        masks=as_json(config["masks"]),
    log:
        "results/logs/val_score/{method}.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=lambda wc: 1 if method_stages(wc.method, WITH_SD) else 0,
    shell:
        "OMP_NUM_THREADS={threads} ldpm val-score --method {wildcards.method} --manifest {input.manifest}"
        " {params.checkpoints} --options {params.options} --masks {params.masks}"
        " --out-dir results/val/{wildcards.method} > {log} 2>&1"


VAL_OUTPUTS = expand("results/val/{method}/summary.json",
                     method=[m for m in RECON_METHODS if m not in MULTICOIL_METHODS])
