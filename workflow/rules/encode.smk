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
    threads: 1  # as train's: torch's CPU threads (profiles/slurm sets more)
    resources:
        **gpu_partition("encode"),  # on SLURM (profiles/slurm)
        gpu=gpus("encode"),
        device=config["encode"]["device"],
    params:
        settings=encode_args,  # as train's
        args=with_device(encode_args),
    shell:
        "aetk encode --data {input.data} --model {input.model} {params.args} "
        "--threads {threads} "
        "--out {output} > {log} 2>&1"
