import itertools
import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from snakemake.cli import args_to_api
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
from snakemake_interface_executor_plugins.settings import ExecMode

BUNDLED = ("mnist5k", "mnist", "digits", "swissroll", "scurve", "scrna_counts")
# models whose encoder returns codes, not a distribution q(z|x): those that take mse's
# deterministic decoder (aetk.build.MSE_MODELS), and not q(z|x)'s penalties
CODE_ENCODERS = ("ae", "irmae", "wae", "vqvae")
COUNT_LIKELIHOODS = ("poisson", "negative_binomial", "multinomial")  # aetk.build's
SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA_DOC = yaml.safe_load(SCHEMA.read_text())
SCHEMA_DEFS = SCHEMA_DOC["$defs"]


def resolved(schema):
    """`schema`, or the definition its `$ref` names."""
    ref = schema.get("$ref")
    return SCHEMA_DEFS[ref.rsplit("/", 1)[1]] if ref else schema


def names_of(alternative):
    """The names an alternative of a `oneOf` takes: a string's `enum`, an object's `name`
    (`enum` or `const`)."""
    alternative = resolved(alternative)
    named = resolved(alternative.get("properties", {}).get("name", {}))
    found = alternative.get("enum") or named.get("enum") or [named.get("const")]
    return [n for n in found if n is not None]


def allowed_names(alternatives):
    """The names that the alternatives of a `oneOf` take, in order, once each."""
    names = []
    for alternative in alternatives:
        names += [n for n in names_of(alternative) if n not in names]
    return names


def message(error):
    """jsonschema's message, or for one name or number where a list is due how to write
    the list; for an excluded value (`not`) the key's description; for a value no
    alternative fits (`oneOf`), the names they allow, or for an object with a known name
    (or none to know) what its own alternative says of its options."""
    one = isinstance(error.instance, (str, int, float))
    if error.validator == "type" and error.validator_value == "array" and one:
        # "'vae' is not of type 'array'" did not say how to write one in YAML
        written = (
            str(error.instance).lower() if isinstance(error.instance, bool) else None
        )
        return f"{error.instance!r} is not a list: write [{written or error.instance}]"
    if (
        error.validator == "type"
        and error.validator_value in ("number", "integer")
        and isinstance(error.instance, str)
        and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", error.instance.strip())
    ):
        # YAML 1.1 (PyYAML) reads 1e-3 as text: an exponent needs a dot in the mantissa
        number = float(error.instance)
        return (
            f"{error.instance!r} is text to YAML (an exponent needs a dot): write "
            f"{number!r} or {number:.1e}"
        )
    if error.validator == "not":
        return (
            f"{error.instance!r} is not allowed: {error.schema.get('description', '')}"
        )
    if error.validator in ("oneOf", "anyOf"):
        names = allowed_names(error.validator_value)
        named = isinstance(error.instance, dict)
        name = error.instance.get("name") if named else error.instance
        if names and name not in names:
            return (
                f"{error.instance!r} is not valid: choose one of {', '.join(map(str, names))}"
                " (a name, or an object with name and options)"
            )
        for i, alternative in enumerate(error.validator_value):
            # the object alternative of this name, or the one with no names at all
            if (
                named
                and "properties" in resolved(alternative)
                and (name in names_of(alternative) or not names_of(alternative))
            ):
                own = [e for e in error.context if e.relative_schema_path[0] == i]
                if own:
                    where = "".join(f"{p}: " for p in own[0].path)  # the option's name
                    return f"{error.instance!r}: {where}{own[0].message}"
    return error.message


def config_error(lines):
    """The WorkflowError that stops a run before any job, one line per error."""
    return WorkflowError(
        "\n".join(
            [
                f"Invalid configuration ({len(lines)} error(s)):",
                *(f"  {line}" for line in lines),
            ]
        )
    )


def check_source(data):
    """A data file that does not exist stops the run before any job: the results are not
    named by the data set, so Snakemake would otherwise report the last run's as current.
    """
    if data["source"] not in BUNDLED and not Path(data["source"]).exists():
        raise config_error(
            [
                f"data.source: {data['source']!r} is neither a bundled data set "
                f"({', '.join(BUNDLED)}) nor an existing file (paths are relative to "
                f"{Path.cwd()})"
            ]
        )


