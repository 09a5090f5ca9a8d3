# Training: LDPM's stages (sketcher -> MR-VAE -> [latent denoiser] -> MRControlNet) and the
# trained baselines. Each stage resumes from results/models/<stage>/last.pt when rerun.


rule train:
    """Train one stage on the manifest's training split."""
    input:
        manifest=f"{DATA}/manifest.csv",
        deps=lambda wc: [f"results/models/{d}/final" for d in stage_dependencies(wc.stage, WITH_SD)],
    output:
        directory("results/models/{stage}/final"),
    wildcard_constraints:
        stage="|".join(TRAIN_STAGES),
    params:
        overrides=lambda wc: as_json(config["train"]["stages"].get(wc.stage, {})),
        deps=lambda wc: " ".join(f"--dep {d}=results/models/{d}"
                                 for d in stage_dependencies(wc.stage, WITH_SD)),
        preset=config["train"]["preset"],
        pretrained=as_json(config["pretrained"]),
        seed=config["seed"],
    log:
        "results/logs/train/{stage}.log",
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "ldpm train --stage {wildcards.stage} --manifest {input.manifest}"
        " --out-dir results/models/{wildcards.stage} {params.deps} --overrides {params.overrides}"
        " --preset {params.preset} --pretrained {params.pretrained} --seed {params.seed}"
        " > {log} 2>&1"
