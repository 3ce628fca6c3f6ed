"""Figures and tables of the pipeline's report (matplotlib, PNG at 100 dpi).

Figures are plain ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, so no
pyplot state or display is involved; every ``plot_*`` returns its figure (a notebook shows
it) and writes a PNG when given a ``path``. Every function reads the xarray stores written by
``aetk encode`` / ``aetk geodesics`` (and training histories), never a model, so figures
can be redrawn without the models.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patheffects import withStroke
from matplotlib.ticker import MaxNLocator

from aetk.aggregate import kl_decomposition
from aetk.geometry.fit import length_ratio
from aetk.storage import SPLIT_VALIDATION, StoredData, spanning_codes

DPI = 100

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
             "#000000")
"""Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008)."""
PETROFF_10 = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6", "#a96b59", "#e76300",
              "#b9ac70", "#717581", "#92dadd")
"""Petroff's ten colours (arXiv:2107.02270), chosen to stay distinct under the common
colour-vision deficiencies: for 9 or 10 classes, beyond Okabe & Ito's eight."""
HALO = [withStroke(linewidth=3, foreground="white")]
"""A white outline: text stays legible over points, lines and coloured backgrounds."""


def _class_colours(n: int) -> list:
    """`n` colours for classes: Okabe-Ito up to 8, Petroff's 10 up to 10, else tab20
    (cycled beyond 20: the class labels drawn on the plot tell them apart)."""
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    if n <= len(PETROFF_10):
        return list(PETROFF_10[:n])
    return [mpl.colormaps["tab20"](i % 20) for i in range(n)]


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
              layout: str | None = None, **grid) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **grid)