def check_config(cfg):
    """Stop with every schema violation listed by its dotted key, before any job runs."""
    errors = sorted(
        Draft202012Validator(SCHEMA_DOC).iter_errors(cfg),
        key=lambda e: [str(p) for p in e.path],
    )
    if errors:
        raise config_error([error_line(e) for e in errors])


def error_line(error):
    """A schema error's line; for a nested key of a section given with --config, whose
    values Snakemake reads as text (9.27, cli.py parse_config: `train='{"epochs": 3}'`
    gives '3'), the advice to set it in an overlay file."""
    key = ".".join(str(p) for p in error.path)
    cli = len(error.path) > 1 and error.path[0] in workflow.config_settings.config
    hint = (
        f" (--config gives nested values as text: set {key} in an overlay file, given "
        "with --configfile)"
    )
    return f"{key or '(top level)'}: {message(error)}{hint if cli else ''}"


def command_line():
    """The parsed arguments of the `snakemake` command running this workflow, its profiles'
    settings merged in; None under Snakemake's API. Only they name the executor while the
    workflow is parsed: Snakemake (9.27, api.py) gives it one later, "dryrun" in a dry run.
    """
    frame = sys._getframe()
    while frame is not None and frame.f_code is not args_to_api.__code__:
        frame = frame.f_back
    return frame.f_locals.get("args") if frame is not None else None


def check_profiles(args):
    """Jobs sent to a cluster (`executor: slurm` of a --profile, or --executor) with
    profiles/default, which Snakemake loads as the workflow profile unless told another or
    `none` (cli.py parse_args), and whose settings win over --profile's: its GPU cap (the
    login node's GPUs, often none: every training's GPU was taken away) and its default
    resources (the user's account and partitions were lost)."""
    if (
        args is None
        or args.mode != ExecMode.DEFAULT
        or args.workflow_profile is not None
        or not (Path(workflow.basedir) / "profiles" / "default").exists()
        or ExecutorPluginRegistry().get_plugin(args.executor).common_settings.local_exec
    ):
        return
    raise WorkflowError(
        f"The jobs go to the {args.executor} executor, but Snakemake also loaded this "
        "workflow's profiles/default (for a workstation) as the workflow profile, whose "
        "settings win over --profile's: its GPU cap (this machine's GPUs) and default "
        "resources would replace yours. Give your profile as --workflow-profile (this "
        "workflow's SLURM profile: `snakemake --workflow-profile profiles/slurm`), or add "
        "`--workflow-profile none`."
    )


# bundled data sets without categorical labels: swiss roll and S-curve positions are
# continuous, the single cells have none
UNLABELLED = ("swissroll", "scurve", "scrna_counts")


def check_needs(cfg):
    """What the schema cannot see and would stop a job later: a categorical likelihood's
    n_classes, a conditional run's categorical labels, a model for mse, and validation
    samples for patience."""
    errors = []
    grid = cfg["grid"]
    if set(grid["likelihoods"]) == {"mse"} and not set(grid["models"]) & set(
        CODE_ENCODERS
    ):
        errors.append(
            "grid: the likelihood mse (a deterministic decoder) is only for the models "
            f"{', '.join(CODE_ENCODERS)}, not for {', '.join(grid['models'])}"
        )
    categorical = cfg["likelihood_options"].get("categorical", {})
    if "categorical" in cfg["grid"]["likelihoods"] and "n_classes" not in categorical:
        errors.append(
            "likelihood_options.categorical.n_classes: the categorical likelihood needs "
            "the number of values each feature takes, e.g. likelihood_options: "
            "{categorical: {n_classes: 5}}"
        )
    data = cfg["data"]
    unlabelled = data["source"] in UNLABELLED or (
        data["source"] not in BUNDLED and data["labels"] is None
    )
    if True in cfg["grid"]["conditional"] and unlabelled:
        hint = (
            "give data.labels" if data["source"] not in BUNDLED else "another data set"
        )
        errors.append(
            "grid.conditional: a conditional run needs categorical labels, which "
            f"{data['source']} does not have ({hint})"
        )
    counts = [lik for lik in grid["likelihoods"] if lik in COUNT_LIKELIHOODS]
    names = [t if isinstance(t, str) else t["name"] for t in data["transforms"]]
    fractions = [n for n in names if n in ("scale01", "log1p", "standardise")]
    if counts and fractions:
        # else refused by each count likelihood's training job, after the preprocessing
        errors.append(
            f"data.transforms: {', '.join(fractions)} makes fractions or negative values, "
            f"but grid.likelihoods has {', '.join(counts)}, "
            f"{'likelihoods' if len(counts) > 1 else 'a likelihood'} of counts: leave "
            "those transforms out (transforms: [] or only select_top_variance; the "
            "default is [scale01]), or give these data another likelihood"
        )
    if cfg["train"]["patience"] and not data["validation_fraction"]:
        # else every training job stopped at its start, after the preprocessing
        errors.append(
            f"train.patience: {cfg['train']['patience']} stops on the validation loss, and "
            "data.validation_fraction: 0 leaves no validation samples: give "
            "validation_fraction > 0 (e.g. 0.1), or patience: 0"
        )
    if errors:
        raise config_error(errors)


