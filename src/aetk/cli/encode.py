"""``aetk encode``: every sample's latent statistics, reconstruction error and ELBO terms,
examples, generated samples and traversals of a trained model, in a latent store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from aetk import storage
from aetk.cli.args import add_command, count, positive, seed
from aetk.cli.device import add_device_option, claim_device
from aetk.cli.trained import (
    draw_totals,
    given_classes,
    load_model,
    model_conditions,
    split_or_all,
    training_totals,
    warn_other_data,
)

# draws of z ~ q(z|x) in the ELBO's log p(x|z): one draw's left-skewed estimate put the
# mean ELBO of a 30-sample validation set 0.2 above its log p(x)
ELBO_DRAWS = 16


def example_indices(is_val: np.ndarray, labels: np.ndarray | None, kind: str, n: int) -> np.ndarray:
    """Validation samples to show: one per class first (when labelled), then the next ones."""
    val = np.flatnonzero(is_val) if is_val.any() else np.arange(len(is_val))
    chosen: list[int] = []
    if labels is not None and kind == "categorical":
        for c in np.unique(labels[val]):
            chosen.append(int(val[labels[val] == c][0]))
    chosen += [int(i) for i in val if i not in set(chosen)]
    return np.asarray(chosen[:n], dtype=np.int64)


def encode_data(model: Any, stored: storage.StoredData, *, batch_size: int, n_examples: int,
                n_generated: int, seed: int, n_importance: int = 0,
                n_scored: int = 0, conditions: np.ndarray | None = None,
                traversal_steps: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Per-sample latent statistics, reconstruction errors and ELBO terms of ``model``,
    moved to ``device`` and fed the data there batch by batch (the results are numpy arrays).

    The ELBO is ``E_q log p(x|z) - KL(q(z|x) || p(z))`` of the encoder/decoder pair (for
    every model, so the table compares like with like), its first term averaged over
    ``ELBO_DRAWS`` draws, and
    ``log_marginal`` the importance-sampled ``log p(x)`` with ``n_importance`` samples, of
    the validation samples (of all when there are fewer than two; NaN for the others, when
    0, or for a deterministic model): what the comparison table averages, at a tenth of the
    cost (the Hamiltonian models' proposals pass their flow). With categorical labels, ``n_scored``
    samples of each sampler are kept for the report's classifier score (``scored_*``). A
    model without a sampler (AE, IRMAE) generates from a Gaussian mixture fitted to its
    training codes (``aetk.CodeMixture``; ``generated_sampler`` then says so).
    A conditional model sees each sample's ``conditions`` (the terms are then given c),
    generates under conditions that go through the classes in turn, and decodes each
    example's code given every class (``example_transfer``). With ``traversal_steps``, the
    latent traversals of the validation codes (``aetk.latent_traversal``) and, for a 2-D
    latent space, the decoded grid over them (``aetk.latent_grid``); a conditional model's
    given its first class.
    """
    import torch
    from torch.distributions import Distribution
    from tqdm.auto import tqdm

    from aetk.distributions import log_prob, mean
    from aetk.expost import CodeMixture
    from aetk.marginal import log_marginal
    from aetk.models import LadderVAE
    from aetk.traversal import latent_grid, latent_traversal

    if n_importance < 0 or n_scored < 0:
        raise ValueError(f"--n-importance and --n-scored must be >= 0, got {n_importance} and "
                         f"{n_scored}")
    if traversal_steps < 0 or traversal_steps == 1:
        raise ValueError(f"--traversal-steps must be 0 (none) or at least 2, got "
                         f"{traversal_steps}")
    torch.manual_seed(seed)
    model.to(device)
    x_all = torch.from_numpy(stored.x)  # on the CPU: moved a batch at a time
    model.check_data(x_all, "the stored")  # e.g. a store of another data set
    c_all = torch.from_numpy(conditions) if conditions is not None else None

    def given(rows: Any) -> Any:
        return model.given(c_all[rows] if c_all is not None else None)

    keys = ("z_mean", "z_std", "z_sample", "reconstruction_error", "log_likelihood", "kl",
            "log_marginal")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    importance_rows = torch.zeros(len(x_all), dtype=torch.bool)
    importance_rows[split_or_all(stored.is_validation)] = True
    model.eval()
    batches = tqdm(torch.arange(len(x_all)).split(batch_size), desc="encode", unit="batch",
                   dynamic_ncols=True,
                   disable=not sys.stderr.isatty())  # log p(x) makes long data sets slow
    with torch.no_grad():
        for rows in batches:
            x = x_all[rows].to(device)
            with given(rows):
                q = model.encode(x)
                if isinstance(q, Distribution):
                    mu, std, z = q.mean, q.stddev, q.sample()
                    kl = model.kl(q)  # Monte Carlo for a mixture prior, a ladder's z2
                else:  # a deterministic encoder
                    mu, std, z = q, torch.zeros_like(q), q
                    kl = torch.full((len(x),), float("nan"), device=device)
                p_mu = model.decode(mu)
                x_hat = mean(p_mu, like=x) if isinstance(p_mu, Distribution) else p_mu
                p_z = model.decode(z)
                nan = torch.full((len(x),), float("nan"), device=device)
                probabilistic = isinstance(q, Distribution) and isinstance(p_z, Distribution)
                loglik = log_prob(p_z, x) if isinstance(p_z, Distribution) else nan
                if probabilistic:  # the ELBO's E_q log p(x|z), over ELBO_DRAWS draws
                    draw = (q.sample if not isinstance(model, LadderVAE)  # the ladder's z1
                            else partial(model.posterior_sample, x))  # follows a drawn z2
                    loglik = torch.stack([log_prob(model.decode(draw()), x)
                                          for _ in range(ELBO_DRAWS)]).mean(0)
                log_px = nan.clone()
                scored = importance_rows[rows]
                if probabilistic and n_importance and bool(scored.any()):
                    with given(rows[scored]):
                        log_px[scored] = log_marginal(model, x[scored], n_importance)
            for k, v in zip(keys, (mu, std, z, (x_hat.float() - x).square().mean(1), loglik, kl,
                                   log_px), strict=True):
                parts[k].append(v.float().cpu().numpy())
        out = {k: np.concatenate(v) for k, v in parts.items()}
        out["elbo"] = out["log_likelihood"] - out["kl"]
        idx = example_indices(stored.is_validation, stored.labels, stored.label_kind, n_examples)
        out["example_index"] = idx
        with given(torch.as_tensor(idx)):
            out["example_reconstruction"] = model.reconstruct(x_all[idx]).float().cpu().numpy()
            codes = model.latent_mean(x_all[idx])
        if c_all is not None:  # each example's code decoded as every class: counterfactuals
            k = model.n_conditions
            with given_classes(model, torch.arange(k).repeat_interleave(len(idx))):
                moved = mean(model.decode(codes.repeat(k, 1)),
                             like=x_all[idx].repeat(k, 1).to(device))
                moved = moved.float().cpu().numpy()
            out["example_transfer"] = moved.reshape(k, len(idx), -1).transpose(1, 0, 2)
        totals = training_totals(model, stored)  # None unless multinomial: no counts then
        if traversal_steps:
            codes = torch.from_numpy(out["z_mean"][split_or_all(stored.is_validation)])
            depth = None if totals is None else float(np.median(totals))
            with given_classes(model, 0 if c_all is not None else None):
                out["traversal"] = latent_traversal(model, codes, n_steps=traversal_steps,
                                                    total_count=depth)
                if model.latent_dim == 2:
                    out["latent_grid"] = latent_grid(model, codes, n_steps=traversal_steps,
                                                     total_count=depth)
            if depth is not None:
                out["traversal_total_count"] = depth
        # one draw per sampler: the first n_generated are shown, all n are scored
        n_scored = n_scored if stored.label_kind == "categorical" else 0
        n = max(n_generated, n_scored)
        generating = given_classes(model, torch.arange(n) % model.n_conditions
                                   if c_all is not None else None)
        draws = {}  # shown as generated[_geometric], scored as scored_{model,geometric}
        sample = getattr(model, "sample", None)
        train = split_or_all(~stored.is_validation)
        depths = None if totals is None or not n else draw_totals(totals, n, seed)
        at = {} if depths is None else {"total_count": torch.from_numpy(depths)}
        with generating:
            if callable(sample) and n:
                draws["model"] = sample(n, **at).float().reshape(n, -1).cpu().numpy()
            elif n:  # no prior to draw from (AE, IRMAE): a mixture of the training codes
                codes = out["z_mean"][train]
                codes = codes[np.isfinite(codes).all(1)]  # a diverged code is left out
                if len(codes) >= 2:
                    z = CodeMixture(codes, seed=seed).sample(n)
                    draws["model"] = mean(model.decode(z), **at).float().reshape(n, -1) \
                        .cpu().numpy()
                    out["generated_sampler"] = CODE_MIXTURE
            if n and (out["z_std"][train] > 0).all():
                z = geometric_latents(out["z_mean"][train], out["z_std"][train], n, seed)
                draws["geometric"] = mean(model.decode(z), **at).float().reshape(n, -1) \
                    .cpu().numpy()
        if depths is not None and draws and n_generated:
            out["generated_total_count"] = depths[:n_generated]
        for name, values in draws.items():
            if n_generated:
                out["generated" if name == "model" else "generated_geometric"] = \
                    values[:n_generated]
            if n_scored:
                out[f"scored_{name}"] = values[:n_scored]
    return out


