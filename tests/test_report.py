"""The report's figures: what a reader must be able to see in them."""

from __future__ import annotations

import warnings

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from aetk import report


def _latent(z: np.ndarray, labels: np.ndarray) -> xr.Dataset:
    return xr.Dataset({"z_mean": (("sample", "latent"), z), "label": (("sample",), labels)},
                      attrs={"model": "vae", "likelihood": "bernoulli",
                             "label_kind": "categorical", "label_names": ["a", "b", "c"]})


def test_latent_classes_are_drawn_interleaved_and_named_at_their_medians() -> None:
    """Three classes stored in order over the same spot: drawn in that order the last
    would hide the others; each class has points among the last drawn, and its name at its
    median code."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    z = rng.standard_normal((600, 2)) + labels[:, None] * [0.3, 0.0]
    ax = report.plot_latent(_latent(z, labels)).axes[0]
    (points,) = ax.collections
    colours = report._class_colours(3)
    top = [tuple(c) for c in points.get_facecolors()[-30:, :3]]
    assert {tuple(to_rgba(c)[:3]) for c in colours} <= set(top)
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    for code, name in enumerate("abc"):
        np.testing.assert_allclose(texts[name], np.median(z[labels == code], axis=0))
    assert ax.get_aspect() == 1.0


def _table() -> pd.DataFrame:
    runs = [f"{m}-bernoulli" for m in ("vae", "beta_vae", "infovae")]
    return pd.DataFrame({
        "run": runs, "likelihood": "bernoulli", "seed": 0,
        "val_log_marginal": [-154.0, -155.0, -160.0], "val_elbo": [-159.0, -161.0, -168.0],
        "val_reconstruction_error": [0.062, 0.064, 0.069],
        "val_mutual_info": [5.1, 3.4, 3.8], "val_marginal_kl": [1.0, 0.3, 0.9],
        # the worst run's scores in the lower left, where a legend used to hide them
        "sample_score": [4.8, 4.3, 3.3], "geometric_sample_score": [5.6, 5.3, 3.8],
        "data_sample_score": 7.3})


def test_comparison_legends_lie_off_the_data_in_readable_type() -> None:
    fig = report.comparison_figure(_table())
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    for ax in legends:
        box = ax.get_legend().get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    assert len(legends) == 3  # log p(x) and ELBO, the KL split, the samplers
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_text()) >= 9


def test_training_curves_axis_spans_the_epochs_after_the_first() -> None:
    """Epoch 1's loss, far above the rest, does not set the axis: the later epochs' gap
    between training and validation stays readable, and every later epoch is in view."""
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [300.0, 160.0, 150.0, 145.0],
                            "val_loss": [215.0, 162.0, 156.0, 155.0]})
    ax = report.plot_training_curves(history).axes[0]
    low, high = ax.get_ylim()
    assert 140 < low < 145 and 160 < high < 200
    assert ax.get_ylabel() == "loss (nats per sample)"


def test_training_curves_of_two_epochs_show_both() -> None:
    """Two epochs (a first try of the pipeline): the axis spanned epoch 2 alone and cut
    off both lines' epoch 1 (validation 30.26 above a top of 30.18); now all is in view."""
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [29.90, 29.47],
                            "val_loss": [30.26, 30.12]})
    ax = report.plot_training_curves(history).axes[0]
    low, high = ax.get_ylim()
    assert low < 29.47 and high > 30.26
    # whole epochs only on the axis (it ticked 1.0, 1.2, ..., 2.0)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1, 2], ticks


def test_geodesic_endpoints_are_named_by_their_labels() -> None:
    t = np.linspace(0, 1, 5)[:, None]
    points = np.stack([[-1.0, 0.0] + t * [2.0, 0.5], [0.0, -1.0] + t * [0.5, 2.0]])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), [2.2, 2.3]), "line_length": (("pair",), [2.0, 2.1]),
                      "converged": (("pair",), [True, True]),
                      "start_label": (("pair",), [0, 1]), "end_label": (("pair",), [2, 0])},
                     attrs={"metric": "pullback", "label_names": ["a", "b", "c"]})
    latent = _latent(np.random.default_rng(0).standard_normal((50, 2)), np.zeros(50, int))
    ax = report.plot_geodesics(latent, geo).axes[0]
    named = {(t.get_text(), tuple(np.round(t.xy, 6))) for t in ax.texts}
    assert named == {("a", (-1.0, 0.0)), ("c", (1.0, 0.5)), ("b", (0.0, -1.0)),
                     ("a", (0.5, 1.0))}


def test_a_sample_that_ends_several_geodesics_is_named_once() -> None:
    """Three validation samples, three pairs (the pipeline's sampled pairs on a small
    split): each sample ended two pairs, and its name was drawn twice, in two colours and
    directions, over itself (an unreadable "alpha"); now once."""
    ends = np.array([[-1.0, 0.0], [1.0, 0.2], [0.1, -1.0]])
    t = np.linspace(0, 1, 5)[:, None, None]
    pairs = [(0, 1), (1, 2), (2, 0)]
    points = np.stack([ends[i] + t[:, 0] * (ends[j] - ends[i]) for i, j in pairs])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), [2.0] * 3), "line_length": (("pair",), [2.0] * 3),
                      "converged": (("pair",), [True] * 3),
                      "start_label": (("pair",), [i for i, _ in pairs]),
                      "end_label": (("pair",), [j for _, j in pairs])},
                     attrs={"metric": "pullback", "label_names": ["alpha", "beta", "gamma"]})
    latent = _latent(np.random.default_rng(0).standard_normal((50, 2)), np.zeros(50, int))
    ax = report.plot_geodesics(latent, geo).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["alpha", "beta", "gamma"]
    assert {tuple(np.round(t.xy, 6)) for t in ax.texts} == {tuple(e) for e in ends}


def test_names_of_nearby_endpoints_do_not_cover_one_another() -> None:
    """Four pairs from four nearby (not equal) validation samples, to spread ends: their
    names were drawn at the same offset from nearly the same point, over one another; now
    each is turned or moved out until it covers no other."""
    rng = np.random.default_rng(1)
    starts = 0.01 * rng.standard_normal((4, 2))
    ends = np.array([[2.0, 0.1], [2.0, 0.3], [1.9, 0.2], [2.1, 0.0]])
    t = np.linspace(0, 1, 5)[:, None]
    points = np.stack([s + t * (e - s) for s, e in zip(starts, ends, strict=True)])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), [2.0] * 4), "line_length": (("pair",), [2.0] * 4),
                      "converged": (("pair",), [True] * 4),
                      "start_label": (("pair",), [0, 1, 2, 0]),
                      "end_label": (("pair",), [1, 2, 0, 2])},
                     attrs={"metric": "pullback", "label_names": ["alpha", "beta", "gamma"]})
    latent = _latent(np.random.default_rng(0).standard_normal((50, 2)), np.zeros(50, int))
    fig = report.plot_geodesics(latent, geo)
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in ax.texts]
    assert len(boxes) == 8
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(8) for j in range(i))
    for text in ax.texts:  # each still next to its point: within 40 points of it
        gap = np.hypot(*text.get_position()) if text.get_anncoords() == "offset points" else 0
        assert 0 < gap <= 40