# samples of the bundled data sets that are not generated (swissroll and scurve have
# data.n_samples, 2000 when null)
BUNDLED_SIZES = {"mnist5k": 5000, "mnist": 70000, "digits": 1797, "scrna_counts": 559}


def known_samples(data):
    """The number of samples the data store will have, as far as it is known before
    reading the data: exact for bundled data, at most data.n_samples for a file (it may
    have fewer), None when the file alone can tell."""
    if data["source"] in ("swissroll", "scurve"):
        return data["n_samples"] or 2000
    size = BUNDLED_SIZES.get(data["source"])
    sizes = [n for n in (size, data["n_samples"]) if n is not None]
    return min(sizes) if sizes else None


def pair_errors(pairs, n_samples, data="the data have"):
    """What is wrong with `geodesics.pairs` given the data's sample count (None: unknown):
    a pair listed twice (either way round), an index beyond the data."""
    errors, seen = [], {}
    for k, (i, j) in enumerate(pairs or []):
        first = seen.setdefault(frozenset((i, j)), k)
        if first != k:
            errors.append(
                f"geodesics.pairs.{k}: [{i}, {j}] repeats pair {first} "
                f"({pairs[first]}): list each pair once"
            )
        if n_samples is not None and max(i, j) >= n_samples:
            errors.append(
                f"geodesics.pairs.{k}: [{i}, {j}] is out of range: {data} "
                f"{n_samples} samples (indices 0 .. {n_samples - 1}, training and "
                "validation)"
            )
    return errors


def check_pairs(cfg):
    """Bad `geodesics.pairs` stop the run before any job, not the geodesics jobs after
    training; a file's sample count is checked by the rule check_pairs once it is read.
    """
    data = cfg["data"]
    # n_samples is only a bound for a file
    have = (
        "the data have" if data["source"] in BUNDLED else "data.n_samples keeps at most"
    )
    errors = pair_errors(cfg["geodesics"]["pairs"], known_samples(data), have)
    if errors:
        raise config_error(errors)


def check_store_pairs(store, pairs, log):
    """The configured pairs against the preprocessed store's sample count (its root
    attributes, read without zarr), for the job of check_pairs; the errors go to its log
    too."""
    attrs = json.loads((Path(store) / "zarr.json").read_text())["attributes"]
    n_samples = attrs["n_train"] + attrs["n_validation"]
    errors = pair_errors(pairs, n_samples, f"the preprocessed data {store} have")
    Path(log).write_text("".join(f"{e}\n" for e in errors))
    if errors:
        raise config_error(errors)


check_config(config)
validate(config, schema="../schemas/config.schema.yaml")  # fills in the defaults
check_source(config["data"])
check_needs(config)
check_pairs(config)
check_profiles(command_line())


DATA = config["data"]
GRID = config["grid"]


def dataset_name():
    if DATA["name"]:
        return DATA["name"]
    if DATA["source"] in BUNDLED:
        return DATA["source"]
    return re.sub(r"[^A-Za-z0-9_.]", "_", Path(DATA["source"]).stem)