def traversal_variables(enc: dict[str, Any], conditional: bool) -> Any:
    """The latent store's traversal variables from ``encode_data``'s results."""
    import xarray as xr

    trav = enc["traversal"]
    given = ", given the first class" if conditional else ""
    if "traversal_total_count" in enc:  # a multinomial's counts, not its proportions
        given += (f", expected counts at the training samples' median total "
                  f"{enc['traversal_total_count']:g}")
    ds = xr.Dataset(coords={"traversed": trav.dims.numpy(),
                            "step": np.arange(trav.values.shape[1])})
    ds["traversal"] = (("traversed", "step", "feature"),
                       trav.decoded.float().flatten(2).numpy(), {
        "description": "decoder point predictions along each traversed latent dimension "
                       "(traversed: its index, most varied first), the others at "
                       f"traversal_reference{given} (aetk.latent_traversal)"})
    ds["traversal_value"] = (("traversed", "step"), trav.values.float().numpy(), {
        "description": "the traversed coordinate's value at each step: from the 2% to the "
                       "98% quantile of the validation codes"})
    ds["traversal_reference"] = (("latent",), trav.reference.float().numpy(), {
        "description": "the validation codes' coordinate-wise median"})
    if "latent_grid" in enc:
        decoded, z1, z2 = enc["latent_grid"]
        ds = ds.assign_coords(grid_row=np.arange(len(z2)), grid_col=np.arange(len(z1)),
                              grid_z2=("grid_row", z2.float().numpy()),
                              grid_z1=("grid_col", z1.float().numpy()))
        ds["latent_grid"] = (("grid_row", "grid_col", "feature"),
                             decoded.float().flatten(2).numpy(), {
            "description": "decoder point predictions on a grid over the validation codes' "
                           f"2%-98% quantile range, rows from high to low z2{given} "
                           "(aetk.latent_grid)"})
    return ds