def test_the_geodesics_view_is_the_volume_grid_when_the_spray_leaves_it() -> None:
    """After short training the RHVAE's spray from the Frechet mean can run far past the
    volume grid: the axes grew to show it, the grid a small grey patch on white."""
    g = np.linspace(-1, 1, 5)
    t = np.linspace(0, 1, 5)[:, None]
    spokes = np.stack([np.zeros((5, 2)) + t * [8.0, 0.0], np.zeros((5, 2)) + t * [0.0, -6.0]])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), [[-0.5, 0.0] + t * [1.0, 0.8]]),
                      "length": (("pair",), [1.6]), "line_length": (("pair",), [1.5]),
                      "converged": (("pair",), [True]),
                      "log_volume": (("z1", "z2"), np.zeros((5, 5))),
                      "spray": (("direction", "s", "latent"), spokes),
                      "frechet_mean": (("latent",), [0.0, 0.0])},
                     coords={"z1": g, "z2": g}, attrs={"metric": "rhvae"})
    latent = _latent(np.random.default_rng(0).uniform(-0.9, 0.9, (50, 2)), np.zeros(50, int))
    ax = report.plot_geodesics(latent, geo).axes[0]
    np.testing.assert_allclose(ax.get_xlim(), (-1.0, 1.0))
    np.testing.assert_allclose(ax.get_ylim(), (-1.0, 1.0))


def test_endpoint_names_leave_the_frechet_mean_visible() -> None:
    """Pairs that end beside the Frechet mean of the codes (the pipeline's RHVAE: codes
    packed around it): their names were drawn over its star; now the star is drawn over
    the curves and the names go around it."""
    g = np.linspace(-1, 1, 5)
    t = np.linspace(0, 1, 5)[:, None]
    starts = np.array([[-0.8, -0.5], [0.7, -0.6], [0.1, 0.8]])
    ends = np.array([[0.03, 0.0], [0.0, 0.03], [-0.03, -0.02]])  # about the mean (0, 0)
    points = np.stack([s + t * (e - s) for s, e in zip(starts, ends, strict=True)])
    spokes = np.stack([t * [0.5, 0.0], t * [0.0, 0.5]])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), [1.0] * 3), "line_length": (("pair",), [1.0] * 3),
                      "converged": (("pair",), [True] * 3),
                      "start_label": (("pair",), [0, 1, 2]), "end_label": (("pair",), [1, 2, 0]),
                      "log_volume": (("z1", "z2"), np.zeros((5, 5))),
                      "spray": (("direction", "s", "latent"), spokes),
                      "frechet_mean": (("latent",), [0.0, 0.0])},
                     coords={"z1": g, "z2": g},
                     attrs={"metric": "rhvae", "label_names": ["alpha", "beta", "gamma"]})
    latent = _latent(np.random.default_rng(0).uniform(-0.9, 0.9, (50, 2)), np.zeros(50, int))
    fig = report.plot_geodesics(latent, geo)
    ax = fig.axes[0]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (star,) = [line for line in ax.lines if line.get_marker() == "*"]
    box = star.get_window_extent(canvas.get_renderer())
    assert star.get_zorder() > max(line.get_zorder() for line in ax.lines if line is not star)
    texts = [t.get_window_extent(canvas.get_renderer()) for t in ax.texts]
    assert len(texts) == 6 and not any(box.overlaps(t) for t in texts)


def test_geodesics_of_a_1d_latent_stand_on_their_own_lines() -> None:
    """Four overlapping pairs of a 1-D latent space: each on its own line (pair k at
    height k, the codes at 0), so that neither the curves nor their endpoint labels lie
    over one another (all at height 0 before: 6 pairs of labels overlapped)."""
    starts, ends = np.array([-1.0, -0.9, 0.2, -1.1]), np.array([1.0, 1.1, -0.5, 0.9])
    t = np.linspace(0, 1, 6)
    points = (starts[:, None] + (ends - starts)[:, None] * t)[..., None]
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), np.abs(ends - starts)),
                      "line_length": (("pair",), np.abs(ends - starts)),
                      "converged": (("pair",), [True] * 4),
                      "start_label": (("pair",), [0, 1, 2, 0]),
                      "end_label": (("pair",), [1, 2, 0, 2])},
                     attrs={"metric": "pullback", "label_names": ["a", "b", "c"]})
    latent = _latent(np.random.default_rng(0).standard_normal((80, 1)), np.zeros(80, int))
    fig = report.plot_geodesics(latent, geo)
    ax = fig.axes[0]
    solid = [line for line in ax.lines
             if line.get_linestyle() == "-" and len(line.get_xdata()) == 6]
    for k, line in enumerate(solid):
        np.testing.assert_array_equal(line.get_xdata(), points[k, :, 0])
        np.testing.assert_array_equal(line.get_ydata(), np.full(6, k + 1.0))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["codes", "pair 1", "pair 2",
                                                             "pair 3", "pair 4"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in ax.texts]
    assert len(boxes) == 8
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(8) for j in range(i))


def _curvature_panel(K: np.ndarray):
    """The curvature panel of a geodesics figure over the grid of K."""
    g = np.linspace(-1, 1, K.shape[0])
    t = np.linspace(0, 1, 5)[:, None]
    geo = xr.Dataset({"points": (("pair", "t", "latent"), [[-1.0, 0.0] + t * [2.0, 0.5]]),
                      "length": (("pair",), [2.2]), "line_length": (("pair",), [2.0]),
                      "converged": (("pair",), [True]),
                      "log_volume": (("z1", "z2"), np.zeros(K.shape)),
                      "gaussian_curvature": (("z1", "z2"), K)}, coords={"z1": g, "z2": g},
                     attrs={"metric": "rhvae"})
    latent = _latent(np.random.default_rng(0).uniform(-1, 1, (50, 2)), np.zeros(50, int))
    return report.plot_geodesics(latent, geo).axes[1]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_curvature_of_one_sign_is_drawn_over_its_own_range(sign: float) -> None:
    """K from 0.5 to 1.5 (or its negative): the colours span the map's range, in red (blue
    for negative) alone. The scale centred on 0 put every value near its red end: a map of
    one colour (normalised values within 0.1 of each other)."""
    z1 = np.linspace(-1, 1, 21)[:, None] * np.ones(21)
    K = sign * (1.0 + 0.5 * z1)
    ax = _curvature_panel(K)
    (im,) = ax.images
    scaled = im.norm(K)
    assert np.ptp(scaled) > 0.9
    assert im.get_cmap().name == ("Reds" if sign > 0 else "Blues_r")
    darker = np.argmax(np.abs(K)), np.argmin(np.abs(K))  # the more curved end is darker
    rgb = im.to_rgba(K.ravel()[list(darker)])[:, :3].sum(axis=1)
    assert rgb[0] < rgb[1]
    assert ("positive everywhere" if sign > 0 else "negative everywhere") in ax.get_title()


