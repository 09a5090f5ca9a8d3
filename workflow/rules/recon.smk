# Reconstruction: every method on every test shard, with the same stored masks.


rule reconstruct:
    """One method on one test shard."""
    input:
        data=f"{DATA}/test/shard{{shard}}.h5",
    output:
        "results/recon/{method}/shard{shard}.h5",
    wildcard_constraints:
        method="|".join(METHODS),
    log:
        "results/logs/reconstruct/{method}_{shard}.log",
    conda:
        ENV
    shell:
        "ldpm reconstruct --method {wildcards.method} --shard-data {input.data}"
        " --output {output} > {log} 2>&1"
