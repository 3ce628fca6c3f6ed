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
