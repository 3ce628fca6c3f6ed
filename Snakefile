"""aetk pipeline: preprocess -> train (per model x likelihood) -> encode -> geodesics -> report.

Run with `snakemake --cores 2`; build the report with `snakemake --report results/report.zip`.
"""

import sys
from pathlib import Path

import yaml

from snakemake.utils import min_version

min_version("9.0")

# Under --directory DIR without a config.yaml of its own, the repository's is the base that
# --configfile overlays: Snakemake would otherwise leave the schema's defaults in its place.
BASE_CONFIG = (
    "config.yaml"
    if Path("config.yaml").exists()
    else str(Path(workflow.basedir) / "config.yaml")
)
if BASE_CONFIG != "config.yaml":
    print(
        f"note: no config.yaml here; using {BASE_CONFIG} as the base", file=sys.stderr
    )


configfile: BASE_CONFIG


# (a config.yaml without data.source, or without data, is of the schema's default)
BASE_DATA = (yaml.safe_load(Path(BASE_CONFIG).read_text()) or {}).get("data") or {}
BASE_SOURCE = BASE_DATA.get("source", "mnist5k")


# The base's data section (the repository's: MNIST, scaled and binarised) is of its own
# data: under an overlay (--configfile, --config) that names another source, whichever the
# base, only the overlay's data settings apply.
OVERLAY_DATA = workflow.config_settings.overwrite_config.get("data") or {}
if OVERLAY_DATA.get("source", BASE_SOURCE) != BASE_SOURCE:
    config["data"] = dict(OVERLAY_DATA)
    print(
        "note: the overlay names another data.source, so the base's data settings (for its own "
        "data) are left out; those the overlay does not set take their defaults",
        file=sys.stderr,
    )


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


# --report plans the jobs again: without the run's overlays, of another configuration
onsuccess:
    overlays = "".join(
        f" --configfile {f}" for f in workflow.config_settings.configfiles
    )
    print(
        "Done. Figures and tables: results/report/; for a report with captions run "
        f"snakemake --report results/report.zip{overlays} (unzip it, open "
        "report/report.html)."
    )
