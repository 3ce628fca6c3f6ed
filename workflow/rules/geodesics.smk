rule geodesics:
    input:
        model="results/models/{run}/model",
        # ancient: the codes change only with the model, also an input, so re-encoding
        # for encode's own settings (n_generated, ...) refits no geodesics (a minute on
        # the single cells)
        latent=ancient("results/latent/{run}.zarr"),
    output:
        directory("results/geodesics/{run}.zarr"),
    log:
        "results/logs/geodesics/{run}.log",
    benchmark:
        "results/benchmarks/geodesics/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    params:
        args=geodesic_args,
    shell:
        "aetk geodesics --model {input.model} --latent {input.latent} {params.args} "
        "--threads {threads} "
        "--out {output} > {log} 2>&1"
