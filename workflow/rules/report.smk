rule report_run:
    input:
        data=DATA_STORE,
        latent="results/latent/{run}.zarr",
    output:
        latent=report(
            "results/report/{run}/latent.png",
            caption="../report/latent.rst",
            category="Latent space",
            labels={"run": "{run}"},
        ),
        reconstructions=report(
            "results/report/{run}/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Reconstructions",
            labels={"run": "{run}"},
        ),
        samples=report(
            "results/report/{run}/samples.png",
            caption="../report/samples.rst",
            category="Samples",
            labels={"run": "{run}"},
        ),
        traversals=report(
            "results/report/{run}/traversals.png",
            caption="../report/traversals.rst",
            category="Latent traversals",
            labels={"run": "{run}"},
        ),
    log:
        "results/logs/report_run/{run}.log",
    benchmark:
        "results/benchmarks/report_run/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    params:
        outdir=subpath(output.latent, parent=True),
    shell:
        "aetk report run --data {input.data} --latent {input.latent} "
        "--out-dir {params.outdir} > {log} 2>&1"


rule report_geodesics:
    input:
        latent="results/latent/{run}.zarr",
        geodesics="results/geodesics/{run}.zarr",
    output:
        report(
            "results/report/{run}/geodesics.png",
            caption="../report/geodesics.rst",
            category="Geodesics",
            labels={"run": "{run}"},
        ),
    log:
        "results/logs/report_geodesics/{run}.log",
    benchmark:
        "results/benchmarks/report_geodesics/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    shell:
        "aetk report geodesics --latent {input.latent} --geodesics {input.geodesics} "
        "--out {output} > {log} 2>&1"


rule report_summary:
    input:
        data=DATA_STORE,
        histories=expand("results/models/{run}/history.tsv", run=RUNS),
        latents=expand("results/latent/{run}.zarr", run=RUNS),
        geodesics=expand("results/geodesics/{run}.zarr", run=GEODESIC_RUNS),
    output:
        curves=report(
            "results/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Summary",
        ),
        table=report(
            "results/report/comparison.tsv",
            caption="../report/comparison.rst",
            category="Summary",
        ),
        figure=report(
            "results/report/comparison.png",
            caption="../report/comparison_figure.rst",
            category="Summary",
        ),
    log:
        "results/logs/report_summary.log",
    benchmark:
        "results/benchmarks/report_summary.tsv"
    conda:
        "../../envs/aetk.yaml"
    params:
        runs=list(RUNS),
    shell:
        "aetk report summary --runs {params.runs} --histories {input.histories} "
        "--latents {input.latents} --geodesics {input.geodesics} --data {input.data} "
        "--curves {output.curves} --table {output.table} --figure {output.figure} "
        "> {log} 2>&1"
