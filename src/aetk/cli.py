"""The aetk command line: the steps of the Snakemake pipeline, runnable by hand.

aetk preprocess -> aetk train -> aetk encode -> aetk geodesics -> aetk report.
Each step reads and writes files only (Zarr stores, model directories, tables and
figures), so any step can be rerun on its own; `aetk <step> --help` lists its inputs,
outputs and defaults. `aetk sample` draws new data from a trained model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from aetk import build, storage
from aetk import data as data_mod
from aetk.validate import positive_int

EPILOG = "The layout of every Zarr store is described in docs/zarr-layout.md."

# --------------------------------------------------------------------------------------
# preprocess


def parse_spec(text: str) -> str | dict[str, Any]:
    """``name``, ``name:key=value,...`` (values in JSON: ``milestones=[20,30]``) or a JSON
    string/object -> a transform or schedule spec."""
    text = text.strip()
    if text.startswith(("{", '"')):
        return json.loads(text)
    name, _, opts = text.partition(":")
    spec: dict[str, Any] = {"name": name}
    for item in filter(None, re.split(r",(?![^\[]*\])", opts)):  # not the commas of a list
        key, _, value = item.partition("=")
        spec[key] = json.loads(value) if value not in ("", None) else True
    return spec if len(spec) > 1 else name


def cmd_preprocess(args: argparse.Namespace) -> None:
    storage.check_replaceable(args.out, "aetk-data")
    transforms = [parse_spec(t) for t in args.transforms]
    settings = {
        "source": args.source, "key": args.key, "labels": args.labels,
        "n_samples": args.n_samples, "noise": args.noise, "transforms": transforms,
        "validation_fraction": args.validation_fraction, "seed": args.seed,
    }
    if args.header is not None:  # only when given: the hashes of earlier stores stay
        settings["header"] = args.header
    if args.drop_columns:  # likewise
        settings["drop_columns"] = args.drop_columns
    t0 = time.perf_counter()
    raw = data_mod.load_source(args.source, key=args.key, labels=args.labels,
                               header=args.header, drop_columns=args.drop_columns,
                               n_samples=args.n_samples, noise=args.noise, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:  # prepare's, in the CLI's words
        warnings.simplefilter("always", data_mod.SampleCountWarning)
        warnings.simplefilter("always", data_mod.PrecisionWarning)
        prep = data_mod.prepare(raw, transforms=transforms,
                                validation_fraction=args.validation_fraction,
                                n_samples=None if args.source in data_mod.GENERATED
                                else args.n_samples, seed=args.seed)
    storage.write_data(prep, args.out, {"config_hash": data_mod.config_hash(settings),
                                        "config": json.dumps(settings)})
    for w in caught:
        if issubclass(w.category, data_mod.SampleCountWarning):
            print(f"warning: --n-samples {args.n_samples} is more than the {len(raw.x)} "
                  f"samples of {args.source}: using all {len(raw.x)}", file=sys.stderr)
        elif issubclass(w.category, data_mod.PrecisionWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:  # any other warning passed on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   source=w.source)
    n_val = int(prep.is_validation.sum())
    print(f"{args.source}: {len(prep.x)} samples ({len(prep.x) - n_val} train, {n_val} "
          f"validation) x {prep.x.shape[1]} features, labels: {raw.label_kind}; "
          f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------------------
# train

_GPU_LOCKS: list[Any] = []


def claim_device(device: str) -> str:
    """Resolve ``auto``: the first GPU no other aetk process holds (one job per GPU), else CPU;
    another device is checked (`resolve_device`: one this machine lacks is a ValueError).

    Locks are per physical GPU (by UUID) in the temp directory and last as long as the
    process, so concurrent jobs on a multi-GPU workstation spread over the GPUs. Without
    POSIX file locks (Windows) every job takes the first GPU.
    """
    import torch

    if device != "auto":
        from aetk.devices import resolve_device

        resolve_device(device)  # a device this machine lacks: its error before any output
        return device
    if not torch.cuda.is_available():
        warn_unused_gpu()
        return "cpu"
    try:
        import fcntl
    except ModuleNotFoundError:
        return "cuda:0"
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", i)
        path = Path(tempfile.gettempdir()) / f"aetk-gpu-{uuid}.lock"
        try:
            # read-only: flock needs no write access, so another user's lock file (0644 in
            # a shared /tmp) is no "Permission denied"
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666))
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _GPU_LOCKS.append(handle)
        return f"cuda:{i}"
    return "cuda:0"  # every GPU is busy: share the first rather than fall back to the CPU


def warn_unused_gpu() -> None:
    """One line on stderr when the job was given a GPU (``SLURM_JOB_GPUS`` or a
    ``CUDA``/``HIP``/``ROCR_VISIBLE_DEVICES`` names one) that torch cannot use, so that
    ``--device auto`` does not train on the CPU unsaid: a CPU-only torch build, or a CUDA
    or ROCm build that sees no device (driver)."""
    for name in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ROCR_VISIBLE_DEVICES"):
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):  # set to no device: nothing given
            break
    else:
        return
    import torch

    if getattr(torch.version, "hip", None):  # ROCm builds have no CUDA version either
        why = (f"this torch {torch.__version__} (ROCm {torch.version.hip}) sees no GPU: "
               "check the AMD driver (rocm-smi) against the build's ROCm version")
    elif torch.version.cuda is None:
        why = (f"this torch {torch.__version__} is a CPU-only build with no CUDA; install a "
               "CUDA build (`pip install torch` from PyPI on Linux, or an --index-url "
               "https://download.pytorch.org/whl/cu<version> wheel, not .../whl/cpu)")
    else:
        why = (f"this torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
               "check the NVIDIA driver (nvidia-smi) against the build's CUDA version")
    print(f"warning: {name}={value} names a GPU, but --device auto trains on the CPU: {why}",
          file=sys.stderr)


def parse_options(text: str) -> dict[str, Any]:
    """The ``--options`` JSON object."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--options is not valid JSON ({err}): {text}") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object like '{{\"beta\": 4}}', got {text}")
    return options


