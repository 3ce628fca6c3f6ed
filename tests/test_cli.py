"""The ``aetk`` command line, step by step, on a small slice of scikit-learn's digits."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import aetk
from aetk import cli, storage
from aetk import data as data_mod
from aetk.cli import device
from aetk.cli.args import _Formatter, parse_spec
from aetk.cli.encode import encode_data, example_indices
from aetk.cli.geodesics import choose_pairs
from aetk.cli.train import _EpochPrinter, capacity_models, kl_weighted_models, run_settings
from aetk.cli.trained import label_conditions, split_or_all
from aetk.geometry import metric_for, scalar_curvature

STEPS = ("preprocess", "train", "encode", "geodesics", "report")


def test_help_of_every_command(capsys: pytest.CaptureFixture) -> None:
    out = subprocess.run(["aetk", "--help"], capture_output=True, text=True, check=True).stdout
    for step in STEPS:
        assert step in out
    for args in ([s] for s in STEPS[:-1]), (["report", w] for w in ("run", "geodesics",
                                                                   "summary")):
        for arg in args:
            with pytest.raises(SystemExit) as exc:
                cli.main([*arg, "--help"])
            assert exc.value.code == 0
            text = capsys.readouterr().out
            assert "input:" in text and "output:" in text, arg


@pytest.mark.parametrize(("command", "option"), [
    ("preprocess", "--key"), ("preprocess", "--labels"), ("preprocess", "--n-samples"),
    ("preprocess", "--transforms"), ("train", "--clip-grad-norm"), ("train", "--penalty"),
    ("train", "--locality"), ("train", "--checkpoint-dir")])
def test_help_says_the_default_of_each_setting(command: str, option: str) -> None:
    """Settings whose default is None or [] had no default in their help (what does
    `aetk preprocess` do without --transforms? nothing, where the pipeline scales to [0, 1])."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    assert "(default: " in _Formatter("aetk")._get_help_string(action), option


def test_sample_help_says_its_units(capsys: pytest.CaptureFixture) -> None:
    """Samples of a model trained on standardised data are standardised too: the help said
    only "the decoder's point prediction", and a user expected the source's units."""
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in the data store's transformed units" in text
    assert "pipeline.inverse(x)" in text


def test_bad_inputs_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["preprocess", "--source", str(tmp_path / "x.npy"),
                     "--out", str(tmp_path / "d.zarr")]) == 1
    assert "aetk preprocess: error: data file" in capsys.readouterr().err
    assert cli.main(["preprocess", "--source", "digits", "--transforms", "normalise",
                     "--out", str(tmp_path / "d.zarr")]) == 1
    assert "unknown transform 'normalise'" in capsys.readouterr().err
    assert not (tmp_path / "d.zarr").exists()


def test_traceback_shows_where_an_error_was_raised(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug report needs the traceback that the one-line message hides: --traceback, or
    AETK_TRACEBACK=1 for the pipeline's jobs, lets the error through."""
    argv = ["preprocess", "--source", "digits", "--transforms", "normalise",
            "--out", str(tmp_path / "d.zarr")]
    with pytest.raises(ValueError, match="unknown transform 'normalise'"):
        cli.main(["--traceback", *argv])
    monkeypatch.setenv("AETK_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown transform 'normalise'"):
        cli.main(argv)


@pytest.mark.parametrize("value", ["1.5", "1", "-0.1", "ten"])
def test_an_impossible_validation_fraction_names_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture, value: str) -> None:
    """--validation-fraction 1.5 said "validation_fraction must be in [0, 1)", naming
    neither the flag nor the value given ("ten": argparse's "invalid float value")."""
    with pytest.raises(SystemExit):
        cli.main(["preprocess", "--source", "digits", "--validation-fraction", value,
                  "--out", str(tmp_path / "d.zarr")])
    assert (f"aetk preprocess: error: argument --validation-fraction: must be a number in "
            f"[0, 1), got '{value}'") in capsys.readouterr().err
    assert not (tmp_path / "d.zarr").exists()


