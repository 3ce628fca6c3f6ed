"""Zarr (format 3) stores written and read through xarray.

Every store is written with ``zarr_format=3`` and ``consolidated=False`` (zarr 3 warns about
consolidated metadata, which is not part of its specification), chunked along its first
dimension through ``encoding`` (no dask needed) and compressed with Blosc/zstd. Names go in
attributes, never in fixed-width string arrays. The layout of each store is documented in
``docs/zarr-layout.md``.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from aetk.data import Prepared, TransformPipeline, array_digest

CHUNK_ROWS = 2048
SPLIT_TRAIN, SPLIT_VALIDATION = 0, 1


def package_version() -> str:
    """Installed version of aetk (``"unknown"`` when run from a source tree)."""
    try:
        return md.version("aetk")
    except md.PackageNotFoundError:
        return "unknown"


def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """JSON-able attributes without ``None`` values (xarray refuses them)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return {k: clean(v) for k, v in attrs.items() if v is not None}


NATS = {"units": "nats"}  # natural-log likelihoods and divergences
_SAMPLE = {"long_name": "sample"}
_SPLIT = {"long_name": "split", "description": "0 = train, 1 = validation"}
_LABEL = {"long_name": "label", "description": "class code (names in the store's "
          "label_names) or a continuous value (label_kind)"}