def _save(fig: Figure, path: Path | None) -> Figure:
    """Write `fig` as a PNG at `path` (none: only return it, e.g. to show in a notebook)."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return fig


def _title(ds: xr.Dataset, given: str = "the class") -> str:
    given = f", given {given}" if ds.attrs.get("conditions", "none") != "none" else ""
    return f"{ds.attrs.get('model', '?')} x {ds.attrs.get('likelihood', '?')}{given}"


def _project(z: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """2-D view of latent codes: as is for d <= 2 (1-D padded with zeros), else PCA."""
    if z.shape[1] == 1:
        return np.column_stack([z[:, 0], np.zeros(len(z))]), ["z1", ""]
    if z.shape[1] == 2:
        return z, ["z1", "z2"]
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(z), ["PC 1 of z", "PC 2 of z"]


def _scatter_labels(ax: Axes, xy: np.ndarray, ds: xr.Dataset, *, size: float = 4,
                    alpha: float = 0.7) -> None:
    """Scatter coloured by the label: one colour per class, drawn in a seeded random order
    (in class order the last classes would hide the first) with each class's name at its
    median; a colour bar when the label is continuous."""
    kind = ds.attrs.get("label_kind", "none")
    if "label" not in ds or kind == "none":
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=alpha, color="tab:blue", linewidths=0)
        return
    labels = ds["label"].values
    if kind == "continuous":
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, s=size, alpha=alpha, cmap="viridis",
                        linewidths=0)
        ax.figure.colorbar(sc, ax=ax, label="label")
        return
    codes, index = np.unique(labels, return_inverse=True)
    names = ds.attrs.get("label_names") or []
    names = [str(names[int(c)]) if int(c) < len(names) else str(c) for c in codes]
    colours = _class_colours(len(codes))
    order = np.random.default_rng(0).permutation(len(xy))
    ax.scatter(xy[order, 0], xy[order, 1], s=size, alpha=alpha, linewidths=0,
               c=[colours[i] for i in index[order]])
    for i, name in enumerate(names):
        x, y = np.median(xy[index == i], axis=0)
        ax.text(x, y, name, ha="center", va="center", fontsize=11, weight="bold",
                path_effects=HALO)
    ax.legend(handles=[Line2D([], [], ls="", marker="o", ms=6, color=c, label=n)
                       for c, n in zip(colours, names, strict=True)],
              fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
              title="label", title_fontsize=9)


def plot_latent(latent: xr.Dataset, path: Path | None = None) -> Figure:
    """Latent means of every sample coloured by label (PCA for more than two dimensions),
    at equal scales on both axes (the latent geometry is the point)."""
    xy, names = _project(latent["z_mean"].values)
    fig, axes = _subplots(figsize=(6, 5))
    ax = axes[0, 0]
    if latent["z_mean"].shape[1] == 1:  # a strip plot: seeded vertical jitter, no meaning
        xy[:, 1] = np.random.default_rng(0).uniform(-1, 1, len(xy))
        names[1] = "(random jitter)"
        ax.set_yticks([])
    else:
        ax.set_aspect("equal", "datalim")
    _scatter_labels(ax, xy, latent)
    ax.set(xlabel=names[0], ylabel=names[1], title=f"latent means: {_title(latent)}")
    return _save(fig, path)


def _image_grid(rows: list[np.ndarray], shape: tuple[int, ...], row_names: list[str],
                title: str) -> Figure:
    """Images in rows, each named on its left; a named row after unnamed ones starts a new
    block (e.g. another sampler's), set apart by a rule."""
    n = max(len(r) for r in rows)
    head = 0.15 + 0.2 * (title.count("\n") + 1)  # inches for the title
    height = 0.95 * len(rows) + head
    fig, axes = _subplots(len(rows), n, figsize=(0.9 * n + 0.6, height))
    fig.subplots_adjust(top=1 - head / height)
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    # one grey scale for every image: per row, a reconstruction (or a chunk of samples)
    # whose values reach 8 of the data's 16 looked as dark as the data
    lo = min(0.0, min(float(np.min(r)) for r in rows))
    hi = max(1.0, max(float(np.max(r)) for r in rows))
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                _show_image(ax, row[j], shape, lo, hi)
        axes[i, 0].set_ylabel(row_names[i], fontsize=9, rotation=0, ha="right", va="center")
        if i and row_names[i] and not row_names[i - 1]:
            y = (axes[i - 1, 0].get_position().y0 + axes[i, 0].get_position().y1) / 2
            fig.add_artist(Line2D([0.02, 0.98], [y, y], color="0.5", lw=1))
    return fig


def _show_image(ax: Axes, x: np.ndarray, shape: tuple[int, ...], lo: float, hi: float) -> None:
    """One flat sample as an image: grey for `(H, W)`; for `(C, H, W)`, the layout of
    aetk's convolutions, in colour when C is 3 (also `(H, W, 3)`, numpy's usual colour
    layout), else its channels side by side (colour images stopped the report with
    "cannot reshape array of size 192 into shape (8,8)")."""
    if len(shape) < 2:
        ax.imshow(x.reshape(1, -1), cmap="gray_r", vmin=lo, vmax=hi)
        return
    if len(shape) == 3 and 3 in (shape[0], shape[-1]):
        rgb = x.reshape(shape) if shape[-1] == 3 and shape[0] != 3 else \
            x.reshape(shape).transpose(1, 2, 0)
        ax.imshow(np.clip((rgb - lo) / (hi - lo), 0.0, 1.0))
        return
    h, w = shape[-2:]
    tiles = x.reshape(-1, h, w)  # channels (and any leading axes), left to right
    ax.imshow(tiles.transpose(1, 0, 2).reshape(h, -1), cmap="gray_r", vmin=lo, vmax=hi)


HEAT_VARIABLES = ("example_data", "example_reconstruction", "example_transfer",
                  "generated_model", "generated", "generated_geometric", "traversal")
"""The latent store's values drawn as heat maps (samples, steps or classes x features)."""
MAX_FEATURE_TICKS = 30
"""Named features ticked on a heat map at most: beyond, an evenly spaced subset (all of
2,000 gene names would print over one another)."""


def _heat_scale(latent: xr.Dataset) -> tuple[mpl.colors.Normalize, str]:
    """The colour scale (norm and colour bar label) of every heat map of `latent`: its
    reconstructions, samples and traversals share one rule and the limits of the data (its
    example rows), so that one colour is one value across the figures drawn together and
    across the runs on one data store (their example rows are the same); the models' values
    beyond take the end colours (`_heatmaps` marks them on the colour bar). Without example
    rows, the limits of all the heat-mapped values."""
    if "example_data" in latent:
        data = latent["example_data"].values
    else:
        data = np.concatenate([latent[v].values.ravel() for v in HEAT_VARIABLES
                               if v in latent and latent[v].dims[-1:] == ("feature",)])
    data = data[np.isfinite(data)]
    lo, hi = float(data.min()), float(data.max())
    positive = data[data > 0]
    # A linear colour map spreads its colours evenly from the minimum to the maximum: when
    # the data's maximum is more than ten times their median nonzero value, more than half
    # of the nonzero values fall in its bottom tenth and look like 0. Count data are so (a
    # few genes with thousands of reads, most with a handful) and need a log scale; data
    # within a decade (binary, scaled, log-transformed or standardised data, counts up to
    # ~10) stay linear, where equal steps of colour are equal differences.
    if data.size and data.min() >= 0 and positive.size and \
            data.max() > 10 * np.median(positive):
        # linear below the data's smallest values (1 for counts), so 0 keeps the bottom
        # colour (a plain log scale has no 0: LogNorm leaves zeros blank)
        floor = float(np.percentile(positive, 1))
        return (mpl.colors.SymLogNorm(linthresh=floor, vmin=lo, vmax=hi, base=10),
                f"value (log scale, linear below {floor:.3g})")
    return mpl.colors.Normalize(vmin=lo, vmax=hi), "value (linear scale)"


def _feature_ticks(ax: Axes, names: list[str] | None, n: int) -> None:
    """Tick the feature axis with the features' names, every one up to MAX_FEATURE_TICKS
    and an evenly spaced subset beyond; whole indices when there are no names."""
    if names is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no ticks at -0.5 or 1.5
        return
    if len(names) != n:
        raise ValueError(f"feature_names: {len(names)} names for {n} features; give the "
                         "names of the data store the latent store was encoded from")
    ticks = np.arange(0, n, -(-n // MAX_FEATURE_TICKS))
    labels = [str(names[i]) for i in ticks]
    # upright while they fit side by side (about 50 characters across a 4-inch panel)
    upright = sum(map(len, labels)) <= 40
    ax.set_xticks(ticks, labels, rotation=0 if upright else 90,
                  fontsize=7 if len(ticks) > 12 else 9)


def _heatmaps(rows: list[np.ndarray], row_names: list[str], title: str,
              scale: tuple[mpl.colors.Normalize, str], ylabel: str = "sample",
              feature_names: list[str] | None = None,
              sample_names: list[str] | None = None) -> Figure:
    """One heat map per entry of `rows` (its rows x features) on the colour `scale` of
    `_heat_scale`, the features named by `feature_names` and the rows by `sample_names`
    when given."""
    norm, label = scale
    # constrained: a two-line title (the traversals') ran into the panels' titles
    fig, axes = _subplots(1, len(rows), figsize=(4 * len(rows), 3.2), layout="constrained")
    for ax, row, name in zip(axes[0], rows, row_names, strict=True):
        im = ax.imshow(row, aspect="auto", interpolation="nearest", norm=norm, cmap="viridis")
        ax.set(title=name, xlabel="feature", ylabel=ylabel)
        if sample_names is not None:
            ax.set_yticks(range(len(sample_names)), sample_names, fontsize=8)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _feature_ticks(ax, feature_names, row.shape[1])
    # values beyond the data's limits: an arrow at that end of the colour bar
    below = any(float(np.nanmin(row)) < norm.vmin for row in rows)
    above = any(float(np.nanmax(row)) > norm.vmax for row in rows)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[below, above]
    # 0, 1, 10, 100 on a log scale: plain numbers read better than powers of ten
    fig.colorbar(im, ax=axes[0].tolist(), label=label, extend=extend,
                 format="%g" if isinstance(norm, mpl.colors.SymLogNorm) else None)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_reconstructions(latent: xr.Dataset, path: Path | None = None,
                         feature_names: list[str] | None = None) -> Figure:
    """Validation samples (top) and their reconstructions (below); for a conditional model
    also each example's code decoded as every class (counterfactuals). Heat maps name their
    features by `feature_names` (the data store's) when given."""
    rows = [latent["example_data"].values, latent["example_reconstruction"].values]
    names = ["data", "reconstruction"]
    if "example_transfer" in latent:
        moved = latent["example_transfer"].values
        classes = latent.attrs.get("label_names") or list(range(moved.shape[1]))
        rows += list(moved.transpose(1, 0, 2))
        names += [f"as {c}" for c in classes[:moved.shape[1]]]
    shape = latent.attrs.get("image_shape")
    title = f"reconstructions: {_title(latent)}"
    classes = _example_classes(latent)
    fig = (_image_grid(rows, tuple(shape), names, title) if shape
           else _heatmaps(rows, names, title, _heat_scale(latent),
                          ylabel="sample" if classes is None else "sample (its class)",
                          feature_names=feature_names, sample_names=classes))
    return _save(fig, path)


def _example_classes(latent: xr.Dataset) -> list[str] | None:
    """Each example's class name, where the labels are categorical (the examples are one
    per class first: the heat maps' rows say which)."""
    if "label" not in latent or "example_index" not in latent \
            or latent["label"].attrs.get("kind") != "categorical":
        return None
    names = latent.attrs.get("label_names")
    labels = latent["label"].values[latent["example_index"].values].astype(int)
    return [str(names[c]) if names else str(c) for c in labels]


def plot_samples(latent: xr.Dataset, stored: StoredData, path: Path | None = None) -> Figure:
    """Samples generated by the model's sampler and, when the store has them, from the
    Riemannian uniform distribution of its encoder's metric: images (for a conditional
    model, one column per class), points over the data for data with at most ten features
    (in its first two principal components beyond two; histograms for one), else heat maps;
    features named as in the data store, when it names them."""
    title = f"generated samples: {_title(latent)}"
    # the model sampler's draws: `generated_model`, a 2-D `generated` in older stores
    model_var = next((v for v in ("generated_model", "generated")
                      if v in latent and latent[v].ndim == 2), None)
    if model_var is None and "generated_geometric" not in latent:
        return _placeholder("this model does not generate samples", path)
    mixture = model_var is not None and \
        latent[model_var].attrs.get("sampler") == "code_mixture"
    own = "mixture of\nthe codes" if mixture else "the model's\nsampler"
    sets = {name: latent[var].values for var, name in (
        (model_var, own), ("generated_geometric", "Riemannian\nuniform")) if var in latent}
    shape = latent.attrs.get("image_shape")
    feature_names = stored.attrs.get("feature_names")
    few = next(iter(sets.values())).shape[1] <= 10  # features: points over the data
    width = 8
    if "generated_class" in latent:  # conditional: one column per class, in turn
        width = int(latent["generated_class"].values.max()) + 1
        names = latent.attrs.get("label_names") or list(range(width))
        classes = ", ".join(map(str, names[:width]))
        # a heat map's samples are its rows, and points have no columns: "columns" was
        # true of images only
        if shape:
            title += f"\ncolumns: conditioned on class {classes}"
        else:
            title += f"\n{'points' if few else 'rows'}: conditioned on class {classes} in turn"
    if shape:
        rows, names = [], []
        for name, gen in sets.items():
            per_row = min(width, len(gen))
            chunks = [gen[i:i + per_row] for i in range(0, len(gen), per_row)]
            rows += chunks
            names += [name] + [""] * (len(chunks) - 1)
        fig = _image_grid(rows, tuple(shape), names, title)
    elif few:
        # Low-dimensional data: samples over the data, in the data's first two principal
        # components when there are more than two features.
        data, names = stored.x, feature_names or ["feature 0", "feature 1"]
        project = None
        if data.shape[1] > 2:
            from sklearn.decomposition import PCA

            project = PCA(n_components=2).fit(data).transform
            data, names = project(data), ["PC 1", "PC 2"]
        fig, axes = _subplots(figsize=(5, 4.5))
        ax = axes[0, 0]
        colours = ("tab:red", "tab:blue")
        if data.shape[1] == 1:  # one feature: histograms (there is no second axis to plot)
            bins = np.histogram_bin_edges(np.concatenate([data, *sets.values()])[:, 0], 30)
            ax.hist(data[:, 0], bins=bins, density=True, color="0.7", label="data")
            for (name, gen), colour in zip(sets.items(), colours, strict=False):
                ax.hist(gen[:, 0], bins=bins, density=True, histtype="step", lw=1.5,
                        color=colour, label=name.replace("\n", " "))
            names = [names[0], "density"]
        else:
            ax.scatter(data[:, 0], data[:, 1], s=3, color="0.7", label="data", linewidths=0)
            for (name, gen), colour in zip(sets.items(), colours, strict=False):
                gen = project(gen) if project is not None else gen
                ax.scatter(gen[:, 0], gen[:, 1], s=12, color=colour,
                           label=name.replace("\n", " "))
        ax.set(xlabel=names[0], ylabel=names[1], title=title)
        ax.legend(fontsize=8)
    else:
        fig = _heatmaps(list(sets.values()), [n.replace("\n", " ") for n in sets], title,
                        _heat_scale(latent), feature_names=feature_names)
    return _save(fig, path)


def _placeholder(text: str, path: Path | None) -> Figure:
    fig, axes = _subplots(figsize=(4, 1.5))
    ax = axes[0, 0]
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return _save(fig, path)


def plot_traversals(latent: xr.Dataset, path: Path | None = None, max_heatmaps: int = 4,
                    feature_names: list[str] | None = None) -> Figure:
    """What the latent dimensions do: for images, the decoded grid over a 2-D latent
    plane, or one row per traversed dimension (most varied first) from its low to its high
    value; for other data, one heat map per dimension (the first `max_heatmaps`), a row per
    step, its features named by `feature_names` (the data store's) when given."""
    if "traversal" not in latent:
        return _placeholder(
            "no latent traversals in this store\n(aetk encode --traversal-steps 0)", path)
    model = _title(latent, given="the first class")
    shape = latent.attrs.get("image_shape")
    if shape and "latent_grid" in latent:
        z1, z2 = latent["grid_z1"].values, latent["grid_z2"].values
        fig = _image_grid(list(latent["latent_grid"].values), tuple(shape),
                          [f"z2 = {v:.2f}" for v in z2],
                          f"decoded latent plane: {model}\nover the "
                          f"{spanning_codes(latent)} codes' 2%-98% range")
        for ax, v in zip(fig.axes[-len(z1):], z1, strict=True):
            ax.set_xlabel(f"z1 = {v:.2f}", fontsize=9)
        return _save(fig, path)
    values = latent["traversal_value"].values
    # two short lines: a long label runs into its neighbours along an image row's height
    names = [f"z{j + 1}\n{v[0]:.1f} to {v[-1]:.1f}"
             for j, v in zip(latent["traversed"].values, values, strict=True)]
    rows = list(latent["traversal"].values)
    shown = len(rows) if shape else min(len(rows), max_heatmaps)
    dims = latent.sizes.get("latent", len(rows))
    # the rest are left out: say so, or a 10-D model looks as if it had only these
    which = f" (the {shown} most varied of {dims})" if shown < dims else ""
    title = (f"latent traversals: {model}\none dimension at a time{which} across the "
             f"{spanning_codes(latent)} codes' 2%-98% range, the others at their median")
    if shape:
        fig = _image_grid(rows, tuple(shape), names, title)
    else:
        fig = _heatmaps(rows[:shown], [n.replace("\n", ": ") for n in names[:shown]],
                        title, _heat_scale(latent), ylabel="step", feature_names=feature_names)
    return _save(fig, path)


def plot_geodesics(latent: xr.Dataset, geo: xr.Dataset, path: Path | None = None) -> Figure:
    """Geodesics (solid, one colour per pair, white-edged) and straight lines (black and
    white dashes, on top) over the latent codes, their endpoints named by label when the
    store has them, on the metric's log volume (grey) for 2-D latents, with the validation
    codes' Frechet mean and the geodesic spray from it when the store has them; a second
    panel maps the Gaussian curvature when the store has it."""
    z = latent["z_mean"].values
    points = geo["points"].values
    curved = "gaussian_curvature" in geo and z.shape[1] == 2
    fig, axs = _subplots(1, 2 if curved else 1, figsize=(12, 5.6) if curved else (6, 5.6),
                         layout="constrained")
    ax = axs[0, 0]
    on_volume = "log_volume" in geo and z.shape[1] == 2
    if on_volume:
        z1, z2 = geo["z1"].values, geo["z2"].values
        im = ax.imshow(geo["log_volume"].values.T, origin="lower", aspect="auto",
                       extent=(z1[0], z1[-1], z2[0], z2[-1]), cmap="Greys", alpha=0.6,
                       interpolation="bilinear")
        fig.colorbar(im, ax=ax, label=r"log $\sqrt{\det G(z)}$")
        xy, axes = z, ["z1", "z2"]
        curves = points
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(z) if z.shape[1] > 2 else None
        xy, axes = _project(z)
        if pca is not None:
            curves = pca.transform(points.reshape(-1, z.shape[1])).reshape(*points.shape[:2], 2)
        elif z.shape[1] == 1:  # each pair on its own line above the codes' (on the codes'
            # line the curves and their endpoint labels lay over one another)
            rows = np.broadcast_to(np.arange(1.0, len(points) + 1)[:, None], points.shape[:2])
            curves = np.stack([points[..., 0], rows], -1)
            ax.set(yticks=np.arange(len(points) + 1),
                   yticklabels=["codes", *(f"pair {i + 1}" for i in range(len(points)))],
                   ylim=(-0.6, len(points) + 0.6))
        else:
            curves = points
    ax.scatter(xy[:, 0], xy[:, 1], s=2, color="0.3", alpha=0.3, linewidths=0)
    spray = "spray" in geo and on_volume
    if spray:  # under the geodesics
        for spoke in geo["spray"].values:
            ax.plot(spoke[:, 0], spoke[:, 1], "-", color="black", lw=0.7, alpha=0.6)
    colours = [c for c in OKABE_ITO if c != "#F0E442"]  # yellow is lost on the light grey
    names = geo.attrs.get("label_names") or None
    scale = np.ptp(xy, axis=0) + 1e-12
    named: set[tuple[float, ...]] = set()  # a sample that ends several pairs: named once
    ends: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    for i, curve in enumerate(curves):
        colour = colours[i % len(colours)]
        ax.plot(curve[:, 0], curve[:, 1], "-", color=colour, lw=2.2,
                path_effects=[withStroke(linewidth=4, foreground="white")])
        ax.plot(curve[[0, -1], 0], curve[[0, -1], 1], ls=(0, (3, 2)), color="black",
                gapcolor="white", lw=1.0)
        ax.plot(curve[[0, -1], 0], curve[[0, -1], 1], "o", color=colour, ms=5,
                markeredgecolor="black", markeredgewidth=0.6)
        if "start_label" in geo:
            for end, inner, label in ((curve[0], curve[1], geo["start_label"].values[i]),
                                      (curve[-1], curve[-2], geo["end_label"].values[i])):
                where = tuple(np.round(end / scale, 6).tolist())
                if where in named:  # its names lay over one another, unreadable
                    continue
                named.add(where)
                ends.append((end, inner, names[int(label)] if names else f"{label:.3g}",
                             colour))
    if on_volume:  # the view of the grid (and the geodesics): the spray may leave the grid
        # after short training, and the axes grew to show it on white
        reach = curves.reshape(-1, 2)
        lo = np.minimum([z1[0], z2[0]], reach.min(0))
        hi = np.maximum([z1[-1], z2[-1]], reach.max(0))
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]))
    key = [Line2D([], [], color="0.3", lw=2.2, label="geodesic (a colour per pair)"),
           Line2D([], [], color="black", gapcolor="white", lw=1.0, ls=(0, (3, 2)),
                  label="straight line"),
           Line2D([], [], ls="", marker="o", ms=3, color="0.3", label="codes")]
    avoid: list = []  # what the endpoints' names must not cover
    if spray:  # over them
        centre = geo["frechet_mean"].values
        avoid = ax.plot(centre[0], centre[1], "*", color="white", ms=12, zorder=3,
                        markeredgecolor="black", markeredgewidth=0.8)  # over the curves
        key += [Line2D([], [], ls="", marker="*", ms=10, color="white", markeredgecolor="black",
                       markeredgewidth=0.8,
                       label=f"Frechet mean of {spanning_codes(latent)} codes"),
                Line2D([], [], color="black", lw=0.7, alpha=0.6, label="geodesic spray from it")]
    fig.legend(handles=key, loc="outside lower center", ncol=3, frameon=False)
    ratio, left_out = length_ratio(geo["length"].values, geo["line_length"].values)
    if left_out == len(curves):
        ratio_text = "length / straight-line length undefined: every pair's ends coincide"
    else:
        ratio_text = f"length / straight-line length {ratio:.3f}" + (
            f" ({left_out} pair{'s' if left_out > 1 else ''} with coinciding ends left out)"
            if left_out else "")
    conv = int(geo["converged"].values.sum())
    ax.set(xlabel=axes[0], ylabel=axes[1],
           title=f"geodesics ({geo.attrs.get('metric', '')}): {_title(latent)}\n"
                 f"{ratio_text}, {conv}/{len(curves)} converged")
    if curved:
        _curvature_panel(fig, axs[0, 1], geo, z, curves)
    _name_ends(fig, ax, ends, avoid)
    return _save(fig, path)


