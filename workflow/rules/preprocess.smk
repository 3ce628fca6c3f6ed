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
# checked then, before the training jobs, which wait for it (PAIRS_CHECKED in common.smk),
# not in the geodesics jobs after training (bundled data are checked at start-up). The
# pairs are read from config, not params: pairs changed once the models are trained (which
# aetk geodesics checks itself) must not rerun this job, which every training job needs.
rule check_pairs:
    input:
        data=DATA_STORE,
    output:
        touch(f"results/data/{DATASET}.pairs-checked"),
    log:
        f"results/logs/check_pairs/{DATASET}.log",
    priority: 100
    localrule: True
    run:
        check_store_pairs(input.data, config["geodesics"]["pairs"], log[0])