def test_curvature_of_both_signs_keeps_zero_at_the_centre() -> None:
    z1 = np.linspace(-1, 1, 21)[:, None] * np.ones(21)
    (im,) = _curvature_panel(z1 ** 3 * 100).images
    assert im.norm(0.0) == pytest.approx(0.5) and im.get_cmap().name == "RdBu_r"


def _summary_inputs() -> tuple[dict, dict, dict]:
    """One run's history (validation loss not at its best in the last epoch), latent store
    (validation means unlike medians) and geodesics, values chosen by hand."""
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [5.0, 3.0, 4.0],
                            "val_loss": [6.0, 2.0, 3.0], "seconds": [1.0, 2.0, 4.0]})
    rng = np.random.default_rng(0)
    n = 12
    split = np.array([0, 1] * 6, dtype=np.int8)
    z_mean, z_std = rng.standard_normal((n, 2)), rng.uniform(0.3, 0.8, (n, 2))
    recon = np.full(n, 50.0)  # the training rows': not in the table
    recon[split == 1] = [0, 0, 1, 1, 2, 8]
    latent = xr.Dataset({
        "split": (("sample",), split),
        "z_mean": (("sample", "latent"), z_mean), "z_std": (("sample", "latent"), z_std),
        "z_sample": (("sample", "latent"), z_mean + z_std * rng.standard_normal((n, 2))),
        "reconstruction_error": (("sample",), recon),
        "kl": (("sample",), rng.uniform(1.0, 3.0, n)),
        "elbo": (("sample",), -np.arange(n, dtype=float) ** 2),
        "log_marginal": (("sample",), -np.arange(n, dtype=float) ** 2 + 1)},
        attrs={"model": "vae", "likelihood": "bernoulli", "latent_dim": 2, "train_seed": 5})
    geo = xr.Dataset({"length": (("pair",), [1.0, 4.0]),
                      "line_length": (("pair",), [1.0, 2.0])})
    return {"r": history}, {"r": latent}, {"r": geo}


def test_comparison_table_takes_each_column_from_its_source() -> None:
    """Each column against its definition, by hand: the last epoch's losses, the best
    validation loss, the summed epoch times, validation means (not medians), the mean of
    the per-pair length ratios, the seed, and the KL split of the validation posteriors
    (aetk.aggregate.kl_decomposition at the stored codes z_sample)."""
    from aetk.aggregate import kl_decomposition

    histories, latents, geodesics = _summary_inputs()
    row = report.comparison_table(histories, latents, geodesics).iloc[0]
    assert (row["epochs"], row["final_train_loss"], row["final_val_loss"],
            row["best_val_loss"], row["train_seconds"]) == (3, 4.0, 3.0, 2.0, 7.0)
    lat = latents["r"]
    val = lat["split"].values == 1
    assert row["val_reconstruction_error"] == 2.0  # (0 + 0 + 1 + 1 + 2 + 8) / 6; median 1
    assert row["val_elbo"] == pytest.approx(-np.mean(np.arange(1, 12, 2) ** 2))
    assert row["val_log_marginal"] == pytest.approx(row["val_elbo"] + 1)
    assert row["val_kl"] == pytest.approx(lat["kl"].values[val].mean())
    assert row["geodesic_length_ratio"] == 1.5  # ratios 1 and 2; 5 / 3 as a ratio of means
    assert row["seed"] == 5 and row["latent_dim"] == 2
    split = kl_decomposition(lat["z_mean"].values[val], lat["z_std"].values[val],
                             lat["z_sample"].values[val])
    assert row["val_mutual_info"] == pytest.approx(split.mutual_information, rel=1e-9)
    assert row["val_marginal_kl"] == pytest.approx(row["val_kl"] - split.mutual_information,
                                                   rel=1e-9)
    assert row["val_total_correlation"] == pytest.approx(split.total_correlation, rel=1e-9)


def test_runs_without_a_validation_split_are_said_to_be_scored_on_training_samples() -> None:
    """With `validation_fraction: 0` the val_* columns are means over the training samples:
    the table's `scored_on` says so per run (the column names stay), and the figure's
    panels, titled "validation log p(x)" and so on, now name the training samples."""
    histories, latents, geodesics = _summary_inputs()
    lat = latents["r"]
    unsplit = lat.assign(split=lat["split"] * 0)
    table = report.comparison_table({"r": histories["r"], "u": histories["r"]},
                                    {"r": lat, "u": unsplit}, geodesics)
    assert table["scored_on"].tolist() == ["validation", "training"]
    assert table["val_reconstruction_error"].tolist() == [2.0, 26.0]  # (6 x 50 + 12) / 12
    for rows, said in ((table.iloc[:1], ["validation log p(x) and ELBO",
                                         "validation reconstruction error", "validation KL"]),
                       (table.iloc[1:], ["log p(x) and ELBO\nof the training samples (no "
                                         "validation split)", "reconstruction error\nof the "
                                         "training samples", "KL = I(x; z) + KL(q(z) || p(z))"
                                         "\nof the training samples"]),
                       (table, ["validation log p(x) and ELBO\n(training samples for u: no "
                                "validation split)", "validation reconstruction error\n"
                                "(training samples for u", "validation KL = I(x; z) + "
                                "KL(q(z) || p(z))\n(training samples for u"])):
        titles = [ax.get_title() for ax in report.comparison_figure(rows).axes[:3]]
        for title, text in zip(titles, said, strict=True):
            assert text in title, (title, text)
        if not (rows["scored_on"] == "validation").any():
            assert not any(t.startswith("validation") or ": validation" in t for t in titles)


def test_the_frechet_mean_is_said_to_be_of_training_codes_without_a_validation_split() -> None:
    g = np.linspace(-1, 1, 5)
    t = np.linspace(0, 1, 5)[:, None]
    geo = xr.Dataset({"points": (("pair", "t", "latent"), [[-0.5, 0.0] + t * [1.0, 0.8]]),
                      "length": (("pair",), [1.6]), "line_length": (("pair",), [1.5]),
                      "converged": (("pair",), [True]),
                      "log_volume": (("z1", "z2"), np.zeros((5, 5))),
                      "spray": (("direction", "s", "latent"), [t * [0.5, 0.0]]),
                      "frechet_mean": (("latent",), [0.0, 0.0])},
                     coords={"z1": g, "z2": g}, attrs={"metric": "rhvae"})
    latent = _latent(np.random.default_rng(0).uniform(-0.9, 0.9, (50, 2)), np.zeros(50, int))
    for split, which in ((np.zeros(50, np.int8), "training"), (np.arange(50) % 2, "validation")):
        fig = report.plot_geodesics(latent.assign(split=(("sample",), split)), geo)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert f"Frechet mean of {which} codes" in labels, labels


def test_traversals_say_whose_codes_set_their_range() -> None:
    """aetk encode traverses the validation codes' range, or all codes' when the store has
    fewer than two validation samples: the title said "validation" either way."""
    latent = xr.Dataset({"traversal": (("traversed", "step", "feature"), np.zeros((1, 3, 4))),
                         "traversal_value": (("traversed", "step"), [[-1.0, 0.0, 1.0]])},
                        coords={"traversed": [0]}, attrs={"model": "vae"})
    for split, which in ((np.zeros(6, np.int8), "training"), ([1, 0, 0, 0, 0, 0], "all"),
                         ([1, 1, 0, 0, 0, 0], "validation")):
        fig = report.plot_traversals(latent.assign(split=(("sample",), split)))
        assert f"across the {which} codes' 2%-98% range" in fig.get_suptitle()