DATASET = dataset_name()
DATA_STORE = f"results/data/{DATASET}.zarr"
# A data file's sample count is known once preprocessed: every training job waits for
# check_pairs, so that configured pairs beyond it stop the run before any training, also
# with several cores or keep-going (SLURM); for every file, pairs or none, so that adding
# pairs later changes no training job's inputs. (Not ancient: a job that must run hides
# the jobs after it from Snakemake's other rerun reasons, params included, unless it
# reruns them.) Bundled data are checked at start-up (check_pairs).
PAIRS_CHECKED = (
    [] if DATA["source"] in BUNDLED else [f"results/data/{DATASET}.pairs-checked"]
)


def make_runs():
    """Run name -> settings; latent size and seed appear in the name only when varied,
    "cond" for conditional models. The grid's pairs of mse with a model that needs a
    likelihood are left out, with a note."""
    runs = {}
    pairs = [
        (m, lik)
        for m, lik in itertools.product(GRID["models"], GRID["likelihoods"])
        if lik != "mse" or m in CODE_ENCODERS
    ]
    skipped = [m for m in GRID["models"] if m not in CODE_ENCODERS]
    if "mse" in GRID["likelihoods"] and skipped:  # none left: check_needs stopped it
        print(
            f"note: no mse runs for {', '.join(skipped)} (mse is for "
            f"{', '.join(CODE_ENCODERS)})",
            file=sys.stderr,
        )
    grid = itertools.product(
        pairs, GRID["latent_dims"], GRID["seeds"], GRID["conditional"]
    )
    for (model, lik), dim, seed, cond in grid:
        parts = [model, lik]
        if len(GRID["latent_dims"]) > 1:
            parts.append(f"d{dim}")
        if len(GRID["seeds"]) > 1:
            parts.append(f"s{seed}")
        if cond:
            parts.append("cond")
        runs["-".join(parts)] = dict(
            model=model, likelihood=lik, latent_dim=dim, seed=seed, conditional=cond
        )
    return runs


RUNS = make_runs()
# a conditional decoder's pull-back depends on the class: only the RHVAE's shared metric
GEODESIC_RUNS = [
    r
    for r, spec in RUNS.items()
    if spec["model"] == "rhvae"
    or (config["geodesics"]["pullback"] and not spec["conditional"])
]


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),
    dataset=re.escape(DATASET),


def gpus(section):
    """The GPUs a job of ``section`` (train, encode, geodesics) asks for, counted against
    the profiles' cap: one for a training unless it is configured on the CPU (CPU trainings
    then run side by side on a GPU machine), one for encode and geodesics configured on a
    GPU by name (with ``auto`` they take a free one outside the cap)."""
    device = str(config[section]["device"])
    if section == "train":
        return 0 if device == "cpu" else 1
    return 1 if device.startswith("cuda") else 0


def gpu_partition(rule):
    """The SLURM partition of a job of ``rule`` (train, encode, geodesics) that asks for a
    GPU (gpus(), or a --set-resources gpu): the default resource ``slurm_gpu_partition``
    (profiles/slurm), as ``**`` keywords of its resources; none for the others, or without
    it, which keep default-resources' ``slurm_partition``. The rules set it, as they know
    the request: Snakemake (9.27, resources.py cli_evaluator) evaluates a profile's resource
    expressions without the job's other resources or its rule."""
    settings = workflow.resource_settings
    partition = given(settings.default_resources, "slurm_gpu_partition")
    overridden = given(settings.overwrite_resources.get(rule), "gpu")
    asked = gpus(rule) if overridden is None else overridden
    return {"slurm_partition": partition} if partition and asked else {}


def given(resources, name):
    """A resource as given on the command line or in a profile (an expression as its text),
    or None; of Snakemake's parsed resources or the API's plain mapping."""
    value = (resources or {}).get(name)
    return getattr(value, "raw", value)


