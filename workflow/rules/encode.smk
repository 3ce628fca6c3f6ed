rule encode:
    input:
        data=DATA_STORE,
        model="results/models/{run}/model",
    output:
        directory("results/latent/{run}.zarr"),
    log:
        "results/logs/encode/{run}.log",
    benchmark:
        "results/benchmarks/encode/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    resources:
        gpu=gpus("encode"),
    params:
        args=encode_args,
    shell:
        "aetk encode --data {input.data} --model {input.model} {params.args} "
        "--threads {threads} "
        "--out {output} > {log} 2>&1"