def _models_making(accept: Callable[[type], bool]) -> list[str]:
    """The model names whose constructor makes a class that `accept(cls)` accepts."""
    import typing

    names = []
    for name, (_, make) in build.MODELS.items():
        made = make if isinstance(make, type) else typing.get_type_hints(make).get("return")
        if isinstance(made, type) and accept(made):
            names.append(name)
    return names


def kl_weighted_models() -> list[str]:
    """The model names whose loss weighs its KL term by `beta` (a VAE or VampPrior, or a
    subclass): the models `--beta-schedule cyclical` (aetk.CyclicalBeta) can anneal."""
    from aetk.callbacks import has_kl_weight

    return _models_making(has_kl_weight)


def capacity_models() -> list[str]:
    """The model names whose loss charges a KL capacity (the VAE's own loss): the models
    of `--beta-schedule capacity` (aetk.CapacityAnnealing)."""
    from aetk.callbacks import charges_capacity

    return _models_making(charges_capacity)


def beta_schedule(spec: str | dict[str, Any], model: str, epochs: int) -> Any:
    """The fit callback of ``--beta-schedule`` (None for constant), checked before any
    training: the name, the options and that `model` has a KL weight (a capacity: that
    its loss charges it)."""
    import aetk

    name, spec = data_mod.named_spec(spec)
    if name == "constant":
        if spec:
            raise ValueError(f"--beta-schedule constant takes no options, got {spec}")
        return None
    if name == "capacity":
        able = capacity_models()
        if model in build.MODELS and model not in able:
            raise ValueError(f"--beta-schedule capacity holds the KL of a VAE's own loss near "
                             f"a rising capacity, which the model {model!r} does not charge; "
                             f"models that do: {', '.join(able)}")
        try:
            return aetk.CapacityAnnealing(epochs=spec.pop("epochs", epochs), **spec)
        except TypeError as err:
            raise ValueError(f"bad options {spec} for the capacity schedule (options: c_max, "
                             f"required, and epochs, default --epochs): {err}") from None
    if name != "cyclical":
        raise ValueError(f"unknown --beta-schedule {name!r}; choose constant, cyclical or "
                         "capacity")
    weighted = kl_weighted_models()
    if model in build.MODELS and model not in weighted:  # an unknown name: build_model says
        raise ValueError(f"--beta-schedule cyclical anneals the KL term's weight beta, which "
                         f"the model {model!r} does not have; models with one: "
                         f"{', '.join(weighted)}")
    try:
        return aetk.CyclicalBeta(epochs, **spec)
    except TypeError as err:
        raise ValueError(f"bad options {spec} for the cyclical beta schedule (options: "
                         f"n_cycles, frac, beta_min, beta_max): {err}") from None


def _log_inputs(args: argparse.Namespace) -> bool:
    from aetk.build import default_log_inputs

    return default_log_inputs(args.likelihood) if args.log_inputs is None else args.log_inputs


def support_hint(likelihood: str, transforms: list[str]) -> str:
    """What to change when the stored data lie outside `likelihood`'s support: the
    transforms the store was made with (`transforms`, by name), or the likelihood."""
    from aetk.build import COUNT_LIKELIHOODS

    where = "(aetk preprocess --transforms; data.transforms in the pipeline's config)"
    made = f"the data store was made with the transforms {', '.join(transforms)}"
    if likelihood == "bernoulli":
        fix = f"give scale01 as the last transform {where}, or "
    elif likelihood in COUNT_LIKELIHOODS and transforms:
        fix = (f"{made}, but a count likelihood takes the raw counts: leave out the "
               f"transforms that make fractions or negative values {where}, or ")
    elif likelihood in COUNT_LIKELIHOODS:
        fix = "these are not counts: "
    else:
        return ""
    return (f"; {fix}choose a likelihood for these values with --likelihood "
            "(grid.likelihoods in the pipeline's config): gaussian for real values, "
            "poisson or negative_binomial for counts")


def run_settings(args: argparse.Namespace, data_hash: str) -> dict[str, Any]:
    """Everything that determines a trained model; its hash keys the checkpoint."""
    from aetk.build import default_one_hot_inputs
    from aetk.penalties import describe, make_penalty

    return {
        "model": args.model, "likelihood": args.likelihood, "latent_dim": args.latent_dim,
        "hidden": list(args.hidden), "activation": args.activation,
        # only when set, so that MLP runs keep the hashes of their existing checkpoints
        **({"channels": list(args.channels)} if args.channels else {}),
        **({"patience": args.patience} if args.patience else {}),
        **({"input_noise": args.input_noise} if args.input_noise else {}),
        # present exactly when the encoder takes log inputs: runs without them keep the
        # hashes they had before log inputs existed; count models' changed with the default
        **({"log_inputs": True} if _log_inputs(args) else {}),
        # categorical runs: their encoder reads one-hot rows since 2026-12-03, a new model
        **({"one_hot_inputs": True} if default_one_hot_inputs(args.likelihood) else {}),
        **({"lr_schedule": args.lr_schedule} if args.lr_schedule != "constant" else {}),
        **({"beta_schedule": args.beta_schedule}
           if args.beta_schedule not in ("constant", {"name": "constant"}) else {}),
        **({"conditions": args.conditions} if args.conditions != "none" else {}),
        **({"locality": list(args.locality)} if args.locality else {}),
        **({"clip_grad_norm": args.clip_grad_norm} if args.clip_grad_norm is not None else {}),
        # each penalty with all its options (defaults too), so that equal ones hash alike
        **({"penalties": [describe(make_penalty(s)) for s in args.penalty]}
           if args.penalty else {}),
        "options": parse_options(args.options), "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "data_config_hash": data_hash,
    }