def test_pairs_with_coinciding_ends_are_left_out_of_the_length_ratio_alike() -> None:
    """A VQ-VAE snaps two samples to one code: their pair has length = line_length = 0.
    The geodesics figure's title read "nan" (with a RuntimeWarning) while the table
    skipped the pair; now both average the other pairs, the title says how many were left
    out, and only a store of such pairs alone gives none (NaN in the table)."""
    histories, latents, _ = _summary_inputs()
    t = np.linspace(0, 1, 5)[:, None]
    points = np.stack([[-1.0, 0.0] + t * [2.0, 0.0], np.full((5, 2), 0.5),
                       [0.0, -1.0] + t * [0.0, 1.0]])
    latent = _latent(np.random.default_rng(0).standard_normal((50, 2)), np.zeros(50, int))
    for length, line, ratio, said in (
            ([3.0, 0.0, 1.0], [2.0, 0.0, 1.0], 1.25,
             "length / straight-line length 1.250 (1 pair with coinciding ends left out)"),
            ([0.0] * 3, [0.0] * 3, np.nan, "undefined: every pair's ends coincide")):
        geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                          "length": (("pair",), length), "line_length": (("pair",), line),
                          "converged": (("pair",), [True] * 3)}, attrs={"metric": "pullback"})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            title = report.plot_geodesics(latent, geo).axes[0].get_title()
            row = report.comparison_table(histories, latents, {"r": geo}).iloc[0]
        assert said in title and "nan" not in title, title
        np.testing.assert_equal(row["geodesic_length_ratio"], ratio)


def test_training_curves_draw_each_loss_under_its_name() -> None:
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [9.0, 5.0, 4.0],
                            "val_loss": [8.0, 6.0, 5.5]})
    ax = report.plot_training_curves({"run": history}).axes[0]
    lines = {line.get_label(): line.get_ydata() for line in ax.lines}
    np.testing.assert_array_equal(lines["train"], history["train_loss"])
    np.testing.assert_array_equal(lines["validation"], history["val_loss"])


def test_reconstructions_show_the_data_above_their_reconstructions(monkeypatch) -> None:
    data, recon = np.zeros((3, 4)), np.full((3, 4), 0.5)
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), recon)},
                        attrs={"image_shape": [2, 2]})
    shown = []
    monkeypatch.setattr(report, "_image_grid",
                        lambda rows, shape, names, title: shown.append((rows, names)))
    report.plot_reconstructions(latent)
    [(rows, names)] = shown
    assert names == ["data", "reconstruction"]
    np.testing.assert_array_equal(rows[0], data)
    np.testing.assert_array_equal(rows[1], recon)


def test_reconstruction_heat_maps_name_each_examples_class() -> None:
    """The caption says one example per class comes first, but the heat maps' rows read
    "sample 0-3": with categorical labels each row names its class."""
    data = np.random.default_rng(0).random((3, 5))
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), data / 2),
                         "example_index": (("example",), [4, 0, 2]),
                         "label": (("sample",), [1, 0, 2, 2, 0], {"kind": "categorical"})},
                        attrs={"label_names": ["B", "T", "NK"]})
    axes = report.plot_reconstructions(latent).axes[:2]
    for ax in axes:
        assert [t.get_text() for t in ax.get_yticklabels()] == ["B", "T", "NK"]
        assert ax.get_ylabel() == "sample (its class)"
    latent["label"].attrs["kind"] = "continuous"  # no classes to name
    ax = report.plot_reconstructions(latent).axes[0]
    assert ax.get_ylabel() == "sample" and "B" not in [t.get_text() for t in
                                                       ax.get_yticklabels()]


def test_image_rows_share_one_grey_scale() -> None:
    """Raw digits (0 to 16, e.g. for a categorical decoder) over reconstructions reaching
    only 8: one scale for every image, so 8 is drawn half as dark as 16 in every row (each
    row had its own maximum as black, and a negative value was white)."""
    data = np.tile(np.linspace(0.0, 16.0, 4), (3, 1))
    recon = np.tile(np.linspace(-2.0, 8.0, 4), (3, 1))
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), recon)},
                        attrs={"image_shape": [2, 2]})
    fig = report.plot_reconstructions(latent)
    limits = {ax.images[0].get_clim() for ax in fig.axes if ax.images}
    assert limits == {(-2.0, 16.0)}


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5, 3), (2, 4, 5)])
def test_images_with_channels_are_drawn(shape) -> None:
    """Colour images, (C, H, W) as aetk's convolutions take them or numpy's (H, W, 3), in
    colour, and other channel counts side by side (the report stopped with "cannot reshape
    array of size 60 into shape (5,3)")."""
    data = np.random.default_rng(0).random((2, int(np.prod(shape))))
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), data / 2)},
                        attrs={"image_shape": list(shape)})
    first = report.plot_reconstructions(latent).axes[0].images[0].get_array()
    image = data[0].reshape(shape)
    if shape[0] == 3:
        np.testing.assert_allclose(first, image.transpose(1, 2, 0))
    elif shape[-1] == 3:
        np.testing.assert_allclose(first, image)
    else:
        np.testing.assert_allclose(first, np.hstack(list(image)))


def test_samples_of_one_feature_are_histograms_over_the_data() -> None:
    """Data of one feature (a 1-column file): the samples figure stopped 'aetk report run'
    with "IndexError: index 1 is out of bounds" (it plotted feature 1 against feature 0);
    now the data's and each sampler's histograms share bins."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    data, drawn = rng.normal(size=(200, 1)), rng.normal(2.0, 1.0, size=(16, 1))
    latent = xr.Dataset({"generated_model": (("generated", "feature"), drawn)},
                        attrs={"model": "vae", "likelihood": "gaussian"})
    ax = report.plot_samples(latent, SimpleNamespace(x=data, attrs={})).axes[0]
    bars = [p for p in ax.patches if p.get_label() != "the model's sampler"]
    heights, edges = np.histogram(data[:, 0], bins=np.histogram_bin_edges(
        np.concatenate([data, drawn])[:, 0], 30), density=True)
    np.testing.assert_allclose([b.get_height() for b in bars], heights)
    np.testing.assert_allclose([b.get_x() for b in bars], edges[:-1])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["data",
                                                                   "the model's sampler"]


@pytest.mark.parametrize(("features", "image_shape", "line"), [
    (40, None, "rows: conditioned on class B, NK, T in turn"),
    (3, None, "points: conditioned on class B, NK, T in turn"),
    (4, [2, 2], "columns: conditioned on class B, NK, T")])
def test_conditional_samples_title_says_where_the_classes_are(features, image_shape,
                                                              line) -> None:
    """A conditional model's samples take the classes in turn: columns of images, but the
    rows of a heat map (cell counts) and points over the data, which were also titled
    "columns: conditioned on class ...", columns they do not have."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    latent = xr.Dataset(
        {"generated_model": (("generated", "feature"), rng.random((6, features))),
         "generated_class": (("generated",), np.arange(6) % 3)},
        attrs={"model": "vae", "likelihood": "poisson", "conditions": "labels",
               "label_names": ["B", "NK", "T"],
               **({"image_shape": image_shape} if image_shape else {})})
    fig = report.plot_samples(latent, SimpleNamespace(x=rng.random((20, features)), attrs={}))
    title = fig.get_suptitle() or fig.axes[0].get_title()
    assert title.splitlines()[-1] == line


