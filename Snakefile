"""aetk pipeline: preprocess -> train (per model x likelihood) -> encode -> geodesics -> report.

Run with `snakemake --cores 2`; build the report with `snakemake --report results/report.zip`.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/geodesics.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        expand("results/latent/{run}.zarr", run=RUNS),
        expand("results/geodesics/{run}.zarr", run=GEODESIC_RUNS),
        report_outputs(),


onsuccess:
    print(
        "Done. Figures and tables: results/report/; for a report with captions run "
        "snakemake --report results/report.zip (unzip it, open report/report.html)."
    )