class _EpochPrinter:
    """One line per epoch for log files (where a progress bar would be unreadable)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, model: Any, epoch: int, row: dict[str, float]) -> None:
        losses = " ".join(f"{k}={v:.4f}" for k, v in row.items()
                          if k.endswith("loss") or k == "grad_norm")
        print(f"epoch {epoch}/{self.epochs} {losses} ({row['seconds']:.2f} s)", flush=True)


def label_conditions(stored: storage.StoredData, path: str) -> np.ndarray:
    """One-hot rows of the store's categorical labels, `(N, classes)`: the conditions of
    `--conditions labels`."""
    if stored.labels is None or stored.label_kind != "categorical":
        kind = "none" if stored.labels is None else stored.label_kind + " labels"
        raise ValueError(f"conditions from labels (a conditional model) need categorical "
                         f"labels, but {path} has {kind} (preprocess with --labels)")
    k = len(stored.label_names) if stored.label_names else int(stored.labels.max()) + 1
    return np.eye(k, dtype=np.float32)[stored.labels]


def model_conditions(model: Any, stored: storage.StoredData, path: str) -> np.ndarray | None:
    """The conditions of every stored sample for a conditional model (None otherwise)."""
    if not model.n_conditions:
        return None
    c = label_conditions(stored, path)
    if c.shape[1] != model.n_conditions:
        raise ValueError(f"the model is conditioned on {model.n_conditions} classes, but {path} "
                         f"has {c.shape[1]}: encode the data store it was trained on")
    return c


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (SLURM's time limit, scancel, Snakemake stopping its jobs)
    interrupts as Ctrl-C does, so that aetk train says which epoch its checkpoint keeps
    instead of ending its log without a word (the main thread only: Python's signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def finished_epochs(checkpoint: Path) -> int:
    """Epochs recorded in a checkpoint written by ``aetk.fit`` (0 if there is none)."""
    import torch

    if not checkpoint.exists():
        return 0
    return len(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    import aetk
    from aetk.checkpoint import CheckpointMismatch
    from aetk.io import check_model_target
    from aetk.penalties import make_penalty
    from aetk.train import check_clip_grad_norm

    # outputs first: a path given by mistake is refused before the training, not after
    check_model_target(args.out)
    if Path(args.history).expanduser().is_dir():
        raise ValueError(f"--history {args.history} is a folder: give the table's file name "
                         "(.tsv)")
    storage.check_creatable(args.history)
    torch.set_num_threads(args.threads)
    check_clip_grad_norm(args.clip_grad_norm, "--clip-grad-norm")  # before reading data
    penalties = [make_penalty(spec) for spec in args.penalty]
    annealing = beta_schedule(args.beta_schedule, args.model, args.epochs)
    if annealing is not None and (args.patience
                                  or data_mod.named_spec(args.lr_schedule)[0] == "plateau"):
        # the validation loss changes with each epoch's beta or capacity
        raise ValueError("--beta-schedule cyclical or capacity cannot go with --patience or "
                         "a plateau --lr-schedule: they watch the validation loss, which the "
                         "schedule changes from epoch to epoch (lower whenever beta falls, "
                         "or the capacity nears the KL), so they would keep those epochs")
    stored = storage.read_data(args.data)
    settings = run_settings(args, stored.attrs.get("config_hash", ""))
    run_hash = data_mod.config_hash(settings)
    torch.manual_seed(args.seed)
    conv = {}
    if args.channels:
        if stored.image_shape is None:
            raise ValueError(f"--channels needs images, but {args.data} stores no image shape "
                             "(tables, or a feature selection that broke the image layout)")
        conv = {"channels": args.channels, "image_shape": stored.image_shape}
    conditions = (label_conditions(stored, args.data) if args.conditions == "labels"
                  else None)
    cond = {"n_conditions": conditions.shape[1]} if conditions is not None else {}
    model = aetk.build_model(args.model, args.likelihood, in_features=stored.x.shape[1],
                             latent_dim=args.latent_dim, hidden=args.hidden,
                             activation=args.activation, input_noise=args.input_noise,
                             log_inputs=_log_inputs(args), **conv, **cond,
                             **settings["options"])
    # all rows at once: a refusal names the store's row (the file's, unless subsampled),
    # not the row in the training split, and counts the validation rows too
    try:
        model.check_data(torch.from_numpy(stored.x), "the stored")
    except ValueError as err:  # outside the likelihood's support: say what to change
        steps = [step.name for step in stored.pipeline.steps]
        raise ValueError(f"{err}{support_hint(args.likelihood, steps)}") from None
    checkpoint = None
    if args.checkpoint_dir is not None:
        # named by the data's values too: new values in the same file train afresh
        checkpoint = (Path(args.checkpoint_dir)
                      / f"{args.model}-{args.likelihood}-{run_hash}-{stored.digest()}.pt")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        done = finished_epochs(checkpoint) if args.resume else 0
        if done:
            print(f"resuming from epoch {done} of checkpoint {checkpoint}", flush=True)
    device = claim_device(args.device)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    print(f"training {args.model} x {args.likelihood} (latent {args.latent_dim}) on "
          f"{len(stored.train)} samples for {args.epochs} epochs on {device} with "
          f"{args.threads} thread(s); run hash {run_hash}", flush=True)
    t0 = time.perf_counter()
    train, val = stored.train, stored.validation if len(stored.validation) else None
    if conditions is not None:
        train = (train, conditions[~stored.is_validation])
        val = (val, conditions[stored.is_validation]) if val is not None else None
    if args.patience and val is None:
        raise ValueError("--patience needs validation data: the data store has no validation "
                         "split (preprocess with --validation-fraction > 0)")
    callbacks = ((annealing,) if annealing is not None else ()) + (
        () if progress else (_EpochPrinter(args.epochs),)) + (
        (aetk.EarlyStopping(args.patience),) if args.patience else ())
    sampler = None
    if args.locality:
        n_primary, n_secondary, k = args.locality
        sampler = aetk.LocalityBatches(stored.train, n_primary=n_primary,
                                       n_secondary=n_secondary, k_neighbors=k)
    try:
        with sigterm_as_interrupt():
            history = aetk.fit(model, train, val, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, device=device,
                               seed=args.seed, checkpoint=checkpoint, resume=args.resume,
                               progress=progress, callbacks=callbacks,
                               lr_schedule=args.lr_schedule, batch_sampler=sampler,
                               clip_grad_norm=args.clip_grad_norm, penalties=penalties)
    except CheckpointMismatch as err:  # fit's advice is for Python callers: the CLI's
        start_over = "--no-resume (in the pipeline: train.resume: false in config.yaml)"
        advice = (f"pass --epochs >= {err.held}, or {start_over}" if err.held is not None
                  else f"pass {start_over}")
        raise ValueError(f"{err.problem}; {advice} to start over") from None
    except KeyboardInterrupt:
        # fit writes the checkpoint after every epoch (atomically): the last one is kept
        done = finished_epochs(checkpoint) if checkpoint is not None else 0
        if done:
            rerun = "the same command" if args.resume else "the command without --no-resume"
            kept = (f"the checkpoint {checkpoint} keeps epoch {done}: rerun {rerun} to resume "
                    "from it")
        elif checkpoint is not None:
            kept = "no epoch finished, so no checkpoint was written"
        else:
            kept = ("nothing was kept (with --checkpoint-dir, a rerun resumes from the last "
                    "finished epoch)")
        raise KeyboardInterrupt(kept) from None
    model.cpu().save(args.out, history=history)  # the whole run's, resumed epochs too
    info = {
        "run_hash": run_hash, "settings": settings, "device": device, "threads": args.threads,
        "aetk_version": storage.package_version(), "checkpoint": str(checkpoint),
        "seconds_this_call": time.perf_counter() - t0,
        **({"condition_names": stored.label_names} if conditions is not None else {}),
    }
    (Path(args.out) / "aetk_run.json").write_text(json.dumps(info, indent=2))
    Path(args.history).parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(args.history, sep="\t", index=False)
    print(f"wrote {args.out} and {args.history}")


# --------------------------------------------------------------------------------------
# encode

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
                traversal_steps: int = 0) -> dict[str, Any]:
    """Per-sample latent statistics, reconstruction errors and ELBO terms of ``model``.

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
    x_all = torch.from_numpy(stored.x)
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
            x = x_all[rows]
            with given(rows):
                q = model.encode(x)
                if isinstance(q, Distribution):
                    mu, std, z = q.mean, q.stddev, q.sample()
                    kl = model.kl(q)  # Monte Carlo for a mixture prior, a ladder's z2
                else:  # a deterministic encoder
                    mu, std, z = q, torch.zeros_like(q), q
                    kl = torch.full((len(x),), float("nan"))
                p_mu = model.decode(mu)
                x_hat = mean(p_mu, like=x) if isinstance(p_mu, Distribution) else p_mu
                p_z = model.decode(z)
                nan = torch.full((len(x),), float("nan"))
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
                moved = mean(model.decode(codes.repeat(k, 1)), like=x_all[idx].repeat(k, 1))
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


