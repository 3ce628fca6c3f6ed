"""The ``aetk`` command line, one module per command; `build_parser` makes the parser
from each command module's `add_parser` and `main` runs the command.

- ``preprocess``: load, transform and split a data set (`aetk.cli.preprocess`)
- ``train``: train a model; its settings, ``--beta-schedule`` and checkpoint (`aetk.cli.train`)
- ``encode``: the latent store of a trained model (`aetk.cli.encode`)
- ``sample``: new data from a trained model (`aetk.cli.sample`)
- ``geodesics``: latent geodesics and the pairs they join (`aetk.cli.geodesics`)
- ``report run|geodesics|summary``: figures and tables (`aetk.cli.report`)

Shared by them: the argparse types and ``--help`` formatter (`aetk.cli.args`), the
``--device auto`` GPU claim (`aetk.cli.device`) and loading a trained model with its data
store (`aetk.cli.trained`).
"""

from __future__ import annotations

import argparse
import os
import sys

from aetk import storage
from aetk.cli import encode, geodesics, preprocess, report, sample, train
from aetk.cli.args import EPILOG, _Formatter

# the top-level --help text
DESCRIPTION = """The aetk command line: the steps of the Snakemake pipeline, runnable by hand.

aetk preprocess -> aetk train -> aetk encode -> aetk geodesics -> aetk report.
Each step reads and writes files only (Zarr stores, model directories, tables and
figures), so any step can be rerun on its own; `aetk <step> --help` lists its inputs,
outputs and defaults. `aetk sample` draws new data from a trained model.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``aetk`` argument parser with one subcommand per pipeline step."""
    parser = argparse.ArgumentParser(prog="aetk", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version",
                        version=f"aetk {storage.package_version()}")
    # a bad input's one-line message is for users; a bug report needs where it was raised
    parser.add_argument("--traceback", action="store_true",
                        default=bool(os.environ.get("AETK_TRACEBACK")),
                        help="show the full traceback of an error instead of its one-line "
                             "message (also set by the environment variable AETK_TRACEBACK=1, "
                             "e.g. for the pipeline's jobs)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (preprocess, train, encode, sample, geodesics, report):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aetk`` console script; bad inputs exit with status 1 and a message."""
    args = build_parser().parse_args(argv)
    from aetk.train import TrainingDiverged  # after parsing: --help does not import torch

    # as argparse names it: "aetk report summary"
    prog = " ".join(filter(None, ("aetk", args.command, getattr(args, "report_command", None))))
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, ModuleNotFoundError, TrainingDiverged) as err:
        if args.traceback:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.strerror and err.filename:  # not "[Errno 17] ..."
            message = f"{err.strerror}: {err.filename}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: one line, not a traceback
        print(f"{prog}: interrupted" + (f"; {err}" if err.args else ""), file=sys.stderr)
        return 130
    return 0

