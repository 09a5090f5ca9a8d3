# Data: raw multicoil HDF5 -> per-volume RSS slice stores -> manifest -> test shards + masks.


if config["data"]["source"] == "embedded":

    rule embedded_subject:
        """Build one embedded subject's fastMRI-format files from nilearn's MNI152 template."""
        output:
            directory(f"{DATA}/raw/{{subject}}"),
        params:
            index=lambda wc: int(wc.subject.lstrip("s")),
            embedded=as_json(config["embedded"]),
            crop=config["data"]["crop_size"],
            drop=config["data"]["drop_last_slices"],
            seed=config["seed"],
        log:
            "results/logs/embedded_subject/{subject}.log",
        conda:
            ENV
        resources:
            mem_mb=2000,
            runtime=10,
        shell:
            "python -m ldpm.cli embedded --subject {params.index:q} --out-dir {output:q} --embedded {params.embedded}"
            " --crop-size {params.crop:q} --drop-last-slices {params.drop:q} --seed {params.seed:q}"
            " > {log:q} 2>&1"


rule preprocess:
    """RSS target slices of one volume, center-cropped, last slices dropped."""
    input:
        raw_input,
    output:
        f"{DATA}/slices/{{volume}}.h5",
    params:
        h5=lambda wc: RAW[wc.volume],
        crop=config["data"]["crop_size"],
        drop=config["data"]["drop_last_slices"],
    log:
        "results/logs/preprocess/{volume}.log",
    benchmark:
        "results/benchmarks/preprocess/{volume}.tsv"
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m ldpm.cli preprocess --input {params.h5:q} --output {output:q}"
        " --crop-size {params.crop:q} --drop-last-slices {params.drop:q} > {log:q} 2>&1"


rule manifest:
    """All slices in one table with a seeded by-subject train/val/test split (or fastMRI's folders)."""
    input:
        expand(f"{DATA}/slices/{{volume}}.h5", volume=VOLUMES),
    output:
        f"{DATA}/manifest.csv",
    params:
        fractions=as_json(config["data"]["split_fractions"]),
        seed=config["seed"],
        split=config["data"].get("split", "subjects"),
    log:
        "results/logs/manifest.log",
    conda:
        ENV
    shell:
        "python -m ldpm.cli manifest --stores {input:q} --output {output:q} --split-fractions {params.fractions}"
        " --seed {params.seed:q} --split {params.split:q} > {log:q} 2>&1"


rule test_shard:
    """Test shard k with its fixed, seeded undersampling masks (stored with the data)."""
    input:
        f"{DATA}/manifest.csv",
    output:
        f"{DATA}/test/shard{{shard}}.h5",
    params:
        n=config["inference"]["n_shards"],
        acc=config["masks"]["acceleration"],
        cf=config["masks"]["center_fraction"],
        seed=config["masks"]["seed"],
    log:
        "results/logs/test_shard/{shard}.log",
    conda:
        ENV
    priority: 25  # every test reconstruction waits for it
    shell:
        "python -m ldpm.cli test-shard --manifest {input:q} --shard {wildcards.shard:q} --n-shards {params.n:q}"
        " --output {output:q} --acceleration {params.acc:q} --center-fraction {params.cf:q}"
        " --mask-seed {params.seed:q} > {log:q} 2>&1"


# The out-of-distribution set: the same preprocessing, its own manifest (every volume in "test")
# and its own seeded masks, in results/data/ood/. Nothing that trains or tunes reads it.
if OOD_VOLUMES:

    if not config["data"].get("ood_root"):

        rule embedded_ood:
            """The embedded data's OOD set: dipy's real T1 slice and b0 EPI volume as fastMRI files."""
            output:
                directory(f"{OOD}/raw"),
            params:
                embedded=as_json(config["embedded"]),
                crop=config["data"]["crop_size"],
                drop=config["data"]["drop_last_slices"],
                seed=config["seed"],
            log:
                "results/logs/embedded_ood.log",
            conda:
                ENV
            resources:
                mem_mb=2000,
                runtime=10,
            shell:
                "python -m ldpm.cli embedded-ood --out-dir {output:q} --embedded {params.embedded}"
                " --crop-size {params.crop:q} --drop-last-slices {params.drop:q} --seed {params.seed:q}"
                " > {log:q} 2>&1"

    use rule preprocess as preprocess_ood with:
        input:
            ood_raw_input,
        output:
            f"{OOD}/slices/{{volume}}.h5",
        params:
            h5=lambda wc: OOD_RAW[wc.volume],
            crop=config["data"]["crop_size"],
            drop=config["data"]["drop_last_slices"],
        log:
            "results/logs/preprocess_ood/{volume}.log",
        benchmark:
            "results/benchmarks/preprocess/ood_{volume}.tsv"

    rule ood_manifest:
        """The OOD volumes' slices in one table, all in the test split."""
        input:
            expand(f"{OOD}/slices/{{volume}}.h5", volume=OOD_VOLUMES),
        output:
            f"{OOD}/manifest.csv",
        params:
            fractions=as_json(config["data"]["split_fractions"]),
            seed=config["seed"],
        log:
            "results/logs/ood_manifest.log",
        conda:
            ENV
        shell:
            "python -m ldpm.cli manifest --stores {input:q} --output {output:q} --split-fractions {params.fractions}"
            " --seed {params.seed:q} --split test > {log:q} 2>&1"

    rule ood_shard:
        """The OOD set as one test shard with its fixed, seeded undersampling masks."""
        input:
            f"{OOD}/manifest.csv",
        output:
            f"{OOD}/test/shard0.h5",
        params:
            acc=config["masks"]["acceleration"],
            cf=config["masks"]["center_fraction"],
            seed=config["masks"]["seed"],
        log:
            "results/logs/ood_shard.log",
        conda:
            ENV
        shell:
            "python -m ldpm.cli test-shard --manifest {input:q} --shard 0 --n-shards 1"
            " --output {output:q} --acceleration {params.acc:q} --center-fraction {params.cf:q}"
            " --mask-seed {params.seed:q} > {log:q} 2>&1"
