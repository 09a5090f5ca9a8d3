# Training: LDPM's stages (sketcher -> MR-VAE -> [latent denoiser] -> MRControlNet) and the
# trained baselines. Each stage resumes from results/models/<stage>/last.pt when rerun.

from ldpm.config import stage_overrides


rule train:
    """Train one stage on the manifest's training split."""
    input:
        manifest=f"{DATA}/manifest.csv",
        deps=lambda wc: [f"results/models/{d}/final" for d in stage_dependencies(wc.stage, WITH_SD)],
    output:
        directory("results/models/{stage}/final"),
    wildcard_constraints:
        stage="|".join(CHAIN_STAGES) or "^$",
    params:
        # train.stages.<stage> over the global run keys it takes (train.loader, ...)
        overrides=lambda wc: as_json(stage_overrides(config["train"], wc.stage)),
        deps=lambda wc: named_args("--dep", ((d, f"results/models/{d}")
                                             for d in stage_dependencies(wc.stage, WITH_SD))),
        preset=config["train"]["preset"],
        pretrained=as_json(config["pretrained"]),
        masks=as_json(config["masks"]),
        seed=config["seed"],
    log:
        "results/logs/train/{stage}.log",
    benchmark:
        "results/benchmarks/train/{stage}.tsv"
    conda:
        ENV
    # one thread per job: on a small machine two 1-thread jobs beat one 2-thread job, and torch
    # with more threads than free cores slows down many-fold (clusters: set-threads in the profile)
    threads: 1
    # LDPM's training chain is the DAG's critical path: schedule it before everything else
    priority: 30
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    # ldpm/launch.py: one plain process, or one torchrun rank per GPU given to the job
    shell:
        "OMP_NUM_THREADS={threads:q} python -m ldpm.launch --gpus {resources.gpu:q} --"
        " --stage {wildcards.stage:q} --manifest {input.manifest:q}"
        " --out-dir results/models/{wildcards.stage:q} {params.deps} --overrides {params.overrides}"
        " --preset {params.preset:q} --pretrained {params.pretrained} --masks {params.masks}"
        " --seed {params.seed:q}"
        " > {log:q} 2>&1"


# The baselines train as `train` does, after LDPM's chain has the cores it needs.
use rule train as train_baseline with:
    wildcard_constraints:
        stage="|".join(BASELINE_STAGES) or "^$",
    priority: 20


# The control branch, the chain's last stage, in a rule of its own for its cluster resources
# (profiles/slurm). One thread, as every job of the local run: a two-thread job waits for two
# free cores, which the studies' one-thread jobs seldom leave.
use rule train as train_controlnet with:
    wildcard_constraints:
        stage="controlnet",
    threads: 1
