rule train:
    input:
        data=DATA_STORE,
        pairs_checked=PAIRS_CHECKED,
    output:
        model=directory("results/models/{run}/model"),
        history="results/models/{run}/history.tsv",
    log:
        "results/logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    threads: 1
    resources:
        **gpu_partition("train"),  # on SLURM (profiles/slurm)
        gpu=gpus("train"),
        device=config["train"]["device"],
        # a cluster job's request, here and not in profiles/slurm, which a --set-resources
        # replaces whole; local runs enforce neither (mem_mb only under --resources)
        mem_mb=16000,
        runtime=240,
    params:
        # what the params rerun trigger compares; args differ from it by the device only
        settings=train_args,
        args=with_device(train_args),
        # Outside the declared outputs, so that Snakemake keeps it when a job is interrupted.
        checkpoints="results/checkpoints",
    shell:
        "aetk train --data {input.data} {params.args} --threads {threads} "
        "--checkpoint-dir {params.checkpoints} "
        "--out {output.model} --history {output.history} > {log} 2>&1"
