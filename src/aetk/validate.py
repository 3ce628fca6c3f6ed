"""Checks on data before training: every problem raises a ValueError that says what is
wrong and where, so nothing is trained on data the model cannot take.

Each check first runs a reduction over the whole tensor (a sum, a min/max), which reads the
data once and allocates nothing, and builds the element-wise mask that locates a problem
only when the reduction fails: on 60,000 MNIST images the masks cost 15-25x more.

`as_tensor` is the one conversion of user data (arrays, DataFrames, any number type) that
`fit` and the models' methods share."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch


def as_tensor(data: Any, dtype: torch.dtype | None = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
    """`data` as a tensor of `dtype` (None: its own number type) on `device` (None: where
    it is): a tensor, a numpy array, or anything with `to_numpy` (a pandas DataFrame, an
    xarray DataArray). A tensor that already matches is returned itself, not copied, its
    autograd graph kept: the models' methods convert every input with it. A list of
    tensors is stacked as rows."""
    if isinstance(data, (list, tuple)) and data and all(
            isinstance(e, torch.Tensor) for e in data):
        data = _stacked(data)
    if not isinstance(data, torch.Tensor):
        data = torch.from_numpy(_as_array(data, dtype))
    if (dtype is not None and data.dtype != dtype) or (
            device is not None and data.device != torch.device(device)):
        data = data.to(device, dtype)
    return data


def _stacked(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """A list of tensors, one per row, as one tensor (on the first one's device): numpy
    would copy them element by element, and refuses tensors on a GPU or with gradients."""
    shapes = {tuple(r.shape) for r in rows}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(f"a list of tensors is taken as rows of data, one tensor per row, "
                         f"but they have different shapes ({a} and {b}): give rows of one "
                         "shape")
    return torch.stack([r.to(rows[0].device) for r in rows])


def as_rows(x: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
    """Rows of `x` that hold a data point's number of values in another shape, reshaped to
    `shape`: images `(n, 1, 28, 28)` for a model of 784 features and back, as the
    encoder's networks take them. Anything else is returned as it is, for the checks to
    refuse by name: also two layouts of one image, `(H, W, 3)` for `(3, H, W)`, which a
    reshape would scramble."""
    if (shape is None or x.dim() < 2 or tuple(x.shape[1:]) == tuple(shape)
            or math.prod(x.shape[1:]) != math.prod(shape)):
        return x
    given, wanted = ([s for s in dims if s != 1] for dims in (x.shape[1:], shape))
    if len(given) > 1 and len(wanted) > 1 and given != wanted:
        return x
    return x.reshape(len(x), *shape)


def as_target(data: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Target data as `as_tensor` (of `dtype`), but integer class indices stay integers (a
    categorical likelihood's targets)."""
    t = as_tensor(data, dtype=None)
    return t if not t.is_floating_point() and t.dtype != torch.bool else as_tensor(t, dtype)


def _as_array(data: Any, dtype: torch.dtype | None) -> np.ndarray:
    """A numpy array that `torch.from_numpy` takes without complaint, cast to `dtype`."""
    array = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data)
    if array.dtype == object and hasattr(data, "to_numpy"):
        # pandas' nullable columns (Float64, Int64) hold pd.NA: as NaN, so that the
        # finite check says where it is
        with contextlib.suppress(TypeError, ValueError):  # text, or no such options
            array = data.to_numpy(dtype=np.float64, na_value=np.nan)
    if array.dtype.kind not in "biuf":  # torch's own message: "Could not infer dtype"
        raise TypeError(f"give data as a tensor, a numpy array, a pandas DataFrame or a "
                        f"torch Dataset, not a {type(data).__name__}"
                        + (f" of {array.dtype}" if array.ndim else ""))
    target = _numpy_dtype(dtype)
    if target is not None and array.dtype != target:
        return array.astype(target)  # a new array, contiguous and writeable
    # torch refuses negative strides (np.flip, a[:, ::-1], reordered DataFrame columns)
    # and warns on read-only arrays (pandas' copy-on-write views): a copy takes both
    if not array.flags.writeable or any(s < 0 for s in array.strides):
        array = array.copy()
    return array


def _numpy_dtype(dtype: torch.dtype | None) -> np.dtype | None:
    """numpy's dtype for a torch dtype; None for None and for those numpy lacks (bfloat16)."""
    if dtype is None:
        return None
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return None


@contextlib.contextmanager
def labelled(data: Any, target: Any = None) -> Iterator[None]:
    """Within the block, a check's ValueError that places a problem at "row i, column j" of
    a pandas DataFrame (or Series) `data`, or of `target` for the target data, also names
    that row's and column's labels: the positions alone mislead with a string index."""
    try:
        yield
    except ValueError as err:
        frame = target if " target data " in str(err) else data
        found = re.search(r"\brow (\d+)(?:, column (\d+))?", str(err))
        if found is None or not hasattr(frame, "iloc"):  # a pandas DataFrame or Series
            raise
        where = f"row {frame.index[int(found[1])]!r}"
        if found[2] is not None and hasattr(frame, "columns"):
            where += f", column {frame.columns[int(found[2])]!r}"
        raise ValueError(f"{err} (the DataFrame's {where})") from None