def test_heat_maps_keep_a_two_line_title_off_the_panels_and_tick_whole_indices() -> None:
    """The traversals of data that are not images (the swiss roll's 3 features): the
    two-line title ran into the panels' titles, and wide panels ticked features at -0.5,
    0.5, ..."""
    rows = [np.random.default_rng(0).random((10, 3)) for _ in range(3)]
    fig = report._heatmaps(rows, ["z2", "z3", "z1"], "latent traversals: rhvae x gaussian\n"
                           "one dimension at a time across the validation codes' 2%-98% "
                           "range, the others at their median",
                           (mpl.colors.Normalize(0.0, 1.0), "value"), ylabel="step")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig.get_suptitle()
    top = next(t for t in fig.texts if t.get_text() == title).get_window_extent(renderer)
    panels = fig.axes[:3]
    assert not any(top.overlaps(ax.title.get_window_extent(renderer)) for ax in panels)
    for ax in panels:
        ticks = ax.get_xticks()
        low, high = sorted(ax.get_xlim())
        assert list(ticks[(ticks >= low) & (ticks <= high)]) == [0.0, 1.0, 2.0]
        assert np.all(np.mod(ax.get_yticks(), 1) == 0)


def test_comparison_figure_draws_each_column_where_its_legend_says() -> None:
    """The dots are the table's columns: log p(x) and ELBO, I(x; z) with KL(q(z) || p(z))
    stacked on it, each sampler's score and the validation data's; settings sorted by
    log p(x) (not the ELBO, whose order here differs), worst at the bottom."""
    table = _table().assign(val_elbo=[-170.0, -161.0, -165.0])
    fig = report.comparison_figure(table)
    ax_ll, ax_err, ax_kl, ax_score = fig.axes[:4]
    order = ["infovae-bernoulli", "beta_vae-bernoulli", "vae-bernoulli"]  # -160, -155, -154
    assert [t.get_text() for t in ax_ll.get_yticklabels()] == order
    y = table["run"].map(order.index).to_numpy()
    dots = {line.get_label(): line for line in ax_ll.lines}
    for label, column in (("log p(x)", "val_log_marginal"), ("ELBO", "val_elbo")):
        np.testing.assert_array_equal(dots[label].get_xdata(), table[column])
        np.testing.assert_array_equal(dots[label].get_ydata(), y)
    np.testing.assert_array_equal(ax_err.lines[0].get_xdata(), table["val_reconstruction_error"])
    mi, rest = ax_kl.containers
    np.testing.assert_allclose([b.get_width() for b in mi], table["val_mutual_info"])
    np.testing.assert_allclose([b.get_x() for b in rest], table["val_mutual_info"])
    np.testing.assert_allclose([b.get_width() for b in rest], table["val_marginal_kl"])
    np.testing.assert_allclose([b.get_y() + b.get_height() / 2 for b in mi], y)
    assert [t.get_text() for t in ax_kl.get_yticklabels()] == order
    lines = {line.get_label(): line.get_xdata() for line in ax_score.lines}
    np.testing.assert_array_equal(lines["model's sampler"], table["sample_score"])
    np.testing.assert_array_equal(lines["Riemannian uniform"], table["geometric_sample_score"])
    assert list(lines["validation data"]) == [7.3, 7.3]


def test_seeds_of_a_setting_stand_side_by_side_in_its_row() -> None:
    """Two seeds of each setting: their dots and KL bars sit apart within the setting's
    row (seed order, the first on top), not on one line where equal values hid each other
    and the KL bar was only their mean."""
    one = _table()
    table = pd.concat([one.assign(run=one["run"] + "-s0", seed=0),
                       one.assign(run=one["run"] + "-s1", seed=1,
                                  val_mutual_info=[4.1, 3.0, 3.0])], ignore_index=True)
    fig = report.comparison_figure(table)
    ax_ll, ax_err, ax_kl, ax_score = fig.axes[:4]
    rows = {"infovae-bernoulli": 0, "beta_vae-bernoulli": 1, "vae-bernoulli": 2}
    setting = table["run"].str.replace(r"-s\d$", "", regex=True).map(rows).to_numpy()
    y = ax_ll.lines[1].get_ydata()  # log p(x), equal for the two seeds
    np.testing.assert_allclose(y, setting + np.where(table["seed"] == 0, 0.175, -0.175))
    for ax in (ax_err, ax_score):
        np.testing.assert_allclose(ax.lines[0].get_ydata(), y)
    mi, rest = ax_kl.containers
    assert len(mi) == len(rest) == 6
    np.testing.assert_allclose([b.get_width() for b in mi], table["val_mutual_info"])
    np.testing.assert_allclose([b.get_y() + b.get_height() / 2 for b in mi], y)
    boxes = [(b.get_y(), b.get_y() + b.get_height()) for b in mi]
    assert all(high <= 0.5 + r and low >= r - 0.5 and high - low > 0.2
               for (low, high), r in zip(boxes, setting, strict=True))
    assert [t.get_text() for t in ax_kl.get_yticklabels()] == list(rows)
    assert "side by side" in fig.get_suptitle()
    # stores that record no seed: drawn at their rows (a NaN rank put them nowhere)
    for unseeded in (_table().assign(seed=None), _table().drop(columns="seed")):
        ax_ll = report.comparison_figure(unseeded).axes[0]
        np.testing.assert_array_equal(ax_ll.lines[1].get_ydata(), [2, 1, 0])


def test_kl_split_estimates_below_zero_are_drawn_as_zero_and_named() -> None:
    """I(x; z) >= 0 and KL(q(z) || p(z)) >= 0, but their estimates can fall below 0: such a
    part is drawn as 0 and the other as the whole (measured) KL, and the x label names the
    run and its estimate. A negative bar ran left of 0 with the orange drawn over it."""
    table = _table().assign(val_mutual_info=[-0.3, 3.4, 4.0],
                            val_marginal_kl=[1.0, 0.3, -0.2])
    ax_kl = report.comparison_figure(table).axes[2]
    mi, rest = ax_kl.containers
    kl = table["val_mutual_info"] + table["val_marginal_kl"]
    np.testing.assert_allclose([b.get_width() for b in mi], [0.0, 3.4, 3.8])
    np.testing.assert_allclose([b.get_x() for b in rest], [0.0, 3.4, 3.8])
    np.testing.assert_allclose([b.get_x() + b.get_width() for b in rest], kl)
    assert min(ax_kl.get_xlim()) >= 0
    label = ax_kl.get_xlabel()
    assert "estimated below 0" in label
    assert "vae-bernoulli: I(x; z) -0.3" in label
    assert "infovae-bernoulli: KL(q(z) || p(z)) -0.2" in label
    assert "beta_vae" not in label
    assert report.comparison_figure(_table()).axes[2].get_xlabel() == "nats per sample"


