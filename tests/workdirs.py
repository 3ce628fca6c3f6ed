"""Copies of the workflow to run Snakemake in, for the workflow's test modules."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "envs", "profiles", "examples")
# Snakemake's jobs call the `aetk` console script next to this interpreter.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

TINY = {
    "data": {"source": "mnist5k", "n_samples": 300,
             "transforms": ["scale01", {"name": "binarise", "threshold": 0.5}]},
    "grid": {"models": ["vae", "rhvae"], "likelihoods": ["bernoulli"],
             "conditional": [False, True]},
    "network": {"hidden": [32]},
    "model_options": {"rhvae": {"centroids": 16}},
    "train": {"epochs": 1, "batch_size": 64},
    "encode": {"n_examples": 5, "n_generated": 4},
    "geodesics": {"n_pairs": 3, "n_points": 8, "max_iter": 50, "grid_size": 12},
}


def make_workdir(path: Path, config: dict | None = None) -> Path:
    """A copy of the workflow, with ``config`` written as ``test.yaml``."""
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, path / name)
    if config is not None:
        (path / "test.yaml").write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600
              ) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run."""
    table = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