def _name_ends(fig: Figure, ax: Axes, ends: list[tuple[np.ndarray, np.ndarray, str, str]],
               avoid: list) -> None:
    """Name each curve end `(end, the point before it, name, colour)` just beyond it, in
    the curve's direction; turned about the end, then further out, where the name would
    cover one placed before it (nearby samples' names lay over one another) or an artist
    of `avoid` (the Frechet mean's star)."""
    if not ends:
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # the final layout: the names' boxes in pixels
    placed = [artist.get_window_extent(renderer) for artist in avoid]  # (the mean's star)
    for end, inner, name, colour in ends:
        dx, dy = ax.transData.transform(end) - ax.transData.transform(inner)
        heading = np.arctan2(dy, dx)
        tries = [(radius, heading + turn * np.pi / 6) for radius in (10, 18, 26, 34)
                 for turn in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6)]
        for k, (radius, angle) in enumerate(tries):
            text = ax.annotate(name, end, xytext=(radius * np.cos(angle),
                                                  radius * np.sin(angle)),
                               textcoords="offset points", ha="center", va="center",
                               fontsize=10, weight="bold", color=colour, path_effects=HALO)
            # padded: names beyond the axes shrink them a little in the final layout
            box = text.get_window_extent(renderer).padded(2)
            if k == len(tries) - 1 or not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            text.remove()


