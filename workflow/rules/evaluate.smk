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
    conda:
        ENV
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} ldpm evaluate --method {wildcards.method} --recon {input.recon} --data {input.data}"
        " --manifest {input.manifest} --out-dir results/metrics/{wildcards.method}"
        " --lpips-backbone '{params.lpips}' --inception-weights '{params.inception}'"
        " --kid-subset-size {params.kid} > {log} 2>&1"