def test_sample_score_is_the_inception_score_of_the_classifier() -> None:
    """exp of the mean KL(p(y|x) || p(y)), by hand for two samples' class probabilities."""
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    scorer = object.__new__(report.SampleScorer)
    scorer.classifier = type("Fixed", (), {"predict_proba": lambda self, x: p})()
    # p(y) = (0.55, 0.45)
    kl = [0.9 * np.log(0.9 / 0.55) + 0.1 * np.log(0.1 / 0.45),
          0.2 * np.log(0.2 / 0.55) + 0.8 * np.log(0.8 / 0.45)]
    assert scorer(np.zeros((2, 3))) == pytest.approx(np.exp(np.mean(kl)), rel=1e-12)


def _grid_table() -> pd.DataFrame:
    """`grid.conditional: [false, true]` over three count likelihoods: a vae and an rhvae of
    each, conditional runs 20 nats higher (log p(x|c)), the errors of one data set."""
    rows = []
    for i, lik in enumerate(("poisson", "negative_binomial", "multinomial")):
        for j, model in enumerate(("vae", "rhvae")):
            for cond in (False, True):
                ll = -160.0 + 15 * i - j + 20 * cond
                rows.append({"run": f"{model}-{lik}" + "-cond" * cond, "likelihood": lik,
                             "conditions": "labels" if cond else "none", "seed": 0,
                             "val_log_marginal": ll, "val_elbo": ll - 5,
                             "val_reconstruction_error": 2.0 + 0.3 * i + 0.01 * j + 0.1 * cond,
                             "val_mutual_info": 3.0 + j, "val_marginal_kl": 0.5 + i})
    return pd.DataFrame(rows)


def _log_px_axes(fig) -> list:
    """The panels of log p(x) (or log p(x|c)) and the ELBO, top to bottom."""
    return [ax for ax in fig.axes if any(line.get_label().startswith("log p(x")
                                         for line in ax.lines)]


def test_conditional_runs_log_p_x_given_c_apart_from_the_unconditional() -> None:
    """A conditional run's log p(x|c) is not comparable with an unconditional log p(x): each
    likelihood's conditional runs have a panel of their own, whose legend and title say
    log p(x|c) and ELBO given c (they shared the likelihood's panel as "log p(x)")."""
    table = _grid_table()
    fig = report.comparison_figure(table)
    panels = _log_px_axes(fig)
    assert len(panels) == 6  # 3 likelihoods x unconditional, conditional
    for ax, (lik, cond) in zip(panels, [(lik, cond) for lik in table["likelihood"].unique()
                                        for cond in (False, True)], strict=True):
        runs = table[(table["likelihood"] == lik) & ((table["conditions"] != "none") == cond)]
        dots = {line.get_label(): line for line in ax.lines}
        log_px, elbo = ("log p(x|c)", "ELBO given c") if cond else ("log p(x)", "ELBO")
        assert set(dots) == {log_px, elbo}
        np.testing.assert_array_equal(sorted(dots[log_px].get_xdata()),
                                      sorted(runs["val_log_marginal"]))
        assert {t.get_text() for t in ax.get_yticklabels()} == set(runs["run"])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [elbo, log_px]
        title = ax.get_title()
        assert f"{lik}, given the class c" in title if cond else lik + ":" in title
        assert f"validation {log_px} and {elbo}" in title
        assert ("given" in title) == cond


def test_reconstruction_error_of_every_likelihood_shares_one_axis() -> None:
    """The reconstruction error, of one data set whatever the likelihood, and the KL split
    are on one axis for every likelihood and conditioning; each group's log p(x) on its
    own. Each likelihood's error had its own axis, zoomed on its dots."""
    table = _grid_table()
    fig = report.comparison_figure(table)
    panels = _log_px_axes(fig)
    errors = [fig.axes[fig.axes.index(ax) + 1] for ax in panels]  # beside each
    lows, highs = zip(*(sorted(ax.get_xlim()) for ax in errors), strict=True)
    assert len(set(lows)) == len(set(highs)) == 1
    assert lows[0] < table["val_reconstruction_error"].min()
    assert highs[0] > table["val_reconstruction_error"].max()
    shared = errors[0].get_shared_x_axes()
    assert all(shared.joined(errors[0], ax) for ax in errors)
    assert not any(panels[0].get_shared_x_axes().joined(panels[0], ax) for ax in panels[1:])
    assert "one axis" in errors[0].get_title()
    assert errors[-1].get_xlabel() == "mean squared error (lower is better)"
    # one KL panel with a bar per run, under its group's name (bold) in the groups' order
    (ax_kl,) = [ax for ax in fig.axes if ax.containers]
    mi, _ = ax_kl.containers
    assert len(mi) == len(table)
    labels = [t.get_text() for t in ax_kl.get_yticklabels()]
    at = dict(zip(labels, ax_kl.get_yticks(), strict=True))
    assert sorted(labels, key=at.get, reverse=True) == ["poisson", "vae-poisson", "rhvae-poisson",
                      "poisson, given the class c", "vae-poisson-cond", "rhvae-poisson-cond",
                      "negative_binomial", "vae-negative_binomial", "rhvae-negative_binomial",
                      "negative_binomial, given the class c", "vae-negative_binomial-cond",
                      "rhvae-negative_binomial-cond", "multinomial", "vae-multinomial",
                      "rhvae-multinomial", "multinomial, given the class c",
                      "vae-multinomial-cond", "rhvae-multinomial-cond"]
    bold = [t.get_text() for t in ax_kl.get_yticklabels() if t.get_fontweight() == "bold"]
    assert len(bold) == 6 and all("-" not in name for name in bold)
    np.testing.assert_allclose([b.get_y() + b.get_height() / 2 for b in mi],
                               table["run"].map(at))


def test_comparison_captions_say_how_the_elbo_is_estimated_and_what_compares() -> None:
    """The report's captions: the ELBO averages ELBO_DRAWS draws (they said
    "single-sample"), a conditional run's log p(x|c) stands apart, and the table's KL
    split estimates can come out below 0."""
    from pathlib import Path

    from aetk.cli.encode import ELBO_DRAWS

    root = Path(__file__).parents[1] / "workflow" / "report"
    for name in ("comparison.rst", "comparison_figure.rst"):
        text = " ".join((root / name).read_text().split())
        assert "single-sample" not in text and f"{ELBO_DRAWS} draws" in text, name
        assert "log p(x|c)" in text, name
    table = " ".join((root / "comparison.rst").read_text().split())
    assert "Monte Carlo estimates" in table and "slightly below" in table