def _curvature_panel(fig: Figure, ax: Axes, geo: xr.Dataset, z: np.ndarray,
                     curves: np.ndarray) -> None:
    """Gaussian curvature under the codes and geodesics, on a scale that shows its variation
    (_curvature_scale)."""
    K = geo["gaussian_curvature"].values
    z1, z2 = geo["z1"].values, geo["z2"].values
    norm, cmap, scale, key = _curvature_scale(K)
    im = ax.imshow(K.T, origin="lower", aspect="auto", extent=(z1[0], z1[-1], z2[0], z2[-1]),
                   cmap=cmap, norm=norm, interpolation="bilinear")
    fig.colorbar(im, ax=ax, label=f"Gaussian curvature K(z) ({scale})")
    ax.scatter(z[:, 0], z[:, 1], s=2, color="black", alpha=0.25, linewidths=0)
    for curve in curves:
        ax.plot(curve[:, 0], curve[:, 1], "-", color="black", lw=0.8, alpha=0.7)
    ax.set(xlabel="z1", ylabel="z2", title=f"curvature of the latent metric\n{key}")


def _curvature_scale(K: np.ndarray) -> tuple[mpl.colors.Normalize, str, str, str]:
    """Norm, colour map, scale and colour key of a curvature map. With both signs: a
    symmetric-log scale centred on 0 (red positive, blue negative; it spans decades).
    With one sign (the 1st to 99th percentiles): red or blue alone over that range, on a
    log scale when it spans more than a decade; a scale centred on 0 put it all in one
    end's colour and drew a uniform map."""
    finite = K[np.isfinite(K)]
    if not finite.size or finite.min() < 0 < finite.max() or not finite.any():
        top = float(np.percentile(np.abs(finite), 99)) if finite.any() else 1.0
        return (mpl.colors.SymLogNorm(linthresh=top / 100, vmin=-top, vmax=top), "RdBu_r",
                "symmetric log scale",
                "red: positive (sphere-like), blue: negative (saddle-like)")
    lo, hi = np.percentile(finite, [1, 99])
    positive = hi > 0
    if lo == hi:  # constant: drawn in one colour, a third up the scale
        lo, hi = sorted((lo / 2, hi * 2))
    small, big = sorted((abs(lo), abs(hi)))
    if small > 0 and big > 10 * small:
        norm, scale = mpl.colors.SymLogNorm(linthresh=small, vmin=lo, vmax=hi), "log scale"
    else:
        norm, scale = mpl.colors.Normalize(vmin=lo, vmax=hi), "linear scale"
    if positive:
        return norm, "Reds", scale, "positive everywhere (sphere-like): darker, more curved"
    return norm, "Blues_r", scale, "negative everywhere (saddle-like): darker, more curved"