CODE_MIXTURE = ("decoded draws of a 10-component Gaussian mixture fitted to the training "
                "codes (aetk.CodeMixture, ex-post density estimation): the model has no "
                "prior to draw from")


def geometric_latents(loc: np.ndarray, scale: np.ndarray, n: int, seed: int,
                      n_centroids: int = 1000) -> Any:
    """`n` latent points from the Riemannian uniform distribution of the encoder's metric
    on the training codes (at most `n_centroids` of them, k-means snapped to codes)."""
    import torch

    from aetk.geometry import EncoderMetric

    metric = EncoderMetric.from_codes(torch.from_numpy(loc), torch.from_numpy(scale),
                                      n_centroids=min(n_centroids, len(loc)), seed=seed)
    torch.manual_seed(seed)
    return metric.sample(n)


def saved_train_loss(model_dir: str | Path) -> list[float] | None:
    """The train_loss per epoch of the history saved with the model in `model_dir`
    (`aetk.load_history`), what `aetk encode` records as the latent store's
    `history_train_loss`; None without a saved history."""
    from aetk.io import load_history

    try:
        history = load_history(model_dir)
    except FileNotFoundError:
        return None
    if "train_loss" not in history:
        return None
    values = history["train_loss"].to_numpy(dtype=float)
    return [float(v) for v in values] if np.isfinite(values).all() else None


