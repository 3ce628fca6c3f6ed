"""The report's figures: what a reader must be able to see in them."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