# What each variable of each kind of store (its `store` attribute) is, in the CF attributes
# xarray understands: `long_name` (short: the axis label of xarray's plots), `units` where
# there are any, and a `description` (docs/zarr-layout.md). write_zarr gives a variable the
# ones it does not have already, so that a description made where the variable is (e.g.
# with the run's settings in it) stays, as do other attributes (`sampler`, `flag_values`).
VARIABLE_ATTRS: dict[str, dict[str, dict[str, str]]] = {
    "aetk-data": {
        "sample": _SAMPLE,
        "feature": {"long_name": "feature",
                    "description": "column of the feature in the source data"},
        "x": {"long_name": "data", "description": "the transformed data the models are "
              "trained on (attribute transforms; aetk.storage.read_data to undo them)"},
        "split": _SPLIT,
        "source_index": {"long_name": "source row",
                         "description": "row of the sample in the source data"},
        "label": _LABEL,
    },
    "aetk-latent": {
        "sample": _SAMPLE,
        "latent": {"long_name": "latent dimension"},
        "feature": {"long_name": "feature"},
        "example": {"long_name": "example"},
        "generated": {"long_name": "generated sample"},
        "scored": {"long_name": "scored sample"},
        "traversed": {"long_name": "traversed latent dimension",
                      "description": "index of the latent dimension swept"},
        "step": {"long_name": "traversal step"},
        "grid_row": {"long_name": "grid row"},
        "grid_col": {"long_name": "grid column"},
        "class": {"long_name": "class",
                  "description": "class code (names in the store's label_names)"},
        "z_mean": {"long_name": "posterior mean of z", "description": "mean of q(z|x) (the "
                   "code itself for a deterministic encoder)"},
        "z_std": {"long_name": "posterior std of z", "description": "standard deviation of "
                  "q(z|x) (0 for a deterministic encoder)"},
        "z_sample": {"long_name": "z ~ q(z|x)", "description": "one seeded draw of q(z|x)"},
        "reconstruction_error": {
            "long_name": "reconstruction error",
            "description": "mean over features of the squared difference between the "
                           "decoder's point prediction at z_mean and x"},
        "log_likelihood": {"long_name": "log p(x|z)", **NATS,
                           "description": "E_q log p(x|z): log p(x|z) averaged over "
                                          "draws z ~ q(z|x) (aetk.cli.encode.ELBO_DRAWS)"},
        "kl": {"long_name": "KL(q(z|x) || p(z))", **NATS,
               "description": "KL divergence of q(z|x) from the prior (NaN for a "
                              "deterministic encoder)"},
        "elbo": {"long_name": "ELBO", **NATS,
                 "description": "ELBO: log_likelihood - kl, its log p(x|z) averaged over "
                                "draws of q(z|x) (store attribute elbo)"},
        "log_marginal": {"long_name": "log p(x)", **NATS,
                         "description": "importance-sampled log marginal likelihood of the "
                                        "validation samples, NaN for the others (store "
                                        "attribute log_marginal)"},
        "split": _SPLIT,
        "label": _LABEL,
        "example_index": {"long_name": "example's sample",
                          "description": "sample index of each example shown in the report"},
        "example_data": {"long_name": "example data", "description": "the examples' data"},
        "example_reconstruction": {"long_name": "reconstruction",
                                   "description": "the examples' reconstructions "
                                                  "(model.reconstruct)"},
        "example_transfer": {"long_name": "counterfactual reconstruction"},
        "generated_model": {"long_name": "generated sample (model)"},
        "generated_geometric": {"long_name": "generated sample (geometric)"},
        "generated_total_count": {"long_name": "total count"},
        "generated_class": {"long_name": "class conditioned on"},
        "scored_model": {"long_name": "scored sample (model)",
                         "description": "draws of the model's sampler (or of the code "
                                        "mixture) scored by the report's classifier"},
        "scored_geometric": {"long_name": "scored sample (geometric)",
                             "description": "draws of the Riemannian uniform distribution "
                                            "of the encoder's metric, scored by the "
                                            "report's classifier"},
        "traversal": {"long_name": "latent traversal"},
        "traversal_value": {"long_name": "traversed coordinate"},
        "traversal_reference": {"long_name": "traversal reference"},
        "latent_grid": {"long_name": "decoded latent grid"},
        "grid_z1": {"long_name": "z1", "description": "latent coordinate z1 of each grid "
                    "column, increasing"},
        "grid_z2": {"long_name": "z2", "description": "latent coordinate z2 of each grid "
                    "row, decreasing (as an image is read)"},
    },
    "aetk-geodesics": {
        "pair": {"long_name": "pair", "description": "index of the pair of samples joined"},
        "t": {"long_name": "t", "description": "curve parameter, 0 .. 1"},
        "latent": {"long_name": "latent dimension",
                   "description": "index of the latent coordinate"},
        "z1": {"long_name": "z1", "description": "latent coordinate z1 of the grid"},
        "z2": {"long_name": "z2", "description": "latent coordinate z2 of the grid"},
        "direction": {"long_name": "direction", "description": "index of the spray's "
                      "geodesic, leaving the Frechet mean at equal coordinate angles"},
        "s": {"long_name": "s", "description": "time along the spray's geodesics, 0 .. 1"},
        "points": {"long_name": "geodesic point", "description": "the fitted geodesics; "
                   "the first and last points are the endpoints' z_mean"},
        "length": {"long_name": "metric length",
                   "description": "length of each curve in the metric"},
        "energy": {"long_name": "energy", "description": "energy of each curve in the metric"},
        "euclidean_length": {"long_name": "Euclidean length",
                             "description": "length of each curve in the flat metric"},
        "line_length": {"long_name": "straight-line length",
                        "description": "length of the straight line between the endpoints, "
                                       "in the metric"},
        "converged": {"long_name": "converged", "description": "the relative energy change "
                      "fell below the tolerance (false when the iteration budget ran out)"},
        "fell_back": {"long_name": "fell back to the line",
                      "description": "the fit was longer than the straight line, which was "
                                     "returned instead"},
        "iterations": {"long_name": "iterations", "description": "optimiser iterations"},
        "graph_length": {"long_name": "graph path length",
                         "description": "metric length of the shortest path through the "
                                        "codes' neighbourhood graph that the fit started "
                                        "from; inf where the graph does not join the pair"},
        "graph_found": {"long_name": "graph joins the pair", "description": "the codes' "
                        "neighbourhood graph has a path between the pair's endpoints"},
        "kept_init": {"long_name": "kept the graph path",
                      "description": "the resampled graph path was shorter than its fit and "
                                     "was returned instead"},
        "from_graph": {"long_name": "from the graph start",
                       "description": "the returned curve is the graph start's result, "
                                      "shorter than the straight line start's"},
        "start_index": {"long_name": "start sample",
                        "description": "sample index of the start point"},
        "end_index": {"long_name": "end sample", "description": "sample index of the end point"},
        "start_label": {"long_name": "start label",
                        "description": "the data's label of the start sample"},
        "end_label": {"long_name": "end label",
                      "description": "the data's label of the end sample"},
        "log_volume": {"long_name": "log sqrt(det G(z))",
                       "description": "log volume element of the metric on the grid"},
        "gaussian_curvature": {"long_name": "Gaussian curvature K(z)",
                               "description": "Gaussian curvature of the metric on the grid"},
        "frechet_mean": {"long_name": "Frechet mean",
                         "description": "the Frechet mean of validation codes in the metric"},
        "spray": {"long_name": "geodesic spray",
                  "description": "geodesics leaving frechet_mean at equal coordinate angles"},
    },
    "aetk-samples": {
        "sample": _SAMPLE,
        "feature": {"long_name": "feature"},
        "x": {"long_name": "generated sample",
              "description": "decoder point predictions of new latent points, in the data "
                             "store's transformed units"},
        "total_count": {"long_name": "total count"},
        "class": {"long_name": "class conditioned on"},
    },
}