def cmd_encode(args: argparse.Namespace) -> None:
    import torch
    import xarray as xr

    import aetk

    storage.check_replaceable(args.out, "aetk-latent")
    device = claim_device(args.device)
    torch.set_num_threads(args.threads)
    stored = storage.read_data(args.data)
    model = load_model(args.model)
    info_path = Path(args.model) / "aetk_run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    warn_other_data(args.model, stored, args.data)
    t0 = time.perf_counter()
    conditions = model_conditions(model, stored, args.data)
    enc = encode_data(model, stored, batch_size=args.batch_size, n_examples=args.n_examples,
                      n_generated=args.n_generated, seed=args.seed,
                      n_importance=args.n_importance, n_scored=args.n_scored,
                      conditions=conditions, traversal_steps=args.traversal_steps,
                      device=device)
    ds = xr.Dataset(coords={
        "sample": np.arange(len(stored.x)),
        "latent": np.arange(model.latent_dim),
        "feature": stored.pipeline.feature_index,
        "example": np.arange(len(enc["example_index"])),
    })
    sample_vars = ("reconstruction_error", "log_likelihood", "kl", "elbo", "log_marginal")
    for k in ("z_mean", "z_std", "z_sample"):
        ds[k] = (("sample", "latent"), enc[k])
    for k in sample_vars:
        ds[k] = (("sample",), enc[k])
    ds["split"] = (("sample",), stored.is_validation.astype(np.int8),
                   {"flag_values": [storage.SPLIT_TRAIN, storage.SPLIT_VALIDATION],
                    "flag_meanings": "train validation"})
    if stored.labels is not None:
        ds["label"] = (("sample",), stored.labels, {"kind": stored.label_kind})
    ds["example_index"] = (("example",), enc["example_index"])
    ds["example_data"] = (("example", "feature"), stored.x[enc["example_index"]])
    ds["example_reconstruction"] = (("example", "feature"), enc["example_reconstruction"])
    if "example_transfer" in enc:
        ds.coords["class"] = np.arange(enc["example_transfer"].shape[1])
        ds["example_transfer"] = (("example", "class", "feature"), enc["example_transfer"], {
            "description": "each example's code (given its own class) decoded given each "
                           "class: counterfactuals of the conditional model"})
    n_generated = max((len(enc[k]) for k in ("generated", "generated_geometric") if k in enc),
                      default=0)
    if n_generated:  # the index of both samplers' draws
        ds = ds.assign_coords(generated=np.arange(n_generated))
    if "generated" in enc:
        ds["generated_model"] = (("generated", "feature"), enc["generated"], {
            "sampler": "code_mixture" if "generated_sampler" in enc else "model",
            "description": enc.get("generated_sampler", "decoded draws of the model's own "
                                                        "sampler (model.sample)")})
        if conditions is not None:
            ds["generated_class"] = (("generated",), np.arange(len(enc["generated"]))
                                     % model.n_conditions, {
                "description": "the class each generated sample was conditioned on"})
    if "generated_geometric" in enc:
        ds["generated_geometric"] = (("generated", "feature"), enc["generated_geometric"], {
            "description": "decoded draws of the Riemannian uniform distribution of the "
                           "encoder's metric (aetk.geometry.EncoderMetric)"})
    if "generated_total_count" in enc:
        ds["generated_total_count"] = (("generated",), enc["generated_total_count"], {
            "description": "the total of each generated sample's expected counts (of either "
                           "sampler): a training sample's total, drawn with replacement"})
    for name in ("scored_model", "scored_geometric"):
        if name in enc:
            ds.coords["scored"] = np.arange(len(enc[name]))
            ds[name] = (("scored", "feature"), enc[name], {"sampler": (
                "geometric" if name == "scored_geometric"
                else "code_mixture" if "generated_sampler" in enc else "model")})
    if "traversal" in enc:
        ds = ds.merge(traversal_variables(enc, conditions is not None))
    flow = ""  # how log p(x)'s proposals differ from draws of q(z|x)
    if isinstance(model, aetk.LadderVAE):
        flow = " (of the ladder VAE: z2 ~ q(z2|x), then z1 ~ q(z1|x, z2))"
    elif type(model).importance_log_weights is not aetk.Model.importance_log_weights:
        flow = " moved by the model's flow, weighed by its per-draw ELBO"
    spec = model.build_spec or {}
    ds.attrs = {
        "store": "aetk-latent", "run": Path(args.out).name.removesuffix(".zarr"),
        "model": spec.get("model"), "likelihood": spec.get("likelihood"),
        "latent_dim": int(model.latent_dim), "config_hash": info.get("run_hash"),
        "data_config_hash": stored.attrs.get("config_hash"), "label_kind": stored.label_kind,
        "label_names": stored.label_names,
        "image_shape": None if stored.image_shape is None else list(stored.image_shape),
        "elbo": f"log p(x|z) averaged over {ELBO_DRAWS} draws z ~ q(z|x), minus KL(q(z|x) || "
                "p(z)) (the KL in closed form for N(0, I), from one draw for the VampPrior's "
                "mixture; for the ladder VAE its loss's, z2 ~ q(z2|x), z1 ~ q(z1|x, z2), the "
                "KLs of both levels)",
        "log_marginal": f"log p(x) by importance sampling, {args.n_importance} samples from "
                        f"q(z|x){flow} (aetk.log_marginal); of the validation samples (of all "
                        "when there are fewer than two), NaN for the others",
        "conditions": "labels" if conditions is not None else "none",
        "train_seed": info.get("settings", {}).get("seed"),
    }
    losses = saved_train_loss(args.model)
    if losses is not None:  # so that report summary knows this run's history table
        ds.attrs["history_train_loss"] = losses
    if conditions is not None:
        ds.attrs["log_marginal"] += "; of this conditional model: log p(x|c), c the label"
    if isinstance(model.decoder, aetk.MultinomialDecoder):
        ds.attrs["log_marginal"] += ("; of x given its total count (a multinomial likelihood): "
                                     "not comparable with other likelihoods' log p(x)")
        ds.attrs["generated_counts"] = (
            "generated samples (generated_model, generated_geometric, scored_*) are expected "
            "counts at totals drawn with replacement from the training samples' totals (seed "
            f"{args.seed}; generated_total_count), traversals and the latent grid at their "
            "median total (the decoder's proportions times the total)")
    storage.write_zarr(ds, args.out)
    val = stored.is_validation if stored.is_validation.any() else slice(None)

    def mean(name: str, digits: int = 2) -> str:  # "n/a" when not computed (AE, no log p(x))
        values = enc[name][val]
        return "n/a" if np.isnan(values).all() else f"{np.nanmean(values):.{digits}f}"

    split = stored.is_validation.any()
    scored = "validation" if split else "training samples'"
    print(f"encoded {len(stored.x)} samples on {device} in {time.perf_counter() - t0:.1f} s; "
          f"{scored} reconstruction error {mean('reconstruction_error', 4)}, ELBO {mean('elbo')}, "
          f"log p(x) {mean('log_marginal')}{'' if split else ' (no validation split)'}; "
          f"wrote {args.out}")


