"""``aetk geodesics``: latent geodesics of a trained model between chosen or given pairs of
samples, and for 2-D latents the metric's volume, curvature and a geodesic spray."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aetk import storage
from aetk.cli.args import add_command, count, positive, seed, tolerance
from aetk.cli.device import add_device_option, claim_device
from aetk.cli.trained import load_model


def choose_pairs(is_val: np.ndarray, labels: np.ndarray | None, kind: str, n_pairs: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded distinct pairs (either way round) of validation samples (of all samples when
    fewer than two are), from different classes when labelled, uniform over those pairs.

    When fewer than `n_pairs` such pairs exist, all of them, with a warning: the pipeline's
    default of 8 on a small data set fits what there is instead of failing after training.
    """
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(is_val) if is_val.sum() >= 2 else np.arange(len(is_val))
    if len(pool) < 2:
        raise ValueError("geodesics need at least two samples")
    classes = labels is not None and kind == "categorical" and len(np.unique(labels[pool])) > 1
    # each sample's group (its class, or itself), the pool sorted by group: the samples a
    # start may join are those outside its group's block of the sorted pool
    _, group = np.unique(labels[pool] if classes else pool, return_inverse=True)
    order = np.argsort(group, kind="stable")
    pool, group = pool[order], group[order]
    sizes = np.bincount(group)
    first = np.cumsum(sizes) - sizes
    partners = len(pool) - sizes[group]
    n_distinct = int(partners.sum()) // 2
    if n_pairs > n_distinct:
        among = f"the {len(pool)} {'validation ' if is_val.sum() >= 2 else ''}samples"
        print(f"warning: --n-pairs {n_pairs} is more than the {n_distinct} distinct pairs of "
              f"{among}{' from different classes' if classes else ''}: fitting all "
              f"{n_distinct}", file=sys.stderr)
    target = min(n_pairs, n_distinct)
    # a start drawn in proportion to its partners, then a partner uniformly: every ordered
    # pair equally likely; repeats (either way round) are drawn again
    p = partners / partners.sum()
    seen: set[tuple[int, int]] = set()
    start: list[int] = []
    end: list[int] = []
    while len(start) < target:
        a = rng.choice(len(pool), size=2 * (target - len(start)) + 8, p=p)
        u = rng.integers(0, partners[a])
        b = np.where(u < first[group[a]], u, u + sizes[group[a]])
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            if (min(i, j), max(i, j)) not in seen and len(start) < target:
                seen.add((min(i, j), max(i, j)))
                start.append(int(pool[i]))
                end.append(int(pool[j]))
    return np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)


