"""``aetk train``: train one model on a data store (its settings, their hash, the
``--beta-schedule`` and the checkpoint kept when interrupted)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aetk import build, storage
from aetk import data as data_mod
from aetk.cli.args import add_command, count, parse_options, parse_spec, positive, seed
from aetk.cli.device import add_device_option, claim_device
from aetk.cli.trained import label_conditions


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


def go_on_from_a_shorter_run(settings: dict[str, Any],
                             named: Callable[[dict[str, Any]], Path], checkpoint: Path) -> None:
    """Where the learning rate and beta are constant, copy the checkpoint of the longest
    run of the same settings but fewer epochs to `checkpoint`, for this run to go on from
    (a raised `train.epochs` trained again from epoch 1); a cosine or cyclical schedule
    spans the epochs, so its runs start over. The shorter run's checkpoint is kept."""
    if "lr_schedule" in settings or "beta_schedule" in settings:  # set: not constant
        return
    for epochs in range(settings["epochs"] - 1, 0, -1):
        shorter = named({**settings, "epochs": epochs})
        if shorter.exists():
            shutil.copyfile(shorter, checkpoint)
            print(f"going on from the {epochs}-epoch run's checkpoint {shorter}", flush=True)
            return


class _EpochPrinter:
    """One line per epoch for log files (where a progress bar would be unreadable)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, model: Any, epoch: int, row: dict[str, float]) -> None:
        losses = " ".join(f"{k}={v:.4f}" for k, v in row.items()
                          if k.endswith("loss") or k == "grad_norm")
        print(f"epoch {epoch}/{self.epochs} {losses} ({row['seconds']:.2f} s)", flush=True)


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
    storage.check_outside_stores(args.out, "--out", "a folder for the model")  # e.g. --data
    if Path(args.history).expanduser().is_dir():
        raise ValueError(f"--history {args.history} is a folder: give the table's file name "
                         "(.tsv)")
    out, history = (Path(p).expanduser().resolve() for p in (args.out, args.history))
    if history == out or out in history.parents:
        # one failed after the training, the other replaced the saved weights with the table
        raise ValueError(f"--history {args.history} is the model folder --out {args.out} or "
                         "inside it: give the table a path of its own")
    if args.checkpoint_dir is not None \
            and history == Path(args.checkpoint_dir).expanduser().resolve():
        raise ValueError(f"--history {args.history} is the --checkpoint-dir: give the table a "
                         "path of its own")
    storage.check_outside_stores(args.history, "--history", "a file for the table")
    # the user's data file, another table, a checkpoint: not replaced by this one
    storage.check_table_replaceable(args.history, "history")
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
    steps = [step.name for step in stored.pipeline.steps]
    try:
        model.check_data(torch.from_numpy(stored.x), "the stored")
    except ValueError as err:  # outside the likelihood's support: say what to change
        raise ValueError(f"{err}{support_hint(args.likelihood, steps)}") from None
    if "binarise" in steps and args.likelihood in build.COUNT_LIKELIHOODS:
        # 0 and 1 are counts too, so nothing else stops it: a base config's transforms
        # inherited by one's own data, say
        print(f"warning: {args.data} was binarised (transforms {', '.join(steps)}), but "
              f"{args.likelihood} is a likelihood of counts: it models 0/1 values here; "
              "leave out binarise for counts, or train a bernoulli likelihood",
              file=sys.stderr)
    checkpoint = None
    if args.checkpoint_dir is not None:
        # named by the data's values too: new values in the same file train afresh
        def named(settings: dict[str, Any]) -> Path:
            return (Path(args.checkpoint_dir) / f"{args.model}-{args.likelihood}-"
                    f"{data_mod.config_hash(settings)}-{stored.digest()}.pt")

        checkpoint = named(settings)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if args.resume and not checkpoint.exists():
            go_on_from_a_shorter_run(settings, named, checkpoint)
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
                         "sample (preprocess with a --validation-fraction that leaves some: "
                         "its share of the samples rounds to 0 below half a sample)")
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


def add_parser(sub: Any) -> None:
    """``aetk train`` and its options in `sub`, the aetk parser's subcommands."""
    p = add_command(
        sub, "train", cmd_train, "train one model on a data store",
        "Build a model with aetk.build_model and train it with aetk.fit on the training "
        "split (validation loss per epoch). With --checkpoint-dir, a checkpoint named by "
        "the hash of every setting is saved after each epoch, and rerunning the same "
        "command resumes from the last finished epoch; with constant learning rate and "
        "beta, a command asking for more epochs goes on from the shorter run's.\n\n"
        "input:  --data: a data store from `aetk preprocess`\n"
        "output: --out: the model directory (aetk.load(dir)), with aetk_run.json;\n"
        "        --history: per-epoch losses (TSV)")
    p.add_argument("--data", required=True, help="data store (.zarr)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--history", required=True, help="history table to write (.tsv; an "
                   "existing file is replaced only when it is a history table)")
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
    add_device_option(p)
    p.add_argument("--seed", type=seed, default=0, help="seed of initialisation and shuffling")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads")
    p.add_argument("--checkpoint-dir", help="where to keep resumable checkpoints (default: "
                   "none, so an interrupted run starts over)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume from a checkpoint of the same settings")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal; else one line "
                   "per epoch)")