def add_parser(sub: Any) -> None:
    """``aetk encode`` and its options in `sub`, the aetk parser's subcommands."""
    p = add_command(
        sub, "encode", cmd_encode, "encode every sample with a trained model",
        "Encode every sample: latent mean, standard deviation and a sample, the "
        "reconstruction error, log-likelihood, KL, ELBO and an importance-sampled "
        "log p(x) per sample, reconstructions of a few validation samples, samples "
        "generated by the model and, for stochastic encoders, samples from the "
        "Riemannian uniform distribution of the encoder's metric on the training codes "
        "(aetk.geometry.EncoderMetric), and latent traversals: each latent dimension "
        "swept across the validation codes' range and decoded (for a 2-D latent space "
        "also a decoded grid of the plane).\n\n"
        "input:  --data: the data store; --model: a model directory from `aetk train`\n"
        "output: --out: the latent store (.zarr)")
    p.add_argument("--data", required=True, help="data store (.zarr)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", required=True, help="latent store to write (.zarr)")
    p.add_argument("--batch-size", type=positive, default=1024, help="samples per forward pass")
    p.add_argument("--n-examples", type=positive, default=10,
                   help="validation samples reconstructed")
    # not 0: a store without them made `aetk report run` say the model does not generate
    p.add_argument("--n-generated", type=positive, default=16,
                   help="samples generated (by each sampler) for the report")
    p.add_argument("--n-scored", type=count, default=500,
                   help="with categorical labels, samples of each sampler kept for the "
                   "report's classifier score (0: none)")
    p.add_argument("--n-importance", type=count, default=100,
                   help="importance samples per data point for the log p(x) estimate (0: skip)")
    p.add_argument("--traversal-steps", type=count, default=10,
                   help="steps of each latent traversal and of the decoded grid of a 2-D "
                   "latent space (0: none)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the latent samples")
    add_device_option(p)
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
