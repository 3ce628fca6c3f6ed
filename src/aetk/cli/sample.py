"""``aetk sample``: new data from a trained model's own sampler, the encoder metric's
Riemannian uniform or a mixture of the training codes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from aetk import storage
from aetk.cli.args import add_command, positive, seed
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


def sample_classes(model: Any, args: argparse.Namespace) -> Any:
    """For a conditional model, the class of each of the `--n` samples: `--condition` (a
    class name or index), or the classes in turn; None for other models."""
    import torch

    if not model.n_conditions:
        if args.condition is not None:
            raise ValueError("--condition is for conditional models (trained with "
                             "--conditions labels)")
        return None
    k = model.n_conditions
    if args.condition is None:
        return torch.arange(args.n) % k
    info_path = Path(args.model) / "aetk_run.json"
    names = json.loads(info_path.read_text()).get("condition_names") if info_path.exists() \
        else None
    names = [str(n) for n in names] if names else [str(i) for i in range(k)]
    if args.condition in names:
        index = names.index(args.condition)
    elif args.condition.isdigit() and int(args.condition) < k:
        index = int(args.condition)
    else:
        raise ValueError(f"--condition {args.condition!r} is not a class of this model; "
                         f"classes: {', '.join(names)}")
    return torch.full((args.n,), index)


def check_units(units: str, stored: storage.StoredData | None) -> None:
    """`--units source` needs a data store whose transforms can all be inverted."""
    if units != "source":
        return
    if stored is None:
        raise ValueError("--units source needs --data: the data store's transforms map the "
                         "samples back to the source's units")
    lossy = [s.name for s in stored.pipeline.steps if not s.invertible]
    if lossy:
        raise ValueError(f"--units source: the data store's transform {', '.join(lossy)} "
                         "cannot be inverted, so the samples have no source units; use "
                         "--units transformed")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch
    import xarray as xr

    import aetk
    from aetk.distributions import mean
    from aetk.expost import CodeMixture
    from aetk.geometry import EncoderMetric

    storage.check_replaceable(args.out, "aetk-samples")
    if args.sampler in ("geometric", "mixture") and args.data is None:
        raise ValueError(f"--sampler {args.sampler} needs --data: it is built from the codes "
                         "of the training samples")
    device = claim_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model).to(device)
    stored = storage.read_data(args.data) if args.data else None
    check_units(args.units, stored)
    if stored is not None:
        model.check_data(torch.from_numpy(stored.x[:1]), "the stored")  # another data set?
        warn_other_data(args.model, stored, args.data)
    classes = sample_classes(model, args)
    multinomial = isinstance(model.decoder, aetk.MultinomialDecoder)
    totals = training_totals(model, stored)
    depths = None if totals is None else draw_totals(totals, args.n, args.seed)
    at = {} if depths is None else {"total_count": torch.from_numpy(depths)}
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.sampler == "geometric":
            c = model_conditions(model, stored, args.data)
            metric = EncoderMetric.from_model(
                model, stored.train, n_centroids=min(args.n_centroids, len(stored.train)),
                seed=args.seed,
                conditions=None if c is None else torch.from_numpy(c[~stored.is_validation]))
            with given_classes(model, classes):
                x = mean(model.decode(metric.sample(args.n)), **at)
        elif args.sampler == "mixture":
            rows = split_or_all(~stored.is_validation)
            x_train = torch.from_numpy(stored.x[rows])
            c = model_conditions(model, stored, args.data)
            c = None if c is None else torch.from_numpy(c[rows])
            parts = []
            for i in range(0, len(x_train), 1024):  # in batches, as encode does
                with model.given(None if c is None else c[i:i + 1024]):
                    parts.append(model.latent_mean(x_train[i:i + 1024]))
            codes = torch.cat(parts)
            codes = codes[codes.isfinite().all(1)]  # a diverged code is left out
            with given_classes(model, classes):
                z = CodeMixture(codes, seed=args.seed).sample(args.n)
                x = mean(model.decode(z), **at)
        else:
            if not callable(getattr(model, "sample", None)):
                raise ValueError(f"{type(model).__name__} has no sampler; try --sampler "
                                 "mixture (or geometric for a model with q(z|x))")
            with given_classes(model, classes):
                x = model.sample(args.n, **at)
    x = x.float().reshape(args.n, -1).cpu().numpy()
    x_attrs = {}
    if args.units == "source":
        x = stored.pipeline.inverse(x).astype(np.float32)
        x_attrs["description"] = ("decoder point predictions of new latent points, mapped "
                                  "back to the source's units by the data store's "
                                  "TransformPipeline.inverse")
    coords = {"sample": np.arange(args.n)}
    if stored is not None:
        coords["feature"] = stored.pipeline.feature_index
    ds = xr.Dataset({"x": (("sample", "feature"), x, x_attrs)}, coords=coords)
    if classes is not None:
        ds["class"] = (("sample",), classes.numpy(), {
            "description": "the class each sample was conditioned on"})
    if depths is not None:
        ds["total_count"] = (("sample",), depths, {
            "description": "the total of each sample's expected counts: a training sample's "
                           "total, drawn with replacement"})
    spec = model.build_spec or {}
    ds.attrs = {"store": "aetk-samples", "sampler": args.sampler, "model": spec.get("model"),
                "likelihood": spec.get("likelihood"), "seed": args.seed, "units": args.units,
                "image_shape": (None if stored is None or stored.image_shape is None
                                else list(stored.image_shape)),
                "feature_names": None if stored is None else stored.attrs.get("feature_names")}
    if depths is not None:
        ds.attrs["counts"] = (
            "expected counts (the decoder's proportions times total_count) at totals drawn "
            f"with replacement (seed {args.seed}) from the {len(totals)} training samples' "
            "totals, so that the generated totals follow the data's")
    elif multinomial:
        k = model.decoder.total_count
        ds.attrs["counts"] = (
            f"proportions times the decoder's total_count ({k}), not counts at the data's "
            "totals: no --data, so no training totals to draw from")
        print(f"a multinomial model without --data: the samples are its proportions (total "
              f"{k}), not counts; give --data to generate counts at the training totals")
    storage.write_zarr(ds, args.out)
    print(f"drew {args.n} samples ({args.sampler}) on {device} in "
          f"{time.perf_counter() - t0:.1f} s; "
          f"wrote {args.out}")


def add_parser(sub: Any) -> None:
    """``aetk sample`` and its options in `sub`, the aetk parser's subcommands."""
    p = add_command(
        sub, "sample", cmd_sample, "generate new data from a trained model",
        "Draw new samples: latent points from the model's own sampler (the N(0, I) prior "
        "for VAEs, Riemannian HMC for RHVAEs), with --sampler geometric from the "
        "Riemannian uniform distribution of the encoder's metric on the training codes "
        "of --data (aetk.geometry.EncoderMetric), or with --sampler mixture from a "
        "Gaussian mixture of those codes (aetk.CodeMixture: for an AE or IRMAE, which "
        "have no prior), decoded to the decoder's point prediction, in the data store's "
        "transformed units (aetk.storage.read_data(DATA).pipeline.inverse(x) maps them "
        "back to the source's; --units source does so here); a multinomial "
        "model's as expected counts at totals drawn from the "
        "training samples' totals of --data (without it, proportions). Not a pipeline "
        "step: for synthetic data sets and augmentation.\n\n"
        "input:  --model: a model directory; --data: its data store (needed for "
        "--sampler geometric and mixture, --units source and a multinomial model's "
        "counts)\n"
        "output: --out: a store with x (sample, feature) and, for a multinomial model "
        "with --data, total_count (sample)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--out", required=True, help="sample store to write (.zarr)")
    p.add_argument("--n", type=positive, default=1000, help="samples to draw")
    p.add_argument("--sampler", choices=("model", "geometric", "mixture"), default="model",
                   help="the model's own sampler; the encoder metric's Riemannian uniform; or "
                   "a 10-component Gaussian mixture fitted to the training codes (aetk."
                   "CodeMixture; for autoencoders without a prior). The last two need --data")
    p.add_argument("--data", help="the model's data store (.zarr)")
    p.add_argument("--units", choices=("transformed", "source"), default="transformed",
                   help="units of the samples: the data store's transformed units, as the "
                   "model sees its data; or source, mapped back through the inverse of the "
                   "transforms of --data (needs --data; refused after binarise, which cannot "
                   "be inverted). Recorded as the store's units attribute")
    p.add_argument("--condition", help="for a conditional model: the class (name or index) "
                   "of every sample; default: the classes in turn")
    p.add_argument("--n-centroids", type=positive, default=1000,
                   help="training codes that make the encoder metric (k-means snapped)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the draws")
    add_device_option(p)
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
