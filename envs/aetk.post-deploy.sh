#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, from the workflow's directory.
set -euo pipefail
python -m pip install --no-deps --editable .
