# The geodesics' settings as a file, for their job to depend on. Snakemake (9.27, dag.py
# update_needrun) checks no params of the jobs after a job that must run; it reruns those
# whose inputs from it are not all ancient and keeps the others, unchecked: the geodesics
# job's own params would miss a settings change made with an encode change. This job has
# no inputs, so its params are always checked, and its new file reruns the geodesics.
rule geodesic_settings:
    output:
        "results/geodesics/{run}.settings",
    log:
        "results/logs/geodesic_settings/{run}.log",
    localrule: True
    params:
        args=geodesic_args,
    run:
        write_settings(output[0], params.args, log[0])


rule geodesics:
    input:
        model="results/models/{run}/model",
        latent=latent_input,  # ancient, unless geodesics is forced
        settings="results/geodesics/{run}.settings",
    output:
        directory("results/geodesics/{run}.zarr"),
    log:
        "results/logs/geodesics/{run}.log",
    benchmark:
        "results/benchmarks/geodesics/{run}.tsv"
    conda:
        "../../envs/aetk.yaml"
    threads: 1  # as train's: torch's CPU threads (profiles/slurm sets more)
    resources:
        **gpu_partition("geodesics"),  # on SLURM (profiles/slurm)
        gpu=gpus("geodesics"),
        device=config["geodesics"]["device"],
        mem_mb=8000,  # as train's
        runtime=60,
    params:
        settings=geodesic_args,  # as train's
        args=with_device(geodesic_args),
    shell:
        "aetk geodesics --model {input.model} --latent {input.latent} {params.args} "
        "--threads {threads} "
        "--out {output} > {log} 2>&1"