def split_or_all(rows: np.ndarray) -> np.ndarray | slice:
    """The rows of a split (a boolean mask), or all rows when it has fewer than two."""
    return rows if rows.sum() > 1 else slice(None)


def training_totals(model: Any, stored: storage.StoredData | None) -> np.ndarray | None:
    """A multinomial model's data totals to generate counts at: the per-sample totals of
    the training split (of all samples when it has fewer than two); None for other
    likelihoods or without data."""
    from aetk.decoders import MultinomialDecoder

    if stored is None or not isinstance(model.decoder, MultinomialDecoder):
        return None
    return stored.x[split_or_all(~stored.is_validation)].sum(1, dtype=np.float64)


def draw_totals(totals: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` of `totals` drawn with replacement by their own seeded generator (torch's draws
    of the latent points stay as they were)."""
    return np.random.default_rng(seed).choice(totals, n, replace=True)


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


def load_model(path: str) -> Any:
    """`aetk.load(path)`, with the commands' own message for a model that its description
    cannot rebuild (parts of the user's own): load's advice, `into=model`, is for Python."""
    import aetk
    from aetk.io import NotRebuildable

    try:
        return aetk.load(path)
    except NotRebuildable as err:
        parts = ", ".join(f"{k} {v}" for k, v in err.parts.items())
        made = f" (parts: {parts})" if parts else ""
        raise ValueError(
            f"{path} holds a model made of parts that aetk cannot rebuild from its saved "
            f"description{made}: the aetk commands take models of `aetk train` or "
            "aetk.build_model; use it from Python, rebuilt as it was and loaded with "
            f"aetk.load('{path}', into=model)") from None


def warn_other_data(model_dir: str, stored: Any, data_path: str) -> None:
    """Warn when `stored` is not the data store the model in `model_dir` was trained on (by
    the config hash both record): another store's transforms and split were fitted anew, so
    its values may be on another scale (encoding new data of the same form is allowed)."""
    info_path = Path(model_dir) / "aetk_run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    trained_on = info.get("settings", {}).get("data_config_hash")
    given = stored.attrs.get("config_hash")
    if trained_on and given and trained_on != given:
        print(f"warning: {model_dir} was trained on another data store (config hash "
              f"{trained_on}) than {data_path} ({given}): unless these data went through the "
              "same transforms, fitted on the same training samples, the model reads them on "
              "another scale; give the store the model was trained on",
              file=sys.stderr)


def cmd_encode(args: argparse.Namespace) -> None:
    import torch
    import xarray as xr

    import aetk

    storage.check_replaceable(args.out, "aetk-latent")
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
                      conditions=conditions, traversal_steps=args.traversal_steps)
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
    print(f"encoded {len(stored.x)} samples in {time.perf_counter() - t0:.1f} s; {scored} "
          f"reconstruction error {mean('reconstruction_error', 4)}, ELBO {mean('elbo')}, "
          f"log p(x) {mean('log_marginal')}{'' if split else ' (no validation split)'}; "
          f"wrote {args.out}")


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


def given_classes(model: Any, classes: Any) -> Any:
    """`model.given` the one-hot `classes`, or no conditions when None."""
    import torch

    return model.given(None if classes is None else torch.eye(model.n_conditions)[classes])


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
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model)
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
    print(f"drew {args.n} samples ({args.sampler}) in {time.perf_counter() - t0:.1f} s; "
          f"wrote {args.out}")


# --------------------------------------------------------------------------------------
# geodesics


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
    n_pairs = 8 if args.n_pairs is None else args.n_pairs
    configured = parse_pairs(args.pairs) if args.pairs is not None else None
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
    model = load_model(args.model)
    metric = metric_for(model)
    if model.n_conditions and isinstance(metric, PullbackMetric):
        raise ValueError("a conditional decoder's pull-back metric depends on the class: fit "
                         "its geodesics in Python inside `with model.given(c):` (one class), "
                         "or train a conditional RHVAE, whose metric all classes share")
    t0 = time.perf_counter()
    z_start, z_end = torch.from_numpy(z[start]), torch.from_numpy(z[end])
    graph, nodes = None, z[:0]
    if args.init in ("graph", "both"):
        # the codes of every split, at most GRAPH_NODES of them (a seeded subset)
        nodes = z[np.isfinite(z).all(1)]
        if len(nodes) > GRAPH_NODES:
            keep = np.random.default_rng(args.seed).choice(len(nodes), GRAPH_NODES, replace=False)
            nodes = nodes[np.sort(keep)]
        graph = graph_curves(metric, z_start, z_end, torch.from_numpy(nodes),
                             k=args.graph_neighbours, n_points=args.n_points)
    res = fit_geodesics(metric, z_start, z_end, n_points=args.n_points,
                        init=None if graph is None else graph.points,
                        also_line=args.init == "both", max_iter=args.max_iter, seed=args.seed,
                        progress=sys.stderr.isatty())
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
            curv = curvature_grid(metric, bounds, args.grid_size)
            ds["gaussian_curvature"] = (("z1", "z2"), curv["gaussian_curvature"].values)
    if z.shape[1] == 2 and args.spray and isinstance(metric, RHVAEMetric):
        # the validation codes' intrinsic centre, and geodesics leaving it: for the RHVAE's
        # smooth metric (a ReLU decoder's pull-back jumps between the network's linear
        # regions, and its hundred log maps take minutes, not seconds)
        val = np.flatnonzero(is_val) if is_val.any() else np.arange(len(z))
        codes = np.random.default_rng(args.seed).permutation(val)[:args.spray_points]
        mean = frechet_mean(metric, torch.from_numpy(z[codes]), n_points=args.n_points,
                            integration_tol=args.integration_tol or None)
        if not mean.converged:  # the point reached is kept: the spray and figure still show it
            print(f"warning: the Frechet mean of {len(codes)} validation codes did not converge"
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
    ratio = (res.length / res.line_length).mean().item()
    print(f"{len(start)} geodesics ({type(metric).__name__}, {args.init} start) in "
          f"{time.perf_counter() - t0:.1f} s: {int(res.converged.sum())} converged, mean "
          f"length / straight-line length {ratio:.3f}; wrote {args.out}")


# --------------------------------------------------------------------------------------
# report


def cmd_report_run(args: argparse.Namespace) -> None:
    from aetk import report

    latent = storage.read_store(args.latent, "aetk-latent")
    stored = storage.read_data(args.data)
    encoded_from, given = latent.attrs.get("data_config_hash"), stored.attrs.get("config_hash")
    if encoded_from and given and encoded_from != given:
        raise ValueError(f"{args.latent} was encoded from another data store (config hash "
                         f"{encoded_from}) than {args.data} ({given})")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} is a file: give a folder for the figures")
    out.mkdir(parents=True, exist_ok=True)
    names = stored.attrs.get("feature_names")  # the latent store keeps no feature names
    report.plot_latent(latent, out / "latent.png")
    report.plot_reconstructions(latent, out / "reconstructions.png", feature_names=names)
    report.plot_samples(latent, stored, out / "samples.png")
    report.plot_traversals(latent, out / "traversals.png", feature_names=names)
    print(f"wrote latent.png, reconstructions.png, samples.png and traversals.png to {out}")


def cmd_report_geodesics(args: argparse.Namespace) -> None:
    from aetk import report

    latent = storage.read_store(args.latent, "aetk-latent")
    geodesics = storage.read_store(args.geodesics, "aetk-geodesics")
    fitted_on, given = geodesics.attrs.get("config_hash"), latent.attrs.get("config_hash")
    if fitted_on and given and fitted_on != given:
        raise ValueError(f"{args.geodesics} was fitted with another model (run "
                         f"{geodesics.attrs.get('run')!r}, run hash {fitted_on}) than "
                         f"{args.latent} was encoded with (run {latent.attrs.get('run')!r}, "
                         f"{given})")
    report.plot_geodesics(latent, geodesics, Path(args.out))
    print(f"wrote {args.out}")


def check_run(ds: Any, path: str, run: str, runs: list[str], hint: str = "") -> None:
    """Refuse a store whose `run` attribute (the name `aetk encode` gave it) is another of
    the given `runs`: a mix-up of their order. Run names are free labels otherwise."""
    stored = ds.attrs.get("run")
    if stored != run and stored in runs:
        raise ValueError(f"{path} holds run {stored!r}, but is given for run {run!r}{hint}")


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


def _same_losses(history: Any, recorded: list[float] | None) -> bool:
    if recorded is None or "train_loss" not in history or len(history) != len(recorded):
        return False
    return bool(np.allclose(history["train_loss"].to_numpy(dtype=float), recorded,
                            rtol=1e-9, atol=0.0))


def check_history(history: Any, path: str, run: str, latents: dict[str, Any],
                  latent_paths: dict[str, str]) -> None:
    """Refuse a history table that is not the one saved with the model that encoded the
    run's latent store (its `history_train_loss`, when `aetk encode` recorded one), naming
    the run it belongs to when that is another of the given runs."""
    recorded = latents[run].attrs.get("history_train_loss")
    if recorded is None or _same_losses(history, recorded):
        return
    owner = next((r for r, ds in latents.items()
                  if r != run and _same_losses(history, ds.attrs.get("history_train_loss"))),
                 None)
    if owner is not None:
        raise ValueError(f"{path}, given for run {run!r}, is the training history of run "
                         f"{owner!r} (the one saved with the model that encoded "
                         f"{latent_paths[owner]}): give --runs, --histories and --latents in "
                         "the same order")
    raise ValueError(f"{path} is not the training history of run {run!r}: its train_loss per "
                     "epoch is not the one saved with the model that encoded "
                     f"{latent_paths[run]}")


def cmd_report_summary(args: argparse.Namespace) -> None:
    import pandas as pd

    from aetk import report

    if not (len(args.runs) == len(args.histories) == len(args.latents)):
        raise ValueError("--runs, --histories and --latents need one entry per run, in order")
    repeated = sorted({r for r in args.runs if args.runs.count(r) > 1})
    if repeated:
        raise ValueError(f"--runs names {', '.join(repeated)} more than once: one entry per run")
    latents = {r: storage.read_store(p, "aetk-latent") for r, p in zip(args.runs, args.latents,
                                                               strict=True)}
    for (run, ds), path in zip(latents.items(), args.latents, strict=True):
        check_run(ds, path, run, args.runs,
                  ": give --runs, --histories and --latents in the same order")
    unsplit = [r for r, ds in latents.items()
               if not (ds["split"].values == storage.SPLIT_VALIDATION).any()]
    if unsplit:
        its = "its" if len(unsplit) == 1 else "their"
        print(f"warning: {', '.join(unsplit)} had no validation split: {its} val_* columns "
              "are scores of the training samples, not of held-out data", file=sys.stderr)
    # A geodesic store belongs to the run whose model it was fitted with (same run hash).
    run_of_hash = {ds.attrs.get("config_hash"): run for run, ds in latents.items()}
    geodesics = {}
    for path in args.geodesics:
        ds = storage.read_store(path, "aetk-geodesics")
        if ds.attrs.get("config_hash") not in run_of_hash:
            raise ValueError(f"{path} was not fitted with the model of any of the runs")
        run = run_of_hash[ds.attrs["config_hash"]]
        check_run(ds, path, run, args.runs)
        geodesics[run] = ds
    histories = {r: pd.read_csv(h, sep="\t") for r, h in zip(args.runs, args.histories,
                                                               strict=True)}
    latent_paths = dict(zip(args.runs, args.latents, strict=True))
    for (run, h), path in zip(histories.items(), args.histories, strict=True):
        check_history(h, path, run, latents, latent_paths)
    scorer = None
    if args.data:
        stored = storage.read_data(args.data)
        if stored.label_kind == "categorical":
            labels = stored.labels[~stored.is_validation]
            scorer = report.SampleScorer(stored.train, labels, stored.validation)
    report.plot_training_curves(histories, Path(args.curves))
    table = report.comparison_table(histories, latents, geodesics, scorer)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.table, sep="\t", index=False, float_format="%.6g")
    if args.figure:
        report.plot_comparison(table, Path(args.figure))
    print(table.to_string(index=False))


# --------------------------------------------------------------------------------------
# argument parsing


def positive(text: str) -> int:
    """argparse type of the integer options that count something: >= 1 (a bad value exits
    with argparse's usage message, before any file is read)."""
    try:
        return positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None


def tolerance(text: str) -> float:
    """argparse type of a relative tolerance, where 0 means unchecked: finite and >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type of a share of the samples: in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def count(text: str) -> int:
    """argparse type of the integer options where 0 means none: >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


SEED_MAX = 2**32 - 1


def seed(text: str) -> int:
    """argparse type of --seed: an integer 0 .. 2**32 - 1, the seeds that numpy's and
    scikit-learn's generators take (torch's take more, but every command seeds both: a
    negative seed failed in the middle of a step, with numpy's words)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX}, got {text!r}")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends each option's default to its help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, [], argparse.SUPPRESS)
                and "%(default)" not in text):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``aetk`` argument parser with one subcommand per pipeline step."""
    parser = argparse.ArgumentParser(prog="aetk", description=__doc__, epilog=EPILOG,
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version",
                        version=f"aetk {storage.package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Any, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, epilog=EPILOG,
                           formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    p = add("preprocess", cmd_preprocess, "load, transform and split a data set",
            "Load a bundled data set or a user file, apply transforms fitted on the "
            "training samples, split train/validation with a seed, and write a Zarr store.\n\n"
            f"input:  --source: a bundled name ({', '.join(data_mod.BUNDLED)}) or a file "
            f"({', '.join(data_mod.FILE_SUFFIXES)}; .csv and .tsv also "
            f"{', '.join(data_mod.COMPRESSIONS)} compressed)\n"
            "output: --out: the data store (variables x, split, label, transform parameters)")
    p.add_argument("--source", required=True, help="bundled data set name or file path")
    p.add_argument("--out", required=True, help="data store to write (a .zarr directory)")
    p.add_argument("--key", help="array in the file: npz key, zarr array or AnnData layer "
                   "(default: x, X or data, or the only array)")
    p.add_argument("--labels", help="label array/column in the file, or a .npy/.txt file of "
                   "labels (default: none, unlabelled)")
    p.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether a .csv/.tsv file's first line holds column names (default: "
                   "unless it is all numbers; a first line of numbers that may be names, such as "
                   "0,1,2,... or a grid of wavelengths, must be said)")
    p.add_argument("--drop-columns", nargs="+", default=[], metavar="NAME",
                   help="columns of a .csv/.tsv file that are not features, such as sample "
                   "IDs, left out by name (with --no-header: 0, 1, ... from the left); or "
                   "AnnData variables (.h5ad, .zarr), such as spike-ins, by var name")
    p.add_argument("--n-samples", type=positive, help="use a seeded random subset of at most "
                   "this size (all samples, with a warning, when the data set has fewer; the "
                   "number generated for swissroll/scurve) (default: all samples)")
    p.add_argument("--noise", type=float, default=0.05, help="noise of swissroll/scurve")
    p.add_argument("--transforms", nargs="*", default=[], metavar="T",
                   help="in order; each NAME, NAME:key=value,... or JSON; names: "
                   f"{', '.join(data_mod.TRANSFORMS)} (e.g. scale01 binarise:threshold=0.5) "
                   "(default: none, the values as read; the pipeline's config.yaml gives "
                   "scale01)")
    p.add_argument("--validation-fraction", type=fraction, default=0.1,
                   help="share of the samples held out for validation (0: none)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the subset and the split")

    p = add("train", cmd_train, "train one model on a data store",
            "Build a model with aetk.build_model and train it with aetk.fit on the training "
            "split (validation loss per epoch). With --checkpoint-dir, a checkpoint named by "
            "the hash of every setting is saved after each epoch, and rerunning the same "
            "command resumes from the last finished epoch.\n\n"
            "input:  --data: a data store from `aetk preprocess`\n"
            "output: --out: the model directory (aetk.load(dir)), with aetk_run.json;\n"
            "        --history: per-epoch losses (TSV)")
    p.add_argument("--data", required=True, help="data store (.zarr)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--history", required=True, help="history table to write (.tsv)")
    p.add_argument("--model", required=True,
                   help=f"model name: {', '.join(build.MODELS)} (the README describes each)")
    p.add_argument("--likelihood", required=True,
                   help=f"decoder likelihood: {', '.join(build.LIKELIHOODS)} (mse: a "
                   f"deterministic decoder's mean squared error, for "
                   f"{', '.join(build.MSE_MODELS)})")
    p.add_argument("--latent-dim", type=positive, default=2, help="latent dimensions")
    p.add_argument("--hidden", type=positive, nargs="+", default=[256, 256],
                   help="hidden layer widths of the encoder and decoder MLPs, as the "
                   "pipeline's config.yaml (network.hidden); aetk.build_model's default is "
                   "(400, 400)")
    p.add_argument("--activation", default="relu", help="between hidden layers, e.g. tanh")
    p.add_argument("--channels", type=positive, nargs="*", default=[],
                   help="convolutional encoder and decoder for image data: channels of the 4x4 "
                   "stride-2 convolutions before the MLP, e.g. 32 64 (each halves the image "
                   "sides, which must divide by 2 per entry); default: MLPs only")
    p.add_argument("--input-noise", type=float, default=0.0,
                   help="denoising: the encoder sees each input value masked with this "
                   "probability while training (0: off)")
    p.add_argument("--log-inputs", action=argparse.BooleanOptionalAction, default=None,
                   help="the encoder sees log(1 + x) (default: for the count likelihoods "
                   "poisson, negative_binomial and multinomial)")
    p.add_argument("--conditions", choices=("none", "labels"), default="none",
                   help="labels: a conditional model, q(z|x, c) and p(x|z, c), given the one-hot "
                   "class of each sample (the store's categorical labels)")
    p.add_argument("--options", default="{}", help="JSON object of model/likelihood options, "
                   "e.g. '{\"beta\": 4}'")
    p.add_argument("--epochs", type=positive, default=20, help="training epochs")
    p.add_argument("--batch-size", type=positive, default=128, help="samples per gradient step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-schedule", type=parse_spec, default="constant", metavar="S",
                   help="learning rate per epoch: constant; cosine (options warmup=0, "
                   "min_factor=0.01: after warmup epochs rising linearly, half a cosine down "
                   "to min_factor * lr); step:milestones=[20,30] (gamma=0.1: lr times gamma "
                   "after each milestone epoch); plateau (factor=0.5, patience=5: lr times "
                   "factor once the validation loss has not improved for patience epochs); "
                   "options as in cosine:warmup=5,min_factor=0.1, or a JSON object")
    p.add_argument("--beta-schedule", type=parse_spec, default="constant", metavar="S",
                   help="the KL term per epoch: constant (the model's own beta); cyclical "
                   "(aetk.CyclicalBeta; n_cycles=4, frac=0.5, beta_min=0, beta_max=1: each "
                   "cycle rises linearly from beta_min to beta_max over its first frac, then "
                   "stays), for the models with a KL weight: vae, beta_vae, infovae, "
                   "infomaxvae, factorvae, dipvae, vampprior, lvae; or capacity (aetk."
                   "CapacityAnnealing, Burgess et al. 2018; c_max required, epochs=--epochs: "
                   "the loss charges beta |KL - C|, C rising to c_max nats; give the model a "
                   "large beta), for vae and beta_vae. E.g. cyclical:n_cycles=2, "
                   "capacity:c_max=25 or a JSON object")
    p.add_argument("--patience", type=count, default=0,
                   help="stop once the validation loss has not improved for this many epochs "
                   "and keep the best epoch's weights (0: train all --epochs)")
    p.add_argument("--clip-grad-norm", type=float, metavar="X",
                   help="clip each optimiser's gradients to total L2 norm X before each step "
                   "(default: no clipping)")
    p.add_argument("--penalty", type=parse_spec, nargs="+", default=[], metavar="SPEC",
                   help="regularisers added to the loss (aetk.penalties), each a name with "
                   "options as name:key=value,... or a JSON object: latent_l2 (weight=1: the "
                   "squared norm of the codes), min_variance (sigma_min=0.1, weight=1: a hinge "
                   "on posterior variances below sigma_min^2), entropy (weight=1: of q(z|x); "
                   "negative rewards spread), decoder_jacobian (weight=1, n_projections=1: the "
                   "squared Frobenius norm of the decoder's Jacobian at the codes); e.g. "
                   "--penalty min_variance:sigma_min=0.2 latent_l2:weight=0.1 (default: none)")
    p.add_argument("--locality", type=int, nargs=3, metavar=("N_PRIMARY", "N_SECONDARY", "K"),
                   help="train on batches of local neighbourhoods (aetk.LocalityBatches, for "
                   "variance networks): N_PRIMARY points and N_SECONDARY of each one's K "
                   "nearest neighbours; --batch-size then applies to validation only "
                   "(default: uniform batches)")
    p.add_argument("--device", default="auto", help="auto (a free GPU, else CPU), cpu, cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="seed of initialisation and shuffling")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint-dir", help="where to keep resumable checkpoints (default: "
                   "none, so an interrupted run starts over)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from a checkpoint of the same settings")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal; else one line "
                   "per epoch)")

    p = add("encode", cmd_encode, "encode every sample with a trained model",
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
    p.add_argument("--n-generated", type=count, default=16,
                   help="samples generated (by each sampler)")
    p.add_argument("--n-scored", type=count, default=500,
                   help="with categorical labels, samples of each sampler kept for the "
                   "report's classifier score (0: none)")
    p.add_argument("--n-importance", type=count, default=100,
                   help="importance samples per data point for the log p(x) estimate (0: skip)")
    p.add_argument("--traversal-steps", type=count, default=10,
                   help="steps of each latent traversal and of the decoded grid of a 2-D "
                   "latent space (0: none)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the latent samples")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")

    p = add("sample", cmd_sample, "generate new data from a trained model",
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
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")

    p = add("geodesics", cmd_geodesics, "fit latent geodesics of a trained model",
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
                   help="validation codes (at most) whose Frechet mean centres the spray")
    p.add_argument("--integration-tol", type=tolerance, default=1e-4,
                   help="the Frechet mean's log maps double their integration steps (from 20, "
                   "at most to 320) until each velocity's estimated error is within this "
                   "fraction of its length (aetk.geometry.frechet_mean's integration_tol; "
                   "0: 20 steps, unchecked)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the sampled pairs, the fits' initial curves and the spray's "
                   "codes")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")

    p = add("report", None, "figures and tables",
            "Figures (PNG) and tables (TSV) for the report; see the subcommands.")
    rsub = p.add_subparsers(dest="report_command", required=True, metavar="WHAT")

    def radd(name: str, func: Any, description: str) -> argparse.ArgumentParser:
        q = rsub.add_parser(name, help=description.split("\n")[0], description=description,
                            formatter_class=_Formatter)
        q.set_defaults(func=func)
        return q

    q = radd("run", cmd_report_run,
             "Figures of one model: latent scatter coloured by label, reconstructions, "
             "generated samples and latent traversals.\n\n"
             "input:  --data: the data store; --latent: the model's latent store\n"
             "output: --out-dir: latent.png, reconstructions.png, samples.png, traversals.png")
    q.add_argument("--data", required=True, help="data store (.zarr)")
    q.add_argument("--latent", required=True, help="the model's latent store (.zarr)")
    q.add_argument("--out-dir", required=True, help="folder for the figures")
    q = radd("geodesics", cmd_report_geodesics,
             "Geodesics over the latent codes, on the metric volume for 2-D latents.\n\n"
             "input:  --latent: the latent store; --geodesics: the geodesic store\n"
             "output: --out: the figure (.png)")
    q.add_argument("--latent", required=True, help="latent store (.zarr)")
    q.add_argument("--geodesics", required=True, help="geodesic store (.zarr)")
    q.add_argument("--out", required=True, help="figure to write (.png)")
    q = radd("summary", cmd_report_summary,
             "Training curves of every run and the table comparing them (final and best "
             "validation loss, validation reconstruction error, KL, ELBO and log p(x), time, "
             "geodesic length ratio and, given the --data store with categorical labels, a "
             "classifier's score of the generated samples), optionally drawn as a figure.\n\n"
             "input:  --runs names, with one --histories table and --latents store each, "
             "any --geodesics stores, and optionally the --data store\n"
             "output: --curves (.png), --table (.tsv), --figure (.png)")
    q.add_argument("--runs", nargs="+", required=True, help="run names, e.g. vae-bernoulli")
    q.add_argument("--histories", nargs="+", required=True,
                   help="one history table per run (refused when it is not the history "
                   "saved with the run's model, which aetk encode records in the latent "
                   "store)")
    q.add_argument("--latents", nargs="+", required=True, help="one latent store per run")
    q.add_argument("--geodesics", nargs="*", default=[], help="geodesic stores, any runs")
    q.add_argument("--data", help="the data store: with categorical labels, a classifier "
                   "trained on it scores each run's generated samples")
    q.add_argument("--curves", required=True, help="training-curves figure to write (.png)")
    q.add_argument("--table", required=True, help="comparison table to write (.tsv)")
    q.add_argument("--figure", help="comparison figure to write (.png): per run, log p(x) "
                   "and the ELBO, the KL split into mutual information and prior mismatch, "
                   "the reconstruction error and, with --data, the classifier's score")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aetk`` console script; bad inputs exit with status 1 and a message."""
    args = build_parser().parse_args(argv)
    from aetk.train import TrainingDiverged  # after parsing: --help does not import torch

    # as argparse names it: "aetk report summary"
    prog = " ".join(filter(None, ("aetk", args.command, getattr(args, "report_command", None))))
    try:
        args.func(args)
    except (ValueError, KeyError, OSError, ModuleNotFoundError, TrainingDiverged) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        if isinstance(err, OSError) and err.strerror and err.filename:  # not "[Errno 17] ..."
            message = f"{err.strerror}: {err.filename}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: one line, not a traceback
        print(f"{prog}: interrupted" + (f"; {err}" if err.args else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