def latent_input(wildcards):
    """The latent store, ancient: the codes change only with the model, also an input, so
    re-encoding for encode's own settings (n_generated, ...) refits no geodesics (a minute
    on the single cells). Not when geodesics is forced (--forcerun, --forceall): Snakemake
    (9.27, dag.py update_needrun) never sees a forced job after one that must run, and
    keeps it when its inputs from that job are all ancient, so `--forcerun encode
    geodesics` refitted none."""
    latent = f"results/latent/{wildcards.run}.zarr"
    dag = workflow.dag_settings
    return latent if dag.forceall or "geodesics" in dag.forcerun else ancient(latent)


def with_device(args):
    """The params function of a command's options, ``args(wildcards, device)`` at the job's
    string resource ``device`` (``<section>.device``, or ``--set-resources
    <rule>:device=...``): where a job runs is not what it computes. Snakemake (9.27) takes
    a params function of ``resources`` for derived (rules.py _is_deriving_function), and
    its params rerun trigger compares only the others (persistence _params): the rule's
    ``settings``, the options at ``auto``."""

    def args_on_device(wildcards, resources):
        return args(wildcards, resources.device)

    return args_on_device


def data_input(wildcards):
    """The user's data file, and labels file when given as one (as aetk.data.read_file
    takes it: an existing .npy or .txt), so that editing either reruns the pipeline; none
    when bundled. A folder (a zarr store) gives its files: writing chunks in place changes
    theirs, not the folder's modification time."""
    if DATA["source"] in BUNDLED:
        return []
    labels = DATA["labels"]
    label_file = labels is not None and Path(labels).suffix.lower() in (".npy", ".txt")
    source = Path(DATA["source"])
    files = (
        sorted(str(p) for p in source.rglob("*") if p.is_file())
        if source.is_dir()
        else [DATA["source"]]
    )
    return files + ([labels] if label_file and Path(labels).exists() else [])


def cli_args(pairs):
    """Shell-quoted ``--flag value`` pairs, skipping unset values."""
    out = []
    for flag, value in pairs:
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        out.append(" ".join([flag, *(shlex.quote(str(v)) for v in values)]))
    return " ".join(out)


def header_flag(value):
    """--header or --no-header, or no flag for aetk's guess (the data's hash stays)."""
    if value is None:
        return ("--header", None)
    return ("--header" if value else "--no-header", [])


def preprocess_args(wildcards):
    transforms = [
        t if isinstance(t, str) else json.dumps(t) for t in DATA["transforms"]
    ]
    return cli_args(
        [
            ("--source", DATA["source"]),
            ("--key", DATA["key"]),
            ("--labels", DATA["labels"]),
            header_flag(DATA["header"]),
            ("--drop-columns", DATA["drop_columns"] or None),
            ("--n-samples", DATA["n_samples"]),
            # only the generated manifolds have noise: elsewhere an edit would change the
            # data's hash, and retrain every model, for nothing. They get aetk's default,
            # which keeps the command, and the hash, of runs made before
            (
                "--noise",
                DATA["noise"] if DATA["source"] in ("swissroll", "scurve") else 0.05,
            ),
            ("--transforms", transforms or None),
            ("--validation-fraction", DATA["validation_fraction"]),
            ("--seed", DATA["seed"]),
        ]
    )


def lr_schedule_arg(spec):
    """None for a constant rate (no flag: the run hashes of constant-rate runs stay)."""
    if spec == "constant":
        return None
    return spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)


# models whose loss weighs its KL term by beta (aetk.cli.train.kl_weighted_models)
KL_WEIGHTED = (
    "vae",
    "beta_vae",
    "infovae",
    "infomaxvae",
    "factorvae",
    "dipvae",
    "vampprior",
    "lvae",
)


# models whose own VAE loss charges a KL capacity (aetk.cli.train.capacity_models)
CAPACITY_MODELS = ("vae", "beta_vae")


def scheduled_models(spec):
    """The models a `train.beta_schedule` applies to."""
    name = spec if isinstance(spec, str) else spec.get("name")
    return CAPACITY_MODELS if name == "capacity" else KL_WEIGHTED