def plot_training_curves(histories: dict[str, pd.DataFrame] | pd.DataFrame,
                         path: Path | None = None) -> Figure:
    """Training and validation loss per epoch, one panel per run (a dict of `fit`'s
    histories, or one), with the learning rate on a second axis when a schedule changed
    it. With three epochs or more the loss axis spans the epochs after the first, whose far
    higher loss would flatten the rest (with two, one epoch left is no curve); its unit,
    nats per sample, holds for the likelihood decoders (a deterministic decoder's loss is
    the mean squared error)."""
    if isinstance(histories, pd.DataFrame):
        histories = {"training": histories}
    n = len(histories)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = _subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.4),
                          layout="constrained")
    for ax, (run, h) in zip(axes.flat, histories.items(), strict=False):
        losses = [c for c in ("train_loss", "val_loss") if c in h]
        for column, label, colour in zip(losses, ("train", "validation"),
                                         ("tab:blue", "tab:orange"), strict=False):
            ax.plot(h["epoch"], h[column], label=label, color=colour)
        later = h.loc[h["epoch"] > h["epoch"].min(), losses].to_numpy()
        later = later[np.isfinite(later)]
        if later.size > len(losses) and np.ptp(later) > 0:  # two later epochs or more
            ax.set_ylim(later.min() - 0.08 * np.ptp(later), later.max() + 0.08 * np.ptp(later))
        ax.set(title=run, xlabel="epoch", ylabel="loss (nats per sample)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.2 of two
        if "lr" in h and h["lr"].nunique() > 1:
            rate = ax.twinx()
            rate.plot(h["epoch"], h["lr"], color="gray", lw=0.8, ls="--", label="learning rate")
            rate.set_ylabel("learning rate", color="gray", fontsize=9)
            rate.tick_params(axis="y", labelsize=9, colors="gray")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    fig.legend(handles=list(handles.values()), loc="outside upper center", ncol=3,
               frameon=False)
    return _save(fig, path)


def plot_comparison(table: pd.DataFrame, path: Path | None = None) -> Figure:
    """`comparison_figure(table)`, written as a PNG at `path` when given."""
    return _save(comparison_figure(table), path)


def comparison_figure(table: pd.DataFrame) -> Figure:
    """The comparison table as dots. On top, a pair of panels per group of runs of one
    likelihood and conditioning: validation log p(x) with the ELBO below it (their gap is
    roughly how far q(z|x) is from the posterior), on the group's own axis
    (log-likelihoods of different likelihoods are not comparable, nor a conditional run's
    log p(x|c) with an unconditional log p(x)), and the reconstruction error, on one axis
    for all groups (the same data, whatever the likelihood). Below, every run in one
    panel of each: the KL term split into I(x; z) and KL(q(z) || p(z)), and the classifier
    score of the generated samples when the table has it, the groups in the same order
    under their names. The titles name the training samples for runs without a validation
    split. Runs that differ only in their seed share a row, their dots and KL bars side
    by side in it (the first seed on top), so that seed-to-seed spread shows beside the
    differences between settings and equal values do not hide one another. Legends sit
    between the panels' titles and their axes, off the data."""
    table = table.assign(setting=_settings(table))
    groups = _comparison_groups(table)
    k = len(groups)
    named = k > 1  # the lower panels name each group in a row of its own
    heights = [1.0 + 0.3 * rows["setting"].nunique() for _, _, rows in groups]
    below = 1.0 + 0.3 * (table["setting"].nunique() + named * k)
    fig, axes = _subplots(k + 1, 2, figsize=(13.0, 0.4 + sum(heights) + below + 1.3 * (k + 1)),
                          layout="constrained", height_ratios=[*heights, below])
    all_y, all_ticks, labels, headers = pd.Series(0.0, index=table.index), [], [], []
    top = table["setting"].nunique() + named * k  # above the lower panels' first row
    for g, (likelihood, conditional, rows) in enumerate(groups):
        if g:
            axes[g, 1].sharex(axes[0, 1])
        group = f"{likelihood}, given the class c" if conditional else likelihood
        y, settings = _group_panels(*axes[g], group, conditional, rows)
        # the lower panels' rows: this group's block under its name, in the same order
        top -= len(settings) + named
        all_y[rows.index] = y + top
        if named:
            headers.append(top + len(settings))
            all_ticks.append(top + len(settings))
            labels.append(group)
        all_ticks += list(top + np.arange(len(settings)))
        labels += list(settings)
    # one axis for every group: titled at the top, labelled at the bottom
    axes[0, 1].xaxis.set_major_locator(MaxNLocator(5))  # long decimals collide
    _legend_above(axes[0, 1], _scored(table, "reconstruction error")
                  + ("\nall groups on one axis, whatever the likelihood" if named else ""))
    axes[k - 1, 1].set(xlabel="mean squared error (lower is better)")
    _all_runs_panels(*axes[k], table, all_y.to_numpy(), all_ticks, labels, headers)
    if table.groupby("setting")["run"].count().max() > 1:
        fig.suptitle("the seeds of a setting side by side in its row, the first on top: "
                     "a dot and a KL bar each")
    return fig


def _comparison_groups(table: pd.DataFrame) -> list[tuple[str, bool, pd.DataFrame]]:
    """The runs of each likelihood and conditioning (likelihood, conditional, rows): the
    likelihoods in table order, each one's unconditional runs first. A conditional run's
    log p(x|c) and ELBO are given the class, so they are compared only with each other."""
    likelihood = table["likelihood"].fillna("?").astype(str)
    conditions = (table["conditions"] if "conditions" in table
                  else pd.Series("none", index=table.index))
    conditional = conditions.fillna("none").astype(str) != "none"
    return [(lik, cond, table[(likelihood == lik) & (conditional == cond)])
            for lik in likelihood.unique() for cond in (False, True)
            if ((likelihood == lik) & (conditional == cond)).any()]


def _group_panels(ax_ll: Axes, ax_err: Axes, group: str, conditional: bool,
                  rows: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """A group's upper pair of panels: validation log p(x) and ELBO, and the reconstruction
    error, a row per setting, settings ordered by their mean over the seeds. Returns each
    run's row position and the settings in row order."""
    means = rows.groupby("setting", sort=False)[["val_log_marginal", "val_elbo"]]
    means = means.mean().sort_values(["val_log_marginal", "val_elbo"], na_position="first")
    offset, _ = _seed_offsets(rows)
    y = rows["setting"].map({s: i for i, s in enumerate(means.index)}).to_numpy() + offset
    # a conditional run's terms are given the class: log p(x|c), not log p(x)
    log_px, elbo = ("log p(x|c)", "ELBO given c") if conditional else ("log p(x)", "ELBO")
    then = "\n" if conditional else " "  # a conditional group's title takes two lines
    ax_ll.plot(rows["val_elbo"], y, "o", mfc="white", color=OKABE_ITO[4], label=elbo)
    ax_ll.plot(rows["val_log_marginal"], y, "o", color=OKABE_ITO[4], label=log_px)
    ax_ll.hlines(y, rows["val_elbo"], rows["val_log_marginal"], color=OKABE_ITO[4], lw=1)
    ax_ll.set(xlabel="nats per sample (higher is better)")
    ax_ll.xaxis.set_major_locator(MaxNLocator(6))  # a lone run's decimals collided
    _legend_above(ax_ll, f"{group}:{then}{_scored(rows, f'{log_px} and {elbo}')}")
    if rows[["val_log_marginal", "val_elbo"]].isna().all(axis=None):
        _undefined(ax_ll, "no log p(x) or ELBO for these runs: a deterministic encoder "
                   "(no q(z|x))\nor decoder (mse, no likelihood) has neither")
    ax_err.plot(rows["val_reconstruction_error"], y, "o", color=OKABE_ITO[5])
    for ax in (ax_ll, ax_err):
        ax.grid(axis="x", alpha=0.3)
        ax.set(yticks=np.arange(len(means)), yticklabels=means.index if ax is ax_ll else [])
        ax.set_ylim(-0.6, len(means) - 0.4)
    return y, means.index


def _all_runs_panels(ax_kl: Axes, ax_score: Axes, table: pd.DataFrame, y: np.ndarray,
                     ticks: list, labels: list[str], headers: list) -> None:
    """The lower pair of panels, every run at its row `y`: the KL split and the samples'
    classifier score (the panel off when the table has none). Group names (`headers`, ticks
    among `ticks`) are bold, with a rule above each but the first."""
    _, height = _seed_offsets(table)
    _kl_bars(ax_kl, table, y, height)
    if table[["val_mutual_info", "val_marginal_kl"]].isna().all(axis=None):
        _undefined(ax_kl, "no KL split for these runs: a deterministic encoder has no "
                   "q(z|x),\nthe ladder VAE's KL spans two levels")
    if "sample_score" in table:
        _score_dots(ax_score, table, y)
    else:
        ax_score.axis("off")
    for ax in (ax_kl, ax_score):
        ax.grid(axis="x", alpha=0.3)
        ax.set(yticks=ticks, yticklabels=labels if ax is ax_kl else [])
        ax.set_ylim(min(ticks) - 0.6, max(ticks) + 0.6)
        for header in headers[1:]:  # a rule above each group's name but the first
            ax.axhline(header + 0.5, color="0.5", lw=0.8)
    for tick, label in zip(ticks, ax_kl.get_yticklabels(), strict=True):
        if tick in headers:
            label.set_fontweight("bold")


def _seed_offsets(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each run's vertical offset within its setting's row and its bar height: the seeds
    of a setting side by side in seed order, the first on top (0 and 0.6 for a lone
    seed; runs without a seed, from stores that do not record it, in table order)."""
    # to_numeric: a column of None is of object dtype, which fillna would downcast
    order = (pd.to_numeric(rows["seed"]).fillna(-1) if "seed" in rows
             else pd.Series(0, rows.index))
    rank = order.groupby(rows["setting"]).rank(method="first").to_numpy() - 1
    n = rows.groupby("setting")["run"].transform("size").to_numpy()
    return ((n - 1) / 2 - rank) * 0.7 / n, 0.6 / n


def _undefined(ax: Axes, text: str) -> None:
    """Say in an empty panel why it is empty (its columns are NaN for every run), instead of
    an axis of made-up values."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="0.3")
    ax.set_xticks([])


def _legend_above(ax: Axes, title: str) -> None:
    """The panel's title, and its legend (if it has labelled artists) under the title, above
    the axes: never over the data. The same gap without a legend keeps a row's titles level."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_title(title, pad=26)


def _scored(rows: pd.DataFrame, what: str) -> str:
    """A panel's title for `what`, naming the samples the rows' val_* columns were computed
    on (their `scored_on`): the validation samples, or the training samples of runs without
    a validation split, which are not held-out data."""
    on = rows["scored_on"] if "scored_on" in rows else pd.Series("validation", rows.index)
    if (on == "validation").all():
        return f"validation {what}"
    if (on == "training").all():
        return f"{what}\nof the training samples (no validation split)"
    runs = ", ".join(rows.loc[on != "validation", "run"])
    return f"validation {what}\n(training samples for {runs}: no validation split)"


def _settings(table: pd.DataFrame) -> pd.Series:
    """Each run's name without its seed part (`-s<seed>`, as the pipeline names runs):
    the runs of one setting that differ only in the seed share it."""
    seeds = table["seed"] if "seed" in table else pd.Series(None, index=table.index)
    return pd.Series([run if pd.isna(seed) else re.sub(rf"-s{int(seed)}(?=-|$)", "", run)
                      for run, seed in zip(table["run"], seeds, strict=True)], index=table.index)


def _kl_bars(ax: Axes, rows: pd.DataFrame, y: np.ndarray, height: np.ndarray) -> None:
    """The validation KL as two stacked bars (Okabe-Ito blue and orange): what the codes
    say about x, I(x; z), and the aggregate posterior's mismatch with the prior,
    KL(q(z) || p(z)). Both are >= 0, but the split estimates them from the validation
    samples, and I(x; z) near 0 can come out below it (the other part then above the KL):
    such a part is drawn as 0 and the other as the whole KL, which is measured, and the
    x label names the runs with their estimates (the table keeps them); a negative bar
    would overlap its neighbour and put the stack's end beyond the KL."""
    mi = rows["val_mutual_info"].to_numpy(dtype=float)
    kl = np.nan_to_num(mi + rows["val_marginal_kl"].to_numpy(dtype=float)).clip(0)
    shown = np.clip(np.nan_to_num(mi), 0, kl)
    ax.barh(y, shown, color=OKABE_ITO[4], height=height, label="I(x; z)")
    ax.barh(y, kl - shown, left=shown, color=OKABE_ITO[0], height=height,
            label="KL(q(z) || p(z))")
    notes = [f"{run}: {name} {value:.2g}"
             for run, m, rest in zip(rows["run"], mi, rows["val_marginal_kl"], strict=True)
             for name, value in (("I(x; z)", m), ("KL(q(z) || p(z))", rest)) if value < 0]
    xlabel = "nats per sample"
    if notes:
        xlabel += ("\nestimated below 0 (sampling noise), drawn as 0:\n"
                   + "\n".join(notes))
    ax.set(xlabel=xlabel)
    _legend_above(ax, _scored(rows, "KL = I(x; z) + KL(q(z) || p(z))"))


def _score_dots(ax: Axes, rows: pd.DataFrame, y: np.ndarray) -> None:
    """The classifier score of each run's samples: the model's own sampler (a mixture of
    the codes for autoencoders without a prior) and the encoder metric's, against the
    validation data's (dashed)."""
    ax.plot(rows["sample_score"], y, "o", color=OKABE_ITO[6], label="model's sampler")
    ax.plot(rows["geometric_sample_score"], y, "o", mfc="white", color=OKABE_ITO[6],
            label="Riemannian uniform")
    ax.axvline(float(rows["data_sample_score"].iloc[0]), color="0.4", ls="--", lw=1,
               label="validation data")
    ax.set(xlabel="classifier score (1 to the number of classes; higher is better)")
    _legend_above(ax, "samples: recognisable and varied")


def active_units(z_mean: np.ndarray, threshold: float = 0.01) -> int:
    """Latent dimensions whose encoder mean varies over the data, `Var_x E_q[z_j] > 0.01`
    (Burda et al. 2016): fewer than `latent_dim` means posterior collapse in the rest."""
    return int((np.var(z_mean, axis=0) > threshold).sum())


def code_rank(z_mean: np.ndarray, rel: float = 0.01) -> int:
    """Directions in which the codes spread: singular values of the centred codes above
    `rel` of the largest (a rotation-free count, unlike `active_units`: an IRMAE learns
    codes of low rank in directions that need not be axes). 0 when they do not vary."""
    z = z_mean[np.isfinite(z_mean).all(1)]  # a diverged code must not stop the table
    if len(z) < 2:
        return 0
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    return int((s > rel * s[0]).sum()) if s.size and s[0] > 0 else 0


class SampleScorer:
    """A classifier of the data's categorical labels (PCA to at most 50 dimensions, then
    multinomial logistic regression, fitted on the training samples) and the score it gives
    a set of samples: `exp(<KL(p(y|x) || p(y))>)`, the Inception score with this classifier
    (Salimans et al. 2016). It is high, at most the number of classes, when each sample is
    confidently one class and the classes are varied; `reference` is the validation data's
    own score."""

    def __init__(self, train: np.ndarray, labels: np.ndarray, validation: np.ndarray,
                 seed: int = 0) -> None:
        import warnings

        from sklearn.decomposition import PCA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        n_components = min(50, train.shape[1], len(train) - 1)
        self.classifier = make_pipeline(PCA(n_components, random_state=seed),
                                        LogisticRegression(max_iter=300))
        with warnings.catch_warnings():  # a score, not a model to deploy: 300 steps will do
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(train.reshape(len(train), -1), labels)
        self.reference = self(validation) if len(validation) else np.nan

    def __call__(self, samples: np.ndarray) -> float:
        p = self.classifier.predict_proba(samples.reshape(len(samples), -1))
        p_y = p.mean(0)
        kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(p_y, 1e-12, None)))).sum(1)
        return float(np.exp(kl.mean()))


