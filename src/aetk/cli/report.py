"""``aetk report run``, ``geodesics`` and ``summary``: the figures and tables, with the
checks that the stores and histories given belong together."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aetk import storage
from aetk.cli.args import add_command


def check_figure_path(path: str | Path, option: str) -> None:
    """Refuse, before any work, a figure path whose suffix matplotlib cannot write (it
    would fail only at the end); none is PNG, as matplotlib takes it."""
    from matplotlib.figure import Figure

    suffix = Path(path).suffix.lower().lstrip(".")
    formats = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ValueError(f"{option} {path}: matplotlib writes no .{suffix} figures; give one of "
                         f".{', .'.join(sorted(formats))}")


def cmd_report_run(args: argparse.Namespace) -> None:
    from aetk import report

    latent = storage.read_store(args.latent, "aetk-latent")
    stored = storage.read_data(args.data)
    encoded_from, given = latent.attrs.get("data_config_hash"), stored.attrs.get("config_hash")
    if encoded_from and given and encoded_from != given:
        raise ValueError(f"{args.latent} was encoded from another data store (config hash "
                         f"{encoded_from}) than {args.data} ({given})")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} is a file: give a folder for the figures")
    storage.check_outside_stores(out, "--out-dir", "a folder for the figures")
    out.mkdir(parents=True, exist_ok=True)
    names = stored.attrs.get("feature_names")  # the latent store keeps no feature names
    report.plot_latent(latent, out / "latent.png")
    report.plot_reconstructions(latent, out / "reconstructions.png", feature_names=names)
    report.plot_samples(latent, stored, out / "samples.png")
    report.plot_traversals(latent, out / "traversals.png", feature_names=names)
    print(f"wrote latent.png, reconstructions.png, samples.png and traversals.png to {out}")


def cmd_report_geodesics(args: argparse.Namespace) -> None:
    from aetk import report

    out = Path(args.out)
    out = out if out.suffix else out.with_suffix(".png")  # matplotlib adds it: say so
    check_figure_path(out, "--out")
    storage.check_outside_stores(out, "--out", "a file for the figure")
    latent = storage.read_store(args.latent, "aetk-latent")
    geodesics = storage.read_store(args.geodesics, "aetk-geodesics")
    fitted_on, given = geodesics.attrs.get("config_hash"), latent.attrs.get("config_hash")
    if fitted_on and given and fitted_on != given:
        raise ValueError(f"{args.geodesics} was fitted with another model (run "
                         f"{geodesics.attrs.get('run')!r}, run hash {fitted_on}) than "
                         f"{args.latent} was encoded with (run {latent.attrs.get('run')!r}, "
                         f"{given})")
    report.plot_geodesics(latent, geodesics, out)
    print(f"wrote {out}")


def check_run(ds: Any, path: str, run: str, runs: list[str], hint: str = "") -> None:
    """Refuse a store whose `run` attribute (the name `aetk encode` gave it) is another of
    the given `runs`: a mix-up of their order. Run names are free labels otherwise."""
    stored = ds.attrs.get("run")
    if stored != run and stored in runs:
        raise ValueError(f"{path} holds run {stored!r}, but is given for run {run!r}{hint}")


def _same_losses(history: Any, recorded: list[float] | None) -> bool:
    if recorded is None or "train_loss" not in history or len(history) != len(recorded):
        return False
    return bool(np.allclose(history["train_loss"].to_numpy(dtype=float), recorded,
                            rtol=1e-9, atol=0.0))


def check_history(history: Any, path: str, run: str, latents: dict[str, Any],
                  latent_paths: dict[str, str]) -> None:
    """Refuse a history table that is not the one saved with the model that encoded the
    run's latent store (its `history_train_loss`, when `aetk encode` recorded one), naming
    the run it belongs to when that is another of the given runs."""
    recorded = latents[run].attrs.get("history_train_loss")
    if recorded is None or _same_losses(history, recorded):
        return
    owner = next((r for r, ds in latents.items()
                  if r != run and _same_losses(history, ds.attrs.get("history_train_loss"))),
                 None)
    if owner is not None:
        raise ValueError(f"{path}, given for run {run!r}, is the training history of run "
                         f"{owner!r} (the one saved with the model that encoded "
                         f"{latent_paths[owner]}): give --runs, --histories and --latents in "
                         "the same order")
    raise ValueError(f"{path} is not the training history of run {run!r}: its train_loss per "
                     "epoch is not the one saved with the model that encoded "
                     f"{latent_paths[run]}")


def cmd_report_summary(args: argparse.Namespace) -> None:
    import pandas as pd

    from aetk import report

    if not (len(args.runs) == len(args.histories) == len(args.latents)):
        raise ValueError("--runs, --histories and --latents need one entry per run, in order")
    repeated = sorted({r for r in args.runs if args.runs.count(r) > 1})
    if repeated:
        raise ValueError(f"--runs names {', '.join(repeated)} more than once: one entry per run")
    outputs = {option: path for option, path in (("--curves", args.curves),
               ("--table", args.table), ("--figure", args.figure)) if path}
    for option, path in outputs.items():
        storage.check_outside_stores(Path(path), option, "a file of its own")
        if option != "--table":
            check_figure_path(path, option)
    for (one, a), (other, b) in itertools.combinations(outputs.items(), 2):
        if Path(a).expanduser().resolve() == Path(b).expanduser().resolve():
            raise ValueError(f"{one} and {other} are the same file, {a}: give each its own")
    # the figures replace figures only (matplotlib refuses other suffixes and adds .png
    # where there is none); the table likewise, by its header
    storage.check_table_replaceable(args.table, "comparison")
    latents = {r: storage.read_store(p, "aetk-latent") for r, p in zip(args.runs, args.latents,
                                                               strict=True)}
    for (run, ds), path in zip(latents.items(), args.latents, strict=True):
        check_run(ds, path, run, args.runs,
                  ": give --runs, --histories and --latents in the same order")
    unsplit = [r for r, ds in latents.items()
               if not (ds["split"].values == storage.SPLIT_VALIDATION).any()]
    if unsplit:
        its = "its" if len(unsplit) == 1 else "their"
        print(f"warning: {', '.join(unsplit)} had no validation split: {its} val_* columns "
              "are scores of the training samples, not of held-out data (scored_on: "
              "training in the table)", file=sys.stderr)
    # A geodesic store belongs to the run whose model it was fitted with (same run hash).
    run_of_hash = {ds.attrs.get("config_hash"): run for run, ds in latents.items()}
    geodesics = {}
    for path in args.geodesics:
        ds = storage.read_store(path, "aetk-geodesics")
        if ds.attrs.get("config_hash") not in run_of_hash:
            raise ValueError(f"{path} was not fitted with the model of any of the runs")
        run = run_of_hash[ds.attrs["config_hash"]]
        check_run(ds, path, run, args.runs)
        geodesics[run] = ds
    histories = {r: pd.read_csv(h, sep="\t") for r, h in zip(args.runs, args.histories,
                                                               strict=True)}
    latent_paths = dict(zip(args.runs, args.latents, strict=True))
    for (run, h), path in zip(histories.items(), args.histories, strict=True):
        check_history(h, path, run, latents, latent_paths)
    scorer = None
    if args.data:
        stored = storage.read_data(args.data)
        if stored.label_kind == "categorical":
            labels = stored.labels[~stored.is_validation]
            scorer = report.SampleScorer(stored.train, labels, stored.validation)
    report.plot_training_curves(histories, Path(args.curves))
    table = report.comparison_table(histories, latents, geodesics, scorer)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.table, sep="\t", index=False, float_format="%.6g")
    if args.figure:
        report.plot_comparison(table, Path(args.figure))
    print(table.to_string(index=False))


def add_parser(sub: Any) -> None:
    """``aetk report`` and its subcommands' options in `sub`, the aetk parser's
    subcommands."""
    p = add_command(
        sub, "report", None, "figures and tables",
        "Figures (PNG) and tables (TSV) for the report; see the subcommands.")
    rsub = p.add_subparsers(dest="report_command", required=True, metavar="WHAT")

    def radd(name: str, func: Any, description: str) -> argparse.ArgumentParser:
        return add_command(rsub, name, func, description.split("\n")[0], description,
                           epilog=None)

    q = radd("run", cmd_report_run,
             "Figures of one model: latent scatter coloured by label, reconstructions, "
             "generated samples and latent traversals.\n\n"
             "input:  --data: the data store; --latent: the model's latent store\n"
             "output: --out-dir: latent.png, reconstructions.png, samples.png, traversals.png")
    q.add_argument("--data", required=True, help="data store (.zarr)")
    q.add_argument("--latent", required=True, help="the model's latent store (.zarr)")
    q.add_argument("--out-dir", required=True,
                   help="folder for the figures (not in a zarr store)")
    q = radd("geodesics", cmd_report_geodesics,
             "Geodesics over the latent codes, on the metric volume for 2-D latents.\n\n"
             "input:  --latent: the latent store; --geodesics: the geodesic store\n"
             "output: --out: the figure (.png)")
    q.add_argument("--latent", required=True, help="latent store (.zarr)")
    q.add_argument("--geodesics", required=True, help="geodesic store (.zarr)")
    q.add_argument("--out", required=True, help="figure to write (.png)")
    q = radd("summary", cmd_report_summary,
             "Training curves of every run and the table comparing them (final and best "
             "validation loss, validation reconstruction error, KL, ELBO and log p(x), time, "
             "geodesic length ratio and, given the --data store with categorical labels, a "
             "classifier's score of the generated samples), optionally drawn as a figure.\n\n"
             "input:  --runs names, with one --histories table and --latents store each, "
             "any --geodesics stores, and optionally the --data store\n"
             "output: --curves (.png), --table (.tsv), --figure (.png)")
    q.add_argument("--runs", nargs="+", required=True, help="run names, e.g. vae-bernoulli")
    q.add_argument("--histories", nargs="+", required=True,
                   help="one history table per run (refused when it is not the history "
                   "saved with the run's model, which aetk encode records in the latent "
                   "store)")
    q.add_argument("--latents", nargs="+", required=True, help="one latent store per run")
    q.add_argument("--geodesics", nargs="*", default=[], help="geodesic stores, any runs")
    q.add_argument("--data", help="the data store: with categorical labels, a classifier "
                   "trained on it scores each run's generated samples")
    q.add_argument("--curves", required=True, help="training-curves figure to write (.png)")
    q.add_argument("--table", required=True, help="comparison table to write (.tsv; an existing "
                   "file is replaced only when it is a comparison table)")
    q.add_argument("--figure", help="comparison figure to write (.png): per run, log p(x) "
                   "and the ELBO, the KL split into mutual information and prior mismatch, "
                   "the reconstruction error and, with --data, the classifier's score")