def check_beta_schedule(train, models):
    """A cyclical beta lowers the validation loss whenever beta falls, a capacity as it
    nears the KL: early stopping and a plateau schedule, which watch it, would keep those
    epochs (only the models a schedule applies to count)."""
    name = {
        key: spec if isinstance(spec, str) else spec.get("name")
        for key, spec in train.items()
        if key in ("beta_schedule", "lr_schedule")
    }
    annealed = any(m in scheduled_models(train["beta_schedule"]) for m in models)
    if (
        annealed
        and name["beta_schedule"] != "constant"
        and (train["patience"] or name["lr_schedule"] == "plateau")
    ):
        raise config_error(
            [
                f"train.beta_schedule: {name['beta_schedule']} cannot go with "
                "train.patience > 0 or a plateau train.lr_schedule: both watch the "
                "validation loss, which the schedule changes from epoch to epoch"
            ]
        )


check_beta_schedule(config["train"], GRID["models"])


# penalties of q(z|x) (aetk.penalties), which models with code encoders cannot take
POSTERIOR_PENALTIES = ("min_variance", "entropy")


def penalty_name(spec):
    return spec if isinstance(spec, str) else spec["name"]


def takes_penalty(name, model, likelihood):
    """Whether a run takes the penalty: not the penalties of q(z|x) for models whose
    encoder gives codes, nor the decoder's Jacobian for a categorical likelihood (its
    point prediction is a class)."""
    return not (model in CODE_ENCODERS and name in POSTERIOR_PENALTIES) and not (
        likelihood == "categorical" and name == "decoder_jacobian"
    )


def check_penalties(specs, runs):
    """A penalty no run can take stops the run; one that some runs cannot take is left
    out of those with a note (it was dropped silently)."""
    errors = []
    for k, spec in enumerate(specs):
        name = penalty_name(spec)
        left_out = [
            r
            for r, s in runs.items()
            if not takes_penalty(name, s["model"], s["likelihood"])
        ]
        why = (
            "it needs a continuous point prediction, and a categorical decoder's is a "
            "class"
            if name == "decoder_jacobian"
            else f"it penalises q(z|x), which {', '.join(CODE_ENCODERS)} do not have"
        )
        if left_out and len(left_out) == len(runs):
            errors.append(
                f"train.penalties.{k}: {name} applies to none of the grid's runs: {why}; "
                "remove it, or add a model or likelihood that takes it"
            )
        elif left_out:
            print(
                f"note: train.penalties.{k} ({name}) is left out of the runs "
                f"{', '.join(left_out)}: {why}",
                file=sys.stderr,
            )
    if errors:
        raise config_error(errors)


check_penalties(config["train"]["penalties"], RUNS)


def penalty_arg(specs, model, likelihood):
    """`train.penalties` as `aetk train --penalty SPEC ...`, without those the run cannot
    take (takes_penalty); None (no flag) when none is left, so that those run hashes
    stay."""
    kept = [
        s if isinstance(s, str) else json.dumps(s, sort_keys=True)
        for s in specs
        if takes_penalty(penalty_name(s), model, likelihood)
    ]
    return kept or None


def beta_schedule_arg(spec, model):
    """None (no flag) for a constant beta, so that those run hashes stay, and for models
    the schedule does not apply to, which train as before."""
    if spec == "constant" or model not in scheduled_models(spec):
        return None
    return spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)


def log_inputs_flag(value):
    """--log-inputs or --no-log-inputs, or no flag for aetk's default (count likelihoods)."""
    if value is None:
        return ("--log-inputs", None)
    return ("--log-inputs" if value else "--no-log-inputs", [])


def locality_arg(spec):
    """The three numbers of --locality, or None (no flag) for uniform batches."""
    if spec is None:
        return None
    return [spec["n_primary"], spec["n_secondary"], spec["k_neighbors"]]


