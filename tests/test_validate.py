"""Bad data raise ValueError saying what is wrong and where, before anything is trained."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import StackDataset

import aetk
from aetk import validate
from aetk.decoders import CategoricalDecoder
from aetk.encoders import GaussianEncoder

N, F = 12, 6


def _model(likelihood="bernoulli", **kw):
    return aetk.build_model("vae", likelihood, in_features=F, latent_dim=2, hidden=(4,), **kw)


def _fit_fails(model, train, val=None, **kw):
    """fit raises ValueError and leaves every weight as it was; returns the message."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        aetk.fit(model, train, val, epochs=1, batch_size=4, progress=False, device="cpu", **kw)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although fit refused the data"
    return str(err.value)


def _good(kind="unit"):
    g = torch.Generator().manual_seed(0)
    if kind == "unit":
        return torch.rand(N, F, generator=g)
    return torch.randint(0, 5, (N, F), generator=g).float()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_train_data_names_row_and_column(bad):
    x = _good()
    x[3, 5] = bad
    msg = _fit_fails(_model(), x)
    assert "train data has 1 NaN or infinite values; first at row 3, column 5" in msg


def test_non_finite_validation_data_in_a_numpy_array():
    val = _good().numpy()
    val[[2, 7], [0, 4]] = np.nan
    msg = _fit_fails(_model(), _good(), val)
    assert "validation data has 2 NaN or infinite values; first at row 2, column 0" in msg


@pytest.mark.parametrize("empty", [torch.empty(0, F), np.empty((0, F))])
def test_empty_data(empty):
    assert "train data is empty" in _fit_fails(_model(), empty)
    assert "validation data is empty" in _fit_fails(_model(), _good(), empty)


def test_feature_count_mismatch():
    msg = _fit_fails(_model(), torch.rand(N, F + 1))
    assert "train data has feature shape (7,) but the model expects (6,)" in msg


@pytest.mark.parametrize("value", [1.5, -0.25])
def test_bernoulli_needs_values_in_the_unit_interval(value):
    x = _good()
    x[4, 2] = value
    msg = _fit_fails(_model("bernoulli"), x)
    assert "outside [0.0, 1.0]" in msg and "Bernoulli" in msg
    assert f"first at row 4, column 2: {value}" in msg


@pytest.mark.parametrize(("likelihood", "word"), [("poisson", "Poisson"),
                                                  ("negative_binomial", "negative-binomial")])
@pytest.mark.parametrize("value", [-1.0, 2.5])
def test_count_likelihoods_need_non_negative_integers(likelihood, word, value):
    x = _good("counts")
    x[1, 3] = value
    msg = _fit_fails(_model(likelihood), x)
    assert "not non-negative integers" in msg and word in msg
    assert f"first at row 1, column 3: {value}" in msg


@pytest.mark.parametrize(("value", "what"), [(5.0, "class indices must be below n_classes=5"),
                                             (-1.0, "not non-negative integers"),
                                             (1.5, "not non-negative integers")])
def test_categorical_class_indices(value, what):
    x = _good("counts")
    x[6, 0] = value
    msg = _fit_fails(_model("categorical", n_classes=5), x)
    assert what in msg and f"first at row 6, column 0: {value}" in msg


def _one_hot_model(k=3):
    """Encoder reads the one-hot (F, k) array; decoder models F categorical features."""
    enc = GaussianEncoder(input_shape=(F, k), latent_dim=2, hidden=(4,))
    return aetk.VAE(enc, CategoricalDecoder(latent_dim=2, out_features=F, n_classes=k,
                                            hidden=(4,)))


def _one_hot(k=3):
    return torch.nn.functional.one_hot(torch.randint(0, k, (N, F)), k).float()


def test_one_hot_categorical_data_train():
    model = _one_hot_model()
    hist = aetk.fit(model, _one_hot(), epochs=1, batch_size=4, progress=False, device="cpu")
    assert np.isfinite(hist["train_loss"]).all()


@pytest.mark.parametrize(("row", "what"), [
    ([0.5, 0.5, 0.0], "one-hot entries must be 0 or 1; first bad at row 2, column 12: 0.5"),
    ([1.0, 1.0, 0.0], "one-hot rows must sum to 1; first bad at row 2, column 4"),
    ([0.0, 0.0, 0.0], "one-hot rows must sum to 1; first bad at row 2, column 4"),
])
def test_bad_one_hot_rows(row, what):
    """Entry (2, 4, 0) of a (N, F, 3) array is flattened column 12."""
    x = _one_hot()
    x[2, 4] = torch.tensor(row)
    assert what in _fit_fails(_one_hot_model(), x)