KL_SPLIT_MAX = 5000
"""Validation samples (at most, a seeded subset beyond) in the KL split: its cost grows
with their square."""


def _kl_split(lat: xr.Dataset, rows: np.ndarray) -> dict[str, float]:
    """ELBO surgery on the stored posteriors of `rows` (a mask): the mean KL =
    `I(x; z) + KL(q(z) || p(z))`, the second with the model's own prior as the stored KL;
    NaN without posteriors (AE), and for the ladder VAE, whose KL is over both levels (the
    total correlation of its z1 codes' aggregate stays)."""
    idx = np.flatnonzero(rows)
    if len(idx) > KL_SPLIT_MAX:
        idx = np.sort(np.random.default_rng(0).choice(idx, KL_SPLIT_MAX, replace=False))
    std = lat["z_std"].values[idx] if "z_std" in lat else np.zeros(1)
    kl = lat["kl"].values[idx] if "kl" in lat else np.full(1, np.nan)
    if len(idx) < 2 or not (std > 0).all() or not np.isfinite(kl).all():
        return dict.fromkeys(("val_mutual_info", "val_marginal_kl", "val_total_correlation"),
                             np.nan)
    split = kl_decomposition(lat["z_mean"].values[idx], std, lat["z_sample"].values[idx])
    if lat.attrs.get("model") == "lvae":  # its KL is of z2 and of z1 given z2: not z1's to split
        return {"val_mutual_info": np.nan, "val_marginal_kl": np.nan,
                "val_total_correlation": split.total_correlation}
    return {"val_mutual_info": split.mutual_information,
            "val_marginal_kl": float(kl.mean()) - split.mutual_information,
            "val_total_correlation": split.total_correlation}


