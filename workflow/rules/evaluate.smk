# Metrics: PSNR/SSIM/NMSE (fastMRI definitions, per volume), LPIPS, rFID, KID per method.


REFERENCE_FEATURES = "results/metrics/reference_features.npz"


rule reference_features:
    """The test ground truth's Inception features, computed once for every method's rFID/KID."""
    input:
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
    output:
        REFERENCE_FEATURES,
    params:
        inception=quoted(config["metrics"].get("inception_weights") or ""),
    log:
        "results/logs/evaluate/reference_features.log",
    conda:
        ENV
    threads: 1
    priority: 8  # before the OOD set's jobs (every evaluate waits for it)
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli reference-features --data {input.data:q}"
        " --inception-weights {params.inception} --output {output:q} > {log:q} 2>&1"


rule evaluate:
    """Score one method over all test shards; n/a with a reason where weights are missing."""
    input:
        recon=expand("results/recon/{{method}}/shard{shard}.h5", shard=SHARDS),
        data=expand(f"{DATA}/test/shard{{shard}}.h5", shard=SHARDS),
        manifest=f"{DATA}/manifest.csv",
        reference=REFERENCE_FEATURES,
    output:
        summary="results/metrics/{method}/summary.json",
        per_volume="results/metrics/{method}/per_volume.csv",
        per_slice="results/metrics/{method}/per_slice.csv",
    wildcard_constraints:
        method="[^/]+",  # results/metrics/<method>/ood/ is evaluate_ood's
    params:
        lpips=quoted(config["metrics"].get("lpips_backbone") or ""),
        inception=quoted(config["metrics"].get("inception_weights") or ""),
        kid=config["metrics"]["kid_subset_size"],
    log:
        "results/logs/evaluate/{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{method}.tsv"
    conda:
        ENV
    threads: 1
    priority: 8  # before the OOD set's jobs
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli evaluate --method {wildcards.method:q} --recon {input.recon:q}"
        " --data {input.data:q} --manifest {input.manifest:q} --out-dir results/metrics/{wildcards.method:q}"
        " --lpips-backbone {params.lpips} --inception-weights {params.inception}"
        " --kid-subset-size {params.kid:q} --reference-features {input.reference:q} > {log:q} 2>&1"


rule val_score:
    """Score one method on the val split (tuning: docs/tuning.md); the test split is not read."""
    input:
        manifest=f"{DATA}/manifest.csv",
        models=method_models,
    output:
        summary="results/val/{method}/summary.json",
    wildcard_constraints:
        method="|".join(m for m in RECON_METHODS if m not in MULTICOIL_METHODS),
    params:
        checkpoints=method_checkpoints,
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
        "OMP_NUM_THREADS={threads:q} python -m ldpm.cli val-score --method {wildcards.method:q} --manifest {input.manifest:q}"
        " {params.checkpoints} --options {params.options} --masks {params.masks}"
        " --out-dir results/val/{wildcards.method:q} > {log:q} 2>&1"


VAL_OUTPUTS = expand("results/val/{method}/summary.json",
                     method=[m for m in RECON_METHODS if m not in MULTICOIL_METHODS])


if OOD_METHODS:

    rule evaluate_ood:
        """Score one method on the out-of-distribution set (PSNR/SSIM/NMSE: Table III's OOD column)."""
        input:
            recon="results/recon/{method}/ood.h5",
            data=f"{OOD}/test/shard0.h5",
            manifest=f"{OOD}/manifest.csv",
        output:
            summary="results/metrics/{method}/ood/summary.json",
            per_volume="results/metrics/{method}/ood/per_volume.csv",
            per_slice="results/metrics/{method}/ood/per_slice.csv",
        wildcard_constraints:
            method="|".join(OOD_METHODS),
        log:
            "results/logs/evaluate/{method}_ood.log",
        benchmark:
            "results/benchmarks/evaluate/{method}_ood.tsv"
        conda:
            ENV
        threads: 1
        shell:
            "OMP_NUM_THREADS={threads:q} python -m ldpm.cli evaluate --method {wildcards.method:q} --recon {input.recon:q}"
            " --data {input.data:q} --manifest {input.manifest:q} --out-dir results/metrics/{wildcards.method:q}/ood"
            " --pixel-only > {log:q} 2>&1"