def test_one_hot_class_axis_size():
    dec = CategoricalDecoder(latent_dim=2, out_features=F, n_classes=3)
    with pytest.raises(ValueError, match=r"one-hot class axis has size 4, expected 3"):
        dec.check_data(torch.zeros(N, F, 4), "train")


def _pairs(x: torch.Tensor) -> StackDataset:
    """A map-style dataset of (x, label) pairs."""
    return StackDataset(x, torch.zeros(len(x), dtype=torch.long))


def test_dataset_with_bad_rows_is_refused():
    x = _good()
    x[:, 1] = 2.0  # every batch has the bad value
    with pytest.raises(ValueError, match=r"outside \[0.0, 1.0\]"):
        aetk.fit(_model(), _pairs(x), epochs=1, batch_size=4, progress=False, device="cpu")


def test_validation_dataset_with_nan_is_refused():
    val = _good()
    val[:, 0] = float("nan")
    with pytest.raises(ValueError, match=r"validation.*NaN or infinite"):
        aetk.fit(_model(), _good(), _pairs(val), epochs=1, batch_size=4, progress=False,
                 device="cpu")


def test_empty_dataset():
    assert "train data is empty" in _fit_fails(_model(), _pairs(torch.empty(0, F)))


@pytest.mark.parametrize(("epochs", "batch_size"), [
    (0, 4), (1, 0), (2.5, 4), (1, 4.5), ("2", 4), (None, 4), (1, True), (float("inf"), 4)])
def test_epochs_and_batch_size_must_be_positive(epochs, batch_size):
    """Also integers: a float batch size failed in torch's split at the first batch
    ("split_with_sizes(): argument 'split_sizes' ... must be tuple of ints"), epochs of 2.5
    or "2" with a TypeError that named neither."""
    with pytest.raises(ValueError, match="epochs and batch_size must be positive integers"):
        aetk.fit(_model(), _good(), epochs=epochs, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("seed", [1.5, None, "3", True])
def test_seed_must_be_an_integer(seed):
    with pytest.raises(ValueError, match=f"seed must be an integer, got {seed!r}"):
        aetk.fit(_model(), _good(), epochs=1, batch_size=4, seed=seed, progress=False)


def test_epochs_and_batch_size_of_integer_value_are_taken():
    """2.0 (a YAML or JSON number) and numpy integers are the integers they hold."""
    torch.manual_seed(0)
    a = aetk.fit(_model(), _good(), epochs=2.0, batch_size=np.float64(4), progress=False)
    torch.manual_seed(0)
    b = aetk.fit(_model(), _good(), epochs=np.int64(2), batch_size=4, progress=False)
    assert a["epoch"].tolist() == [1, 2]
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])


def test_where_flattens_multidimensional_events():
    x = torch.zeros(3, 2, 4)
    x[1, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"first at row 1, column 6$"):
        validate.check_finite(x, "train")
    with pytest.raises(ValueError, match=r"first at row 2: 0.5$"):
        validate.check_counts(torch.tensor([0.0, 3.0, 0.5]), "train", "counts")


def test_fast_paths_agree_with_the_element_wise_checks():
    """Finite data whose sum overflows pass; integer dtypes and large chunked data work."""
    validate.check_finite(torch.full((3, 2), 3e38), "train")
    validate.check_counts(torch.arange(6).reshape(3, 2), "train", "counts")
    validate.check_range(torch.arange(6).reshape(3, 2), "train", 0, 5, "classes")
    x = torch.zeros(3, 1 << 20)
    x[2, (1 << 20) - 1] = 0.5
    with pytest.raises(ValueError, match=r"first at row 2, column 1048575: 0.5"):
        validate.check_counts(x, "train", "counts")


# pandas and numpy inputs -------------------------------------------------------------


def _frame(index=None) -> pd.DataFrame:
    return pd.DataFrame(_good().numpy(), columns=list("ABCDEF"), index=index)


def test_a_nan_in_a_dataframe_is_named_by_its_labels():
    frame = _frame(index=[f"s{i}" for i in range(N)])
    frame.iloc[7, 2] = np.nan
    msg = _fit_fails(_model(), frame)
    assert ("train data has 1 NaN or infinite values; first at row 7, column 2 (the "
            "DataFrame's row 's7', column 'C')") in msg