def comparison_table(histories: dict[str, pd.DataFrame], latents: dict[str, xr.Dataset],
                     geodesics: dict[str, xr.Dataset],
                     scorer: SampleScorer | None = None) -> pd.DataFrame:
    """One row per run: final and best validation loss, validation reconstruction error,
    KL, ELBO and log p(x) (means over validation samples, or over the training samples
    when the run has no validation split: `scored_on` says which), the KL split into the mutual
    information I(x; z) and the aggregate posterior's KL to the prior (with its total
    correlation), active units (for conditional runs, `conditions` "labels", the terms
    are given each sample's class: log p(x|c)), training time, the mean ratio of geodesic to
    straight-line length where geodesics were fitted (over the pairs whose ends differ)
    and, with a `scorer`, the classifier score of each sampler's samples and of the
    validation data."""
    rows = []
    for run, h in histories.items():
        lat = latents[run]
        val = lat["split"].values == SPLIT_VALIDATION
        scored = val.any()
        if not scored:
            val = np.ones_like(val, dtype=bool)
        row = {
            "run": run,
            "model": lat.attrs.get("model"),
            "likelihood": lat.attrs.get("likelihood"),
            "latent_dim": lat.attrs.get("latent_dim"),
            "conditions": lat.attrs.get("conditions", "none"),
            "seed": lat.attrs.get("train_seed"),
            "epochs": int(h["epoch"].max()),
            "final_train_loss": float(h["train_loss"].iloc[-1]),
            "final_val_loss": float(h["val_loss"].iloc[-1]) if "val_loss" in h else np.nan,
            "best_val_loss": float(h["val_loss"].min()) if "val_loss" in h else np.nan,
            # the val_* columns keep their names (tables are parsed by them) whichever it is
            "scored_on": "validation" if scored else "training",
        }
        for name in ("reconstruction_error", "kl", "elbo", "log_marginal"):
            values = lat[name].values[val] if name in lat else np.array([np.nan])
            row[f"val_{name}"] = float(np.mean(values)) if np.isfinite(values).any() else np.nan
        row.update(_kl_split(lat, val))
        row["active_units"] = active_units(lat["z_mean"].values[val])
        row["code_rank"] = code_rank(lat["z_mean"].values[val])
        if scorer is not None:
            for name, var in (("sample_score", "scored_model"),
                              ("geometric_sample_score", "scored_geometric")):
                row[name] = scorer(lat[var].values) if var in lat else np.nan
            row["data_sample_score"] = scorer.reference
        row["train_seconds"] = float(h["seconds"].sum()) if "seconds" in h else np.nan
        if run in geodesics:
            g = geodesics[run]
            row["geodesic_length_ratio"] = length_ratio(g["length"].values,
                                                        g["line_length"].values)[0]
        else:
            row["geodesic_length_ratio"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)
