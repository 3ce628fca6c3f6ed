"""``aetk preprocess``: load, transform and split a data set into a data store."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any

from aetk import data as data_mod
from aetk import storage
from aetk.cli.args import add_command, fraction, parse_spec, positive, seed


def cmd_preprocess(args: argparse.Namespace) -> None:
    storage.check_replaceable(args.out, "aetk-data", {} if args.source in data_mod.BUNDLED
                              else {"--source": args.source})
    transforms = [parse_spec(t) for t in args.transforms]
    settings = {
        "source": args.source, "key": args.key, "labels": args.labels,
        "n_samples": args.n_samples, "noise": args.noise, "transforms": transforms,
        "validation_fraction": args.validation_fraction, "seed": args.seed,
    }
    if args.header is not None:  # only when given: the hashes of earlier stores stay
        settings["header"] = args.header
    if args.drop_columns:  # likewise
        settings["drop_columns"] = args.drop_columns
    t0 = time.perf_counter()
    raw = data_mod.load_source(args.source, key=args.key, labels=args.labels,
                               header=args.header, drop_columns=args.drop_columns,
                               n_samples=args.n_samples, noise=args.noise, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:  # prepare's, in the CLI's words
        warnings.simplefilter("always", data_mod.SampleCountWarning)
        warnings.simplefilter("always", data_mod.PrecisionWarning)
        warnings.simplefilter("always", data_mod.EmptyValidationWarning)
        prep = data_mod.prepare(raw, transforms=transforms,
                                validation_fraction=args.validation_fraction,
                                n_samples=None if args.source in data_mod.GENERATED
                                else args.n_samples, seed=args.seed)
    storage.write_data(prep, args.out, {"config_hash": data_mod.config_hash(settings),
                                        "config": json.dumps(settings)})
    for w in caught:
        if issubclass(w.category, data_mod.SampleCountWarning):
            print(f"warning: --n-samples {args.n_samples} is more than the {len(raw.x)} "
                  f"samples of {args.source}: using all {len(raw.x)}", file=sys.stderr)
        elif issubclass(w.category, data_mod.PrecisionWarning | data_mod.EmptyValidationWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:  # any other warning passed on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   source=w.source)
    n_val = int(prep.is_validation.sum())
    print(f"{args.source}: {len(prep.x)} samples ({len(prep.x) - n_val} train, {n_val} "
          f"validation) x {prep.x.shape[1]} features, labels: {raw.label_kind}, transforms: "
          f"{', '.join(step.name for step in prep.pipeline.steps) or 'none'}; "
          f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")


def add_parser(sub: Any) -> None:
    """``aetk preprocess`` and its options in `sub`, the aetk parser's subcommands."""
    p = add_command(
        sub, "preprocess", cmd_preprocess, "load, transform and split a data set",
        "Load a bundled data set or a user file, apply transforms fitted on the "
        "training samples, split train/validation with a seed, and write a Zarr store.\n\n"
        f"input:  --source: a bundled name ({', '.join(data_mod.BUNDLED)}) or a file "
        f"({', '.join(data_mod.FILE_SUFFIXES)}; .csv and .tsv also "
        f"{', '.join(data_mod.COMPRESSIONS)} compressed)\n"
        "output: --out: the data store (variables x, split, label, transform parameters)")
    p.add_argument("--source", required=True, help="bundled data set name or file path")
    p.add_argument("--out", required=True, help="data store to write (a .zarr directory)")
    p.add_argument("--key", help="array in the file: npz key, zarr array or AnnData layer "
                   "(default: x, X or data, or the only array)")
    p.add_argument("--labels", help="label array/column in the file, or a .npy/.txt file of "
                   "labels (default: none, unlabelled)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether a .csv/.tsv file's first line holds column names (default: "
                   "unless it is all numbers; a first line of numbers that may be names, such as "
                   "0,1,2,... or a grid of wavelengths, must be said)")
    p.add_argument("--drop-columns", nargs="+", default=[], metavar="NAME",
                   help="columns of a .csv/.tsv file that are not features, such as sample "
                   "IDs, left out by name (with --no-header: 0, 1, ... from the left); or "
                   "AnnData variables (.h5ad, .zarr), such as spike-ins, by var name")
    p.add_argument("--n-samples", type=positive, help="use a seeded random subset of at most "
                   "this size (all samples, with a warning, when the data set has fewer; the "
                   "number generated for swissroll/scurve) (default: all samples)")
    p.add_argument("--noise", type=float, default=0.05, help="noise of swissroll/scurve")
    p.add_argument("--transforms", nargs="*", default=[], metavar="T",
                   help="in order; each NAME, NAME:key=value,... or JSON; names: "
                   f"{', '.join(data_mod.TRANSFORMS)} (e.g. scale01 binarise:threshold=0.5) "
                   "(default: none, the values as read; the pipeline's config.yaml gives "
                   "scale01)")
    p.add_argument("--validation-fraction", type=fraction, default=0.1,
                   help="share of the samples held out for validation (0: none)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the subset and the split")