def describe(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each variable given the `VARIABLE_ATTRS` of its kind of store (the
    `store` attribute) that it does not have already."""
    table = VARIABLE_ATTRS.get(ds.attrs.get("store", ""), {})
    ds = ds.copy()
    for name, var in ds.variables.items():
        if name in table:
            var.attrs = {**table[name], **var.attrs}
    return ds


def write_zarr(ds: xr.Dataset, path: str | Path, *, chunk_rows: int = CHUNK_ROWS) -> None:
    """Write ``ds`` as a zarr-3 store at ``path`` (replacing it, once complete, when it is a
    store of the same kind: :func:`check_replaceable`), chunked on the first dimension, its
    variables described (:func:`describe`)."""
    check_replaceable(path, ds.attrs.get("store"))
    compressor = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    encoding = {}
    for name, var in ds.variables.items():
        if var.ndim == 0:
            continue
        chunks = (min(chunk_rows, max(var.shape[0], 1)), *(max(s, 1) for s in var.shape[1:]))
        encoding[name] = {"chunks": chunks, "compressors": (compressor,)}
    ds = describe(ds)
    ds.attrs = _clean_attrs({**ds.attrs, "aetk_version": package_version()})
    # written beside and then renamed into place: an interrupted write leaves no half
    # store at `path` that a later step would read (missing chunks read back as NaN)
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*-[0-9]*"):  # a killed write's
        shutil.rmtree(stale, ignore_errors=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        ds.to_zarr(str(partial), mode="w", zarr_format=3, consolidated=False,
                   encoding=encoding)
        if path.exists():
            path.rename(old)
        try:
            partial.rename(path)
        except OSError:
            if old.exists():
                old.rename(path)  # the previous store, back in place
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if old.is_symlink():  # a link to the store replaced: rmtree refuses links
            old.unlink()
        shutil.rmtree(old, ignore_errors=True)


# each store's `store` attribute -> what it is and the command that writes it
STORES = {"aetk-data": ("data", "aetk preprocess"), "aetk-latent": ("latent", "aetk encode"),
          "aetk-geodesics": ("geodesic", "aetk geodesics"),
          "aetk-samples": ("sample", "aetk sample")}


def _store_kind(path: Path) -> str | None:
    """The `store` attribute of the zarr store at `path` ("" for a store without one), or
    None where `path` holds no zarr store."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return str(meta.get("attributes", {}).get("store", ""))


def is_zarr_store(path: Path) -> bool:
    """Whether the folder `path` holds a zarr store (zarr 3, or zarr 2's group, array or
    attributes)."""
    return any((path / name).is_file()
               for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def enclosing_store(path: str | Path) -> Path | None:
    """The outermost zarr store that `path` (existing or not) is or lies in, or None: an
    output folder there would write into the store."""
    path = Path(path).expanduser().resolve()
    stores = [p for p in (path, *path.parents) if is_zarr_store(p)]
    return stores[-1] if stores else None


def spanning_codes(latent: Any) -> str:
    """Which codes of a latent store `aetk encode`'s traversals and `aetk geodesics`'
    Frechet mean are of: "validation", or "all" where the store has fewer than two
    validation codes ("training" where it has none)."""
    n = int((latent["split"].values == SPLIT_VALIDATION).sum()) if "split" in latent else 2
    return "validation" if n > 1 else "training" if n == 0 else "all"


# the tables the CLI writes (TSV) -> the first fields of their header line, as written (fit's
# history, report.comparison_table), what they are and the command that writes them
TABLES = {"history": (("epoch", "train_loss"), "training history", "aetk train"),
          "comparison": (("run", "model", "likelihood"), "comparison table",
                         "aetk report summary")}


def _table_kind(path: Path) -> str | None:
    """The kind (a key of `TABLES`) of the file `path` by its header line, or None."""
    try:
        with open(path, "rb") as f:
            fields = f.readline(1 << 16).rstrip(b"\r\n").split(b"\t")
    except OSError:
        return None
    return next((kind for kind, (head, *_) in TABLES.items()
                 if fields[:len(head)] == [h.encode() for h in head]), None)


def what_is(path: Path) -> str:
    """What the existing `path` is, for messages: "a model directory (from `aetk train`)",
    "a latent store (from `aetk encode`)", ..., "a file", "an empty folder", "no zarr
    store"."""
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if not path.is_dir():
        kind = _table_kind(path)
        return f"a {TABLES[kind][1]} (from `{TABLES[kind][2]}`)" if kind else "a file"
    if (path / "config.json").is_file():
        return "a model directory (from `aetk train`)"
    found = _store_kind(path)
    if found is None and is_zarr_store(path):
        return "a zarr-2 store (aetk writes zarr 3)"
    if found is None:
        return "no zarr store" if any(path.iterdir()) else "an empty folder"
    if found in STORES:
        return f"a {STORES[found][0]} store (from `{STORES[found][1]}`)"
    return f"a store of kind {found!r}" if found else "a zarr store made by hand"


def check_creatable(path: str | Path) -> None:
    """Refuse an output `path` that cannot be written, before the work that fills it: its
    nearest existing parent is a file (`NotADirectoryError`) or a folder this user may not
    write in (`PermissionError`)."""
    path = Path(path).expanduser().absolute()
    parent = next(p for p in path.parents if p.exists())  # the root always exists
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: no permission to write in {parent}")


def _holds(path: Path, other: Path) -> bool:
    """Whether the existing `path` is a folder above the existing `other`, however either is
    spelled (relative or absolute, a trailing slash, `~`, symbolic links)."""
    return any(os.path.samefile(p, path) for p in other.expanduser().resolve().parents)


def check_outside_stores(path: str | Path, option: str, what: str) -> None:
    """Refuse an output `path` that is or lies in a zarr store: the figures or tables would
    be written among its variables."""
    store = enclosing_store(path)
    if store is not None:
        raise ValueError(f"{option} {path} is in the zarr store {store}, {what_is(store)}: "
                         f"give {what} outside it")


def check_table_replaceable(path: str | Path, kind: str) -> None:
    """Refuse (`FileExistsError`) to write a table of `kind` (a key of `TABLES`) over `path`,
    unless it is absent, an empty file or a table of that kind (by its header line, as aetk
    writes it): an output path given by mistake (the data file, an input table, a model's
    weights) must not be replaced. A path that cannot be created is refused too
    (`check_creatable`)."""
    check_creatable(path)
    path = Path(path).expanduser()
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_file() and (path.stat().st_size == 0 or _table_kind(path) == kind):
        return
    raise FileExistsError(f"{path} exists and is not a {TABLES[kind][1]} to replace: it is "
                          f"{what_is(path)}; give another output path, or remove it first")


def check_replaceable(path: str | Path, kind: str | None,
                      inputs: dict[str, str | Path] | None = None) -> None:
    """Refuse (`FileExistsError`) to write a store whose `store` attribute is `kind` (None:
    a store without one) over `path`, unless it is absent, an empty folder or a zarr store
    of the same kind: an output path given by mistake (an input store, a model, a data
    file) must not be deleted. A store made by hand (no kind, as `aetk preprocess` reads)
    is replaced only by another without one. `inputs` (option: path) are what the command
    reads: `path` must not be one of them, nor hold one, even of the same kind (`aetk
    preprocess` reading its own output). A path that cannot be created at all is refused
    too (`check_creatable`)."""
    check_creatable(path)
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and (_store_kind(path) == (kind or "") or not any(path.iterdir())):
        for option, given in (inputs or {}).items():
            # a store of the kind written, which would be replaced and lose what only it held
            source = Path(given).expanduser()
            if source.exists() and (os.path.samefile(path, source) or _holds(path, source)):
                how = "is" if os.path.samefile(path, source) else "holds"
                raise FileExistsError(f"{path} {how} the input {option} {given}: the output "
                                      "is the source, which writing it would replace; give "
                                      "another output path")
        return
    what = (f"an aetk {STORES[kind][0]} store" if kind in STORES
            else f"a store of kind {kind!r}" if kind else "a zarr store made by hand")
    raise FileExistsError(f"{path} exists and is not {what} to replace: it is "
                          f"{what_is(path)}; give another output path, or remove it first")


def read_store(path: str | Path, kind: str, *, strict: bool = False) -> xr.Dataset:
    """The dataset of a store of `kind` (a key of `STORES`), refusing another kind of store
    or a folder that is none with a message naming what it is and the command that writes
    the right one; a store without a `store` attribute (made by hand) is taken as it is,
    unless `strict`."""
    path = Path(path)
    what, command = STORES[kind]
    refused = f"{path} is not an aetk {what} store (run `{command}`)"
    if path.exists() and not (path / "zarr.json").is_file():  # e.g. a model directory
        raise ValueError(f"{refused}; it is {what_is(path)}")
    ds = read_zarr(path)
    found = ds.attrs.get("store")
    if found is None and strict:
        raise ValueError(refused)
    if found is not None and found != kind:
        raise ValueError(f"{refused}; it is {what_is(path)}")
    return ds


def read_zarr(path: str | Path) -> xr.Dataset:
    """Read a store written by :func:`write_zarr` fully into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"zarr store {path} does not exist")
    with warnings.catch_warnings():
        # Snakemake marks directory outputs with a .snakemake_timestamp file, which zarr
        # reports as an unknown object; it is harmless.
        warnings.filterwarnings("ignore", message=r".*\.snakemake_timestamp",
                                category=UserWarning)
        try:
            ds = xr.open_zarr(str(path), consolidated=False, zarr_format=3)
        except FileNotFoundError as err:  # zarr's "No group found in store" for any directory
            raise ValueError(f"{path} is not a zarr store written by aetk") from err
        with ds:
            return ds.load()


# --------------------------------------------------------------------------------------
# The preprocessed data store


@dataclass
class StoredData:
    """The contents of a data store (``results/data/<name>.zarr``)."""

    x: np.ndarray
    is_validation: np.ndarray
    labels: np.ndarray | None
    label_kind: str
    label_names: list[str] | None
    image_shape: tuple[int, ...] | None
    pipeline: TransformPipeline
    attrs: dict[str, Any]

    @property
    def train(self) -> np.ndarray:
        return self.x[~self.is_validation]

    @property
    def validation(self) -> np.ndarray:
        return self.x[self.is_validation]

    def digest(self) -> str:
        """A hash of the values, split and labels: what a checkpoint of a run on this data
        is named by, so that a store rewritten with other values trains afresh."""
        return array_digest(self.x, self.is_validation, self.labels, size=8)


def data_to_dataset(prep: Prepared, attrs: dict[str, Any]) -> xr.Dataset:
    """The xarray form of a prepared data set (see ``docs/zarr-layout.md``)."""
    raw, pipe = prep.raw, prep.pipeline
    n, f = prep.x.shape
    specs, arrays = pipe.to_spec()
    variables: dict[str, Any] = {
        "x": (("sample", "feature"), prep.x.astype(np.float32)),
        "split": (("sample",), prep.is_validation.astype(np.int8), {
            "flag_values": [SPLIT_TRAIN, SPLIT_VALIDATION],
            "flag_meanings": "train validation"}),
        "source_index": (("sample",), prep.sample_index.astype(np.int64)),
    }
    if prep.labels is not None:
        dtype = np.int64 if raw.label_kind == "categorical" else np.float32
        variables["label"] = (("sample",), prep.labels.astype(dtype), {"kind": raw.label_kind})
    for i, spec in enumerate(specs):
        for param, name in spec["arrays"].items():
            variables[name] = (("feature",), arrays[name].astype(np.float64), {
                "long_name": f"{spec['name']} {param}",
                "description": f"the fitted {param} of transform {i} ({spec['name']}) per "
                               "feature, fitted on the training samples"})
    image_shape = raw.image_shape
    if image_shape is not None and int(np.prod(image_shape)) != f:
        image_shape = None  # a feature selection broke the image layout
    names = raw.feature_names
    all_attrs = {
        "store": "aetk-data",
        "source": raw.source,
        "label_kind": raw.label_kind,
        "label_names": raw.label_names,
        "image_shape": None if image_shape is None else list(image_shape),
        "feature_names": None if names is None else [names[i] for i in pipe.feature_index],
        "n_features_source": int(raw.x.shape[1]),
        "n_train": int((~prep.is_validation).sum()),
        "n_validation": int(prep.is_validation.sum()),
        "transforms": specs,
        **attrs,
    }
    coords = {"sample": np.arange(n), "feature": pipe.feature_index.astype(np.int64)}
    return xr.Dataset(variables, coords=coords, attrs=_clean_attrs(all_attrs))


def write_data(prep: Prepared, path: str | Path, attrs: dict[str, Any]) -> None:
    """Write a prepared data set to a zarr store."""
    write_zarr(data_to_dataset(prep, attrs), path)


def read_data(path: str | Path) -> StoredData:
    """Read a data store written by :func:`write_data`."""
    ds = read_store(path, "aetk-data", strict=True)
    specs = ds.attrs.get("transforms", [])
    arrays = {name: ds[name].values for name in ds.data_vars if name.startswith("transform")}
    pipe = TransformPipeline.from_spec(specs, arrays, ds["feature"].values)
    shape = ds.attrs.get("image_shape")
    return StoredData(
        x=ds["x"].values.astype(np.float32),
        is_validation=ds["split"].values == SPLIT_VALIDATION,
        labels=ds["label"].values if "label" in ds else None,
        label_kind=ds.attrs.get("label_kind", "none"),
        label_names=ds.attrs.get("label_names"),
        image_shape=None if shape is None else tuple(shape),
        pipeline=pipe,
        attrs=dict(ds.attrs),
    )