def train_args(wildcards, device="auto"):
    """The options of ``aetk train``; at ``auto`` (with_device) those that every training
    recorded before the device was a resource, so that their results stay current."""
    spec = RUNS[wildcards.run]
    options = {
        **config["likelihood_options"].get(spec["likelihood"], {}),
        **config["model_options"].get(spec["model"], {}),
    }
    train = config["train"]
    return cli_args(
        [
            ("--model", spec["model"]),
            ("--likelihood", spec["likelihood"]),
            ("--latent-dim", spec["latent_dim"]),
            ("--hidden", config["network"]["hidden"]),
            ("--activation", config["network"]["activation"]),
            ("--channels", config["network"]["channels"] or None),
            ("--input-noise", config["network"]["input_noise"] or None),
            log_inputs_flag(config["network"]["log_inputs"]),
            ("--options", json.dumps(options, sort_keys=True)),
            ("--epochs", train["epochs"]),
            ("--batch-size", train["batch_size"]),
            ("--lr", train["lr"]),
            ("--patience", train["patience"] or None),
            ("--lr-schedule", lr_schedule_arg(train["lr_schedule"])),
            (
                "--beta-schedule",
                beta_schedule_arg(train["beta_schedule"], spec["model"]),
            ),
            ("--locality", locality_arg(train["locality"])),
            ("--clip-grad-norm", train["clip_grad_norm"]),
            (
                "--penalty",
                penalty_arg(train["penalties"], spec["model"], spec["likelihood"]),
            ),
            ("--conditions", "labels" if spec["conditional"] else None),
            ("--device", device),
            ("--seed", spec["seed"]),
            ("--resume" if train["resume"] else "--no-resume", []),
        ]
    )


def encode_args(wildcards, device="auto"):
    enc = config["encode"]
    return cli_args(
        [
            ("--batch-size", enc["batch_size"]),
            ("--n-examples", enc["n_examples"]),
            ("--n-generated", enc["n_generated"]),
            ("--n-importance", enc["n_importance"]),
            ("--n-scored", enc["n_scored"]),
            ("--traversal-steps", enc["traversal_steps"]),
            # the default (the CLI's) left out, as before the device was a resource
            ("--device", None if device == "auto" else device),
            ("--seed", RUNS[wildcards.run]["seed"]),
        ]
    )


def write_settings(path, args, log):
    """The geodesics' options as the file of geodesic_settings; its log says them too: what
    changed, when the geodesics rerun for it."""
    Path(path).write_text(f"{args}\n")
    Path(log).write_text(f"{path}: aetk geodesics options (a change refits):\n{args}\n")


def pairs_arg(pairs):
    """`geodesics.pairs` as `aetk geodesics --pairs I:J ...`; None (sampled) when unset."""
    return [f"{int(i)}:{int(j)}" for i, j in pairs] if pairs else None


def geodesic_args(wildcards, device="auto"):
    """Configured pairs replace the n_pairs sampled ones (the CLI takes one or the other)."""
    geo = config["geodesics"]
    return cli_args(
        [
            ("--pairs", pairs_arg(geo["pairs"])),
            ("--n-pairs", None if geo["pairs"] else geo["n_pairs"]),
            ("--n-points", geo["n_points"]),
            # the default left out: results made before the option existed stay current
            ("--init", None if geo["init"] == "line" else geo["init"]),
            (
                "--graph-neighbours",
                geo["graph_neighbours"] if geo["init"] != "line" else None,
            ),
            ("--max-iter", geo["max_iter"]),
            ("--grid-size", geo["grid_size"]),
            ("--spray", geo["spray"]),
            *mean_args(geo, RUNS[wildcards.run]["model"]),
            # the default left out, as encode's
            ("--device", None if device == "auto" else device),
            ("--seed", geo["seed"]),
        ]
    )


def mean_args(geo, model):
    """The Frechet mean's options, for the RHVAE's runs (the others have no spray), left
    out at their defaults (the CLI's, tested) as --init: earlier results stay current.
    """
    defaults = SCHEMA_DOC["properties"]["geodesics"]["properties"]
    return [
        (
            flag,
            (
                geo[key]
                if model == "rhvae" and geo[key] != defaults[key]["default"]
                else None
            ),
        )
        for flag, key in (
            ("--spray-points", "spray_points"),
            ("--integration-tol", "integration_tol"),
        )
    ]


def report_outputs():
    per_run = [
        f"results/report/{run}/{fig}.png"
        for run in RUNS
        for fig in ("latent", "reconstructions", "samples")
    ]
    geo = [f"results/report/{run}/geodesics.png" for run in GEODESIC_RUNS]
    summary = [
        "results/report/training_curves.png",
        "results/report/comparison.tsv",
        "results/report/comparison.png",
    ]
    return per_run + geo + summary
