"""Real runs of the Snakemake workflow: a tiny run's outputs, its report and that nothing
reruns, and resuming an interrupted training job. Each test works in a copy of the
workflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aetk import storage

from workdirs import ENV, TINY, job_counts, make_workdir, snakemake


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("pipeline"), TINY)
    snakemake(wd, "--cores", "2", "--configfile", "test.yaml")
    return wd


@pytest.mark.slow
def test_tiny_run_outputs(tiny_run: Path) -> None:
    import aetk

    wd, runs = tiny_run, ["vae-bernoulli", "vae-bernoulli-cond", "rhvae-bernoulli",
                          "rhvae-bernoulli-cond"]
    data = storage.read_zarr(wd / "results/data/mnist5k.zarr")
    assert data["x"].shape == (300, 784) and set(np.unique(data["x"])) == {0.0, 1.0}
    assert int(data["split"].sum()) == 30 and data.attrs["image_shape"] == [28, 28]
    for run in runs:
        model = aetk.load(wd / f"results/models/{run}/model")
        assert model.latent_dim == 2
        history = pd.read_csv(wd / f"results/models/{run}/history.tsv", sep="\t")
        assert history["epoch"].tolist() == [1]
        assert np.isfinite(history[["train_loss", "val_loss"]]).all(axis=None)
        lat = storage.read_zarr(wd / f"results/latent/{run}.zarr")
        assert lat["z_mean"].shape == (300, 2) and lat["example_data"].shape == (5, 784)
        assert lat["generated_model"].shape == (4, 784)
        for name in ("z_mean", "z_std", "reconstruction_error", "elbo", "generated_model"):
            assert np.isfinite(lat[name].values).all(), (run, name)
        val = lat["split"].values == storage.SPLIT_VALIDATION
        assert np.isfinite(lat["log_marginal"].values[val]).all(), run  # validation only
        assert lat.attrs["data_config_hash"] == data.attrs["config_hash"]
        for fig in ("latent", "reconstructions", "samples"):
            assert (wd / f"results/report/{run}/{fig}.png").stat().st_size > 5000
        for sub in ("train", "encode", "report_run"):
            assert (wd / f"results/logs/{sub}/{run}.log").exists()
            bench = pd.read_csv(wd / f"results/benchmarks/{sub}/{run}.tsv", sep="\t")
            assert bench["s"].iloc[0] > 0
    # geodesics only for the RHVAE (pullback is off)
    assert not (wd / "results/geodesics/vae-bernoulli.zarr").exists()
    geo = storage.read_zarr(wd / "results/geodesics/rhvae-bernoulli.zarr")
    assert geo["points"].shape == (3, 8, 2) and geo.attrs["metric"] == "RHVAEMetric"
    assert geo["log_volume"].shape == (12, 12) and np.isfinite(geo["log_volume"]).all()
    assert (geo["start_label"].values != geo["end_label"].values).all()
    assert (wd / "results/report/rhvae-bernoulli/geodesics.png").stat().st_size > 5000
    assert (wd / "results/report/comparison.png").stat().st_size > 5000
    table = pd.read_csv(wd / "results/report/comparison.tsv", sep="\t")
    assert table["run"].tolist() == runs
    assert table["conditions"].tolist() == ["none", "labels", "none", "labels"]
    assert aetk.load(wd / "results/models/vae-bernoulli-cond/model").n_conditions == 10
    cond = storage.read_zarr(wd / "results/latent/vae-bernoulli-cond.zarr")
    assert cond["generated_class"].values.tolist() == [0, 1, 2, 3]
    for _, row in table.iterrows():
        history = pd.read_csv(wd / f"results/models/{row['run']}/history.tsv", sep="\t")
        assert row["final_val_loss"] == pytest.approx(history["val_loss"].iloc[-1], rel=1e-5)
        lat = storage.read_zarr(wd / f"results/latent/{row['run']}.zarr")
        val = lat["split"].values == storage.SPLIT_VALIDATION
        assert row["val_log_marginal"] == pytest.approx(lat["log_marginal"].values[val].mean(),
                                                        rel=1e-5)
    assert table["geodesic_length_ratio"].iloc[:2].isna().all()
    assert (table["geodesic_length_ratio"].iloc[2:] <= 1 + 1e-6).all()


@pytest.mark.slow
def test_report_zip_and_no_rerun(tiny_run: Path) -> None:
    wd = tiny_run
    snakemake(wd, "--configfile", "test.yaml", "--report", "results/report.zip")
    with zipfile.ZipFile(wd / "results/report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
    assert sum(n.endswith(".png") for n in names) == 4 * 4 + 2 + 2  # 4 per run
    assert any(n.endswith("comparison.tsv") for n in names)
    assert "Geodesics (solid lines, one colour per pair)" in html and "rhvae-bernoulli" in html
    # up to date, also after a checkout touches the workflow's code
    (wd / "Snakefile").touch()
    (wd / "workflow/rules/train.smk").touch()
    out = snakemake(wd, "-n", "--cores", "2", "--configfile", "test.yaml").stdout
    assert "Nothing to be done" in out
    # an encode-only setting re-encodes, and redraws the figures, but fits no geodesics:
    # the codes are the model's, and the model is the same
    config = yaml.safe_load((wd / "test.yaml").read_text())
    config["encode"]["n_generated"] = 6
    (wd / "other.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(wd, "-n", "--cores", "2", "--configfile", "other.yaml").stdout
    counts = job_counts(out)
    assert counts["encode"] == 4 and counts["report_geodesics"] == 2
    assert "geodesics" not in counts and "train" not in counts


@pytest.mark.slow
def test_interrupted_training_resumes(tmp_path: Path) -> None:
    import torch

    # 68 steps per epoch, about 0.15 s: the whole run takes long enough (some 20 s) that
    # the interruption lands in it even on a loaded machine (batch 16 once finished first)
    epochs = 150
    config = {**TINY, "grid": {"models": ["vae"], "likelihoods": ["bernoulli"]},
              "train": {"epochs": epochs, "batch_size": 4}}
    wd = make_workdir(tmp_path, config)
    target = "results/models/vae-bernoulli/history.tsv"
    # the target goes first: --configfile takes several values
    args = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile",
            "test.yaml"]
    # a terminal's default SIGINT disposition: one ignored in this process (SIG_IGN, which
    # exec keeps) would make the job deaf to the Ctrl-C below
    proc = subprocess.Popen(args, cwd=wd, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt_dir = wd / "results/checkpoints"
    deadline = time.monotonic() + 240
    while not list(ckpt_dir.glob("*.pt")) and time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake ended before training started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    proc.wait(timeout=60)
    assert not (wd / target).exists(), "training finished before the interruption"
    (ckpt,) = ckpt_dir.glob("vae-bernoulli-*.pt")
    saved = torch.load(ckpt, weights_only=True)["history"]
    done = len(saved)
    assert 1 <= done < epochs

    snakemake(wd, target, "--cores", "1", "--configfile", "test.yaml")
    log = (wd / "results/logs/train/vae-bernoulli.log").read_text()
    assert f"resuming from epoch {done} " in log
    ran = sum(line.startswith("epoch ") for line in log.splitlines())
    assert ran == epochs - done  # only the missing epochs ran
    history = pd.read_csv(wd / target, sep="\t")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    np.testing.assert_allclose(history["train_loss"].iloc[:done],
                               [row["train_loss"] for row in saved])