def test_a_nullable_float_dataframe_with_pd_na_is_a_non_finite_value():
    frame = _frame().astype("Float64")
    frame.iloc[3, 1] = pd.NA
    msg = _fit_fails(_model(), _good(), frame)
    assert "validation data has 1 NaN or infinite values; first at row 3, column 1" in msg
    assert "column 'B'" in msg


def test_validation_dataframe_columns_must_match_the_training_ones():
    frame = _frame()
    msg = _fit_fails(_model(), frame, frame[list("FEDCBA")])
    assert ("the validation DataFrame has the training columns in another order (position 0: "
            "'F' where training has 'A')") in msg and "val[train.columns]" in msg
    msg = _fit_fails(_model(), frame, frame.rename(columns={"C": "c"}))
    assert "other columns than the training DataFrame (missing: 'C'; not in training: 'c')" in msg
    # the same columns: trained; a numpy validation array has no names to compare
    for val in (frame.copy(), frame.to_numpy()):
        aetk.fit(_model(), frame, val, epochs=1, batch_size=4, progress=False)


@pytest.mark.parametrize("number", [0.2, 3])
def test_a_number_as_validation_data_says_how_to_split(number):
    msg = _fit_fails(_model(), _good(), number)
    assert "validation data must be data like the training data" in msg
    assert f"not the number {number}" in msg and "aetk.data.split(len(x)" in msg


def test_negative_stride_arrays_train():
    """np.flip, a[:, ::-1] and reordered DataFrame columns are views with negative strides,
    which torch.from_numpy refuses: fit copies them."""
    a = _good().numpy().astype(np.float64)
    for x in (a[:, ::-1], np.flip(a), _frame()[list("FEDCBA")]):
        aetk.fit(_model(), x, x, epochs=1, batch_size=4, progress=False)


def test_single_values_are_not_data():
    with pytest.raises(ValueError, match=r"embed data is a single value \(2\), not rows"):
        _model().embed(2.0)


# ---------------------------------------------------------------- conversion and checks


def test_as_tensor_converts_number_types_and_moves_to_the_device() -> None:
    """Booleans become 0/1 floats, a dtype numpy lacks (bfloat16) is still reached, a
    tensor moves to the asked device, and complex numbers are refused."""
    t = validate.as_tensor(np.array([[True, False]]))
    assert t.dtype == torch.float32 and t.tolist() == [[1.0, 0.0]]
    b = validate.as_tensor(np.array([[0.5, 2.0]]), dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16 and b.tolist() == [[0.5, 2.0]]
    assert validate.as_tensor(torch.ones(2, 3), device="meta").device.type == "meta"
    with pytest.raises(TypeError, match="not a ndarray of complex128"):
        validate.as_tensor(np.array([[1 + 2j]]))


def test_a_text_dataframe_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="not a DataFrame of object"):
        validate.as_tensor(pd.DataFrame({"a": ["x", "y"]}))