def test_comparison_panels_of_undefined_columns_say_why_they_are_empty() -> None:
    """A grid of deterministic autoencoders (ae with mse) has no log p(x), ELBO or KL: those
    panels say so, rather than showing empty axes with made-up ticks in nats."""
    table = pd.DataFrame({
        "run": ["ae-mse-s0", "ae-mse-s1"], "likelihood": "mse", "seed": [0, 1],
        "val_log_marginal": np.nan, "val_elbo": np.nan, "val_reconstruction_error": [0.3, 0.2],
        "val_mutual_info": np.nan, "val_marginal_kl": np.nan})
    ax_ll, ax_err, ax_kl, _ = report.comparison_figure(table).axes[:4]
    for ax, what in ((ax_ll, "no log p(x) or ELBO"), (ax_kl, "no KL split")):
        assert any(t.get_text().startswith(what) for t in ax.texts), ax.get_title()
        assert list(ax.get_xticks()) == []
    assert not ax_err.texts and len(ax_err.get_xticks())  # its values are there
    # defined values keep their panels as they were
    fig = report.comparison_figure(_table())
    assert not fig.axes[0].texts and not fig.axes[2].texts


def _count_latent(features: int = 80, seed: int = 0) -> xr.Dataset:
    """A latent store of count data: genes whose means span three decades, the data's
    maximum above 20 and the samples' below it."""
    rng = np.random.default_rng(seed)
    mean = np.geomspace(0.5, 500.0, features)
    data = rng.poisson(mean, (6, features)).astype(float)
    return xr.Dataset({
        "example_data": (("example", "feature"), data),
        "example_reconstruction": (("example", "feature"), np.tile(mean, (6, 1))),
        "generated_model": (("generated", "feature"),
                            rng.poisson(np.minimum(mean, 5.0), (8, features)).astype(float))},
        attrs={"model": "vae", "likelihood": "poisson"})


def _names(n: int) -> list[str]:
    return [f"GENE{i}" for i in range(n)]


def _ticked(ax) -> dict[float, str]:
    low, high = sorted(ax.get_xlim())
    return {t: label.get_text() for t, label in zip(ax.get_xticks(), ax.get_xticklabels(),
                                                   strict=True) if low <= t <= high}


def test_heat_maps_name_their_features_in_a_readable_subset() -> None:
    """Gene names (a CSV's column headers) on the feature axis of the reconstructions,
    samples and traversals of data that are not images (they showed indices 0, 8, 16, ...):
    every name of 12 features, an evenly spaced subset of at most 30 of 80, each tick the
    name of the feature under it."""
    from types import SimpleNamespace

    for n, every in ((12, 1), (80, 3)):
        latent = _count_latent(n)
        latent["traversal"] = (("traversed", "step", "feature"),
                               np.ones((2, 5, n)) * np.arange(n))
        latent["traversal_value"] = (("traversed", "step"), np.tile(np.linspace(-1, 1, 5),
                                                                    (2, 1)))
        latent = latent.assign_coords(traversed=[1, 0])
        stored = SimpleNamespace(x=latent["example_data"].values,
                                 attrs={"feature_names": _names(n)})
        figures = [report.plot_reconstructions(latent, feature_names=_names(n)),
                   report.plot_samples(latent, stored),
                   report.plot_traversals(latent, feature_names=_names(n))]
        panels = [ax for fig in figures for ax in fig.axes if ax.images]
        assert len(panels) == 5  # data, reconstruction; one sampler; two dimensions
        for ax in panels:
            ticked = _ticked(ax)
            assert len(ticked) <= report.MAX_FEATURE_TICKS
            assert list(ticked) == list(range(0, n, every))
            assert all(label == f"GENE{int(t)}" for t, label in ticked.items())


def test_features_without_names_keep_their_indices_and_wrong_names_are_refused() -> None:
    latent = _count_latent(12)
    ax = report.plot_reconstructions(latent).axes[0]
    assert all(t == int(t) and label.replace("\N{MINUS SIGN}", "-") == str(int(t))
               for t, label in _ticked(ax).items())
    with pytest.raises(ValueError, match="feature_names: 10 names for 12 features"):
        report.plot_reconstructions(latent, feature_names=_names(10))


def test_samples_of_two_named_features_are_plotted_against_their_names() -> None:
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    latent = xr.Dataset({"generated_model": (("generated", "feature"),
                                             rng.normal(size=(8, 2)))},
                        attrs={"model": "vae", "likelihood": "gaussian"})
    stored = SimpleNamespace(x=rng.normal(size=(50, 2)),
                             attrs={"feature_names": ["height", "weight"]})
    ax = report.plot_samples(latent, stored).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("height", "weight")


def _scales(fig) -> tuple[set, set, list[str]]:
    images = [im for ax in fig.axes for im in ax.images]
    return ({type(im.norm) for im in images}, {im.get_clim() for im in images},
            [ax.get_ylabel() for ax in fig.axes if not ax.images])


def test_count_heat_maps_of_one_data_set_share_a_log_scale_and_its_limits() -> None:
    """Counts over three decades: the reconstructions (data up to 518) were drawn on
    log(1 + value), the samples (at most 13) on a linear scale with their own limits,
    so one colour was two values. Now both, and the traversals, on one symmetric-log
    scale (0 keeps the bottom colour) over all their values, labelled as such."""
    from types import SimpleNamespace

    latent = _count_latent()
    latent["traversal"] = (("traversed", "step", "feature"), np.full((1, 3, 80), 2.0))
    latent["traversal_value"] = (("traversed", "step"), [[-1.0, 0.0, 1.0]])
    latent = latent.assign_coords(traversed=[0])
    stored = SimpleNamespace(x=latent["example_data"].values, attrs={})
    values = np.concatenate([latent[v].values.ravel() for v in
                             ("example_data", "example_reconstruction", "generated_model")])
    limits = (float(values.min()), float(values.max()))
    assert latent["generated_model"].max() <= 20 < latent["example_data"].max()
    for fig in (report.plot_reconstructions(latent), report.plot_samples(latent, stored),
                report.plot_traversals(latent)):
        norms, clims, bars = _scales(fig)
        assert norms == {mpl.colors.SymLogNorm} and clims == {limits}
        assert bars == ["value (log scale, linear below 1)"]
        assert fig.axes[0].images[0].norm.linthresh == 1.0


@pytest.mark.parametrize(("top", "log"), [(10.0, False), (11.0, True)])
def test_log_scale_is_for_data_whose_maximum_exceeds_ten_times_their_median(top, log) -> None:
    """The rule: nonnegative data whose maximum is more than ten times their median
    nonzero value (on a linear scale most of them would share the bottom tenth of the
    colours); here the median nonzero value is 1."""
    data = np.array([[0.0, 1.0, 1.0, 1.0, top], [0.0, 1.0, 1.0, 2.0, 1.0]])
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), data + 0.5)})
    norm, label = report._heat_scale(latent)
    assert isinstance(norm, mpl.colors.SymLogNorm) is log
    assert (norm.vmin, norm.vmax) == (0.0, top)  # the data's limits
    assert label == ("value (log scale, linear below 1)" if log else "value (linear scale)")


