"""The command line's shared parts: the argparse types of its options (a bad value exits
with argparse's usage message, before any file is read), the ``--help`` formatter and the
making of a subcommand's parser."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from aetk.validate import positive_int

EPILOG = "The layout of every Zarr store is described in docs/zarr-layout.md."


class SpecError(argparse.ArgumentTypeError, ValueError):
    """A spec that does not parse: argparse's usage message for an option's type, the
    command's error line where a command parses it."""


def parse_spec(text: str) -> str | dict[str, Any]:
    """``name``, ``name:key=value,...`` (values in JSON: ``milestones=[20,30]``) or a JSON
    string/object -> a transform or schedule spec."""
    text = text.strip()
    if text.startswith(("{", '"')):
        return _json(text, f"{text!r} is not valid JSON")
    name, _, opts = text.partition(":")
    spec: dict[str, Any] = {"name": name}
    for item in filter(None, re.split(r",(?![^\[]*\])", opts)):  # not the commas of a list
        key, _, value = item.partition("=")
        spec[key] = _json(value, f"option {key} of {name}: {value!r} is not a value (a "
                                 "number, true or false, a list [...] or a quoted \"string\")"
                          ) if value not in ("", None) else True
    return spec if len(spec) > 1 else name


def _json(text: str, message: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # its "Expecting value: line 1 column 1" named no option
        raise SpecError(message) from None


def parse_options(text: str) -> dict[str, Any]:
    """The ``--options`` JSON object."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--options is not valid JSON ({err}): {text}") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object like '{{\"beta\": 4}}', got {text}")
    return options


def positive(text: str) -> int:
    """argparse type of the integer options that count something: >= 1 (a bad value exits
    with argparse's usage message, before any file is read)."""
    try:
        return positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None


def tolerance(text: str) -> float:
    """argparse type of a relative tolerance, where 0 means unchecked: finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type of a share of the samples: in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def count(text: str) -> int:
    """argparse type of the integer options where 0 means none: >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


SEED_MAX = 2**32 - 1


def seed(text: str) -> int:
    """argparse type of --seed: an integer 0 .. 2**32 - 1, the seeds that numpy's and
    scikit-learn's generators take (torch's take more, but every command seeds both: a
    negative seed failed in the middle of a step, with numpy's words)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX}, got {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends each option's default to its help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, [], argparse.SUPPRESS)
                and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


def add_command(sub: Any, name: str, func: Any, help_: str, description: str,
                epilog: str | None = EPILOG) -> argparse.ArgumentParser:
    """The parser of the subcommand `name` in `sub` (an ``add_subparsers`` action), which
    runs `func` on the parsed arguments."""
    p = sub.add_parser(name, help=help_, description=description, epilog=epilog,
                       formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p