def test_a_read_only_array_converts_without_a_warning_or_sharing_memory() -> None:
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on read-only arrays it would share
        t = validate.as_tensor(a)
    t[0, 0] = 10.0
    assert a[0, 0] == 0.0 and t.tolist() == [[10.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_targets_keep_class_indices_and_make_booleans_floats() -> None:
    idx = validate.as_target(np.array([0, 2, 1]))
    assert idx.dtype == torch.int64 and idx.tolist() == [0, 2, 1]
    flags = validate.as_target(torch.tensor([[True, False]]))
    assert flags.dtype == torch.float32 and flags.tolist() == [[1.0, 0.0]]


def test_positive_int_returns_a_python_int() -> None:
    for value in (3.0, np.float64(3.0), np.int64(3)):
        n = validate.positive_int(value, "n")
        assert type(n) is int and n == 3


def test_positive_int_takes_a_minimum_and_refuses_what_is_no_count() -> None:
    """Text failed in numpy's isfinite ("ufunc 'isfinite' not supported"), True counted
    as 1; a 0-d tensor of a whole number is one."""
    assert validate.positive_int(torch.tensor(4.0), "n") == 4
    assert validate.positive_int(0.0, "max_doublings", 0) == 0
    for value, minimum in ((2.0, 3), ("5", 1), (True, 1), (None, 1), (float("nan"), 1),
                           (torch.ones(2), 1)):
        with pytest.raises(ValueError, match=rf"^n must be an integer >= {minimum}, got"):
            validate.positive_int(value, "n", minimum)


def test_a_target_dataframe_problem_is_named_by_the_targets_labels() -> None:
    x = pd.DataFrame(np.zeros((3, 2)), index=["a", "b", "c"], columns=["x0", "x1"])
    y = pd.DataFrame([[0.0], [np.nan], [0.0]], index=["p", "q", "r"], columns=["y0"])
    with pytest.raises(ValueError, match=r"the DataFrame's row 'q'"), validate.labelled(x, y):
        validate.check_finite(validate.as_tensor(y), "training target")


def test_empty_data_of_any_shape_is_refused_and_empty_ranges_pass() -> None:
    with pytest.raises(ValueError, match="training data is empty"):
        validate.check_finite(torch.empty(0, 2, 2), "training")
    validate.check_range(torch.empty(0, 3), "training", 0.0, 1.0, "Bernoulli")
    validate.check_counts(torch.empty(0, 3), "training", "Poisson")


def test_range_and_count_errors_report_the_first_bad_value() -> None:
    x = torch.tensor([[0.5, 1.5], [-2.0, 0.0]])
    with pytest.raises(ValueError, match=r"2 values outside \[0.0, 1.0\].*row 0, column 1: 1.5"):
        validate.check_range(x, "training", 0.0, 1.0, "Bernoulli")
    with pytest.raises(ValueError, match=r"3 values that are not.*row 0, column 0: 0.5"):
        validate.check_counts(x, "training", "Poisson")


@pytest.mark.parametrize(("c", "n_rows", "message"), [
    (torch.zeros(3), None, r"shape \(3,\), but the model takes 3 conditions per row"),
    (torch.zeros(5, 3), 4, "have 5 rows for 4 data points"),
    (torch.zeros(3, 3), 4, "have 3 rows for 4 data points"),
])
def test_conditions_must_be_one_row_of_k_per_data_point(c: torch.Tensor, n_rows: int | None,
                                                         message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate.check_conditions(c, 3, "training conditions", n_rows)


@pytest.mark.parametrize(("loc", "scale", "message"), [
    (torch.zeros(4, 2, 1), torch.ones(4, 2, 1), r"both be \(N, d\)"),
    (torch.zeros(4, 2), torch.tensor([[1.0, 1.0]] * 3 + [[1.0, float("inf")]]), "finite"),
])
def test_posteriors_must_be_matrices_of_finite_values(loc: torch.Tensor, scale: torch.Tensor,
                                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate.check_posteriors(loc, scale, "the test")


def test_posteriors_come_back_detached() -> None:
    loc = torch.zeros(4, 2, requires_grad=True)
    scale = torch.ones(4, 2, requires_grad=True)
    out = validate.check_posteriors(loc * 1.0, scale * 1.0, "the test")
    assert not any(t.requires_grad for t in out)


def test_non_positive_scales_name_the_user() -> None:
    with pytest.raises(ValueError, match="positive: the aggregate posterior needs a stochastic"):
        validate.check_posteriors(torch.zeros(3, 2), torch.zeros(3, 2), "the aggregate posterior")


def test_some_zero_scales_are_not_blamed_on_a_deterministic_encoder() -> None:
    """A VAE's scales that underflowed on a few inputs (another data store's units) were
    refused as "an AE's codes have no posterior"; now the count and first row are named."""
    scale = torch.ones(4, 2)
    scale[2, 1] = 0.0
    with pytest.raises(ValueError, match="got 1 of 8 scales <= 0, first in row 2") as err:
        validate.check_posteriors(torch.zeros(4, 2), scale, "the encoder metric")
    assert "AE" not in str(err.value)


def test_a_matching_tensor_is_returned_itself_with_its_graph() -> None:
    w = torch.ones(2, 3, requires_grad=True)
    x = w * 2.0
    assert validate.as_tensor(x) is x
    validate.as_tensor(x, dtype=torch.float64).sum().backward()
    assert w.grad.tolist() == [[2.0] * 3] * 2


def test_anything_with_to_numpy_is_data() -> None:
    class Table:  # neither a sequence nor an __array__: only to_numpy
        def to_numpy(self) -> np.ndarray:
            return np.array([[1.0, 2.0], [3.0, 4.0]])

    assert validate.as_tensor(Table()).tolist() == [[1.0, 2.0], [3.0, 4.0]]