def test_runs_on_one_data_set_share_the_data_limits_and_mark_values_beyond() -> None:
    """Two models of the same data: each latent store's limits spanned its own values (the
    reconstructions of one reached 30, of the other 60), so one colour was two values
    across runs. Now the data's limits for both, and a model's values beyond them are
    marked by the colour bar's arrow."""
    data = np.array([[0.0, 1.0, 2.0, 40.0], [1.0, 0.0, 3.0, 5.0]])
    figures = []
    for top in (30.0, 60.0):
        recon = data.clip(max=top) + 0.25
        recon[0, 3] = top
        latent = xr.Dataset({"example_data": (("example", "feature"), data),
                             "example_reconstruction": (("example", "feature"), recon)})
        figures.append(report.plot_reconstructions(latent))
    for fig, extend in zip(figures, ("neither", "max"), strict=True):
        _, clims, _ = _scales(fig)
        assert clims == {(0.0, 40.0)}
        bar = [ax for ax in fig.axes if ax.images][-1].images[0].colorbar
        assert bar.extend == extend


def test_standardised_data_are_drawn_on_a_linear_scale() -> None:
    data = np.random.default_rng(0).standard_normal((5, 30)) * 50
    latent = xr.Dataset({"example_data": (("example", "feature"), data),
                         "example_reconstruction": (("example", "feature"), data / 2)})
    norms, clims, bars = _scales(report.plot_reconstructions(latent))
    assert norms == {mpl.colors.Normalize} and clims == {(data.min(), data.max())}
    assert bars == ["value (linear scale)"]


def test_active_units_count_variances_strictly_above_the_threshold() -> None:
    """Var_x E[z_j] > threshold (Burda et al.): a variance equal to it is not an active
    unit. The columns' variances are 0.25, 1 and 0, exact in binary."""
    z = np.array([[0.5, 1.0, 3.0], [-0.5, -1.0, 3.0]])
    assert report.active_units(z, threshold=0.25) == 1
    assert report.active_units(z, threshold=0.2499) == 2
    assert report.active_units(z, threshold=0.0) == 2


def test_active_units_and_code_rank_of_the_table_are_the_validation_codes() -> None:
    """The training codes spread in two dimensions, the validation codes along z1 only:
    the table's active units and code rank are the validation codes' (1 and 1), as its
    other val_ columns are, not all codes' (2 and 2)."""
    rng = np.random.default_rng(4)
    split = np.array([0, 1] * 20, dtype=np.int8)
    z = rng.standard_normal((40, 2))
    z[split == 1, 1] = 0.7
    latent = xr.Dataset({"split": (("sample",), split), "z_mean": (("sample", "latent"), z)},
                        attrs={"model": "ae", "likelihood": "mse"})
    history = pd.DataFrame({"epoch": [1], "train_loss": [1.0]})
    row = report.comparison_table({"r": history}, {"r": latent}, {}).iloc[0]
    assert (row["active_units"], row["code_rank"]) == (1, 1)
    assert (report.active_units(z), report.code_rank(z)) == (2, 2)


def test_kl_split_of_a_ladder_vae_keeps_only_the_total_correlation() -> None:
    """The ladder VAE's stored KL spans z2 and z1 given z2, so I(x; z1) and the marginal KL
    are not its parts (NaN); the total correlation of its z1 codes' aggregate is
    kl_decomposition's at the stored codes."""
    from aetk.aggregate import kl_decomposition

    histories, latents, geodesics = _summary_inputs()
    lat = latents["r"]
    lat.attrs["model"] = "lvae"
    row = report.comparison_table(histories, latents, geodesics).iloc[0]
    val = lat["split"].values == 1
    split = kl_decomposition(lat["z_mean"].values[val], lat["z_std"].values[val],
                             lat["z_sample"].values[val])
    assert np.isnan(row["val_mutual_info"]) and np.isnan(row["val_marginal_kl"])
    assert row["val_total_correlation"] == pytest.approx(split.total_correlation, rel=1e-9)
    assert split.total_correlation != pytest.approx(split.dimensionwise_kl, rel=1e-3)


def test_the_log_scales_median_is_of_the_nonzero_values() -> None:
    """Mostly zeros (sparse counts) whose nonzero values lie within a decade (1 to 5,
    median 2.5): linear. The median of all values, 0, would call for a log scale."""
    data = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 5.0]])
    latent = xr.Dataset({"example_data": (("example", "feature"), data)})
    norm, label = report._heat_scale(latent)
    assert type(norm) is mpl.colors.Normalize and label == "value (linear scale)"


def test_the_scorers_classifier_keeps_the_directions_that_tell_the_classes_apart() -> None:
    """Two classes apart along a feature of small spread (+-1, sd 0.1) beside two noise
    features of sd 10: PCA to at most 50 dimensions keeps all three and the validation
    data score near 2 (each confidently one of two equal classes; 1.87); PCA to the two largest
    directions would keep only the noise and score about 1."""
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 2
        x = np.column_stack([10 * rng.standard_normal((n, 2)),
                             2.0 * y - 1 + 0.1 * rng.standard_normal(n)])
        return x, y

    (train, labels), (validation, _) = draw(400), draw(200)
    scorer = report.SampleScorer(train, labels, validation)
    assert scorer.reference > 1.8


def test_a_store_without_a_validation_split_is_summarised_over_all_its_samples() -> None:
    """No validation rows (a run on data without a split): the val_ columns are the means
    over all samples, by hand (reconstruction errors 50 x 6 and 0, 0, 1, 1, 2, 8: 26), and
    the KL split and active units are all codes', not NaN."""
    from aetk.aggregate import kl_decomposition

    histories, latents, geodesics = _summary_inputs()
    lat = latents["r"]
    lat["split"] = lat["split"] * 0
    row = report.comparison_table(histories, latents, geodesics).iloc[0]
    assert row["val_reconstruction_error"] == 26.0
    assert row["val_kl"] == pytest.approx(lat["kl"].values.mean(), rel=1e-12)
    split = kl_decomposition(lat["z_mean"].values, lat["z_std"].values,
                             lat["z_sample"].values)
    assert row["val_mutual_info"] == pytest.approx(split.mutual_information, rel=1e-9)
    assert row["active_units"] == report.active_units(lat["z_mean"].values) == 2


def test_geodesics_title_gives_the_mean_length_ratio_and_the_converged_count() -> None:
    """Lengths 1 and 4 against straight lines of 1 and 2: the mean of the ratios, 1.5 (the
    ratio of the means would be 5/3); one of the two fits converged."""
    t = np.linspace(0, 1, 5)[:, None]
    points = np.stack([[-1.0, 0.0] + t * [2.0, 0.5], [0.0, -1.0] + t * [0.5, 2.0]])
    geo = xr.Dataset({"points": (("pair", "t", "latent"), points),
                      "length": (("pair",), [1.0, 4.0]), "line_length": (("pair",), [1.0, 2.0]),
                      "converged": (("pair",), [True, False])}, attrs={"metric": "pullback"})
    latent = _latent(np.random.default_rng(0).standard_normal((50, 2)), np.zeros(50, int))
    title = report.plot_geodesics(latent, geo).axes[0].get_title()
    assert title.endswith("\nlength / straight-line length 1.500, 1/2 converged")