def test_preprocess_header_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A table whose first line is 0,1,2,... (pandas' names for unnamed columns) needs
    --header or --no-header; the flag keys the store only when given."""
    x = np.arange(24.0).reshape(8, 3) + 0.5
    pd.DataFrame(x).to_csv(tmp_path / "t.csv", index=False)
    np.save(tmp_path / "t.npy", x)
    out = str(tmp_path / "d.zarr")
    assert cli.main(["preprocess", "--source", str(tmp_path / "t.csv"), "--out", out]) == 1
    assert "--header or --no-header for aetk preprocess" in capsys.readouterr().err
    for flag, n in (("--header", 8), ("--no-header", 9)):
        assert cli.main(["preprocess", "--source", str(tmp_path / "t.csv"), flag,
                         "--out", out]) == 0
        stored = storage.read_data(out)
        assert len(stored.x) == n
        assert json.loads(stored.attrs["config"])["header"] is (flag == "--header")
    assert cli.main(["preprocess", "--source", str(tmp_path / "t.npy"), "--out", out]) == 0
    assert "header" not in json.loads(storage.read_data(out).attrs["config"])


def test_preprocess_drops_columns_by_name(tmp_path: Path, capsys: pytest.CaptureFixture
                                          ) -> None:
    """A sample ID column of text was refused as non-numeric and could not be left out but by
    editing the file; --drop-columns names it. An unknown name exits with the likely one; the
    flag keys the store only when given (the hashes of earlier stores stay)."""
    x = np.arange(24.0).reshape(8, 3) + 0.5
    table = pd.DataFrame(x, columns=["a", "b", "c"])
    table.insert(0, "sample id", [f"s{i}" for i in range(8)])
    table.to_csv(tmp_path / "t.csv", index=False)
    out = str(tmp_path / "d.zarr")
    source = ["preprocess", "--source", str(tmp_path / "t.csv"), "--out", out]
    assert cli.main(source) == 1
    assert "aetk preprocess --drop-columns" in capsys.readouterr().err
    assert cli.main([*source, "--drop-columns", "Sample ID", "c"]) == 1
    assert ("no column 'Sample ID' to drop; did you mean 'sample id'?"
            in capsys.readouterr().err)
    assert cli.main([*source, "--drop-columns", "sample id", "c"]) == 0
    stored = storage.read_data(out)
    np.testing.assert_array_equal(stored.x, x[:, :2])
    assert stored.attrs["feature_names"] == ["a", "b"]
    assert json.loads(stored.attrs["config"])["drop_columns"] == ["sample id", "c"]
    table.drop(columns="sample id").to_csv(tmp_path / "t.csv", index=False)
    assert cli.main(source) == 0
    assert "drop_columns" not in json.loads(storage.read_data(out).attrs["config"])


def test_preprocess_refuses_its_own_source_store_as_its_output(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`preprocess --source d.zarr --out d.zarr` rewrote the store without its labels and
    transforms (its values still transformed) and drew a new split: refused before anything
    is written, however the path is spelled; another output reads it as before."""
    table = pd.DataFrame(np.arange(24.0).reshape(8, 3), columns=["a", "b", "c"])
    table["group"] = list("xyxyxyxy")
    table.to_csv(tmp_path / "t.csv", index=False)
    store = tmp_path / "d.zarr"
    assert cli.main(["preprocess", "--source", str(tmp_path / "t.csv"), "--labels", "group",
                     "--transforms", "log1p", "--out", str(store)]) == 0
    (tmp_path / "link.zarr").symlink_to(store)
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    for source, out in ((store, store), ("d.zarr", store), (f"{store}/", "d.zarr"),
                        ("link.zarr", "./d.zarr/"), (store, "link.zarr")):
        assert cli.main(["preprocess", "--source", str(source), "--out", str(out)]) == 1
        assert capsys.readouterr().err.startswith(
            f"aetk preprocess: error: {Path(out)} is the input --source {source}: the output "
            "is the source, which writing it would replace; give another output path"), out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    # nor as the source of another store: it would lose its labels and transforms there
    assert cli.main(["preprocess", "--source", "d.zarr", "--out", "copy.zarr"]) == 1
    assert capsys.readouterr().err == (
        f"aetk preprocess: error: d.zarr is an aetk data store (from `aetk preprocess` of "
        f"{tmp_path / 't.csv'}), its values already transformed (log1p) and split: train on "
        "it as it is, or preprocess its source again\n")
    assert not (tmp_path / "copy.zarr").exists()


def test_a_count_likelihood_on_binarised_data_is_warned_of(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """0 and 1 are counts, so a Poisson trained on binarised counts (a base config's
    transforms inherited) ran silently: preprocess names its transforms, train warns."""
    x = np.random.default_rng(0).poisson(3, size=(40, 4)).astype(float)
    pd.DataFrame(x, columns=list("abcd")).to_csv(tmp_path / "c.csv", index=False)
    data = str(tmp_path / "d.zarr")
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.csv"), "--transforms",
                     "scale01", "binarise", "--out", data]) == 0
    assert "labels: none, transforms: scale01, binarise; wrote" in capsys.readouterr().out
    train = ["train", "--data", data, "--hidden", "8", "--epochs", "1", "--no-progress",
             "--device", "cpu", "--out", str(tmp_path / "m"), "--history",
             str(tmp_path / "h.tsv"), "--model", "vae"]
    assert cli.main([*train, "--likelihood", "poisson"]) == 0
    assert capsys.readouterr().err == (
        f"warning: {data} was binarised (transforms scale01, binarise), but poisson is a "
        "likelihood of counts: it models 0/1 values here; leave out binarise for counts, or "
        "train a bernoulli likelihood\n")
    assert cli.main([*train, "--likelihood", "bernoulli"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_train_refuses_data_by_the_stored_row(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """Not counts for a Poisson decoder: the row is the store's and the file's (was the
    row within the training split, 33 for the file's 37), and validation rows count."""
    x = np.random.default_rng(0).poisson(3, size=(50, 5)).astype(float)
    x[37, 2], x[41, 1] = 2.5, -1.0
    np.save(tmp_path / "c.npy", x)
    data = str(tmp_path / "d.zarr")
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.npy"), "--out", data]) == 0
    assert storage.read_data(data).is_validation[41]  # the -1 is a validation value
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "poisson",
                     "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]) == 1
    assert ("aetk train: error: the stored data has 2 values that are not non-negative "
            "integers (a Poisson decoder needs counts); first at row 37, column 2: 2.5"
            ) in capsys.readouterr().err


@pytest.mark.parametrize(("transforms", "likelihood", "advice"), [
    ("standardise", "bernoulli", "; give scale01 as the last transform (aetk preprocess "
     "--transforms; data.transforms in the pipeline's config), or choose a likelihood"),
    ("log1p", "poisson", "; the data store was made with the transforms log1p, but a count "
     "likelihood takes the raw counts: leave out the transforms"),
    (None, "negative_binomial", "; these are not counts: choose a likelihood"),
])
def test_train_says_what_fits_data_outside_the_likelihoods_support(
        tmp_path: Path, capsys: pytest.CaptureFixture, transforms: str | None,
        likelihood: str, advice: str) -> None:
    """Data a likelihood cannot take were refused with the values alone ("707 values
    outside [0, 1]"): the message now says which transform, or which likelihood, fits."""
    x = np.random.default_rng(0).normal(size=(40, 3)) + (3 if transforms == "log1p" else 0)
    np.save(tmp_path / "x.npy", np.round(x) if transforms == "log1p" else x)
    data = str(tmp_path / "d.zarr")
    assert cli.main(["preprocess", "--source", str(tmp_path / "x.npy"), "--out", data,
                     *(["--transforms", transforms] if transforms else [])]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", likelihood,
                     "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]) == 1
    err = capsys.readouterr().err
    assert advice in err and "--likelihood (grid.likelihoods" in err, err
    assert not (tmp_path / "m").exists()


def test_parse_spec() -> None:
    assert parse_spec("scale01") == "scale01"
    assert parse_spec("binarise:threshold=0.3") == {"name": "binarise", "threshold": 0.3}
    assert parse_spec("scale01:per_feature=true") == {"name": "scale01",
                                                          "per_feature": True}
    assert parse_spec('{"name": "select_top_variance", "n_features": 5}') == {
        "name": "select_top_variance", "n_features": 5}
    assert parse_spec('"log1p"') == "log1p"
    assert parse_spec("step:milestones=[20,30],gamma=0.5") == {
        "name": "step", "milestones": [20, 30], "gamma": 0.5}


def test_a_spec_value_that_does_not_parse_names_its_option(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """json's "Expecting value: line 1 column 1 (char 0)" (preprocess) and argparse's
    "invalid parse_spec value" (train) named neither the option nor the value (the helper's
    finding, 2026-12-03)."""
    message = "option {} of {}: {!r} is not a value (a number, true or false, a list"
    with pytest.raises(ValueError, match=re.escape(message.format("threshold", "binarise",
                                                                  "abc"))):
        parse_spec("binarise:threshold=abc")
    with pytest.raises(ValueError, match=r"'\{\"name\": 1' is not valid JSON"):
        parse_spec('{"name": 1')
    assert cli.main(["preprocess", "--source", "digits", "--transforms", "scale01:per_feature=yes",
                     "--out", str(tmp_path / "d.zarr")]) == 1
    assert message.format("per_feature", "scale01", "yes") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
                  "bernoulli", "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv"),
                  "--penalty", "min_variance:sigma_min=abc"])
    assert ("argument --penalty: " + message.format("sigma_min", "min_variance", "abc")
            in capsys.readouterr().err)
    assert not (tmp_path / "d.zarr").exists() and not (tmp_path / "m").exists()


def test_claim_device_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    assert device.claim_device("auto") == "cpu"
    assert device.claim_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device 'cuda:1': CUDA is not available"):
        device.claim_device("cuda:1")


def test_claim_device_without_file_locks_takes_the_first_gpu(monkeypatch) -> None:
    """Windows has no fcntl: every job shares cuda:0 instead of failing to import it."""
    import sys

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "fcntl", None)  # its import fails
    assert device.claim_device("auto") == "cuda:0"


def test_claim_device_locks_free_gpus_in_turn(monkeypatch, tmp_path) -> None:
    """Two GPUs: the first claim locks cuda:0, the next takes cuda:1, then both are busy
    and cuda:0 is shared; a lock file another user made read-only still opens (for
    reading: flock needs no more)."""
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(uuid=f"gpu{i}"))
    monkeypatch.setattr(device.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(device, "_GPU_LOCKS", [])
    (tmp_path / "aetk-gpu-gpu0.lock").touch(mode=0o444)
    # root opens a 0444 file for writing anyway: refuse write access as the file's mode
    # would refuse another user, through both ways of opening it
    real_open, real_os_open = open, os.open

    def no_write(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wa+") and str(path).endswith("gpu0.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    def no_write_os(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR) and str(path).endswith("gpu0.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(device, "open", no_write, raising=False)
    monkeypatch.setattr(os, "open", no_write_os)
    assert [device.claim_device("auto") for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert len(device._GPU_LOCKS) == 2
    for handle in device._GPU_LOCKS:
        handle.close()


@pytest.mark.parametrize("variable", ["SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES",
                                      "ROCR_VISIBLE_DEVICES"])
def test_claim_device_warns_of_a_gpu_that_torch_cannot_use(
        variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A node that gives the job a GPU, with a CPU-only torch: --device auto still trains on
    the CPU, but says why in one line and how to get a torch that can use the GPU."""
    for name in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert device.claim_device("auto") == "cpu"
    assert capsys.readouterr().err == ""  # no GPU given: nothing to say
    for none in ("", "-1", "NoDevFiles"):  # set, but to no device
        monkeypatch.setenv(variable, none)
        assert device.claim_device("auto") == "cpu"
        assert capsys.readouterr().err == "", none
    monkeypatch.setenv(variable, "0,1")
    assert device.claim_device("auto") == "cpu"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert f"{variable}=0,1" in err and "no CUDA" in err and "pip install" in err
    assert device.claim_device("cpu") == "cpu"  # asked for: no warning
    assert capsys.readouterr().err == ""
    # a CUDA build that sees no GPU (a driver problem): said as such
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    assert device.claim_device("auto") == "cpu"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA 12.6" in err and "driver" in err
    # a ROCm build (no CUDA version either) is not called CPU-only
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert device.claim_device("auto") == "cpu"
    err = capsys.readouterr().err
    assert "ROCm 6.2" in err and "rocm-smi" in err and "CPU-only" not in err


def test_pairs_and_examples() -> None:
    labels = np.repeat(np.arange(3), 10)
    is_val = np.zeros(30, dtype=bool)
    is_val[::2] = True
    start, end = choose_pairs(is_val, labels, "categorical", 20, seed=0)
    assert np.all(is_val[start]) and np.all(is_val[end])
    assert np.all(labels[start] != labels[end])
    again = choose_pairs(is_val, labels, "categorical", 20, seed=0)
    np.testing.assert_array_equal(start, again[0])
    start, end = choose_pairs(is_val, None, "none", 20, seed=0)
    assert np.all(start != end) and np.all(is_val[start]) and np.all(is_val[end])
    idx = example_indices(is_val, labels, "categorical", 5)
    assert labels[idx[:3]].tolist() == [0, 1, 2] and np.all(is_val[idx]) and len(idx) == 5


def test_sampled_pairs_never_join_a_sample_to_itself(capsys: pytest.CaptureFixture) -> None:
    """Without labels, each pair's end is another sample than its start: two validation
    samples make one pair, fitted once (not 40 times, either way round), with a warning."""
    is_val = np.zeros(10, dtype=bool)
    is_val[[3, 7]] = True
    start, end = choose_pairs(is_val, None, "none", 40, seed=0)
    assert {start.tolist()[0], end.tolist()[0]} == {3, 7} and len(start) == 1
    assert ("--n-pairs 40 is more than the 1 distinct pairs of the 2 validation samples: "
            "fitting all 1") in capsys.readouterr().err


@pytest.mark.parametrize("labelled", [False, True])
def test_sampled_pairs_are_distinct_either_way_round(labelled: bool,
                                                     capsys: pytest.CaptureFixture) -> None:
    """8 pairs of 6 samples repeated pairs ((5, 3) twice, (1, 0) and (0, 1) at seed 0): the
    same geodesic fitted twice. Now distinct unordered pairs, each equally likely, and all
    of them (with a warning naming both counts) when fewer exist than asked for."""
    labels = np.array([0, 0, 0, 1, 1, 2]) if labelled else None
    kind = "categorical" if labelled else "none"
    n_distinct = 11 if labelled else 15  # 3*2 + 3*1 + 2*1 pairs across classes; 6*5/2
    start, end = choose_pairs(np.ones(6, dtype=bool), labels, kind, 8, seed=0)
    pairs = {frozenset(p) for p in zip(start.tolist(), end.tolist(), strict=True)}
    assert len(pairs) == 8 and np.all(start != end)
    if labelled:
        assert np.all(labels[start] != labels[end])
    assert capsys.readouterr().err == ""
    start, end = choose_pairs(np.ones(6, dtype=bool), labels, kind, 40, seed=0)
    assert len({frozenset(p) for p in zip(start.tolist(), end.tolist(), strict=True)}) \
        == len(start) == n_distinct
    assert f"--n-pairs 40 is more than the {n_distinct} distinct pairs" in capsys.readouterr().err
    # uniform over the distinct pairs: one pair per seed, 2,200 seeds, 200 expected each
    counts: dict[frozenset, int] = {}
    for s in range(200 * n_distinct):
        i, j = (int(a[0]) for a in choose_pairs(np.ones(6, dtype=bool), labels, kind, 1, s))
        counts[frozenset((i, j))] = counts.get(frozenset((i, j)), 0) + 1
    assert len(counts) == n_distinct and all(150 < c < 250 for c in counts.values())


def test_sampled_pairs_of_a_large_pool_need_no_list_of_all_pairs() -> None:
    """100,000 validation samples, nearly all of one class: 1,000 distinct pairs across
    classes without enumerating the 5e9 pairs."""
    labels = np.zeros(100_000, dtype=np.int64)
    labels[-3:] = [1, 2, 2]
    start, end = choose_pairs(np.ones(100_000, dtype=bool), labels, "categorical", 1000,
                                  seed=1)
    assert len({frozenset(p) for p in zip(start.tolist(), end.tolist(), strict=True)}) == 1000
    assert np.all(labels[start] != labels[end])


def test_label_conditions_have_a_column_for_every_named_class() -> None:
    """One-hot conditions are as wide as the store's named classes, also when its samples
    lack the last class (a subsample): a model trained on them fits data with all."""
    from aetk.data import TransformPipeline

    stored = storage.StoredData(
        x=np.zeros((3, 2)), is_validation=np.zeros(3, dtype=bool), labels=np.array([1, 0, 1]),
        label_kind="categorical", label_names=["a", "b", "c"], image_shape=None,
        pipeline=TransformPipeline([]), attrs={})
    np.testing.assert_array_equal(label_conditions(stored, "d.zarr"),
                                  [[0, 1, 0], [1, 0, 0], [0, 1, 0]])


def test_the_stored_elbo_averages_its_log_likelihood_over_draws() -> None:
    """The encode store's log p(x|z) term of the ELBO is E_q log p(x|z) from ELBO_DRAWS
    draws: against its closed form for a linear Gaussian decoder, its errors are those of a
    16-draw mean (each draw's spread from 4,000 draws); one draw's, 16x the mean square,
    put a 30-sample validation set's mean ELBO 0.2 above its log p(x)."""
    from aetk.data import TransformPipeline
    from aetk.distributions import log_prob

    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=5, latent_dim=2, hidden=())
    x = torch.randn(200, 5)
    stored = storage.StoredData(
        x=x.numpy(), is_validation=np.ones(200, dtype=bool), labels=None, label_kind="none",
        label_names=None, image_shape=None, pipeline=TransformPipeline([]), attrs={})
    got = encode_data(model, stored, batch_size=64, n_examples=1, n_generated=0,
                          seed=1)["log_likelihood"]
    with torch.no_grad():
        q = model.encode(x)
        mu, s = q.mean, q.stddev
        mean_at = lambda z: model.decode(z).mean  # noqa: E731 (linear in z)
        columns = mean_at(torch.eye(2)) - mean_at(torch.zeros(1, 2))  # (2, 5)
        spread = (s.square() @ columns.square().sum(1)).double()
        exact = (-0.5 * ((x - mean_at(mu)).square().sum(1).double() + spread)
                 - 2.5 * np.log(2 * np.pi))
        draws = torch.stack([log_prob(model.decode(q.sample()), x) for _ in range(4000)])
    # each error in units of a 16-draw mean's standard deviation: mean square 1 (+-0.1)
    units = (torch.from_numpy(got).double() - exact) / (draws.double().std(0) / 4)
    assert 0.6 < float(units.square().mean()) < 1.5, float(units.square().mean())


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run preprocess -> train -> encode -> geodesics -> report once, in-process, on the CPU
    (--device cpu: the tests recompute its stores' numbers from the saved models on the
    CPU, and check that it trained there)."""
    d = tmp_path_factory.mktemp("cli")
    cli.main(["preprocess", "--source", "digits", "--n-samples", "240", "--transforms",
              "scale01", "--validation-fraction", "0.25", "--seed", "1",
              "--out", str(d / "data.zarr")])
    common = ["--data", str(d / "data.zarr"), "--model", "vae", "--likelihood", "bernoulli",
              "--hidden", "32", "--epochs", "3", "--batch-size", "32", "--seed", "0",
              "--checkpoint-dir", str(d / "ckpt"), "--no-progress", "--device", "cpu"]
    cli.main(["train", *common, "--out", str(d / "model"), "--history", str(d / "h.tsv")])
    cli.main(["encode", "--data", str(d / "data.zarr"), "--model", str(d / "model"),
              "--n-examples", "6", "--n-generated", "4", "--n-scored", "50", "--device",
              "cpu", "--out", str(d / "vae-bernoulli.zarr")])
    cli.main(["geodesics", "--model", str(d / "model"), "--latent",
              str(d / "vae-bernoulli.zarr"), "--n-pairs", "3", "--n-points", "10", "--max-iter",
              "100", "--grid-size", "9", "--device", "cpu", "--out", str(d / "geo.zarr")])
    # an RHVAE for the Frechet mean and the geodesic spray (its own smooth metric)
    rhvae = [a if a != "vae" else "rhvae" for a in common] + ["--options", '{"centroids": 16}']
    cli.main(["train", *rhvae, "--out", str(d / "rhvae"), "--history", str(d / "hr.tsv")])
    cli.main(["encode", "--data", str(d / "data.zarr"), "--model", str(d / "rhvae"),
              "--n-importance", "3", "--n-scored", "20", "--device", "cpu",
              "--out", str(d / "latent_rhvae.zarr")])
    cli.main(["geodesics", "--model", str(d / "rhvae"), "--latent",
              str(d / "latent_rhvae.zarr"), "--n-pairs", "2", "--n-points", "10", "--grid-size",
              "9", "--spray", "6", "--spray-points", "20", "--device", "cpu",
              "--out", str(d / "geo_rhvae.zarr")])
    cli.main(["report", "run", "--data", str(d / "data.zarr"), "--latent",
              str(d / "vae-bernoulli.zarr"), "--out-dir", str(d / "fig")])
    cli.main(["report", "geodesics", "--latent", str(d / "vae-bernoulli.zarr"), "--geodesics",
              str(d / "geo.zarr"), "--out", str(d / "fig" / "geodesics.png")])
    cli.main(["report", "summary", "--runs", "vae-bernoulli", "--histories", str(d / "h.tsv"),
              "--latents", str(d / "vae-bernoulli.zarr"), "--geodesics", str(d / "geo.zarr"),
              "--data", str(d / "data.zarr"),
              "--curves", str(d / "fig" / "curves.png"), "--table", str(d / "table.tsv"),
              "--figure", str(d / "fig" / "comparison.png")])
    return d


def test_preprocess_output(steps: Path) -> None:
    ds = storage.read_zarr(steps / "data.zarr")
    assert ds["x"].shape == (240, 64) and float(ds["x"].max()) == 1.0
    assert int(ds["split"].sum()) == 60
    cfg = json.loads(ds.attrs["config"])
    assert cfg["source"] == "digits" and cfg["transforms"] == ["scale01"]
    assert len(ds.attrs["config_hash"]) == 16


def test_train_output_loads_and_learned(steps: Path) -> None:
    import aetk

    history = pd.read_csv(steps / "h.tsv", sep="\t")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    model = aetk.load(steps / "model")
    assert model.latent_dim == 2 and model.build_spec["hidden"] == [32]
    info = json.loads((steps / "model" / "aetk_run.json").read_text())
    digest = storage.read_data(steps / "data.zarr").digest()
    assert Path(info["checkpoint"]).name.endswith(f"{info['run_hash']}-{digest}.pt")
    assert info["settings"]["epochs"] == 3 and info["device"] == "cpu"
    # the history is in the model folder too: aetk.load_history on pipeline outputs
    pd.testing.assert_frame_equal(aetk.load_history(steps / "model"), history)


def test_train_again_resumes_from_the_checkpoint(steps: Path, capsys: pytest.CaptureFixture
                                                 ) -> None:
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "3", "--batch-size", "32", "--seed", "0",
            "--checkpoint-dir", str(steps / "ckpt"), "--no-progress",
            "--out", str(steps / "model2"), "--history", str(steps / "h2.tsv")]
    cli.main(args)
    assert "resuming from epoch 3" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(steps / "h2.tsv", sep="\t"),
                                  pd.read_csv(steps / "h.tsv", sep="\t"))
    # another setting is another checkpoint: training starts over
    cli.main([a if a != "0" else "1" for a in args])
    assert "resuming" not in capsys.readouterr().out
    assert len(list((steps / "ckpt").glob("vae-bernoulli-*.pt"))) == 2
    # and so are other values in a store of the same settings (an edited data file)
    ds = storage.read_zarr(steps / "data.zarr")
    ds["x"] = 1 - ds["x"]
    storage.write_zarr(ds, steps / "flipped.zarr")
    cli.main([a if a != str(steps / "data.zarr") else str(steps / "flipped.zarr")
              for a in args])
    assert "resuming" not in capsys.readouterr().out
    assert len(list((steps / "ckpt").glob("vae-bernoulli-*.pt"))) == 3


def test_train_for_more_epochs_goes_on_from_the_shorter_runs_checkpoint(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With constant learning rate and beta, a run asked for more epochs goes on from a
    copy of the shorter run's checkpoint, as an uninterrupted run would have (the
    pipeline's `train.epochs` raised retrained from epoch 1), and the shorter one's is
    kept; a cosine schedule, which spans the run, starts over."""
    def train(epochs: int, name: str, *extra: str) -> pd.DataFrame:
        assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "vae",
                         "--likelihood", "bernoulli", "--hidden", "16", "--batch-size", "64",
                         "--epochs", str(epochs), "--no-progress", *extra,
                         "--out", str(tmp_path / name),
                         "--history", str(tmp_path / f"{name}.tsv")]) == 0
        return pd.read_csv(tmp_path / f"{name}.tsv", sep="\t")

    ckpt = ("--checkpoint-dir", str(tmp_path / "ckpt"))
    train(2, "short", *ckpt)
    assert "resuming" not in capsys.readouterr().out
    longer = train(4, "longer", *ckpt)
    out = capsys.readouterr().out
    assert "going on from the 2-epoch run's checkpoint" in out and "resuming from epoch 2" in out
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 2
    pd.testing.assert_frame_equal(longer.drop(columns="seconds"),
                                  train(4, "whole").drop(columns="seconds"))
    cosine = ("--lr-schedule", "cosine", *ckpt)
    train(2, "cos_short", *cosine)
    capsys.readouterr()
    train(4, "cos_longer", *cosine)
    assert "resuming" not in capsys.readouterr().out


def test_sample_draws_from_either_sampler(steps: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    base = ["sample", "--model", str(steps / "model"), "--n", "30"]
    assert cli.main([*base, "--out", str(tmp_path / "prior.zarr")]) == 0
    assert cli.main([*base, "--sampler", "geometric", "--data", str(steps / "data.zarr"),
                     "--n-centroids", "50", "--out", str(tmp_path / "geo.zarr")]) == 0
    prior, geo = (storage.read_zarr(tmp_path / f"{n}.zarr") for n in ("prior", "geo"))
    assert prior["x"].shape == geo["x"].shape == (30, 64)
    assert prior.attrs["sampler"] == "model" and geo.attrs["sampler"] == "geometric"
    for ds in (prior, geo):
        assert ((ds["x"].values >= 0) & (ds["x"].values <= 1)).all()
    assert not np.allclose(prior["x"].values, geo["x"].values)
    # (that geometric draws keep to the codes is tested in test_encoder_metric.py)
    assert cli.main([*base, "--sampler", "geometric", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--sampler geometric needs --data" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_an_autoencoder_generates_from_a_mixture_of_its_codes(steps: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture
                                                               ) -> None:
    """An AE has no prior: aetk encode generates (and scores) decoded draws of a mixture of
    its training codes, saying so, and aetk sample --sampler mixture draws the same way;
    its own sampler is refused with a pointer to the mixture."""
    ae = tmp_path / "ae"
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "ae",
                     "--likelihood", "bernoulli", "--hidden", "32", "--epochs", "3",
                     "--no-progress", "--out", str(ae), "--history", str(tmp_path / "h.tsv")]) == 0
    assert cli.main(["encode", "--data", str(steps / "data.zarr"), "--model", str(ae),
                     "--n-generated", "4", "--n-scored", "30", "--out",
                     str(tmp_path / "latent.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "latent.zarr")
    assert lat["generated_model"].shape == (4, 64) and lat["scored_model"].shape == (30, 64)
    assert lat["generated_model"].attrs["sampler"] == lat["scored_model"].attrs["sampler"] == \
        "code_mixture"
    assert "Gaussian mixture fitted to the training codes" in \
        lat["generated_model"].attrs["description"]
    vae = storage.read_zarr(steps / "vae-bernoulli.zarr")
    assert vae["generated_model"].attrs["sampler"] == "model"
    base = ["sample", "--model", str(ae), "--n", "12"]
    assert cli.main([*base, "--sampler", "mixture", "--data", str(steps / "data.zarr"),
                     "--out", str(tmp_path / "mix.zarr")]) == 0
    mix = storage.read_zarr(tmp_path / "mix.zarr")
    assert mix.attrs["sampler"] == "mixture" and mix["x"].shape == (12, 64)
    assert ((mix["x"].values >= 0) & (mix["x"].values <= 1)).all()
    assert cli.main([*base, "--out", str(tmp_path / "x.zarr")]) == 1
    assert "AE has no sampler; try --sampler mixture" in capsys.readouterr().err
    assert cli.main([*base, "--sampler", "mixture", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--sampler mixture needs --data" in capsys.readouterr().err


def test_patience_stops_training_and_keys_its_own_checkpoint(steps: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture
                                                             ) -> None:
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "300", "--batch-size", "16", "--lr",
            "0.02", "--patience", "2", "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--no-progress", "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    assert cli.main(args) == 0
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    best = int(history["val_loss"].idxmin()) + 1
    assert len(history) == best + 2 < 300
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["patience"] == 2
    # again: the stopped checkpoint is final, the same history comes back
    assert cli.main([*args[:-2], "--history", str(tmp_path / "h2.tsv")]) == 0
    assert f"resuming from epoch {len(history)}" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h2.tsv", sep="\t"), history)
    # without validation data there is nothing to watch
    cli.main(["preprocess", "--source", "digits", "--n-samples", "100", "--transforms",
              "scale01", "--validation-fraction", "0", "--out", str(tmp_path / "all.zarr")])
    assert cli.main([*args[:2], str(tmp_path / "all.zarr"), *args[3:]]) == 1
    assert "--patience needs validation data" in capsys.readouterr().err
    # a fraction that rounds to no sample: said at preprocess, and --patience says why
    # (it asked for "--validation-fraction > 0", which it was; the helper's finding)
    cli.main(["preprocess", "--source", "digits", "--n-samples", "100", "--transforms",
              "scale01", "--validation-fraction", "0.001", "--out", str(tmp_path / "few.zarr")])
    assert ("warning: validation_fraction=0.001 of 100 samples rounds to no validation sample"
            in capsys.readouterr().err)
    assert cli.main([*args[:2], str(tmp_path / "few.zarr"), *args[3:]]) == 1
    assert ("a --validation-fraction that leaves some: its share of the samples rounds to 0 "
            "below half a sample" in capsys.readouterr().err)


def test_lr_schedule_reaches_fit_and_keys_its_own_run(steps: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "4", "--batch-size", "32",
            "--lr-schedule", "step:milestones=[1,3],gamma=0.5", "--no-progress",
            "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    assert cli.main(args) == 0
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert history["lr"].tolist() == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["lr_schedule"] == {"name": "step", "milestones": [1, 3],
                                               "gamma": 0.5}
    plain = json.loads((steps / "model" / "aetk_run.json").read_text())
    assert "lr_schedule" not in plain["settings"]  # a constant rate keeps the old run hashes
    at = args.index("--lr-schedule") + 1
    assert cli.main([*args[:at], "cosine:warmup=4", *args[at + 1:]]) == 1
    assert "integer 0 <= warmup < epochs (4)" in capsys.readouterr().err


def test_penalties_reach_fit_and_key_their_own_run(steps: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """--penalty: each penalty's history columns, the settings (every option, so equal
    penalties hash alike) in aetk_run.json and their own run hash; bad names and options
    stop before any training, a penalty of q(z|x) on an AE at its first step."""
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "3", "--batch-size", "32", "--seed", "0",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress",
            "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    assert cli.main([*args, "--penalty", "min_variance:sigma_min=2",
                     '{"name": "latent_l2", "weight": 0.1}']) == 0
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    for column in ("train_penalty_min_variance", "val_penalty_min_variance",
                   "train_penalty_latent_l2", "val_penalty_latent_l2"):
        assert (history[column] > 0).all(), column
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    plain = json.loads((steps / "model" / "aetk_run.json").read_text())
    assert info["settings"] == {**plain["settings"], "penalties": [
        "MinVariance(sigma_min=2.0, weight=1.0)", "LatentL2(weight=0.1)"]}
    assert info["run_hash"] != plain["run_hash"]
    for spec in ("entropy", '{"name": "entropy"}', "entropy:weight=1"):
        assert run_settings(cli.build_parser().parse_args([*args, "--penalty", spec]),
                                "")["penalties"] == ["Entropy(weight=1.0)"]
    capsys.readouterr()
    bad = [*args[:-4], "--out", str(tmp_path / "x"), "--history", str(tmp_path / "x.tsv")]
    for spec, message in (("l1", "unknown penalty 'l1'; choose one of latent_l2"),
                          ("entropy:sigma=1", "penalty 'entropy' takes the options ['weight']"),
                          ("min_variance:sigma_min=0", "sigma_min must be positive")):
        assert cli.main([*bad, "--penalty", spec]) == 1
        assert message in capsys.readouterr().err
    ae = [*bad[:bad.index("vae")], "ae", *bad[bad.index("vae") + 1:]]
    assert cli.main([*ae, "--penalty", "entropy"]) == 1
    assert "the entropy penalty needs an encoder that returns a distribution" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tsv").exists()


def test_clip_grad_norm_reaches_fit_and_keys_its_own_run(steps: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """--clip-grad-norm: the history's grad_norm column, printed per epoch, the setting in
    aetk_run.json and its own run hash; without it neither (the old hashes stay)."""
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "3", "--batch-size", "32", "--seed", "0",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress",
            "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    assert cli.main([*args, "--clip-grad-norm", "0.5"]) == 0
    assert "grad_norm=" in capsys.readouterr().out
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert (history["grad_norm"] > 0.5).all()  # the bound bit in every epoch
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    plain = json.loads((steps / "model" / "aetk_run.json").read_text())
    assert info["settings"]["clip_grad_norm"] == 0.5
    assert "clip_grad_norm" not in plain["settings"]
    assert "grad_norm" not in pd.read_csv(steps / "h.tsv", sep="\t").columns
    assert info["settings"] == {**plain["settings"], "clip_grad_norm": 0.5}
    assert info["run_hash"] != plain["run_hash"]
    for bad in ("0", "-1", "nan", "inf"):
        assert cli.main([*args[:-4], "--out", str(tmp_path / "x"), "--history",
                         str(tmp_path / "x.tsv"), "--clip-grad-norm", bad]) == 1
        assert "--clip-grad-norm must be a positive finite number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tsv").exists()


def test_log_inputs_flag_reaches_the_encoder_and_keys_its_own_run(steps: Path,
                                                                  tmp_path: Path) -> None:
    """--log-inputs / --no-log-inputs override the default (log counts for count
    likelihoods) and enter the run settings; without the flag nothing changes."""
    from aetk.nets import LogInputs

    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--epochs", "1", "--batch-size", "64",
            "--no-progress", "--log-inputs", "--out", str(tmp_path / "m"), "--history",
            str(tmp_path / "h.tsv")]
    assert cli.main(args) == 0
    model = aetk.load(tmp_path / "m")
    assert any(isinstance(m, LogInputs) for m in model.encoder.modules())
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["log_inputs"] is True
    assert "log_inputs" not in json.loads((steps / "model" / "aetk_run.json").read_text())[
        "settings"]


def test_a_categorical_run_reads_one_hot_rows_and_keys_its_own_run(tmp_path: Path) -> None:
    """The categorical likelihood from the command line: its encoder reads one-hot rows
    of the classes (it read the class indices as numbers), which the run settings record,
    so that a run of the encoder of indices is not resumed into it; encode takes it."""
    data, model = str(tmp_path / "d.zarr"), tmp_path / "m"
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "96",
                     "--validation-fraction", "0.25", "--seed", "1", "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "categorical",
                     "--options", '{"n_classes": 17}', "--hidden", "16", "--epochs", "1",
                     "--no-progress", "--out", str(model), "--history",
                     str(tmp_path / "h.tsv")]) == 0
    loaded = aetk.load(model)
    assert loaded.input_shape == (64, 17) and loaded.build_spec["one_hot_inputs"] is True
    info = json.loads((model / "aetk_run.json").read_text())
    assert info["settings"]["one_hot_inputs"] is True
    assert cli.main(["encode", "--data", data, "--model", str(model), "--n-examples", "2",
                     "--n-generated", "2", "--out", str(tmp_path / "l.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "l.zarr")
    val = lat["split"].values == storage.SPLIT_VALIDATION
    assert np.isfinite(lat["log_marginal"].values[val]).all()


def test_beta_schedule_anneals_the_kl_weight_and_keys_its_own_run(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--beta-schedule cyclical: the history's beta column follows CyclicalBeta by hand,
    the validation loss weighs the KL by it, and the schedule keys its own run, while a
    constant beta (the default, or said) keeps the run hash of the settings before it."""
    torch.set_num_threads(1)
    base = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "32", "--epochs", "4", "--batch-size", "32",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress"]
    cyclical = [*base, "--beta-schedule", "cyclical:n_cycles=2,frac=0.5"]
    assert cli.main([*cyclical, "--out", str(tmp_path / "m"),
                     "--history", str(tmp_path / "h.tsv")]) == 0
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    # period 4 / 2 = 2 epochs: tau = ((epoch - 1) % 2) / 2 = 0, 0.5, 0, 0 and 0.5 <= frac
    # reaches beta_max = 1, so beta = 0 + (1 - 0) * tau / 0.5
    assert history["beta"].tolist() == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_allclose(history["val_loss"],
                               history["val_reconstruction"] + history["beta"]
                               * history["val_kl"], rtol=1e-5)
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["beta_schedule"] == {"name": "cyclical", "n_cycles": 2,
                                                 "frac": 0.5}
    assert Path(info["checkpoint"]).name.startswith(f"vae-bernoulli-{info['run_hash']}-")
    # the same command again resumes its own finished checkpoint
    assert cli.main([*cyclical, "--out", str(tmp_path / "m2"),
                     "--history", str(tmp_path / "h2.tsv")]) == 0
    assert "resuming from epoch 4" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h2.tsv", sep="\t"), history)
    # constant: no beta column, no settings key, the hash of the settings as they were
    # before --beta-schedule (computed here by hand), and a checkpoint of its own
    assert cli.main([*base, "--beta-schedule", "constant", "--out", str(tmp_path / "c"),
                     "--history", str(tmp_path / "c.tsv")]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert "beta" not in pd.read_csv(tmp_path / "c.tsv", sep="\t")
    constant = json.loads((tmp_path / "c" / "aetk_run.json").read_text())
    assert "beta_schedule" not in constant["settings"]
    assert constant["run_hash"] != info["run_hash"]
    data_hash = storage.read_zarr(steps / "data.zarr").attrs["config_hash"]
    before = {"model": "vae", "likelihood": "bernoulli", "latent_dim": 2, "hidden": [32],
              "activation": "relu", "options": {}, "epochs": 4, "batch_size": 32,
              "lr": 1e-3, "seed": 0, "data_config_hash": data_hash}
    assert constant["run_hash"] == data_mod.config_hash(before)
    plain = json.loads((steps / "model" / "aetk_run.json").read_text())  # no option given
    assert plain["run_hash"] == data_mod.config_hash({**before, "epochs": 3})
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 2


@pytest.mark.parametrize(("schedule", "model", "message"), [
    ("cyclical", "ae", "--beta-schedule cyclical anneals the KL term's weight beta, which the "
     "model 'ae' does not have; models with one: vae, beta_vae, infovae, infomaxvae, "
     "factorvae, dipvae, vampprior"),
    ("cyclical", "rhvae", "which the model 'rhvae' does not have"),
    ("linear", "vae", "unknown --beta-schedule 'linear'; choose constant, cyclical or capacity"),
    ("capacity:c_max=5", "infovae", "--beta-schedule capacity holds the KL of a VAE's own "
     "loss near a rising capacity, which the model 'infovae' does not charge; models that "
     "do: vae, beta_vae"),
    ("capacity:epochs=2", "vae", "bad options {} for the capacity schedule"),
    ("capacity:c_max=-1", "vae", "c_max must be a finite number >= 0"),
    ("cyclical:n_cycle=2", "vae", "bad options {'n_cycle': 2} for the cyclical beta schedule"),
    ("cyclical:n_cycles=1.5", "vae", "needs an integer n_cycles, got 1.5"),
    ("cyclical:n_cycles=5", "vae", "need 1 <= n_cycles <= epochs"),  # CyclicalBeta's own
    ('{"name": "cyclical", "frac": 0}', "vae", "0 < frac <= 1"),
    ("constant:beta_max=2", "vae", "--beta-schedule constant takes no options"),
])
def test_bad_beta_schedules_exit_before_writing_anything(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture, schedule: str, model: str,
        message: str) -> None:
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", model,
                     "--likelihood", "bernoulli", "--hidden", "16", "--epochs", "4",
                     "--beta-schedule", schedule, "--checkpoint-dir", str(tmp_path / "ckpt"),
                     "--no-progress", "--out", str(tmp_path / "m"),
                     "--history", str(tmp_path / "h.tsv")]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("aetk train: error: ") and message in captured.err
    assert "training" not in captured.out  # refused before training started
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("watcher", [["--patience", "3"], ["--lr-schedule", "plateau"]])
def test_cyclical_beta_refuses_what_watches_the_validation_loss(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture, watcher: list[str]) -> None:
    """The validation loss weighs the KL by each epoch's beta: early stopping or a plateau
    schedule would keep the epochs of smallest beta (a 40-epoch run stopped at epoch 14 on
    one with beta 0)."""
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "vae",
                     "--likelihood", "bernoulli", "--hidden", "16", "--epochs", "4",
                     "--beta-schedule", "cyclical:n_cycles=2", *watcher, "--no-progress",
                     "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]) == 1
    assert "cannot go with --patience or a plateau" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "vae",
                     "--likelihood", "bernoulli", "--hidden", "16", "--epochs", "4",
                     "--beta-schedule", "capacity:c_max=5", *watcher, "--no-progress",
                     "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]) == 1
    assert "capacity cannot go with --patience or a plateau" in capsys.readouterr().err


def test_capacity_schedule_reaches_the_vae_and_keys_its_own_run(steps: Path, tmp_path: Path
                                                                ) -> None:
    """--beta-schedule capacity: the history's capacity column rises to c_max over its
    epochs (default --epochs), the KL term charged is |KL - C|, and the setting keys the
    run; the models it takes are exactly those whose loss charges a capacity."""
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "beta_vae",
            "--likelihood", "bernoulli", "--hidden", "16", "--epochs", "4", "--no-progress",
            "--beta-schedule", "capacity:c_max=2", "--out", str(tmp_path / "m"),
            "--history", str(tmp_path / "h.tsv")]
    assert cli.main(args) == 0
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert history["capacity"].tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(history["val_kl_charged"],
                               (history["val_kl"] - history["capacity"]).abs(), rtol=1e-5)
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["beta_schedule"] == {"name": "capacity", "c_max": 2}
    assert capacity_models() == ["vae", "beta_vae"]


def test_kl_weighted_models_are_those_cyclical_beta_anneals(capsys: pytest.CaptureFixture
                                                            ) -> None:
    """The models --beta-schedule accepts (and its help lists) are exactly those whose
    built model aetk.CyclicalBeta takes."""
    assert kl_weighted_models() == ["vae", "beta_vae", "infovae", "infomaxvae",
                                        "factorvae", "dipvae", "vampprior", "lvae"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert ", ".join(kl_weighted_models()) in " ".join(capsys.readouterr().out.split())
    from aetk import build

    annealing = aetk.CyclicalBeta(8, n_cycles=2)  # epoch 2: beta = 0.5, no model's default
    for name in build.MODELS:
        model = aetk.build_model(name, "bernoulli", in_features=4, hidden=[8],
                                 **({"centroids": 4} if name == "rhvae" else {}))
        if name in kl_weighted_models():
            annealing.on_epoch_start(model, 2)
            assert model.beta == annealing.beta(2), name
        else:
            with pytest.raises(ValueError, match="CyclicalBeta anneals the KL term's weight"):
                annealing.on_epoch_start(model, 2)


def test_conditional_model_from_train_to_encode_and_sample(steps: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture
                                                           ) -> None:
    """`--conditions labels`: one-hot digit classes reach the model, the latent store says
    so and holds the class of each generated sample, and `aetk sample --condition` draws
    one class."""
    import aetk

    data = str(steps / "data.zarr")
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "bernoulli",
                     "--hidden", "32", "--epochs", "2", "--conditions", "labels",
                     "--no-progress", "--out", str(tmp_path / "m"),
                     "--history", str(tmp_path / "h.tsv")]) == 0
    model = aetk.load(tmp_path / "m")
    assert model.n_conditions == 10
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["conditions"] == "labels"
    assert info["condition_names"] == [str(i) for i in range(10)]
    assert cli.main(["encode", "--data", data, "--model", str(tmp_path / "m"), "--n-generated",
                     "12", "--n-importance", "5", "--device", "cpu",  # as the codes' check below
                     "--out", str(tmp_path / "l.zarr")]) == 0
    latent = storage.read_zarr(tmp_path / "l.zarr")
    assert latent.attrs["conditions"] == "labels"
    assert latent["generated_class"].values.tolist() == [*range(10), 0, 1]
    assert "given the first class" in latent["traversal"].attrs["description"]
    # counterfactuals: each example's code as every class; as its own, its reconstruction
    moved = latent["example_transfer"].values
    own = latent["label"].values[latent["example_index"].values]
    assert moved.shape == (len(own), 10, 64)
    np.testing.assert_allclose(moved[np.arange(len(own)), own],
                               latent["example_reconstruction"].values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved[:, 0], moved[:, 1], atol=1e-3)
    val = latent["split"].values == storage.SPLIT_VALIDATION
    assert np.isfinite(latent["log_marginal"].values[val]).all()
    # the stored codes are those of q(z|x, c) with each sample's own class
    stored = storage.read_data(data)
    x = torch.from_numpy(stored.x[:5])
    with model.given(torch.eye(10)[torch.from_numpy(stored.labels[:5])]):
        np.testing.assert_allclose(latent["z_mean"].values[:5], model.encode(x).mean.detach(),
                                   rtol=1e-5)
    base = ["sample", "--model", str(tmp_path / "m"), "--n", "6"]
    assert cli.main([*base, "--condition", "3", "--out", str(tmp_path / "s.zarr")]) == 0
    assert storage.read_zarr(tmp_path / "s.zarr")["class"].values.tolist() == [3] * 6
    assert cli.main([*base, "--sampler", "geometric", "--data", data,
                     "--out", str(tmp_path / "g.zarr")]) == 0
    assert storage.read_zarr(tmp_path / "g.zarr")["class"].values.tolist() == [0, 1, 2, 3, 4, 5]
    assert cli.main(["geodesics", "--model", str(tmp_path / "m"), "--latent",
                     str(tmp_path / "l.zarr"), "--out", str(tmp_path / "geo.zarr")]) == 1
    assert "a conditional decoder's pull-back metric depends on the class" in \
        capsys.readouterr().err
    assert cli.main([*base, "--condition", "eleven", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--condition 'eleven' is not a class of this model; classes: 0, 1" in \
        capsys.readouterr().err
    assert cli.main(["sample", "--model", str(steps / "model"), "--n", "6", "--condition", "3",
                     "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--condition is for conditional models" in capsys.readouterr().err
    cli.main(["preprocess", "--source", "swissroll", "--n-samples", "100",
              "--out", str(tmp_path / "roll.zarr")])
    assert cli.main(["train", "--data", str(tmp_path / "roll.zarr"), "--model", "vae",
                     "--likelihood", "gaussian", "--conditions", "labels", "--epochs", "1",
                     "--out", str(tmp_path / "r"), "--history", str(tmp_path / "r.tsv")]) == 1
    assert "conditions from labels (a conditional model) need categorical labels, but" in \
        capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "r").exists()


def test_bad_training_settings_exit_with_a_message(steps: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--data", str(steps / "data.zarr"), "--likelihood", "bernoulli",
            "--hidden", "16", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "m"),
            "--history", str(tmp_path / "h.tsv")]
    assert cli.main([*base, "--model", "vae", "--options", "{beta: 4}"]) == 1
    assert "--options is not valid JSON" in capsys.readouterr().err
    assert cli.main([*base, "--model", "vae", "--options", "[4]"]) == 1
    assert "--options must be a JSON object" in capsys.readouterr().err
    # a diverging flow: the error and its advice, no traceback, nothing written
    assert cli.main([*base, "--model", "hvae", "--options", '{"step_size": 1e4}']) == 1
    err = capsys.readouterr().err
    assert err.startswith("aetk train: error: the Hamiltonian flow diverged")
    assert "smaller step_size" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "h.tsv").exists()


def test_training_on_locality_batches(steps: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    """--locality trains on neighbourhood batches: its own run hash and settings; a K
    beyond the training rows exits with the sampler's message, writing nothing."""
    base = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--epochs", "1", "--no-progress"]
    assert cli.main([*base, "--locality", "4", "3", "8", "--out", str(tmp_path / "m"),
                     "--history", str(tmp_path / "h.tsv")]) == 0
    info = json.loads((tmp_path / "m" / "aetk_run.json").read_text())
    assert info["settings"]["locality"] == [4, 3, 8]
    assert cli.main([*base, "--out", str(tmp_path / "u"),
                     "--history", str(tmp_path / "u.tsv")]) == 0
    uniform = json.loads((tmp_path / "u" / "aetk_run.json").read_text())
    assert "locality" not in uniform["settings"] and uniform["run_hash"] != info["run_hash"]
    assert cli.main([*base, "--locality", "4", "3", "500", "--out", str(tmp_path / "x"),
                     "--history", str(tmp_path / "x.tsv")]) == 1
    assert "k_neighbors must be in [1, 180]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_another_data_set_exits_with_a_message(steps: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    cli.main(["preprocess", "--source", "swissroll", "--n-samples", "50",
              "--out", str(tmp_path / "roll.zarr")])
    assert cli.main(["encode", "--data", str(tmp_path / "roll.zarr"), "--model",
                     str(steps / "model"), "--out", str(tmp_path / "latent.zarr")]) == 1
    assert ("the stored data has feature shape (3,) but the model expects (64,)"
            in capsys.readouterr().err)
    assert not (tmp_path / "latent.zarr").exists()
    # the report of one model needs the store its latent codes came from
    assert cli.main(["report", "run", "--data", str(tmp_path / "roll.zarr"), "--latent",
                     str(steps / "vae-bernoulli.zarr"), "--out-dir", str(tmp_path / "fig")]) == 1
    assert "was encoded from another data store" in capsys.readouterr().err
    assert not (tmp_path / "fig").exists()


def test_encode_and_sample_warn_on_another_store_of_the_same_shape(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same digits scaled per feature fit the model's shape and [0, 1]: encoding them
    used to pass silently; now both commands warn, and not for the model's own store."""
    other = str(tmp_path / "per_feature.zarr")
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "240", "--transforms",
                     "scale01:per_feature=true", "--validation-fraction", "0.25", "--seed", "1",
                     "--out", other]) == 0
    capsys.readouterr()
    model = str(steps / "model")
    assert cli.main(["encode", "--data", other, "--model", model, "--n-importance", "0",
                     "--n-scored", "0", "--traversal-steps", "0",
                     "--out", str(tmp_path / "l.zarr")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {model} was trained on another data store" in err and other in err
    assert cli.main(["sample", "--model", model, "--n", "5", "--sampler", "mixture",
                     "--data", other, "--out", str(tmp_path / "s.zarr")]) == 0
    assert "was trained on another data store" in capsys.readouterr().err
    assert cli.main(["sample", "--model", model, "--n", "5", "--sampler", "mixture",
                     "--data", str(steps / "data.zarr"), "--out", str(tmp_path / "s2.zarr")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_samples_keep_the_csv_column_names(tmp_path: Path) -> None:
    """Synthetic data from a CSV with named columns: the sample store had only feature
    indices (0 .. 3), the names were in the data store alone; now with --data it has them."""
    x = np.random.default_rng(0).poisson(3, size=(40, 4))
    pd.DataFrame(x, columns=["CD3", "CD4", "CD8", "MS4A1"]).to_csv(tmp_path / "c.csv",
                                                                  index=False)
    data, model = str(tmp_path / "d.zarr"), str(tmp_path / "m")
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.csv"), "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "poisson",
                     "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--out", model, "--history", str(tmp_path / "h.tsv")]) == 0
    for with_data, names in ((True, ["CD3", "CD4", "CD8", "MS4A1"]), (False, None)):
        out = str(tmp_path / f"s{with_data}.zarr")
        assert cli.main(["sample", "--model", model, "--n", "3", "--out", out,
                         *(["--data", data] if with_data else [])]) == 0
        assert storage.read_zarr(out).attrs.get("feature_names") == names


def test_report_names_the_csv_columns_in_every_heat_map(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`report run` drew reconstructions and traversals with feature indices although the
    data store had the CSV's column names (the latent store keeps none); now every heat map
    of the run is ticked with the names."""
    from aetk import report

    x = np.random.default_rng(0).poisson(3, size=(40, 12))  # > 10 features: heat maps
    names = [f"gene{i}" for i in range(12)]
    pd.DataFrame(x, columns=names).to_csv(tmp_path / "c.csv", index=False)
    data, model, latent = (str(tmp_path / n) for n in ("d.zarr", "m", "l.zarr"))
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.csv"), "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "poisson",
                     "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--out", model, "--history", str(tmp_path / "h.tsv")]) == 0
    assert cli.main(["encode", "--data", data, "--model", model, "--n-examples", "3",
                     "--n-generated", "3", "--n-scored", "10", "--out", latent]) == 0
    ticks = {}

    def recorded(plot):
        def plot_and_read_ticks(*args, **kwargs):
            fig = plot(*args, **kwargs)
            ticks[plot.__name__] = [[t.get_text() for t in ax.get_xticklabels()]
                                    for ax in fig.axes if ax.get_xticklabels()][-1]
            return fig
        return plot_and_read_ticks

    for name in ("plot_reconstructions", "plot_samples", "plot_traversals"):
        monkeypatch.setattr(report, name, recorded(getattr(report, name)))
    assert cli.main(["report", "run", "--data", data, "--latent", latent,
                     "--out-dir", str(tmp_path / "fig")]) == 0
    assert ticks == dict.fromkeys(("plot_reconstructions", "plot_samples", "plot_traversals"),
                                  names)


def test_samples_in_source_units_invert_the_stores_transforms(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Samples of a model trained on log1p + standardise counts were in standardised log
    units only; `--units source` maps them back (expm1(x * sd + mean), sd and mean of the
    training rows' log1p) and records the units."""
    counts = np.random.default_rng(0).poisson(5, size=(60, 4))
    pd.DataFrame(counts, columns=["a", "b", "c", "d"]).to_csv(tmp_path / "c.csv", index=False)
    data, model = str(tmp_path / "d.zarr"), str(tmp_path / "m")
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.csv"), "--transforms", "log1p",
                     "standardise", "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "gaussian",
                     "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu",
                     "--out", model, "--history", str(tmp_path / "h.tsv")]) == 0
    drawn = {}
    for units in ("transformed", "source"):
        out = tmp_path / f"{units}.zarr"
        assert cli.main(["sample", "--model", model, "--n", "7", "--data", data, "--units",
                         units, "--out", str(out)]) == 0
        drawn[units] = storage.read_zarr(out)
        assert drawn[units].attrs["units"] == units
    train = storage.read_zarr(data)["split"].values == 0
    logs = np.log1p(counts[train])
    expected = np.expm1(drawn["transformed"]["x"].values * logs.std(0) + logs.mean(0))
    np.testing.assert_allclose(drawn["source"]["x"].values, expected, rtol=1e-5, atol=1e-5)
    assert "source's units" in drawn["source"]["x"].attrs["description"]
    # without --data there is no pipeline to invert; binarise has no inverse
    capsys.readouterr()
    assert cli.main(["sample", "--model", model, "--n", "2", "--units", "source",
                     "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--units source needs --data" in capsys.readouterr().err
    binary = str(tmp_path / "b.zarr")
    assert cli.main(["preprocess", "--source", str(tmp_path / "c.csv"), "--transforms",
                     "binarise:threshold=4", "--out", binary]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--model", model, "--n", "2", "--units", "source", "--data",
                     binary, "--out", str(tmp_path / "x.zarr")]) == 1
    assert "transform binarise cannot be inverted" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_an_mse_autoencoder_trains_and_encodes(steps: Path, tmp_path: Path) -> None:
    """`--likelihood mse`: the AE's validation loss is the mean squared error that encode
    stores per sample; there is no likelihood, so no log-likelihood or KL."""
    model, latent = tmp_path / "ae", tmp_path / "ae.zarr"
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "ae",
                     "--likelihood", "mse", "--hidden", "16", "--epochs", "2", "--seed", "0",
                     "--no-progress", "--out", str(model), "--history",
                     str(tmp_path / "h.tsv")]) == 0
    assert cli.main(["encode", "--data", str(steps / "data.zarr"), "--model", str(model),
                     "--n-examples", "4", "--n-generated", "4", "--out", str(latent)]) == 0
    lat = storage.read_zarr(latent)
    val = lat["split"].values == storage.SPLIT_VALIDATION
    history = pd.read_csv(tmp_path / "h.tsv", sep="\t")
    assert lat["reconstruction_error"].values[val].mean() == pytest.approx(
        history["val_loss"].iloc[-1], rel=1e-5)
    assert np.isnan(lat["log_likelihood"].values).all() and np.isnan(lat["kl"].values).all()


def test_scores_without_a_validation_split_say_so(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """With --validation-fraction 0 the "validation" numbers are the training samples':
    encode's summary line and the comparison table's warning say so."""
    d = tmp_path
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "60", "--transforms",
                     "scale01", "--validation-fraction", "0", "--out", str(d / "d.zarr")]) == 0
    assert cli.main(["train", "--data", str(d / "d.zarr"), "--model", "vae", "--likelihood",
                     "bernoulli", "--hidden", "8", "--epochs", "1", "--no-progress", "--out",
                     str(d / "m"), "--history", str(d / "h.tsv")]) == 0
    assert cli.main(["encode", "--data", str(d / "d.zarr"), "--model", str(d / "m"),
                     "--n-examples", "2", "--n-generated", "2", "--n-importance", "2",
                     "--out", str(d / "l.zarr")]) == 0
    out = capsys.readouterr().out
    assert "; training samples' reconstruction error" in out
    assert " (no validation split); wrote" in out
    assert cli.main(["report", "summary", "--runs", "vae-bernoulli", "--histories",
                     str(d / "h.tsv"), "--latents", str(d / "l.zarr"), "--curves",
                     str(d / "c.png"), "--table", str(d / "t.tsv")]) == 0
    assert ("warning: vae-bernoulli had no validation split: its val_* columns are scores "
            "of the training samples" in capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_missing_device_is_refused_before_training_is_announced(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--data", str(steps / "data.zarr"), "--model", "vae",
                     "--likelihood", "bernoulli", "--device", "cuda", "--out",
                     str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("aetk train: error: device 'cuda': CUDA is "
                                                "not available on this machine")


@pytest.mark.parametrize("command", ["encode", "geodesics", "sample"])
def test_the_commands_that_run_a_model_take_trains_device_option(
        steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, command: str) -> None:
    """--device as aetk train's: a bad one refused with train's message before any output;
    on a (simulated) GPU the model runs there and the store holds the CPU's numbers."""
    import xarray as xr

    import fake_cuda

    rhvae, data = str(steps / "rhvae"), str(steps / "data.zarr")
    args = {
        "encode": ["--data", data, "--model", rhvae, "--n-importance", "3", "--n-scored", "0"],
        "geodesics": ["--model", rhvae, "--latent", str(steps / "latent_rhvae.zarr"),
                      "--n-pairs", "2", "--n-points", "8", "--max-iter", "20", "--grid-size",
                      "4", "--spray", "3", "--spray-points", "10"],
        "sample": ["--model", rhvae, "--data", data, "--sampler", "geometric", "--n", "4"],
    }[command]
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "bernoulli",
                     "--device", "gpu", "--out", str(tmp_path / "m"), "--history",
                     str(tmp_path / "h.tsv")]) == 1
    trains = capsys.readouterr().err.removeprefix("aetk train: ")
    assert trains.startswith("error: unknown device 'gpu'")
    assert cli.main([command, *args, "--device", "gpu", "--out", str(tmp_path / "s.zarr")]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"aetk {command}: {trains}"
    assert list(tmp_path.iterdir()) == []
    stores = {}
    for where in ("cpu", "cuda"):
        with contextlib.ExitStack() as stack:
            if where == "cuda":
                stack.enter_context(fake_cuda.install(monkeypatch))
            (tmp_path / where).mkdir()
            assert cli.main([command, *args, "--device", where, "--out",
                             str(tmp_path / where / "s.zarr")]) == 0
        assert f" on {where} " in capsys.readouterr().out
        stores[where] = storage.read_zarr(tmp_path / where / "s.zarr")
    assert fake_cuda.moved[-1] == torch.device("cuda")  # the loaded model, moved there
    xr.testing.assert_allclose(stores["cuda"], stores["cpu"])


def test_encode_output(steps: Path) -> None:
    import torch

    import aetk

    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    data = storage.read_data(steps / "data.zarr")
    assert lat["z_mean"].dims == ("sample", "latent") and lat["z_mean"].shape == (240, 2)
    for name in ("z_mean", "z_std", "z_sample", "reconstruction_error", "kl", "elbo"):
        assert np.isfinite(lat[name].values).all(), name
    assert (lat["z_std"].values > 0).all() and (lat["kl"].values >= 0).all()
    np.testing.assert_allclose(lat["elbo"], lat["log_likelihood"] - lat["kl"], rtol=1e-6)
    # log p(x) with 100 importance samples, of the validation samples only: finite, above
    # the stored ELBO on average, and the saved model's own estimate with many more
    # samples is close
    val = lat["split"].values == storage.SPLIT_VALIDATION
    log_px = lat["log_marginal"].values[val]
    assert np.isfinite(log_px).all() and np.isnan(lat["log_marginal"].values[~val]).all()
    assert log_px.mean() > lat["elbo"].values[val].mean() + 0.1
    assert lat.attrs["log_marginal"].startswith("log p(x) by importance sampling, 100 samples")
    assert "flow" not in lat.attrs["log_marginal"]
    rhvae = storage.read_zarr(steps / "latent_rhvae.zarr")  # proposals through its flow
    assert np.isfinite(rhvae["log_marginal"].values[val]).all()
    assert "moved by the model's flow" in rhvae.attrs["log_marginal"]
    # reconstruction error recomputed from the saved model
    model = aetk.load(steps / "model")
    x = torch.from_numpy(data.x)
    err = (model.reconstruct(x) - x).square().mean(1).numpy()
    np.testing.assert_allclose(lat["reconstruction_error"].values, err, rtol=1e-5, atol=1e-7)
    many = aetk.log_marginal(model, x[val][:20], n_samples=5000).numpy()
    np.testing.assert_allclose(log_px[:20].mean(), many.mean(), rtol=0, atol=0.05)
    assert lat["example_data"].shape == (6, 64) and lat["generated_model"].shape == (4, 64)
    geometric = lat["generated_geometric"].values  # from the encoder metric's HMC
    assert geometric.shape == (4, 64) and ((geometric >= 0) & (geometric <= 1)).all()
    assert not np.allclose(geometric, lat["generated_model"].values)
    # the first draws are shown, all are scored (digits have categorical labels)
    assert lat["scored_model"].shape == (50, 64) and lat["scored_geometric"].shape == (50, 64)
    np.testing.assert_array_equal(lat["scored_geometric"].values[:4], geometric)
    np.testing.assert_array_equal(lat["split"].values, data.is_validation.astype(np.int8))
    np.testing.assert_array_equal(lat["label"].values, data.labels)
    assert lat.attrs["model"] == "vae" and lat.attrs["image_shape"] == [8, 8]
    assert lat.attrs["config_hash"] == json.loads(
        (steps / "model" / "aetk_run.json").read_text())["run_hash"]


def test_latent_store_selects_along_each_dimension_with_xarray(steps: Path) -> None:
    """The generated samples are `generated_model`, not a variable named after its own
    dimension: `generated` is the int64 index, so xarray selects along it, as along every
    other dimension of the store."""
    import xarray as xr

    with xr.open_zarr(steps / "vae-bernoulli.zarr", consolidated=False) as lat:
        assert lat["generated_model"].dims == ("generated", "feature")
        assert "generated_model" in lat.data_vars and "generated" in lat.indexes
        assert lat["generated"].dtype == np.int64
        assert lat["generated"].values.tolist() == [0, 1, 2, 3]
        first = lat.sel(generated=0)
        assert first["generated_model"].shape == (64,)
        assert first["generated_geometric"].shape == (64,)
        for dim in lat.dims:  # every dimension has an index coordinate
            assert dim in lat.indexes, dim
        for dim in ("scored", "step", "grid_row", "grid_col"):
            n = lat.sizes[dim]
            assert lat[dim].dtype == np.int64 and lat[dim].values.tolist() == list(range(n))
            assert lat.sel({dim: n - 1})["z_mean"].shape == (240, 2)


def test_report_shows_the_samples_of_a_store_from_before_generated_model(
        steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A latent store written before `generated_model` holds its samples in a 2-D
    `generated`: the report still shows them, as it shows a new store's."""
    from aetk import report

    stored = storage.read_data(steps / "data.zarr")
    new = storage.read_zarr(steps / "vae-bernoulli.zarr")
    values, attrs = new["generated_model"].values, dict(new["generated_model"].attrs)
    old = new.drop_vars(["generated_model", "generated"])
    old = old.assign_coords(generated=np.arange(len(values)))  # as aetk encode wrote it
    old["generated"] = (("generated", "feature"), values, attrs)
    storage.write_zarr(old, tmp_path / "old.zarr")
    old = storage.read_zarr(tmp_path / "old.zarr")
    assert old["generated"].ndim == 2 and "generated_model" not in old
    shown: list[tuple[list[str], list[np.ndarray]]] = []
    monkeypatch.setattr(report, "_image_grid",
                        lambda rows, shape, names, title: shown.append((names, rows)))
    for latent in (new, old):
        report.plot_samples(latent, stored)
    for names, rows in shown:
        assert names == ["the model's\nsampler", "Riemannian\nuniform"]
        np.testing.assert_array_equal(rows[0], values)


def test_stores_describe_their_variables(steps: Path, tmp_path: Path) -> None:
    """Every store's main variables carry a CF `long_name` (xarray's axis labels) and, where
    there is one, `units`; the variables' own attributes stay."""
    data = storage.read_zarr(steps / "data.zarr")
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    geo = storage.read_zarr(steps / "geo.zarr")
    assert cli.main(["sample", "--model", str(steps / "model"), "--n", "3",
                     "--out", str(tmp_path / "s.zarr")]) == 0
    sample = storage.read_zarr(tmp_path / "s.zarr")
    main = [(data, ("x", "split", "source_index", "label", "sample", "feature")),
            (lat, ("z_mean", "z_std", "z_sample", "reconstruction_error", "log_likelihood",
                  "kl", "elbo", "log_marginal", "split", "label", "example_index",
                  "example_data", "example_reconstruction", "generated_model",
                  "generated_geometric", "scored_model", "scored_geometric", "traversal",
                  "traversal_value", "traversal_reference", "latent_grid", "grid_z1",
                  "grid_z2", "generated")),
            (geo, ("points", "length", "energy", "euclidean_length", "line_length",
                  "converged", "fell_back", "iterations", "start_index", "end_index",
                  "start_label", "end_label", "log_volume", "t", "z1", "z2")),
            (sample, ("x",))]
    for ds, names in main:
        assert set(names) <= set(ds.variables)
        for name in ds.variables:  # every one, the transforms' fitted parameters too
            long_name = ds[name].attrs.get("long_name")
            assert isinstance(long_name, str) and 0 < len(long_name) <= 40, (name, long_name)
    for name in ("x", "split", "source_index"):
        assert data[name].attrs["description"], name
    for name in ("z_mean", "kl", "elbo", "log_marginal", "reconstruction_error"):
        assert lat[name].attrs["description"], name
    for name in geo.variables:  # the coordinates too
        assert geo[name].attrs["description"], name
    for name in ("log_likelihood", "kl", "elbo", "log_marginal"):
        assert lat[name].attrs["units"] == "nats", name
    assert "units" not in lat["z_mean"].attrs and "units" not in geo["length"].attrs
    # the attributes set where the variable is made stay
    assert data["split"].attrs["flag_meanings"] == "train validation"
    assert lat["split"].attrs["flag_values"] == [0, 1]
    assert lat["generated_model"].attrs["sampler"] == "model"
    assert "traversal_reference" in lat["traversal"].attrs["description"]
    assert geo["log_volume"].attrs["long_name"] == "log sqrt(det G(z))"
    assert sample["x"].attrs["long_name"] == "generated sample"


def test_encode_stores_traversals_of_the_validation_codes(steps: Path) -> None:
    import torch

    import aetk

    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    model = aetk.load(steps / "model").eval()
    codes = torch.from_numpy(lat["z_mean"].values[lat["split"].values == 1])
    want = aetk.latent_traversal(model, codes, n_steps=10)
    assert lat["traversal"].dims == ("traversed", "step", "feature")
    np.testing.assert_allclose(lat["traversal"].values, want.decoded.numpy(), rtol=1e-5,
                               atol=1e-6)
    assert lat["traversed"].values.tolist() == want.dims.tolist()
    np.testing.assert_allclose(lat["traversal_value"].values, want.values.numpy(), rtol=1e-6)
    grid, z1, z2 = aetk.latent_grid(model, codes, n_steps=10)
    assert lat["latent_grid"].shape == (10, 10, 64)
    np.testing.assert_allclose(lat["latent_grid"].values, grid.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lat["grid_z1"].values, z1.numpy(), rtol=1e-6)
    np.testing.assert_allclose(lat["grid_z2"].values, z2.numpy(), rtol=1e-6)
    assert (np.diff(lat["grid_z2"].values) < 0).all() and (np.diff(lat["grid_z1"]) > 0).all()


def test_traversals_without_images_or_a_plane(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """A 3-D latent space of 3-feature data: traversals only (no grid), drawn as heat
    maps; --traversal-steps 0 stores none and the figure says so; 1 is refused."""
    data = str(tmp_path / "roll.zarr")
    cli.main(["preprocess", "--source", "swissroll", "--n-samples", "120", "--out", data])
    cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "gaussian",
              "--latent-dim", "3", "--hidden", "16", "--epochs", "1", "--no-progress",
              "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")])
    base = ["encode", "--data", data, "--model", str(tmp_path / "m"), "--n-importance", "0"]
    assert cli.main([*base, "--traversal-steps", "5", "--out", str(tmp_path / "l.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "l.zarr")
    assert lat["traversal"].shape == (3, 5, 3) and "latent_grid" not in lat
    assert sorted(lat["traversed"].values.tolist()) == [0, 1, 2]
    assert cli.main([*base, "--traversal-steps", "0", "--out", str(tmp_path / "n.zarr")]) == 0
    assert "traversal" not in storage.read_zarr(tmp_path / "n.zarr")
    for store, fig in (("l.zarr", "fig"), ("n.zarr", "none")):
        assert cli.main(["report", "run", "--data", data, "--latent", str(tmp_path / store),
                         "--out-dir", str(tmp_path / fig)]) == 0
    sizes = [(tmp_path / d / "traversals.png").stat().st_size for d in ("fig", "none")]
    assert sizes[0] > 3 * sizes[1]  # three heat maps against a line of text
    assert cli.main([*base, "--traversal-steps", "1", "--out", str(tmp_path / "x.zarr")]) == 1
    assert "--traversal-steps must be 0 (none) or at least 2" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_geodesics_output(steps: Path) -> None:
    geo = storage.read_zarr(steps / "geo.zarr")
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    assert geo["points"].dims == ("pair", "t", "latent") and geo["points"].shape == (3, 10, 2)
    z = lat["z_mean"].values
    np.testing.assert_allclose(geo["points"][:, 0].values, z[geo["start_index"].values],
                               rtol=1e-5)
    np.testing.assert_allclose(geo["points"][:, -1].values, z[geo["end_index"].values],
                               rtol=1e-5)
    assert (geo["start_label"].values != geo["end_label"].values).all()
    assert (geo["length"] <= geo["line_length"] * (1 + 1e-6)).all()
    assert geo["log_volume"].shape == (9, 9) and np.isfinite(geo["log_volume"]).all()
    assert float(geo["z1"].min()) < z[:, 0].min() and float(geo["z1"].max()) > z[:, 0].max()
    assert geo.attrs["metric"] == "PullbackMetric"
    assert "spray" not in geo  # a ReLU decoder's pull-back: no connection to speak of
    assert "gaussian_curvature" not in geo  # nor curvature


def test_geodesics_spray_of_an_rhvae(steps: Path) -> None:
    """6 geodesics leaving the Frechet mean of 20 validation codes, and the figure."""
    geo = storage.read_zarr(steps / "geo_rhvae.zarr")
    lat = storage.read_zarr(steps / "latent_rhvae.zarr")
    assert geo.attrs["metric"] == "RHVAEMetric"
    z = lat["z_mean"].values
    centre, spray = geo["frechet_mean"].values, geo["spray"].values
    assert spray.shape == (6, 41, 2) and np.isfinite(spray).all()
    np.testing.assert_allclose(spray[:, 0], np.broadcast_to(centre, (6, 2)), rtol=1e-6)
    val = z[lat["split"].values == storage.SPLIT_VALIDATION]
    assert (centre > val.min(0)).all() and (centre < val.max(0)).all()
    assert geo["frechet_mean"].attrs["n_codes"] == 20
    assert geo["frechet_mean"].attrs["rms_distance"] > 0
    ends = spray[:, -1] - centre
    angles = np.sort(np.arctan2(ends[:, 1], ends[:, 0]))
    assert np.diff(angles).min() > 0.1  # six distinct directions
    assert geo["frechet_mean"].attrs["converged"] == 1
    # by default the log maps' velocities within 1e-4 (aetk geodesics --integration-tol)
    assert geo["frechet_mean"].attrs["integration_tol"] == 1e-4
    assert geo["frechet_mean"].attrs["n_steps"] == 20  # this small model needs no doubling
    K = geo["gaussian_curvature"]
    assert K.dims == ("z1", "z2") and K.shape == (9, 9) and np.isfinite(K.values).all()
    metric = metric_for(aetk.load(steps / "rhvae"))
    corner = torch.tensor([[geo["z1"].values[2], geo["z2"].values[7]]], dtype=torch.float32)
    np.testing.assert_allclose(K.values[2, 7], 0.5 * scalar_curvature(metric, corner).item(),
                               rtol=1e-5)
    out = steps / "fig" / "geodesics_rhvae.png"
    cli.main(["report", "geodesics", "--latent", str(steps / "latent_rhvae.zarr"),
              "--geodesics", str(steps / "geo_rhvae.zarr"), "--out", str(out)])
    assert out.stat().st_size > 10_000


def test_an_unconverged_frechet_mean_warns_and_keeps_the_point_reached(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No budget for the Frechet mean: a warning in the log, and the spray still leaves
    the point reached, the codes' Euclidean mean."""
    frechet_mean = aetk.geometry.frechet_mean
    monkeypatch.setattr(aetk.geometry, "frechet_mean",
                        lambda *a, **k: frechet_mean(*a, **k, max_iter=0))
    out = tmp_path / "geo.zarr"
    cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent",
              str(steps / "latent_rhvae.zarr"), "--n-pairs", "2", "--n-points", "10",
              "--grid-size", "9", "--spray", "6", "--spray-points", "20",
              "--device", "cpu", "--out", str(out)])  # the CPU's mean, as numpy's below
    assert "did not converge (max_iter after 0 steps)" in capsys.readouterr().err
    geo, lat = storage.read_zarr(out), storage.read_zarr(steps / "latent_rhvae.zarr")
    attrs = geo["frechet_mean"].attrs
    assert (attrs["converged"], attrs["stopped"], attrs["iterations"]) == (0, "max_iter", 0)
    val = np.flatnonzero(lat["split"].values == storage.SPLIT_VALIDATION)
    codes = np.random.default_rng(0).permutation(val)[:20]
    np.testing.assert_allclose(geo["frechet_mean"].values, lat["z_mean"].values[codes].mean(0),
                               rtol=1e-5)
    spray = geo["spray"].values
    assert spray.shape == (6, 41, 2) and np.isfinite(spray).all()
    np.testing.assert_allclose(spray[:, 0], np.broadcast_to(geo["frechet_mean"].values, (6, 2)))


def test_a_spray_of_one_code_is_refused_or_skipped(steps: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The spray's length is the codes' RMS distance to their Frechet mean: 0 for one code,
    which failed at the end with "radius must be positive, got 0.0", also in the pipeline's
    geodesics job of a data set with one validation sample (the helper's finding,
    2026-12-03). --spray-points 1 is now refused before any work; one validation code
    takes the spray's codes from all samples; codes that coincide skip it with a warning."""
    base = ["geodesics", "--model", str(steps / "rhvae"), "--n-pairs", "2", "--n-points", "10",
            "--grid-size", "9", "--spray", "6"]
    out = tmp_path / "geo.zarr"
    assert cli.main([*base, "--latent", str(steps / "latent_rhvae.zarr"), "--spray-points",
                     "1", "--out", str(out)]) == 1
    assert ("aetk geodesics: error: --spray-points must be at least 2: the spray's length is "
            "the codes' RMS distance") in capsys.readouterr().err
    assert not out.exists()
    latent = storage.read_zarr(steps / "latent_rhvae.zarr").load()
    split = latent["split"].values.copy()
    split[split == storage.SPLIT_VALIDATION] = storage.SPLIT_TRAIN
    split[0] = storage.SPLIT_VALIDATION  # one validation code
    one = tmp_path / "one.zarr"
    storage.write_zarr(latent.assign(split=(latent["split"].dims, split)), one)
    cli.main([*base, "--latent", str(one), "--spray-points", "20", "--out", str(out)])
    assert storage.read_zarr(out)["frechet_mean"].attrs["n_codes"] == 20  # from all samples
    same = tmp_path / "same.zarr"
    z = latent["z_mean"].values.copy()
    z[:] = z[0]
    storage.write_zarr(latent.assign(z_mean=(latent["z_mean"].dims, z)), same)
    capsys.readouterr()
    cli.main([*base, "--latent", str(same), "--spray-points", "20", "--out",
              str(tmp_path / "g2.zarr")])
    assert "warning: no geodesic spray: its length, the codes' RMS distance to their Frechet " \
           "mean, is 0 for the 20 code(s)" in capsys.readouterr().err
    assert "spray" not in storage.read_zarr(tmp_path / "g2.zarr")


@pytest.mark.parametrize(("command", "option", "value", "message"), [
    ("train", "--threads", "0", "must be an integer >= 1, got '0'"),  # was torch's traceback
    ("train", "--hidden", "-32", "must be an integer >= 1, got '-32'"),
    ("train", "--epochs", "2.5", "must be an integer >= 1, got '2.5'"),
    ("train", "--patience", "-1", "must be an integer >= 0, got '-1'"),
    ("encode", "--batch-size", "0", "must be an integer >= 1, got '0'"),  # was split's
    ("encode", "--n-importance", "-3", "must be an integer >= 0, got '-3'"),
    # none generated, report run drew "this model does not generate samples"
    ("encode", "--n-generated", "0", "must be an integer >= 1, got '0'"),
    ("geodesics", "--max-iter", "-5", "must be an integer >= 1, got '-5'"),  # wrote a store
    ("geodesics", "--grid-size", "0", "must be an integer >= 1, got '0'"),
    ("geodesics", "--spray", "-1", "must be an integer >= 0, got '-1'"),
    ("geodesics", "--spray-points", "0", "must be an integer >= 1, got '0'"),
    ("geodesics", "--integration-tol", "-0.1", "must be a number >= 0, got '-0.1'"),
    ("geodesics", "--integration-tol", "nan", "must be a number >= 0, got 'nan'"),
    ("sample", "--n", "0", "must be an integer >= 1, got '0'"),
    ("preprocess", "--n-samples", "0", "must be an integer >= 1, got '0'"),  # wrote a store
    # numpy's and scikit-learn's generators refuse negative seeds: a step failed midway
    ("preprocess", "--seed", "-1", "must be an integer from 0 to 4294967295, got '-1'"),
    ("train", "--seed", "-1", "must be an integer from 0 to 4294967295, got '-1'"),
    ("encode", "--seed", "-1", "must be an integer from 0 to 4294967295, got '-1'"),
    ("geodesics", "--seed", "4294967296",
     "must be an integer from 0 to 4294967295, got '4294967296'"),
    ("sample", "--seed", "x", "must be an integer from 0 to 4294967295, got 'x'"),
])
def test_bad_integer_options_exit_at_parsing(steps: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture, command: str,
                                             option: str, value: str, message: str) -> None:
    """Counts that cannot be 0 or negative are refused by argparse (exit status 2) before
    any file is read or written."""
    inputs = {
        "preprocess": ["--source", "digits"],
        "train": ["--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
                  "bernoulli", "--hidden", "16", "--epochs", "1", "--no-progress",
                  "--history", str(tmp_path / "h.tsv")],
        "encode": ["--data", str(steps / "data.zarr"), "--model", str(steps / "model")],
        "geodesics": ["--model", str(steps / "model"), "--latent",
                      str(steps / "vae-bernoulli.zarr"), "--n-pairs", "1", "--n-points", "4",
                      "--max-iter", "5", "--grid-size", "3"],
        "sample": ["--model", str(steps / "model")],
    }[command]
    with pytest.raises(SystemExit) as exc:
        cli.main([command, *inputs, option, value, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert f"aetk {command}: error: argument {option}: {message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_preprocess_warns_of_counts_float32_rounds(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Counts above 2**24, stored as float32 without a transform, are rounded: preprocess
    says so on stderr, once, in its own words."""
    x = np.arange(60).reshape(20, 3)
    x[0, 0] = 2**24 + 3
    np.save(tmp_path / "c.npy", x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["preprocess", "--source", str(tmp_path / "c.npy"),
                         "--out", str(tmp_path / "d.zarr")]) == 0
    assert not [w for w in caught if issubclass(w.category, data_mod.PrecisionWarning)]
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'c.npy'}: 1 values are whole numbers above "
                          "2**24") and "(16777219 is stored as 16777220)" in err
    assert storage.read_data(tmp_path / "d.zarr").x[0, 0] == 2**24 + 4


def test_more_samples_than_the_data_set_has_warns(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """--n-samples is at most: beyond the data set's size all samples are used, as the help
    says, and a warning says so."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["preprocess", "--source", "digits", "--n-samples", "100000",
                         "--out", str(tmp_path / "d.zarr")]) == 0
    # aetk.data.prepare's SampleCountWarning, printed once in the CLI's words, not twice
    assert not [w for w in caught if issubclass(w.category, data_mod.SampleCountWarning)]
    captured = capsys.readouterr()
    assert captured.err == ("warning: --n-samples 100000 is more than the 1797 samples of "
                            "digits: using all 1797\n")
    assert storage.read_zarr(tmp_path / "d.zarr").sizes["sample"] == 1797
    with pytest.raises(SystemExit):
        cli.main(["preprocess", "--help"])
    assert "with a warning, when the data set has fewer" in " ".join(
        capsys.readouterr().out.split())


def test_geodesics_between_configured_pairs(steps: Path, tmp_path: Path) -> None:
    """--pairs I:J: exactly those samples (any split) are the endpoints, in order."""
    lat = storage.read_zarr(steps / "latent_rhvae.zarr")
    z, split = lat["z_mean"].values, lat["split"].values
    train = np.flatnonzero(split == storage.SPLIT_TRAIN)
    val = np.flatnonzero(split == storage.SPLIT_VALIDATION)
    pairs = [(int(train[0]), int(val[1])), (int(val[2]), int(train[3])), (len(z) - 1, 0)]
    out = tmp_path / "geo.zarr"
    assert cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent",
                     str(steps / "latent_rhvae.zarr"), "--pairs",
                     *(f"{i}:{j}" for i, j in pairs), "--n-points", "8", "--max-iter", "20",
                     "--grid-size", "3", "--spray", "0", "--out", str(out)]) == 0
    geo = storage.read_zarr(out)
    start, end = (np.array(e) for e in zip(*pairs, strict=True))
    assert geo["start_index"].dtype == np.int64 and geo.sizes["pair"] == 3
    np.testing.assert_array_equal(geo["start_index"].values, start)
    np.testing.assert_array_equal(geo["end_index"].values, end)
    np.testing.assert_array_equal(geo["pair"].values, np.arange(3))
    np.testing.assert_array_equal(geo["start_label"].values, lat["label"].values[start])
    np.testing.assert_array_equal(geo["end_label"].values, lat["label"].values[end])
    np.testing.assert_allclose(geo["points"][:, 0].values, z[start], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(geo["points"][:, -1].values, z[end], rtol=1e-5, atol=1e-6)
    assert geo.attrs["pair_selection"] == "configured"
    assert geo.attrs["settings"]["pairs"] == [list(p) for p in pairs]
    assert geo.attrs["settings"]["n_pairs"] == 3
    sampled = storage.read_zarr(steps / "geo_rhvae.zarr")
    assert sampled.attrs["pair_selection"] == "sampled"
    assert "pairs" not in sampled.attrs["settings"]


@pytest.mark.parametrize(("pairs", "message"), [
    (["0:1", "3:240"], "--pairs: 3:240 is out of range: the latent store has 240 samples"),
    (["7:-1"], "--pairs: 7:-1 is out of range: the latent store has 240 samples"),
    (["4:4"], "--pairs: '4:4' joins sample 4 to itself"),
    (["0:17", "17:0"], "--pairs: '17:0' repeats the pair 0:17"),
    (["3:5", "0:1", "3:5"], "--pairs: '3:5' repeats the pair 3:5"),
    (["0:1", "2"], "--pairs: '2' is not a pair of sample indices I:J"),
    (["0:1:2"], "--pairs: '0:1:2' is not a pair of sample indices I:J"),
    (["a:3"], "--pairs: 'a:3' is not a pair of sample indices I:J"),
    (["1.5:3"], "--pairs: '1.5:3' is not a pair of sample indices I:J"),
])
def test_bad_pairs_exit_before_fitting_or_writing(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch, pairs: list[str], message: str) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("fitted despite bad pairs")

    monkeypatch.setattr(aetk.geometry, "fit_geodesics", no_fit)
    monkeypatch.setattr(aetk, "load", no_fit)  # refused before even loading the model
    out = tmp_path / "geo.zarr"
    assert cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent",
                     str(steps / "latent_rhvae.zarr"), "--pairs", *pairs,
                     "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "aetk geodesics: error: " + message in err, err
    assert not out.exists()


def test_without_a_validation_split_the_outputs_say_training_samples(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """data.validation_fraction 0: the summary's val_* columns and the Frechet mean are of
    the training samples; comparison.tsv's `scored_on` and the geodesics log said
    "validation" (the table only by its column names)."""
    latent = storage.read_zarr(steps / "latent_rhvae.zarr").load()
    unsplit = tmp_path / "unsplit.zarr"
    storage.write_zarr(latent.assign(split=latent["split"] * 0 + storage.SPLIT_TRAIN), unsplit)
    assert cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent", str(unsplit),
                     "--n-pairs", "1", "--n-points", "8", "--grid-size", "3", "--spray", "2",
                     "--spray-points", "20", "--out", str(tmp_path / "g.zarr")]) == 0
    out = capsys.readouterr().out
    assert "Frechet mean of 20 training codes (" in out and "validation codes" not in out, out
    assert cli.main(["report", "summary", "--runs", "a", "b", "--histories",
                     str(steps / "hr.tsv"), str(steps / "hr.tsv"), "--latents",
                     str(steps / "latent_rhvae.zarr"), str(unsplit),
                     "--curves", str(tmp_path / "c.png"), "--table", str(tmp_path / "t.tsv")]
                    ) == 0
    assert "warning: b had no validation split" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert table["scored_on"].tolist() == ["validation", "training"]
    assert "val_log_marginal" in table


def test_pairs_with_coinciding_ends_are_left_out_of_the_length_ratio(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two samples with one code (a VQ-VAE's, snapped to one codebook vector) make a pair of
    length = line_length = 0: the log said "mean length / straight-line length nan" while
    comparison.tsv skipped the pair; now both average the other pairs, and the log says
    how many were left out, or that none is left."""
    latent = storage.read_zarr(steps / "vae-bernoulli.zarr").load()
    z = latent["z_mean"].values.copy()
    z[1] = z[0]
    same = tmp_path / "same.zarr"
    storage.write_zarr(latent.assign(z_mean=(latent["z_mean"].dims, z)), same)
    fit = ["geodesics", "--model", str(steps / "model"), "--latent", str(same), "--n-points",
           "8", "--max-iter", "20", "--grid-size", "3"]
    assert cli.main([*fit, "--pairs", "0:1", "2:3", "4:5", "--out",
                     str(tmp_path / "g.zarr")]) == 0
    geo = storage.read_zarr(tmp_path / "g.zarr")
    assert geo["line_length"].values[0] == 0 and (geo["line_length"].values[1:] > 0).all()
    ratio = float((geo["length"] / geo["line_length"]).values[1:].mean())
    assert (f"mean length / straight-line length {ratio:.3f} (1 of 3 pairs left out: their "
            "ends coincide)") in capsys.readouterr().out
    assert cli.main(["report", "summary", "--runs", "vae-bernoulli", "--histories",
                     str(steps / "h.tsv"), "--latents", str(same), "--geodesics",
                     str(tmp_path / "g.zarr"), "--curves", str(tmp_path / "c.png"),
                     "--table", str(tmp_path / "t.tsv")]) == 0
    table = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert table["geodesic_length_ratio"].iloc[0] == pytest.approx(ratio, rel=1e-5)
    capsys.readouterr()
    assert cli.main([*fit, "--pairs", "0:1", "--out", str(tmp_path / "g1.zarr")]) == 0
    assert ("mean length / straight-line length undefined: every pair's ends coincide"
            in capsys.readouterr().out)


def test_pairs_and_n_pairs_together_are_refused(steps: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "geo.zarr"
    assert cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent",
                     str(steps / "latent_rhvae.zarr"), "--pairs", "0:1", "--n-pairs", "2",
                     "--out", str(out)]) == 1
    assert "give either --pairs" in capsys.readouterr().err
    assert not out.exists()


def test_report_outputs(steps: Path) -> None:
    for name in ("latent", "reconstructions", "samples", "traversals", "geodesics", "curves",
                 "comparison"):
        png = (steps / "fig" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    table = pd.read_csv(steps / "table.tsv", sep="\t")
    history = pd.read_csv(steps / "h.tsv", sep="\t")
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    geo = storage.read_zarr(steps / "geo.zarr")
    val = lat["split"].values == 1
    row = table.iloc[0]
    assert row["run"] == "vae-bernoulli" and row["epochs"] == 3
    assert row["final_val_loss"] == pytest.approx(history["val_loss"].iloc[-1], rel=1e-5)
    assert row["val_kl"] == pytest.approx(lat["kl"].values[val].mean(), rel=1e-5)
    assert row["val_log_marginal"] == pytest.approx(lat["log_marginal"].values[val].mean(),
                                                    rel=1e-5)
    assert 0 <= row["active_units"] <= 2 and 1 <= row["code_rank"] <= 2
    assert row["val_reconstruction_error"] == pytest.approx(
        lat["reconstruction_error"].values[val].mean(), rel=1e-5)
    assert row["geodesic_length_ratio"] == pytest.approx(
        float((geo["length"] / geo["line_length"]).mean()), rel=1e-5)
    # ELBO surgery: I(x; z) between 0 (up to the noise of one code per point, for a
    # 3-epoch model near collapse) and log N, the rest of the KL the prior mismatch
    assert -0.1 < row["val_mutual_info"] <= np.log(val.sum()) + 1e-9
    assert row["val_mutual_info"] + row["val_marginal_kl"] == pytest.approx(row["val_kl"],
                                                                          rel=1e-5)
    assert np.isfinite(row["val_total_correlation"])
    for name in ("sample_score", "geometric_sample_score", "data_sample_score"):
        assert 1 <= row[name] <= 10  # ten digit classes at most


def test_active_units_count_dimensions_whose_mean_varies() -> None:
    from aetk.report import active_units

    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, 4)) * np.array([1.0, 0.05, 0.3, 0.0]) + 2.0
    assert active_units(z) == 2  # variances 1, 0.0025, 0.09, 0


def test_code_rank_counts_the_directions_the_codes_spread_in() -> None:
    """Codes of rank 2 in 4 dimensions, rotated off the axes (every axis varies): rank 2
    where active units count 4; a third direction of 0.5% of the largest is below 1%."""
    from aetk.report import active_units, code_rank

    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    z = (rng.standard_normal((500, 4)) * np.array([1.0, 0.5, 0.005, 0.0])) @ rotation + 3.0
    assert code_rank(z) == 2 and active_units(z) == 4
    assert code_rank(z, rel=0.001) == 3
    assert code_rank(np.ones((10, 3))) == 0
    z[7, 1] = np.nan  # a non-finite code is left out
    assert code_rank(z) == 2


def test_a_multinomial_model_through_the_command_line(tmp_path: Path) -> None:
    """Counts of very different totals: the stored reconstructions are at each sample's own
    total, and the log p(x) attribute says it is given the total."""
    rng = np.random.default_rng(0)
    profile = rng.dirichlet(np.ones(12))
    counts = np.stack([rng.multinomial(n, profile) for n in rng.integers(20, 2000, 120)])
    np.save(tmp_path / "counts.npy", counts)
    data, model = str(tmp_path / "d.zarr"), str(tmp_path / "m")
    assert cli.main(["preprocess", "--source", str(tmp_path / "counts.npy"), "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "vae", "--likelihood", "multinomial",
                     "--hidden", "16", "--epochs", "2", "--batch-size", "32", "--no-progress",
                     "--out", model, "--history", str(tmp_path / "h.tsv")]) == 0
    assert cli.main(["encode", "--data", data, "--model", model, "--n-importance", "4",
                     "--traversal-steps", "0", "--out", str(tmp_path / "l.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "l.zarr")
    assert "given its total count" in lat.attrs["log_marginal"]
    # log inputs, the default for counts, key the run: older count models keep their hash
    settings = json.loads((tmp_path / "m" / "aetk_run.json").read_text())["settings"]
    assert settings["log_inputs"] is True
    shown = lat["example_index"].values
    np.testing.assert_allclose(lat["example_reconstruction"].values.sum(1),
                               counts[shown].sum(1), rtol=1e-4)



def test_geodesics_refuse_a_latent_store_of_another_model(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The latent store records the run hash of the model it was encoded with; a model
    saved by hand (no aetk_run.json) is compared by model, likelihood and latent size."""
    vae_hash = json.loads((steps / "model" / "aetk_run.json").read_text())["run_hash"]
    rhvae_hash = json.loads((steps / "rhvae" / "aetk_run.json").read_text())["run_hash"]
    aetk.load(steps / "rhvae").save(tmp_path / "by_hand")
    out = tmp_path / "geo.zarr"
    base = ["--n-pairs", "1", "--n-points", "4", "--max-iter", "5", "--grid-size", "3",
            "--spray", "0", "--out", str(out)]
    with monkeypatch.context() as m:
        m.setattr(aetk, "load", lambda *a, **k: pytest.fail("refused only after loading"))
        assert cli.main(["geodesics", "--model", str(steps / "model"), "--latent",
                         str(steps / "latent_rhvae.zarr"), *base]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"aetk geodesics: error: {steps / 'latent_rhvae.zarr'} was "
                              f"encoded with another model (run 'latent_rhvae': run hash "
                              f"{rhvae_hash} there, {vae_hash} here) than {steps / 'model'}")
        assert not out.exists()
        assert cli.main(["geodesics", "--model", str(tmp_path / "by_hand"), "--latent",
                         str(steps / "vae-bernoulli.zarr"), *base]) == 1
        assert "(run 'vae-bernoulli': model vae there, rhvae here)" in capsys.readouterr().err
        assert not out.exists()
    # the same model saved by hand: nothing to tell them apart by, so not refused
    assert cli.main(["geodesics", "--model", str(tmp_path / "by_hand"), "--latent",
                     str(steps / "latent_rhvae.zarr"), *base]) == 0
    # and the figure of a geodesic store over another model's latent codes
    fig = tmp_path / "g.png"
    assert cli.main(["report", "geodesics", "--latent", str(steps / "latent_rhvae.zarr"),
                     "--geodesics", str(steps / "geo.zarr"), "--out", str(fig)]) == 1
    assert (f"aetk report geodesics: error: {steps / 'geo.zarr'} was fitted with another model"
            in capsys.readouterr().err)
    assert not fig.exists()


def test_report_geodesics_names_the_file_it_writes(steps: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Without a suffix matplotlib adds .png, while the command said it wrote the path as
    given (the helper's finding, 2026-12-03); and --grid-size 1, which the schema refuses,
    drew a degenerate figure."""
    out = tmp_path / "figure"
    assert cli.main(["report", "geodesics", "--latent", str(steps / "vae-bernoulli.zarr"),
                     "--geodesics", str(steps / "geo.zarr"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}.png"
    assert (tmp_path / "figure.png").is_file() and not out.exists()
    assert cli.main(["geodesics", "--model", str(steps / "model"), "--latent",
                     str(steps / "vae-bernoulli.zarr"), "--grid-size", "1", "--out",
                     str(tmp_path / "g.zarr")]) == 1
    assert "aetk geodesics: error: --grid-size must be at least 2, got 1" in \
        capsys.readouterr().err


def test_report_summary_refuses_stores_of_another_run(steps: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Run names are labels (the by-hand example's --runs rhvae with latent.zarr), but a
    store that names another of the given runs is a mix-up of their order."""
    outputs = ["--curves", str(tmp_path / "c.png"), "--table", str(tmp_path / "t.tsv")]
    other = storage.read_zarr(steps / "vae-bernoulli.zarr")
    other.attrs.update(run="other", config_hash="another model")
    storage.write_zarr(other, tmp_path / "other.zarr")
    swapped = ["--runs", "vae-bernoulli", "other", "--histories", str(steps / "h.tsv"),
               str(steps / "h.tsv"), "--latents", str(tmp_path / "other.zarr"),
               str(steps / "vae-bernoulli.zarr")]
    assert cli.main(["report", "summary", *swapped, *outputs]) == 1
    assert capsys.readouterr().err == (
        f"aetk report summary: error: {tmp_path / 'other.zarr'} holds run 'other', but is "
        "given for run 'vae-bernoulli': give --runs, --histories and --latents in the same "
        "order\n")
    geo = storage.read_zarr(steps / "geo.zarr")  # fitted with vae-bernoulli's model
    geo.attrs["run"] = "other"
    storage.write_zarr(geo, tmp_path / "geo.zarr")
    runs = ["--runs", "vae-bernoulli", "other", "--histories", str(steps / "h.tsv"),
            str(steps / "h.tsv"), "--latents", str(steps / "vae-bernoulli.zarr"),
            str(tmp_path / "other.zarr")]
    assert cli.main(["report", "summary", *runs, "--geodesics", str(tmp_path / "geo.zarr"),
                     *outputs]) == 1
    assert (f"{tmp_path / 'geo.zarr'} holds run 'other', but is given for run "
            "'vae-bernoulli'" in capsys.readouterr().err)
    # mismatched counts: the same prefix as every other error
    assert cli.main(["report", "summary", "--runs", "a", "b", "--histories",
                     str(steps / "h.tsv"), "--latents", str(steps / "vae-bernoulli.zarr"),
                     *outputs]) == 1
    assert capsys.readouterr().err == ("aetk report summary: error: --runs, --histories and "
                                       "--latents need one entry per run, in order\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo.zarr", "other.zarr"]
    # a label of one's own
    assert cli.main(["report", "summary", "--runs", "vae", "--histories",
                     str(steps / "h.tsv"), "--latents", str(steps / "vae-bernoulli.zarr"),
                     "--geodesics", str(steps / "geo.zarr"), *outputs]) == 0
    assert pd.read_csv(tmp_path / "t.tsv", sep="\t")["run"].tolist() == ["vae"]


def test_summary_refuses_the_history_of_another_run(steps: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """aetk encode records the train_loss of the history saved with the model; report
    summary refuses a --histories table that is not it, naming the run the table belongs
    to when it is one of the given runs (it would be plotted under the wrong name)."""
    outputs = ["--curves", str(tmp_path / "c.png"), "--table", str(tmp_path / "t.tsv")]
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    saved = aetk.load_history(steps / "model")
    assert lat.attrs["history_train_loss"] == pytest.approx(saved["train_loss"].tolist(),
                                                            rel=1e-12)
    h, hr = steps / "h.tsv", steps / "hr.tsv"  # vae-bernoulli's and the rhvae's
    runs = ["--runs", "vae-bernoulli", "rhvae", "--latents", str(steps / "vae-bernoulli.zarr"),
            str(steps / "latent_rhvae.zarr")]
    assert cli.main(["report", "summary", *runs, "--histories", str(hr), str(h),
                     *outputs]) == 1
    assert capsys.readouterr().err == (
        f"aetk report summary: error: {hr}, given for run 'vae-bernoulli', is the training "
        "history of run 'rhvae' (the one saved with the model that encoded "
        f"{steps / 'latent_rhvae.zarr'}): give --runs, --histories and --latents in the "
        "same order\n")
    other = pd.read_csv(h, sep="\t")
    other["train_loss"] *= 1.5  # another run's, not among those given
    other.to_csv(tmp_path / "other.tsv", sep="\t", index=False)
    assert cli.main(["report", "summary", "--runs", "vae-bernoulli", "--histories",
                     str(tmp_path / "other.tsv"), "--latents",
                     str(steps / "vae-bernoulli.zarr"), *outputs]) == 1
    assert capsys.readouterr().err == (
        f"aetk report summary: error: {tmp_path / 'other.tsv'} is not the training history "
        "of run 'vae-bernoulli': its train_loss per epoch is not the one saved with the model "
        f"that encoded {steps / 'vae-bernoulli.zarr'}\n")
    assert cli.main(["report", "summary", "--runs", "rhvae", "rhvae", "--histories", str(hr),
                     str(hr), "--latents", str(steps / "latent_rhvae.zarr"),
                     str(steps / "latent_rhvae.zarr"), *outputs]) == 1
    assert capsys.readouterr().err == ("aetk report summary: error: --runs names rhvae more "
                                       "than once: one entry per run\n")
    assert not (tmp_path / "t.tsv").exists()
    assert cli.main(["report", "summary", *runs, "--histories", str(h), str(hr),
                     *outputs]) == 0
    # a latent store without the record (encoded before it, or from a model saved without
    # its history) is not checked
    del lat.attrs["history_train_loss"]
    storage.write_zarr(lat, tmp_path / "old.zarr")
    assert cli.main(["report", "summary", "--runs", "vae-bernoulli", "--histories",
                     str(tmp_path / "other.tsv"), "--latents", str(tmp_path / "old.zarr"),
                     *outputs]) == 0


def test_sigterm_in_train_says_which_epoch_the_checkpoint_keeps(steps: Path,
                                                              tmp_path: Path) -> None:
    """SIGTERM (SLURM's time limit, scancel, Snakemake stopping its jobs) ended aetk train
    without a word in its log, status 143; it now ends as Ctrl-C does, naming the
    checkpoint's epoch, and the same command resumes from it."""
    args = [sys.executable, "-m", "aetk.cli", "train", "--data", str(steps / "data.zarr"),
            "--model", "vae", "--likelihood", "bernoulli", "--hidden", "8", "--epochs",
            "100000", "--no-progress", "--device", "cpu", "--checkpoint-dir",
            str(tmp_path / "ckpt"), "--out", str(tmp_path / "m"), "--history",
            str(tmp_path / "h.tsv")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not proc.stdout.readline().startswith("epoch 2/"):
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    [kept] = (tmp_path / "ckpt").glob("*.pt")
    assert proc.returncode == 130, err
    assert re.fullmatch(rf"aetk train: interrupted; the checkpoint {re.escape(str(kept))} "
                        r"keeps epoch \d+: rerun the same command to resume from it\n", err), err
    assert not (tmp_path / "m").exists()


def test_ctrl_c_in_train_exits_in_one_line_and_keeps_the_checkpoint(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(self: object, model: object, epoch: int, row: object) -> None:
        if epoch == 2:  # before fit writes epoch 2's checkpoint
            raise KeyboardInterrupt

    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--epochs", "3", "--batch-size", "64",
            "--no-progress", "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    with monkeypatch.context() as m:
        m.setattr(_EpochPrinter, "on_epoch_end", interrupt)
        try:
            assert cli.main([*args, *ckpt]) == 130
        except KeyboardInterrupt:  # would end the whole test session
            pytest.fail("KeyboardInterrupt escaped aetk train")
        [kept] = (tmp_path / "ckpt").glob("*.pt")
        assert capsys.readouterr().err == (
            f"aetk train: interrupted; the checkpoint {kept} keeps epoch 1: rerun the same "
            "command to resume from it\n")
        assert cli.main(args) == 130
        assert capsys.readouterr().err == (
            "aetk train: interrupted; nothing was kept (with --checkpoint-dir, a rerun "
            "resumes from the last finished epoch)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert cli.main([*args, *ckpt]) == 0  # as the message says
    assert "resuming from epoch 1 of checkpoint" in capsys.readouterr().out
    # the saved history is the whole run's, the checkpoint's epoch included
    saved = aetk.load_history(tmp_path / "m")
    assert saved["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(saved, pd.read_csv(tmp_path / "h.tsv", sep="\t"))


def test_a_checkpoint_of_other_settings_gives_the_command_line_advice(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--epochs", "1", "--batch-size", "64",
            "--no-progress", "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    assert cli.main(args) == 0
    [ckpt] = (tmp_path / "ckpt").glob("*.pt")
    state = torch.load(ckpt, weights_only=True)
    state["fingerprint"]["lr"] = 0.5  # as if written by another version's settings
    torch.save(state, ckpt)
    (tmp_path / "h.tsv").unlink()
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"aetk train: error: checkpoint {ckpt} was written for different "
                          "settings (lr: 0.5 there, 0.001 now)")
    assert err.endswith("; pass --no-resume (in the pipeline: train.resume: false in "
                        "config.yaml) to start over\n") and "resume=False" not in err
    assert not (tmp_path / "h.tsv").exists()
    assert cli.main([*args, "--no-resume"]) == 0


def test_checkpoint_advice_comes_from_the_typed_error_not_from_its_text(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of more epochs: the CLI's advice (--epochs, --no-resume), formatted from
    aetk.CheckpointMismatch's fields; fit's other errors pass unchanged, even when their
    text reads like fit's advice."""
    args = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--epochs", "2", "--batch-size", "64",
            "--no-progress", "--checkpoint-dir", str(tmp_path / "ckpt"),
            "--out", str(tmp_path / "m"), "--history", str(tmp_path / "h.tsv")]
    one = [a if a != "2" else "1" for a in args]
    assert cli.main(one) == 0 and cli.main(args) == 0
    # the epochs are in the run hash, so in the file name: a hand-copied checkpoint
    [ckpt, two] = sorted((tmp_path / "ckpt").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    two.replace(ckpt)
    capsys.readouterr()
    assert cli.main(one) == 1
    assert capsys.readouterr().err == (
        f"aetk train: error: checkpoint {ckpt} already holds 2 epochs, more than the 1 asked "
        "for; pass --epochs >= 2, or --no-resume (in the pipeline: train.resume: false in "
        "config.yaml) to start over\n")

    def refuse(*args: object, **kwargs: object) -> None:
        raise ValueError("a penalty refused: pass epochs >= 3 or resume=False")

    monkeypatch.setattr(aetk, "fit", refuse)
    assert cli.main(args) == 1
    assert capsys.readouterr().err == ("aetk train: error: a penalty refused: pass epochs >= 3 "
                                       "or resume=False\n")


def test_a_store_of_another_kind_names_the_command_that_makes_the_right_one(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, latent, model = steps / "data.zarr", steps / "vae-bernoulli.zarr", steps / "model"
    geo, out = steps / "geo.zarr", tmp_path / "out"
    cases = [
        (["geodesics", "--model", str(model), "--latent", str(data), "--out", str(out)],
         f"aetk geodesics: error: {data} is not an aetk latent store (run `aetk encode`); "
         "it is a data store (from `aetk preprocess`)"),
        (["report", "run", "--data", str(data), "--latent", str(data), "--out-dir", str(out)],
         f"aetk report run: error: {data} is not an aetk latent store (run `aetk encode`)"),
        (["report", "geodesics", "--latent", str(latent), "--geodesics", str(latent),
          "--out", str(out)],
         f"aetk report geodesics: error: {latent} is not an aetk geodesic store (run `aetk "
         "geodesics`); it is a latent store (from `aetk encode`)"),
        (["report", "summary", "--runs", "vae-bernoulli", "--histories", str(steps / "h.tsv"),
          "--latents", str(geo), "--curves", str(out), "--table", str(tmp_path / "t.tsv")],
         f"aetk report summary: error: {geo} is not an aetk latent store (run `aetk encode`); "
         "it is a geodesic store (from `aetk geodesics`)"),
        (["train", "--data", str(model), "--model", "vae", "--likelihood", "bernoulli",
          "--out", str(out), "--history", str(tmp_path / "h.tsv")],
         f"aetk train: error: {model} is not an aetk data store (run `aetk preprocess`); it is "
         "a model directory (from `aetk train`)"),
        (["encode", "--data", str(latent), "--model", str(model), "--out", str(out)],
         f"aetk encode: error: {latent} is not an aetk data store (run `aetk preprocess`)"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        assert capsys.readouterr().err.startswith(message), argv
    assert list(tmp_path.iterdir()) == []


def _refused_before_any_work(cases: list[tuple[list[str], str]], capsys: pytest.CaptureFixture,
                             root: Path, before: dict[Path, int]) -> None:
    """Each command of `cases` fails with the start of its message, before any training,
    and nothing under `root` changed from `before` (modification times)."""
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        out, err = capsys.readouterr()
        assert err.startswith(message), argv
        assert "epoch" not in out, argv  # no training before the refusal
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_an_output_path_given_by_mistake_is_refused_before_any_work(
        steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An output path that holds something else (an input store, a model, a data file) is
    refused with a message before the command works, and nothing there is lost: `encode
    --out` the data store, or `preprocess --out` the user's own file, deleted them."""
    import shutil

    for name in ("data.zarr", "vae-bernoulli.zarr", "model", "h.tsv"):
        (shutil.copytree if (steps / name).is_dir() else shutil.copy)(steps / name,
                                                                       tmp_path / name)
    data, latent, model, table = (tmp_path / n for n in ("data.zarr", "vae-bernoulli.zarr",
                                                         "model", "h.tsv"))
    old = tmp_path / "old.zarr"  # a zarr 2 store's attributes
    old.mkdir()
    (old / ".zattrs").write_text("{}")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    train = ["train", "--data", str(data), "--model", "vae", "--likelihood", "bernoulli",
             "--epochs", "1", "--no-progress"]
    cases = [
        (["encode", "--data", str(data), "--model", str(model), "--out", str(data)],
         f"aetk encode: error: {data} exists and is not an aetk latent store to replace: it is"
         " a data store (from `aetk preprocess`); give another output path, or remove it"),
        (["geodesics", "--model", str(model), "--latent", str(latent), "--out", str(model)],
         f"aetk geodesics: error: {model} exists and is not an aetk geodesic store to replace:"
         " it is a model directory (from `aetk train`)"),
        (["preprocess", "--source", str(table), "--out", str(table)],
         f"aetk preprocess: error: {table} exists and is not an aetk data store to replace: it"
         " is a training history (from `aetk train`)"),
        (["sample", "--model", str(model), "--n", "2", "--out", str(latent)],
         f"aetk sample: error: {latent} exists and is not an aetk sample store to replace: it "
         "is a latent store (from `aetk encode`)"),
        ([*train, "--out", str(data), "--history", str(tmp_path / "new.tsv")],
         f"aetk train: error: {data} is a data store (from `aetk preprocess`), not a folder "
         "for a model"),
        ([*train, "--out", str(tmp_path / "new"), "--history", str(model)],
         f"aetk train: error: --history {model} is a folder: give the table's file name"),
        # the same path failed after the training; one inside the model folder replaced its
        # weights with the table (the helper's findings, 2026-12-03)
        ([*train, "--out", str(tmp_path / "new"), "--history", str(tmp_path / "new")],
         f"aetk train: error: --history {tmp_path / 'new'} is the model folder --out "
         f"{tmp_path / 'new'} or inside it: give the table a path of its own"),
        ([*train, "--out", str(model), "--history", str(model / "weights.pt")],
         f"aetk train: error: --history {model / 'weights.pt'} is the model folder --out "
         f"{model} or inside it"),
        (["report", "run", "--data", str(data), "--latent", str(latent), "--out-dir",
          str(table)], f"aetk report run: error: --out-dir {table} is a file"),
        # the figures were written into the store, among its variables
        *((["report", "run", "--data", str(data), "--latent", str(latent), "--out-dir",
            str(out)], f"aetk report run: error: --out-dir {out} is in the zarr store "
           f"{store}, {what}: give a folder for the figures outside it")
          for out, store, what in (
              (latent, latent, "a latent store (from `aetk encode`)"),
              (latent / "z_mean", latent, "a latent store (from `aetk encode`)"),
              (data / "fig", data, "a data store (from `aetk preprocess`)"),
              (old / "fig", old, "a zarr-2 store (aetk writes zarr 3)"))),
        (["report", "geodesics", "--latent", str(latent), "--geodesics", str(latent),
          "--out", str(latent / "g")], f"aetk report geodesics: error: --out "
         f"{latent / 'g.png'} is in the zarr store {latent}, a latent store (from `aetk "
         "encode`): give a file for the figure outside it"),
        (["report", "summary", "--runs", "r", "--histories", str(table), "--latents",
          str(latent), "--curves", str(tmp_path / "c.png"), "--table", str(data / "t.tsv")],
         f"aetk report summary: error: --table {data / 't.tsv'} is in the zarr store {data}, "
         "a data store (from `aetk preprocess`): give a file of its own outside it"),
        # the table wrote over the figure; a suffix matplotlib lacks failed after the work
        (["report", "summary", "--runs", "r", "--histories", str(table), "--latents",
          str(latent), "--curves", str(tmp_path / "c.png"), "--table", f"{tmp_path}//c.png"],
         f"aetk report summary: error: --curves and --table are the same file, "
         f"{tmp_path / 'c.png'}: give each its own"),
        (["report", "summary", "--runs", "r", "--histories", str(table), "--latents",
          str(latent), "--curves", str(tmp_path / "c.tsv"), "--table", str(tmp_path / "t")],
         f"aetk report summary: error: --curves {tmp_path / 'c.tsv'}: matplotlib writes no "
         ".tsv figures; give one of ."),
        (["report", "geodesics", "--latent", str(latent), "--geodesics", str(latent),
          "--out", str(tmp_path / "g.v2")], f"aetk report geodesics: error: --out "
         f"{tmp_path / 'g.v2'}: matplotlib writes no .v2 figures"),
        # a path under a file cannot be created: refused before the work, not after it
        ([*train, "--out", str(table / "m"), "--history", str(tmp_path / "new.tsv")],
         f"aetk train: error: cannot write {table / 'm'}: {table} is a file, not a folder"),
        ([*train, "--out", str(tmp_path / "new"), "--history", str(table / "x" / "h.tsv")],
         f"aetk train: error: cannot write {table / 'x' / 'h.tsv'}: {table} is a file"),
        (["encode", "--data", str(data), "--model", str(model), "--out",
          str(table / "l.zarr")], f"aetk encode: error: cannot write {table / 'l.zarr'}: "
         f"{table} is a file, not a folder"),
        (["geodesics", "--model", str(model), "--latent", str(latent), "--out",
          str(table / "g.zarr")], f"aetk geodesics: error: cannot write {table / 'g.zarr'}"),
    ]
    _refused_before_any_work(cases, capsys, tmp_path, before)
    # a store of the same kind is replaced, as before
    assert cli.main(["encode", "--data", str(data), "--model", str(model), "--n-examples",
                     "2", "--n-generated", "2", "--out", str(latent)]) == 0


def test_plain_file_outputs_replace_only_their_own_kind(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """`train --history counts.csv` replaced the user's data file with the loss table, as
    `report summary --table` did any file: each table replaces only a table of its kind (by
    its header line, as written) or an empty file, and refuses anything else before the
    work; --history or --out in the data store, --history the --checkpoint-dir likewise."""
    counts, data, model = tmp_path / "counts.csv", tmp_path / "d.zarr", tmp_path / "m"
    history, latent, table = tmp_path / "h.tsv", tmp_path / "l.zarr", tmp_path / "t.tsv"
    pd.DataFrame(np.random.default_rng(0).random((16, 4)), columns=list("abcd")).to_csv(
        counts, index=False)
    train = ["train", "--data", str(data), "--model", "vae", "--likelihood", "bernoulli",
             "--hidden", "8", "--epochs", "1", "--no-progress", "--device", "cpu"]
    summary = ["report", "summary", "--runs", "r", "--histories", str(history), "--latents",
               str(latent), "--curves", str(tmp_path / "c.png")]
    assert cli.main(["preprocess", "--source", str(counts), "--out", str(data)]) == 0
    assert cli.main([*train, "--out", str(model), "--history", str(history)]) == 0
    assert cli.main(["encode", "--data", str(data), "--model", str(model), "--n-examples",
                     "2", "--n-generated", "2", "--device", "cpu", "--out", str(latent)]) == 0
    assert cli.main([*summary, "--table", str(table)]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    new = ["--out", str(tmp_path / "new")]
    cases = [
        ([*train, *new, "--history", str(counts)], f"aetk train: error: {counts} exists and "
         "is not a training history to replace: it is a file; give another output path, or "
         "remove it first"),
        ([*train, *new, "--history", str(table)], f"aetk train: error: {table} exists and is "
         "not a training history to replace: it is a comparison table (from `aetk report "
         "summary`)"),
        ([*train, *new, "--history", str(data / "h.tsv")], f"aetk train: error: --history "
         f"{data / 'h.tsv'} is in the zarr store {data}, a data store (from `aetk "
         "preprocess`): give a file for the table outside it"),
        ([*train, "--out", str(data / "m"), "--history", str(tmp_path / "new.tsv")],
         f"aetk train: error: --out {data / 'm'} is in the zarr store {data}"),
        ([*train, *new, "--history", str(tmp_path / "ck"), "--checkpoint-dir",
          str(tmp_path / "ck")], f"aetk train: error: --history {tmp_path / 'ck'} is the "
         "--checkpoint-dir: give the table a path of its own"),
        ([*summary, "--table", str(counts)], f"aetk report summary: error: {counts} exists "
         "and is not a comparison table to replace: it is a file"),
        ([*summary, "--table", str(history)], f"aetk report summary: error: {history} exists "
         "and is not a comparison table to replace: it is a training history (from `aetk "
         "train`)"),
    ]
    _refused_before_any_work(cases, capsys, tmp_path, before)
    # a table of its own kind is replaced, as before, and so is an empty file
    (tmp_path / "empty.tsv").touch()
    for name in ("h.tsv", "empty.tsv"):
        assert cli.main([*train, "--out", str(model), "--history", str(tmp_path / name)]) == 0
        assert pd.read_csv(tmp_path / name, sep="\t")["epoch"].tolist() == [1]
    assert cli.main([*summary, "--table", str(table)]) == 0


def test_the_hidden_defaults_are_each_stated(capsys: pytest.CaptureFixture) -> None:
    """build_model's hidden=(400, 400) differs from aetk train's --hidden 256 256 and
    config.yaml's [256, 256] (each kept: a change would change run hashes and users'
    models); --help and core-api state both, so that neither surprises."""
    import inspect

    import yaml

    root = Path(__file__).parents[1]
    library = inspect.signature(aetk.build_model).parameters["hidden"].default
    config = yaml.safe_load((root / "config.yaml").read_text())["network"]["hidden"]
    assert tuple(library) == (400, 400) and config == [256, 256]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: [256, 256])" in text and "config.yaml" in text
    assert "aetk.build_model's default is (400, 400)" in text
    api = " ".join((root / "docs" / "core-api.md").read_text().split())
    assert "hidden=(400, 400)" in api and "`aetk train --hidden` and the pipeline's" in api


# ------------------------------------------------------ what each flag hands the library


DOCUMENTED_DEFAULTS = {  # as --help, the README and config.schema.yaml state them
    "preprocess": ({"noise": 0.05, "validation_fraction": 0.1, "seed": 0},
                   ["--source", "digits", "--out", "d.zarr"]),
    "train": ({"latent_dim": 2, "hidden": [256, 256], "activation": "relu", "epochs": 20,
               "batch_size": 128, "lr": 1e-3, "seed": 0, "threads": 1, "patience": 0,
               "input_noise": 0.0, "resume": True, "device": "auto"},
              ["--data", "d", "--model", "vae", "--likelihood", "bernoulli", "--out", "m",
               "--history", "h.tsv"]),
    "encode": ({"batch_size": 1024, "n_examples": 10, "n_generated": 16, "n_scored": 500,
                "n_importance": 100, "traversal_steps": 10, "seed": 0},
               ["--data", "d", "--model", "m", "--out", "l.zarr"]),
    "sample": ({"n": 1000, "sampler": "model", "n_centroids": 1000, "seed": 0,
                "units": "transformed"},
               ["--model", "m", "--out", "s.zarr"]),
    "geodesics": ({"n_points": 32, "init": "line", "graph_neighbours": 10, "max_iter": 500,
                   "grid_size": 64, "spray": 16, "spray_points": 100,
                   "integration_tol": 1e-4, "seed": 0},
                  ["--model", "m", "--latent", "l", "--out", "g.zarr"]),
}


@pytest.mark.parametrize("command", list(DOCUMENTED_DEFAULTS))
def test_each_command_has_its_documented_defaults(command: str) -> None:
    """The defaults are what the documentation (and the workflow's schema, which restates
    most of them) says, not whatever the parser happens to hold."""
    expected, required = DOCUMENTED_DEFAULTS[command]
    parsed = vars(cli.build_parser().parse_args([command, *required]))
    assert {k: parsed[k] for k in expected} == expected


def test_preprocess_splits_with_its_seed_and_fraction(tmp_path: Path) -> None:
    """--seed and --validation-fraction reach aetk.data.prepare (the store's split is the one
    prepare makes with them, called here directly) and the recorded settings; without them
    the split holds out 10% with seed 0."""
    out = tmp_path / "d.zarr"
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "100", "--seed", "3",
                     "--validation-fraction", "0.3", "--out", str(out)]) == 0
    raw = data_mod.load_source("digits", n_samples=100, seed=3)
    want = data_mod.prepare(raw, transforms=[], validation_fraction=0.3, n_samples=100, seed=3)
    stored = storage.read_data(out)
    np.testing.assert_array_equal(stored.is_validation, want.is_validation)
    np.testing.assert_array_equal(stored.x, want.x)
    config = json.loads(stored.attrs["config"])
    assert (config["seed"], config["validation_fraction"]) == (3, 0.3)
    other = data_mod.prepare(raw, transforms=[], validation_fraction=0.3, n_samples=100, seed=0)
    assert not np.array_equal(other.is_validation, want.is_validation)  # the seed matters
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "100",
                     "--out", str(tmp_path / "default.zarr")]) == 0
    default = storage.read_data(tmp_path / "default.zarr")
    assert int(default.is_validation.sum()) == 10
    np.testing.assert_array_equal(default.is_validation, data_mod.prepare(
        raw, transforms=[], n_samples=100, seed=0).is_validation)


def _fit_arguments(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict:
    """What `aetk train argv` hands aetk.fit (which is stopped there: nothing trains)."""
    seen: dict = {}

    def stop(model: object, train: object, val: object, **kwargs: object) -> None:
        seen.update(model=model, train=train, val=val, **kwargs)
        raise ValueError("stopped before training")

    monkeypatch.setattr(aetk, "fit", stop)
    assert cli.main(argv) == 1
    return seen


def test_train_hands_fit_its_flags_and_the_training_split(
        steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """aetk.fit gets the training rows (not all rows) and the validation rows, the model
    built with --activation, --input-noise, --latent-dim and --hidden, and --epochs,
    --batch-size, --lr, --seed and --no-resume; without them the documented defaults."""
    stored = storage.read_data(steps / "data.zarr")
    base = ["train", "--data", str(steps / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--no-progress", "--out", str(tmp_path / "m"),
            "--history", str(tmp_path / "h.tsv")]
    seen = _fit_arguments(monkeypatch, [
        *base, "--activation", "tanh", "--input-noise", "0.3", "--latent-dim", "3",
        "--hidden", "16", "8", "--epochs", "7", "--batch-size", "17", "--lr", "0.005",
        "--seed", "4", "--no-resume"])
    np.testing.assert_array_equal(seen["train"], stored.x[~stored.is_validation])
    np.testing.assert_array_equal(seen["val"], stored.x[stored.is_validation])
    assert len(seen["train"]) == 180 and len(seen["val"]) == 60
    model = seen["model"]
    assert any(isinstance(m, torch.nn.Tanh) for m in model.encoder.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    assert model.build_spec["input_noise"] == 0.3 and model.latent_dim == 3
    assert model.build_spec["hidden"] == [16, 8]
    assert (seen["epochs"], seen["batch_size"], seen["lr"], seen["seed"], seen["resume"]) == \
        (7, 17, 0.005, 4, False)
    seen = _fit_arguments(monkeypatch, base)
    assert (seen["epochs"], seen["batch_size"], seen["lr"], seen["seed"], seen["resume"]) == \
        (20, 128, 1e-3, 0, True)
    model = seen["model"]
    assert model.latent_dim == 2 and model.build_spec["hidden"] == [256, 256]
    assert "input_noise" not in model.build_spec
    assert any(isinstance(m, torch.nn.ReLU) for m in model.encoder.modules())
    assert not (tmp_path / "m").exists()


def test_encode_stores_the_examples_it_reconstructs(steps: Path) -> None:
    """example_data are the data rows of example_index (validation samples, one per class
    first), example_reconstruction the model's reconstructions of those rows."""
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    data = storage.read_data(steps / "data.zarr")
    idx = lat["example_index"].values
    assert data.is_validation[idx].all()
    assert len(set(data.labels[idx].tolist())) == len(idx)  # six examples, six classes
    np.testing.assert_array_equal(lat["example_data"].values, data.x[idx])
    model = aetk.load(steps / "model").eval()
    with torch.no_grad():
        want = model.reconstruct(torch.from_numpy(data.x[idx])).numpy()
    np.testing.assert_allclose(lat["example_reconstruction"].values, want, rtol=1e-5,
                               atol=1e-6)


def test_sample_draws_are_seeded(steps: Path, tmp_path: Path) -> None:
    """--seed is the seed of the draws: the same seed draws the same samples, another seed
    others."""
    def draw(seed: str, name: str) -> np.ndarray:
        assert cli.main(["sample", "--model", str(steps / "model"), "--n", "5", "--seed", seed,
                         "--out", str(tmp_path / name)]) == 0
        return storage.read_zarr(tmp_path / name)["x"].values

    first = draw("3", "a.zarr")
    torch.manual_seed(123)  # another global state: the command seeds its own
    np.testing.assert_array_equal(draw("3", "b.zarr"), first)
    assert not np.allclose(draw("4", "c.zarr"), first)


def test_geodesics_say_each_stage_as_it_ends(steps: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """The graph, the fits, the grids and the Frechet mean with its spray each print a
    line with their seconds as they end: the job's log said nothing until the end (a
    minute and more for thousands of codes or a stiff metric)."""
    assert cli.main(["geodesics", "--model", str(steps / "rhvae"), "--latent",
                     str(steps / "latent_rhvae.zarr"), "--n-pairs", "2", "--n-points", "10",
                     "--grid-size", "9", "--spray", "4", "--spray-points", "20", "--init",
                     "graph", "--out", str(tmp_path / "g.zarr")]) == 0
    lines = capsys.readouterr().out.splitlines()
    n_codes = len(storage.read_zarr(steps / "latent_rhvae.zarr")["z_mean"])
    stages = [rf"graph of {n_codes} codes, 10 neighbours each: 2 of 2 pairs joined in ",
              r"fitted 2 geodesics, 2 converged in ",
              r"log volume and curvature on a 9 x 9 grid in ",
              r"Frechet mean of 20 validation codes \(\d+ steps, converged\) and 4 geodesics "
              r"leaving it in ",
              r"2 geodesics \(RHVAEMetric, graph start\) on \S+ in "]
    assert len(lines) == len(stages), lines
    for line, stage in zip(lines, stages, strict=True):
        assert re.fullmatch(stage + r"\d+\.\d s.*", line), line


def test_geodesics_hand_the_fits_their_options(steps: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--graph-neighbours, --n-points, --max-iter and --seed reach the graph start and the
    fit; without --n-pairs (and --pairs), 8 sampled pairs, as --help says."""
    import aetk.geometry

    seen: dict = {}

    def graph(metric: object, z0: torch.Tensor, z1: object, nodes: object, **kwargs: object):
        seen["graph"] = kwargs
        return type("Graph", (), {"points": None, "found": torch.ones(len(z0), dtype=bool)})()

    def fit(metric: object, z0: torch.Tensor, z1: torch.Tensor, **kwargs: object) -> None:
        seen.update(n=len(z0), fit=kwargs)
        raise ValueError("stopped before fitting")

    monkeypatch.setattr(aetk.geometry, "graph_curves", graph)
    monkeypatch.setattr(aetk.geometry, "fit_geodesics", fit)
    base = ["geodesics", "--model", str(steps / "model"), "--latent",
            str(steps / "vae-bernoulli.zarr"), "--out", str(tmp_path / "g.zarr")]
    assert cli.main([*base, "--n-pairs", "3", "--init", "graph", "--graph-neighbours", "4",
                     "--n-points", "6", "--max-iter", "7", "--seed", "5"]) == 1
    assert seen["n"] == 3 and seen["graph"] == {"k": 4, "n_points": 6, "progress": False}
    assert (seen["fit"]["n_points"], seen["fit"]["max_iter"], seen["fit"]["seed"]) == (6, 7, 5)
    assert cli.main(base) == 1
    assert seen["n"] == 8
    assert (seen["fit"]["n_points"], seen["fit"]["max_iter"], seen["fit"]["seed"]) == \
        (32, 500, 0)
    assert not (tmp_path / "g.zarr").exists()


def test_summary_scores_against_the_validation_data_and_records_the_seed(steps: Path) -> None:
    """The table's sample scores are those of a classifier fitted on the training split of
    --data (report.SampleScorer, built here directly), data_sample_score the validation
    samples' own; the seed column is the training seed (0 in the fixture)."""
    from aetk import report

    table = pd.read_csv(steps / "table.tsv", sep="\t")
    stored = storage.read_data(steps / "data.zarr")
    lat = storage.read_zarr(steps / "vae-bernoulli.zarr")
    scorer = report.SampleScorer(stored.x[~stored.is_validation],
                                 stored.labels[~stored.is_validation],
                                 stored.x[stored.is_validation])
    row = table.iloc[0]
    assert row["data_sample_score"] == pytest.approx(scorer(stored.validation), rel=1e-5)
    assert row["sample_score"] == pytest.approx(scorer(lat["scored_model"].values), rel=1e-5)
    assert row["geometric_sample_score"] == pytest.approx(
        scorer(lat["scored_geometric"].values), rel=1e-5)
    assert row["seed"] == 0 and lat.attrs["train_seed"] == 0


def test_a_model_of_hand_made_parts_is_refused_with_a_message_for_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model saved from hand-made parts (a build_model VAE whose decoder was replaced):
    one line saying the commands take models of aetk train and naming the parts, not
    load's Python-only advice after torch's missing and unexpected keys."""
    class Decoder(aetk.Decoder):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 4)

        def forward(self, z: torch.Tensor) -> torch.distributions.Distribution:
            return torch.distributions.Independent(
                torch.distributions.Bernoulli(logits=self.lin(z)), 1)

    model = aetk.build_model("vae", "bernoulli", in_features=4, hidden=(3,))
    model.decoder = Decoder()
    model.save(tmp_path / "m")
    assert cli.main(["sample", "--model", str(tmp_path / "m"), "--n", "3",
                     "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "aetk sample: error: " in err
    assert ("holds a model made of parts that aetk cannot rebuild from its saved description "
            "(parts: encoder aetk.encoders:GaussianEncoder, decoder test_cli:") in err
    assert "the aetk commands take models of `aetk train` or aetk.build_model" in err


def test_label_conditions_of_unnamed_classes_reach_the_largest_code() -> None:
    """Without class names, one column per class code up to the largest: codes 0, 2, 1
    make three columns."""
    from aetk.data import TransformPipeline

    stored = storage.StoredData(
        x=np.zeros((3, 2)), is_validation=np.zeros(3, dtype=bool), labels=np.array([0, 2, 1]),
        label_kind="categorical", label_names=None, image_shape=None,
        pipeline=TransformPipeline([]), attrs={})
    np.testing.assert_array_equal(label_conditions(stored, "d.zarr"),
                                  [[1, 0, 0], [0, 0, 1], [0, 1, 0]])


def test_encode_stores_the_posteriors_and_a_draw_from_each() -> None:
    """z_mean and z_std are q(z|x)'s mean and standard deviation (the encoder's, computed
    here directly), z_sample one draw from it: standardised by them the draws of 300
    samples x 2 dimensions have mean square 1 (sd 0.06), not 0 (the mean stored as the
    draw) and not 1 / sigma^2 > 2.7 (a variance stored as the scale, sigma < 0.6)."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=4, latent_dim=2, hidden=(8,))
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # posteriors far from N(0, 1): scales well below 1
        last.bias[2:] = -2.0
    x = torch.randn(300, 4)
    stored = storage.StoredData(
        x=x.numpy(), is_validation=np.arange(300) % 3 == 0, labels=None, label_kind="none",
        label_names=None, image_shape=None, pipeline=data_mod.TransformPipeline([]), attrs={})
    out = encode_data(model, stored, batch_size=128, n_examples=1, n_generated=0, seed=1)
    with torch.no_grad():
        q = model.encode(x)
    np.testing.assert_allclose(out["z_mean"], q.mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["z_std"], q.stddev.numpy(), rtol=1e-6)
    assert out["z_std"].max() < 0.6
    u = (out["z_sample"].astype(np.float64) - out["z_mean"]) / out["z_std"]
    assert 0.8 < float(np.mean(u ** 2)) < 1.2, float(np.mean(u ** 2))


def test_encode_fits_the_generating_samplers_to_the_training_codes(monkeypatch) -> None:
    """An autoencoder's code mixture and the encoder metric's Riemannian uniform sampler
    are built from the training rows' codes (and scales), not the validation rows'."""
    from aetk import expost

    seen: dict = {}

    class Spy(expost.CodeMixture):
        def __init__(self, codes, *args, **kwargs) -> None:
            seen["mixture"] = np.asarray(codes)
            super().__init__(codes, *args, **kwargs)

    def geometric(loc, scale, n, seed, n_centroids=1000):
        seen["metric"] = (loc, scale)
        return torch.zeros(n, loc.shape[1])

    monkeypatch.setattr(expost, "CodeMixture", Spy)
    monkeypatch.setattr("aetk.cli.encode.geometric_latents", geometric)
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    train = np.arange(60) % 4 != 0
    stored = storage.StoredData(
        x=x.numpy(), is_validation=~train, labels=None, label_kind="none", label_names=None,
        image_shape=None, pipeline=data_mod.TransformPipeline([]), attrs={})
    for name in ("ae", "vae"):
        model = aetk.build_model(name, "gaussian", in_features=4, latent_dim=2, hidden=(8,))
        out = encode_data(model, stored, batch_size=32, n_examples=1, n_generated=5, seed=0)
        if name == "ae":
            np.testing.assert_array_equal(seen.pop("mixture"), out["z_mean"][train])
        else:
            loc, scale = seen.pop("metric")
            np.testing.assert_array_equal(loc, out["z_mean"][train])
            np.testing.assert_array_equal(scale, out["z_std"][train])


def test_split_or_all_takes_a_split_of_two_rows_or_more() -> None:
    """A split of at least two rows is itself; of one row or none, all rows (a statistic
    of one sample has no spread)."""
    two = np.array([False, True, True, False])
    assert split_or_all(two) is two
    for rows in (np.array([False, True, False, False]), np.zeros(4, dtype=bool)):
        assert split_or_all(rows) == slice(None)


def test_sample_from_the_mixture_fits_it_to_the_training_codes(
        steps: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`aetk sample --sampler mixture` fits its code mixture to the encoder means of the
    data store's training rows (computed here from the saved model), not the validation
    rows'."""
    from aetk import expost

    seen: dict = {}

    class Spy(expost.CodeMixture):
        def __init__(self, codes, *args, **kwargs) -> None:
            seen["codes"] = codes.numpy()
            super().__init__(codes, *args, **kwargs)

    monkeypatch.setattr(expost, "CodeMixture", Spy)
    assert cli.main(["sample", "--model", str(steps / "model"), "--sampler", "mixture", "--n",
                     "3", "--data", str(steps / "data.zarr"), "--device", "cpu", "--out",
                     str(tmp_path / "s.zarr")]) == 0  # CPU codes, for the spy's numpy()
    stored = storage.read_data(steps / "data.zarr")
    model = aetk.load(steps / "model").eval()
    with torch.no_grad():
        want = model.latent_mean(torch.from_numpy(stored.train)).numpy()
    np.testing.assert_allclose(seen["codes"], want, rtol=1e-5, atol=1e-6)


def test_sampled_pairs_are_uniform_over_pairs_of_unequal_partners() -> None:
    """Ten samples of one class and two singletons: 21 pairs across classes, the two
    singletons' pair one of them (1/21, 100 of 2,100 seeds expected, sd 10). Starts drawn
    uniformly instead of in proportion to their partners would give it 1/12 x 2/11, a
    third as often."""
    labels = np.array([0] * 10 + [1, 2])
    hits = sum({int(a[0]) for a in choose_pairs(np.ones(12, dtype=bool), labels,
                                                    "categorical", 1, seed)} == {10, 11}
               for seed in range(2100))
    assert 65 < hits < 135, hits