def parse_pairs(specs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``I:J`` strings -> (start, end) sample indices; checks the syntax, distinct ends and
    that no pair repeats (either way round)."""
    start, end = [], []
    for spec in specs:
        parts = spec.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            i, j = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"--pairs: {spec!r} is not a pair of sample indices I:J "
                             f"(two integers, e.g. 0:17)") from None
        if i == j:
            raise ValueError(f"--pairs: {spec!r} joins sample {i} to itself: the two ends "
                             f"of a pair must differ")
        # a geodesic of either orientation is the same curve: fitted twice, one row twice
        # in the figure and the table
        seen = next((f"{a}:{b}" for a, b in zip(start, end, strict=True)
                     if {a, b} == {i, j}), None)
        if seen is not None:
            raise ValueError(f"--pairs: {spec!r} repeats the pair {seen} (a geodesic joins "
                             "its ends either way)")
        start.append(i)
        end.append(j)
    if not start:
        raise ValueError("--pairs: give at least one pair I:J")
    return np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)


def check_pairs(start: np.ndarray, end: np.ndarray, n_samples: int) -> None:
    """Every pair's sample indices within 0 .. n_samples - 1."""
    for i, j in zip(start.tolist(), end.tolist(), strict=True):
        if not (0 <= i < n_samples and 0 <= j < n_samples):
            raise ValueError(f"--pairs: {i}:{j} is out of range: the latent store has "
                             f"{n_samples} samples (indices 0 .. {n_samples - 1})")


# --init graph or both: codes (at most) that make the graph's nodes
GRAPH_NODES = 4000


def latent_bounds(z: np.ndarray, pad: float = 0.1) -> list[list[float]]:
    """Per-dimension range of ``z`` widened by ``pad`` of its span on each side."""
    lo, hi = np.nanmin(z, 0), np.nanmax(z, 0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return [[float(a), float(b)] for a, b in zip(lo - pad * span, hi + pad * span, strict=True)]


def check_encoded_with(latent: Any, latent_path: str, model_dir: str) -> None:
    """Refuse a latent store encoded with another model than the one in `model_dir`: by
    run hash when both sides record one (aetk_run.json of `aetk train`), else by model,
    likelihood and latent size; a side that records none (a model saved by hand) passes."""
    model_dir = Path(model_dir)
    info = (json.loads((model_dir / "aetk_run.json").read_text())
            if (model_dir / "aetk_run.json").is_file() else {})
    config = (json.loads((model_dir / "config.json").read_text())
              if (model_dir / "config.json").is_file() else {})
    spec = config.get("build_spec") or {}
    ours = {"run hash": info.get("run_hash"), "model": spec.get("model"),
            "likelihood": spec.get("likelihood"), "latent_dim": spec.get("latent_dim")}
    theirs = {"run hash": latent.attrs.get("config_hash"), "model": latent.attrs.get("model"),
              "likelihood": latent.attrs.get("likelihood"),
              "latent_dim": latent.attrs.get("latent_dim")}
    keys = ["run hash"] if ours["run hash"] and theirs["run hash"] else list(ours)[1:]
    differ = [k for k in keys if ours[k] is not None and theirs[k] is not None
              and ours[k] != theirs[k]]
    if differ:
        diff = ", ".join(f"{k} {theirs[k]} there, {ours[k]} here" for k in differ)
        raise ValueError(f"{latent_path} was encoded with another model (run "
                         f"{latent.attrs.get('run')!r}: {diff}) than {model_dir}: give the "
                         f"model it was encoded with, or encode with this one (aetk encode "
                         f"--model {model_dir})")


def _done(what: str, since: float) -> float:
    """Print that a stage is done, with its seconds since `since` (one line as each ends:
    the log of a long job says where it is); the time now."""
    now = time.perf_counter()
    print(f"{what} in {now - since:.1f} s", flush=True)
    return now


def cmd_geodesics(args: argparse.Namespace) -> None:
    import torch
    import xarray as xr

    from aetk.geometry import (
        PullbackMetric,
        RHVAEMetric,
        curvature_grid,
        fit_geodesics,
        frechet_mean,
        geodesic_spray,
        graph_curves,
        metric_for,
        volume_grid,
    )

    storage.check_replaceable(args.out, "aetk-geodesics")
    if args.pairs is not None and args.n_pairs is not None:
        raise ValueError("give either --pairs (these pairs) or --n-pairs (that many sampled "
                         "pairs), not both")
    if args.grid_size < 2:  # one point per axis: a degenerate figure (the schema asks 2)
        raise ValueError(f"--grid-size must be at least 2, got {args.grid_size}")
    if args.spray and args.spray_points < 2:  # radius 0: "radius must be positive"
        raise ValueError("--spray-points must be at least 2: the spray's length is the codes' "
                         "RMS distance to their Frechet mean, 0 for one code")
    n_pairs = 8 if args.n_pairs is None else args.n_pairs
    configured = parse_pairs(args.pairs) if args.pairs is not None else None
    device = claim_device(args.device)
    torch.set_num_threads(args.threads)
    latent = storage.read_store(args.latent, "aetk-latent")
    check_encoded_with(latent, args.latent, args.model)
    z = latent["z_mean"].values
    labels = latent["label"].values if "label" in latent else None
    kind = latent.attrs.get("label_kind", "none")
    is_val = latent["split"].values == storage.SPLIT_VALIDATION
    if configured is not None:
        start, end = configured
        check_pairs(start, end, len(z))
    else:
        start, end = choose_pairs(is_val, labels, kind, n_pairs, args.seed)
    model = load_model(args.model).to(device)  # the metric and the fits follow it
    metric = metric_for(model)
    if model.n_conditions and isinstance(metric, PullbackMetric):
        raise ValueError("a conditional decoder's pull-back metric depends on the class: fit "
                         "its geodesics in Python inside `with model.given(c):` (one class), "
                         "or train a conditional RHVAE, whose metric all classes share")
    t0 = t = time.perf_counter()
    z_start, z_end = torch.from_numpy(z[start]), torch.from_numpy(z[end])
    graph, nodes = None, z[:0]
    if args.init in ("graph", "both"):
        # the codes of every split, at most GRAPH_NODES of them (a seeded subset)
        nodes = z[np.isfinite(z).all(1)]
        if len(nodes) > GRAPH_NODES:
            keep = np.random.default_rng(args.seed).choice(len(nodes), GRAPH_NODES, replace=False)
            nodes = nodes[np.sort(keep)]
        graph = graph_curves(metric, z_start, z_end, torch.from_numpy(nodes),
                             k=args.graph_neighbours, n_points=args.n_points,
                             progress=sys.stderr.isatty())
        t = _done(f"graph of {len(nodes)} codes, {args.graph_neighbours} neighbours each: "
                  f"{int(graph.found.sum())} of {len(start)} pairs joined", t)
    res = fit_geodesics(metric, z_start, z_end, n_points=args.n_points,
                        init=None if graph is None else graph.points,
                        also_line=args.init == "both", max_iter=args.max_iter, seed=args.seed,
                        progress=sys.stderr.isatty())
    t = _done(f"fitted {len(start)} geodesics, {int(res.converged.sum())} converged", t)
    ds = xr.Dataset(coords={"pair": np.arange(len(start)), "t": res.t.cpu().numpy(),
                            "latent": np.arange(z.shape[1])})
    ds["points"] = (("pair", "t", "latent"), res.points.detach().cpu().numpy())
    for name in ("length", "energy", "euclidean_length", "line_length"):
        ds[name] = (("pair",), getattr(res, name).detach().cpu().numpy())
    for name in ("converged", "fell_back"):
        ds[name] = (("pair",), getattr(res, name).cpu().numpy().astype(bool))
    ds["iterations"] = (("pair",), res.iterations.cpu().numpy().astype(np.int64))
    if graph is not None:
        ds["graph_length"] = (("pair",), graph.length.cpu().numpy())
        ds["graph_found"] = (("pair",), graph.found.cpu().numpy())
        ds["kept_init"] = (("pair",), res.kept_init.cpu().numpy())
    if res.from_init is not None:
        ds["from_graph"] = (("pair",), res.from_init.cpu().numpy())
    ds["start_index"] = (("pair",), start)
    ds["end_index"] = (("pair",), end)
    if labels is not None:
        ds["start_label"] = (("pair",), labels[start])
        ds["end_label"] = (("pair",), labels[end])
    if z.shape[1] == 2:
        bounds = latent_bounds(z)
        vol = volume_grid(metric, bounds, args.grid_size)
        ds = ds.assign_coords(z1=vol["z1"].values, z2=vol["z2"].values)
        ds["log_volume"] = (("z1", "z2"), vol["log_volume"].values)
        if isinstance(metric, RHVAEMetric):  # smooth, and cheap: 0.3 s for 100 x 100 points
            curv = curvature_grid(metric, bounds, args.grid_size, progress=sys.stderr.isatty())
            ds["gaussian_curvature"] = (("z1", "z2"), curv["gaussian_curvature"].values)
        t = _done(f"log volume{' and curvature' if 'gaussian_curvature' in ds else ''} on a "
                  f"{args.grid_size} x {args.grid_size} grid", t)
    sprays = z.shape[1] == 2 and args.spray and isinstance(metric, RHVAEMetric)
    if sprays:
        # the validation codes' intrinsic centre, and geodesics leaving it: for the RHVAE's
        # smooth metric (a ReLU decoder's pull-back jumps between the network's linear
        # regions, and its hundred log maps take minutes, not seconds)
        val = np.flatnonzero(is_val) if is_val.sum() >= 2 else np.arange(len(z))
        which = storage.spanning_codes(latent)  # as the figure's legend names them
        codes = np.random.default_rng(args.seed).permutation(val)[:args.spray_points]
        if len(codes) < 2 or np.ptp(z[codes], axis=0).max() == 0:  # a spray of radius 0
            print(f"warning: no geodesic spray: its length, the codes' RMS distance to their "
                  f"Frechet mean, is 0 for the {len(codes)} code(s) there are (one, or all "
                  "equal)", file=sys.stderr)
            sprays = False
    if sprays:
        mean = frechet_mean(metric, torch.from_numpy(z[codes]), n_points=args.n_points,
                            integration_tol=args.integration_tol or None,
                            progress=sys.stderr.isatty())
        if not mean.converged:  # the point reached is kept: the spray and figure still show it
            print(f"warning: the Frechet mean of {len(codes)} {which} codes did not converge"
                  f" ({mean.stopped} after {mean.iterations} steps); the spray leaves the point"
                  f" returned" + (" (the fitted curves' mean: neither shooting nor collocation "
                                  "found minimising geodesics from it to some codes)"
                                  if mean.stopped == "log_maps" else ""), file=sys.stderr)
        radius = float(mean.variance.sqrt())
        spray = geodesic_spray(metric, mean.mean, args.spray, radius)
        ds = ds.assign_coords(direction=np.arange(args.spray),
                              s=np.linspace(0, 1, spray.points.shape[1]))
        ds["frechet_mean"] = (("latent",), mean.mean.detach().cpu().numpy(), {
            "converged": int(mean.converged), "iterations": mean.iterations,
            "stopped": mean.stopped, "n_codes": len(codes), "rms_distance": radius,
            "n_steps": mean.n_steps, "integration_tol": args.integration_tol})
        ds["spray"] = (("direction", "s", "latent"), spray.points.detach().cpu().numpy())
        _done(f"Frechet mean of {len(codes)} {which} codes ({mean.iterations} steps, "
              f"{'converged' if mean.converged else 'not converged'}) and {args.spray} "
              "geodesics leaving it", t)
    ds.attrs = {
        "store": "aetk-geodesics", "run": latent.attrs.get("run"),
        "model": latent.attrs.get("model"), "likelihood": latent.attrs.get("likelihood"),
        "latent_dim": int(z.shape[1]), "config_hash": latent.attrs.get("config_hash"),
        "data_config_hash": latent.attrs.get("data_config_hash"),
        "metric": type(metric).__name__, "label_kind": kind,
        "label_names": latent.attrs.get("label_names"),
        "pair_selection": "sampled" if configured is None else "configured",
        "settings": {"n_pairs": len(start),
                     "pairs": (None if configured is None
                               else [[int(i), int(j)] for i, j in zip(start, end, strict=True)]),
                     "n_points": args.n_points, "init": args.init,
                     **({} if graph is None else {"graph_neighbours": args.graph_neighbours,
                                                  "graph_nodes": len(nodes)}),
                     "max_iter": args.max_iter, "grid_size": args.grid_size, "seed": args.seed,
                     "spray": args.spray, "spray_points": args.spray_points},
    }
    storage.write_zarr(ds, args.out)
    print(f"{len(start)} geodesics ({type(metric).__name__}, {args.init} start) on {device} in "
          f"{time.perf_counter() - t0:.1f} s: {int(res.converged.sum())} converged, mean "
          f"length / straight-line length {_ratio_text(ds)}; wrote {args.out}")


def _ratio_text(geo: Any) -> str:
    """The geodesic store's mean length ratio (`aetk.geometry.fit.length_ratio`), saying how
    many pairs with coinciding ends it leaves out, or that none is left."""
    from aetk.geometry.fit import length_ratio

    ratio, left_out = length_ratio(geo["length"].values, geo["line_length"].values)
    if left_out == len(geo["length"]):
        return "undefined: every pair's ends coincide (straight lines of length 0)"
    if not left_out:
        return f"{ratio:.3f}"
    return (f"{ratio:.3f} ({left_out} of {len(geo['length'])} pairs left out: their ends "
            "coincide)")


def add_parser(sub: Any) -> None:
    """``aetk geodesics`` and its options in `sub`, the aetk parser's subcommands."""
    p = add_command(
        sub, "geodesics", cmd_geodesics, "fit latent geodesics of a trained model",
        "Fit geodesics between pairs of points in the model's metric: its own for an "
        "RHVAE, the decoder's pull-back otherwise (aetk.geometry.metric_for). The pairs "
        "are --n-pairs seeded pairs of validation points (from different classes when "
        "labelled), or the pairs given with --pairs. For 2-D latents also the log volume "
        "log sqrt(det G) on a grid over the latent codes, and for an RHVAE the Gaussian "
        "curvature on that grid, the Frechet mean of the validation codes and a spray of "
        "geodesics from it.\n\n"
        "input:  --model: a model directory; --latent: its latent store\n"
        "output: --out: the geodesic store (.zarr)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--latent", required=True, help="its latent store (.zarr)")
    p.add_argument("--out", required=True, help="geodesic store to write (.zarr)")
    p.add_argument("--n-pairs", type=positive, default=None,
                   help="geodesics to fit between sampled pairs, each pair once either way "
                   "round (default 8; all of them, with a warning, when the validation "
                   "samples make fewer; not together with --pairs)")
    p.add_argument("--pairs", nargs="+", metavar="I:J",
                   help="fit geodesics between these pairs of samples instead of sampled ones: "
                   "indices along the latent store's `sample` dimension (0 .. n-1, any split), "
                   "e.g. --pairs 0:17 5:80; the two ends of a pair must differ, and no pair "
                   "repeats (either way round). Refused "
                   "together with --n-pairs")
    p.add_argument("--n-points", type=positive, default=32, help="points per curve")
    p.add_argument("--init", choices=("line", "graph", "both"), default="line",
                   help="where the fits start: the straight line; graph, the shortest path "
                   "through the nearest-neighbour graph of the latent codes (all splits, a "
                   f"seeded subset of at most {GRAPH_NODES}) weighted by the metric, which "
                   "goes around high-metric ridges the line's fit cannot cross; or both, "
                   "keeping each pair's shorter fit (twice the fitting time: for rough "
                   "metrics such as a ReLU decoder's pull-back, where either start can end "
                   "in a local minimum)")
    p.add_argument("--graph-neighbours", type=positive, default=10,
                   help="--init graph or both: neighbours each code is joined to")
    p.add_argument("--max-iter", type=positive, default=500, help="optimiser iterations at most")
    p.add_argument("--grid-size", type=positive, default=64,
                   help="2-D latents: volume (and curvature) grid points per axis")
    p.add_argument("--spray", type=count, default=16,
                   help="2-D RHVAE latents: geodesics leaving the Frechet mean of the validation "
                   "codes in this many directions, each as long as their RMS distance to it "
                   "(0: none)")
    p.add_argument("--spray-points", type=positive, default=100,
                   help="validation codes (at most; at least 2) whose Frechet mean centres "
                   "the spray")
    p.add_argument("--integration-tol", type=tolerance, default=1e-4,
                   help="the Frechet mean's log maps double their integration steps (from 20, "
                   "at most to 320) until each velocity's estimated error is within this "
                   "fraction of its length (aetk.geometry.frechet_mean's integration_tol; "
                   "0: 20 steps, unchecked)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the sampled pairs, the fits' initial curves and the spray's "
                   "codes")
    add_device_option(p)
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
