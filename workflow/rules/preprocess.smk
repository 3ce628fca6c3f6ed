rule preprocess:
    input:
        data_input,
    output:
        directory("results/data/{dataset}.zarr"),
    log:
        "results/logs/preprocess/{dataset}.log",
    benchmark:
        "results/benchmarks/preprocess/{dataset}.tsv"
    conda:
        "../../envs/aetk.yaml"
    params:
        args=preprocess_args,
    shell:
        "aetk preprocess {params.args} --out {output} > {log} 2>&1"


# A data file's sample count is known once it is read: configured geodesics.pairs are
# checked then, first of the jobs that wait for the data, not in the geodesics jobs after
# training (bundled data are checked at start-up, check_pairs in common.smk).
rule check_pairs:
    input:
        data=DATA_STORE,
    output:
        touch(f"results/data/{DATASET}.pairs-checked"),
    log:
        f"results/logs/check_pairs/{DATASET}.log",
    priority: 100
    localrule: True
    params:
        pairs=config["geodesics"]["pairs"],
    run:
        check_store_pairs(input.data, params.pairs, log[0])