def positive_int(value: float, name: str, minimum: int = 1) -> int:
    """`value` as an int (`5.0` as `5`, as a count computed or read from a file comes); a
    ValueError naming `name` unless it is an integer >= `minimum` (1 by default)."""
    try:  # numpy and 0-d torch numbers too; not text, nor True for 1
        number = None if isinstance(value, bool | str | bytes) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number != int(number) or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(number)


def _where(mask: torch.Tensor) -> str:
    """Describe the first True entry of a `(N, ...)` mask as row and flattened column."""
    flat = mask.reshape(mask.shape[0], -1)
    row, col = (int(i) for i in flat.nonzero()[0])
    return f"row {row}, column {col}" if flat.shape[1] > 1 else f"row {row}"


def check_finite(x: torch.Tensor, name: str, shape: Sequence[int] | None = None) -> None:
    """Non-empty, one data point per row of the expected `shape`, and no NaN or infinity."""
    if x.dim() == 0:
        raise ValueError(f"{name} data is a single value ({x.item():g}), not rows of data: "
                         "give an array, tensor or DataFrame with one row per sample")
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"{name} data has feature shape {tuple(x.shape[1:])} but the model expects "
            f"{tuple(shape)}"
        )
    if not x.is_floating_point() or torch.isfinite(x.sum()):
        return
    bad = ~torch.isfinite(x)  # the sum may also overflow on finite data
    if bad.any():
        raise ValueError(
            f"{name} data has {int(bad.sum())} NaN or infinite values; first at {_where(bad)}"
        )


def check_conditions(c: torch.Tensor, k: int, name: str, n_rows: int | None = None) -> None:
    """Conditions of a conditional model: `(rows, k)`, finite, and one row per data point
    when `n_rows` is given."""
    if c.dim() != 2 or c.shape[1] != k:
        raise ValueError(f"{name} have shape {tuple(c.shape)}, but the model takes {k} "
                         f"conditions per row: give (rows, {k})")
    if n_rows is not None and len(c) != n_rows:
        raise ValueError(f"{name} have {len(c)} rows for {n_rows} data points")
    check_finite(c, name)


def check_range(x: torch.Tensor, name: str, low: float, high: float, what: str) -> None:
    """All values in `[low, high]`."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)
    if lo >= low and hi <= high:
        return
    bad = (x < low) | (x > high)
    if bad.any():
        raise ValueError(
            f"{name} data has {int(bad.sum())} values outside [{low}, {high}] ({what}); "
            f"first at {_where(bad)}: {x[bad][0].item()}"
        )


def check_counts(x: torch.Tensor, name: str, what: str) -> None:
    """Non-negative integers."""
    if x.numel() == 0 or (x.min() >= 0 and not _has_fraction(x)):
        return
    bad = (x < 0) | (x != x.round())
    if bad.any():
        raise ValueError(
            f"{name} data has {int(bad.sum())} values that are not non-negative integers "
            f"({what}); first at {_where(bad)}: {x[bad][0].item()}"
        )


def _has_fraction(x: torch.Tensor) -> bool:
    """Any non-integer value; chunked so that no data-sized temporary is allocated."""
    if not x.is_floating_point():
        return False
    return any(bool(chunk.frac().any()) for chunk in x.reshape(-1).split(1 << 20))


def check_posteriors(loc: torch.Tensor | np.ndarray, scale: torch.Tensor | np.ndarray,
                     what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of N >= 2 diagonal Gaussian posteriors, `(N, d)` each with positive
    scales, as detached tensors on `loc`'s device; `what` names the user in the error."""
    loc = as_tensor(loc, None).detach()
    scale = as_tensor(scale, None).detach().to(loc.device)
    if loc.dim() != 2 or loc.shape != scale.shape or len(loc) < 2:
        raise ValueError(f"loc and scale must both be (N, d) with N >= 2, got "
                         f"{tuple(loc.shape)} and {tuple(scale.shape)}")
    if not bool(loc.isfinite().all() & scale.isfinite().all()):
        raise ValueError(f"loc and scale must be finite: {what} got NaN or infinite values")
    bad = scale <= 0
    if bool(bad.all()):
        raise ValueError(f"every scale must be positive: {what} needs a stochastic encoder "
                         "(an AE's codes have no posterior)")
    if bool(bad.any()):  # a stochastic encoder whose scale underflowed on some inputs
        row = int(bad.any(1).nonzero()[0])
        raise ValueError(f"every scale must be positive: {what} got {int(bad.sum())} of "
                         f"{bad.numel()} scales <= 0, first in row {row}; an encoder's scale "
                         "underflows to 0 on inputs far from its training data: check that "
                         "the data have the model's transforms and units")
    return loc, scale
