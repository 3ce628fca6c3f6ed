"""Build any model x likelihood from names, as the pipeline and `aetk.load` do."""

from __future__ import annotations

import difflib
import inspect
import json
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from . import decoders as dec
from .encoders import DeterministicEncoder, GaussianEncoder
from .models import (
    AE,
    CIWAE,
    DIPVAE,
    HVAE,
    IRMAE,
    IWAE,
    PIWAE,
    RHVAE,
    VAE,
    VQVAE,
    WAE,
    BetaTCVAE,
    Critic,
    Discriminator,
    FactorVAE,
    InfoMaxVAE,
    InfoVAE,
    LadderVAE,
    Model,
    VampPrior,
)
from .nets import numel, resolve_shape

LIKELIHOODS: dict[str, type[nn.Module]] = {
    "bernoulli": dec.BernoulliDecoder,
    "gaussian": dec.GaussianDecoder,
    "gaussian_learned": dec.LearnedGaussianDecoder,
    "categorical": dec.CategoricalDecoder,
    "poisson": dec.PoissonDecoder,
    "negative_binomial": dec.NegativeBinomialDecoder,
    "multinomial": dec.MultinomialDecoder,
    # no likelihood: a point prediction scored by its mean squared error (`AE`)
    "mse": dec.DeterministicDecoder,
}

# the encoder sees log(1 + x) by default for these
COUNT_LIKELIHOODS = ("poisson", "negative_binomial", "multinomial")


def default_log_inputs(likelihood: str, paired: bool = False) -> bool:
    """Whether the encoder sees log(1 + x) unless told: for a count likelihood of the
    inputs themselves (a paired model's inputs need not be counts)."""
    return likelihood in COUNT_LIKELIHOODS and not paired


def default_one_hot_inputs(likelihood: str, paired: bool = False) -> bool:
    """Whether the encoder reads one-hot rows of the classes unless told: for the
    categorical likelihood of the inputs themselves (a paired model's inputs are other
    data, not known to be classes)."""
    return likelihood == "categorical" and not paired


def _infomax(
    encoder, decoder, *, shape, hidden, activation, alpha: float = 1.0, beta: float = 1.0
) -> InfoMaxVAE:
    critic = Critic(numel(shape), encoder.latent_dim, hidden, activation)
    return InfoMaxVAE(encoder, decoder, critic, alpha=alpha, beta=beta)


def _factor(encoder, decoder, *, gamma: float = 6.0,
            discriminator_hidden: Sequence[int] = (256, 256)) -> FactorVAE:
    discriminator = Discriminator(encoder.latent_dim, discriminator_hidden)
    return FactorVAE(encoder, decoder, discriminator, gamma=gamma)


def _beta_vae(encoder, decoder, beta: float = 4.0, n_samples: int = 1,
              free_bits: float = 0.0) -> VAE:
    return VAE(encoder, decoder, beta=beta, n_samples=n_samples, free_bits=free_bits)


# name -> (encoder class, constructor(encoder, decoder, **hyper)); constructors that need the
# sizes take them as keywords `shape`, `hidden`, `activation`.
MODELS: dict[str, tuple[type[nn.Module], Callable[..., Model]]] = {
    "ae": (DeterministicEncoder, AE),
    "irmae": (DeterministicEncoder, IRMAE),
    "vae": (GaussianEncoder, VAE),
    "beta_vae": (GaussianEncoder, _beta_vae),
    "beta_tcvae": (GaussianEncoder, BetaTCVAE),
    "infovae": (GaussianEncoder, InfoVAE),
    "infomaxvae": (GaussianEncoder, _infomax),
    "factorvae": (GaussianEncoder, _factor),
    "dipvae": (GaussianEncoder, DIPVAE),
    "iwae": (GaussianEncoder, IWAE),
    "ciwae": (GaussianEncoder, CIWAE),
    "piwae": (GaussianEncoder, PIWAE),
    "vampprior": (GaussianEncoder, VampPrior),
    "lvae": (GaussianEncoder, LadderVAE),
    "hvae": (GaussianEncoder, HVAE),
    "rhvae": (GaussianEncoder, RHVAE),
    "wae": (DeterministicEncoder, WAE),
    "vqvae": (DeterministicEncoder, VQVAE),
}

# the models whose loss takes a deterministic decoder's mean squared error
MSE_MODELS = tuple(name for name, (enc, _) in MODELS.items() if enc is DeterministicEncoder)

_SIZE_ARGS = ("shape", "hidden", "activation")
# built from the sizes, or taken with the centroids when fit starts: never passed by name
_NETWORK_ARGS = ("metric_net", "centroid_conditions")
_DECODER_SIZE_ARGS = (
    "network", "latent_dim", "out_features", "output_shape", "hidden", "activation",
    "channels", "image_shape", "n_conditions",
)


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(table)}") from None


def _accepted(fn: Callable) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}


def _check_option_types(fn: Callable, options: dict[str, Any]) -> None:
    """ValueError for an option that `fn` types plainly `bool` given as anything but True
    or False, or `int` or `float` given as no number (a string, None, a list): a string
    switch counted as true ("false" turned the float64 metric on) and was saved so, and a
    string or None number failed deep inside with Python's bare comparison error ("'<' not
    supported between instances of 'int' and 'str'). Numbers of the wrong kind (2.5 for a
    count, inf) go on to the models' own checks, which say the bounds too."""
    params = inspect.signature(fn).parameters
    for name, value in options.items():
        param = params.get(name)
        kind = getattr(param.annotation, "__name__", param.annotation) if param else None
        if kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        if kind in ("int", "float") and (isinstance(value, bool)
                                         or not isinstance(value, numbers.Real)):
            raise ValueError(f"{name} must be a number, got {value!r}")


def _required(fn: Callable) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty}


def build_model(
    model: str,
    likelihood: str,
    *,
    in_features: int | None = None,
    input_shape: Sequence[int] | None = None,
    out_features: int | None = None,
    output_shape: Sequence[int] | None = None,
    latent_dim: int = 2,
    hidden: Sequence[int] = (400, 400),
    activation: str = "relu",
    channels: Sequence[int] = (),
    image_shape: Sequence[int] | None = None,
    input_noise: float = 0.0,
    log_inputs: bool | None = None,
    n_conditions: int = 0,
    one_hot_inputs: bool | None = None,
    **hyper: Any,
) -> Model:
    """A model of the named kind with an MLP encoder and a decoder of the named likelihood;
    with `channels` (e.g. `(32, 64)`) both are convolutional on images of `image_shape`
    (`(H, W)` or `(C, H, W)`, default the data shape when it has 2 or 3 axes): 4x4 stride-2
    convolutions, then the `hidden` MLP, mirrored in the decoder. `input_noise = p` makes
    it a denoising autoencoder: the encoder sees each input value masked with probability
    p while training. `log_inputs` makes the encoder see `log(1 + x)`; by default it does
    for the count likelihoods (`COUNT_LIKELIHOODS`, unless paired), whose samples' totals
    may differ by orders of magnitude (on raw single-cell counts the KL overflowed at once).
    `n_conditions = k > 0` makes it conditional, q(z|x, c) and p(x|z, c)
    for conditions `c (B, k)` (one-hot classes or covariates; `Model.given`).
    `out_features` or `output_shape` give the decoder another data shape than the encoder's,
    for paired training (`x_in -> x_out`, `aetk.Paired`; MLP networks only).
    The categorical likelihood (`n_classes=k`) models `in_features` (or `input_shape`)
    variables of k classes: fit and the model's methods take their class indices
    `(n, *shape)` or one-hot rows `(n, *shape, k)`, recoded as the encoder reads them
    (`Model.checked_input`); not `input_shape=(*shape, k)`, which would model every
    one-hot entry as a variable of k classes. Its encoder reads the one-hot rows
    (`input_shape=(*shape, k)`; `one_hot_inputs`, the default for the categorical
    likelihood of the inputs themselves): nominal classes have no order, which an encoder
    of the indices as numbers would give them (class 2 as twice class 1); a convolutional
    one takes the classes as channels. `one_hot_inputs=False` builds that encoder of the
    indices, as models saved before 2026-12-03 have it (their `build_spec` lacks the key).

    `hyper` holds the likelihood's options (`sigma`, `split`, `n_classes`, `dispersion`) and
    the model's hyperparameters (`beta`, `alpha`, `lam`, `kernel`, ...). Unknown names raise
    ValueError listing the valid ones.
    """
    encoder_cls, constructor = _lookup(MODELS, model, "model")
    decoder_cls = _lookup(LIKELIHOODS, likelihood, "likelihood")
    if decoder_cls is dec.DeterministicDecoder and encoder_cls is not DeterministicEncoder:
        raise ValueError(f"model {model!r} needs a likelihood: 'mse' (a deterministic decoder "
                         f"and its mean squared error) is for {', '.join(MSE_MODELS)}")
    shape = resolve_shape(in_features, input_shape)
    paired = out_features is not None or output_shape is not None
    out_shape = resolve_shape(out_features, output_shape) if paired else shape
    if out_shape != shape and channels:
        raise ValueError("another output shape needs MLP networks: convolutional decoders "
                         "mirror the encoder's images (give no channels)")
    hidden = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(int(h) for h in hidden)
    dec_valid = _accepted(decoder_cls.__init__) - set(_DECODER_SIZE_ARGS)
    dec_opts = {k: hyper.pop(k) for k in list(hyper) if k in dec_valid}
    model_opts = _accepted(constructor) - {"encoder", "decoder", *_SIZE_ARGS, *_NETWORK_ARGS}
    unknown = set(hyper) - model_opts
    if unknown:
        known = sorted(model_opts | dec_valid)
        own = [p for p in inspect.signature(build_model).parameters
               if p not in ("model", "likelihood", "hyper")]
        close = {k: difflib.get_close_matches(k, [*own, *known], n=1) for k in unknown}
        hints = ", ".join(f"{m[0]!r} for {k!r}" for k, m in sorted(close.items()) if m)
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for model {model!r} with likelihood "
            f"{likelihood!r}{f' (did you mean {hints}?)' if hints else ''}; its options: "
            f"{known}; build_model's own: {own}"
        )
    try:
        json.dumps({**dec_opts, **hyper})
    except TypeError:
        raise ValueError(
            "build_model options are saved as JSON: give numbers, strings, booleans or lists "
            "of them; pass tensors or networks to the model class itself, e.g. "
            "aetk.RHVAE(encoder, decoder, centroids=<tensor of training points>)"
        ) from None
    _check_option_types(decoder_cls.__init__, dec_opts)
    _check_option_types(constructor, hyper)
    missing = _required(decoder_cls.__init__) - set(_DECODER_SIZE_ARGS) - set(dec_opts)
    if missing:
        raise ValueError(f"likelihood {likelihood!r} needs the option(s) {sorted(missing)}")
    sizes = {"hidden": hidden, "activation": activation}
    if int(latent_dim) != latent_dim or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive integer, got {latent_dim}")
    conv = {}
    if channels:
        conv = {"channels": [int(c) for c in channels],
                "image_shape": None if image_shape is None else [int(s) for s in image_shape]}
    elif image_shape is not None:
        raise ValueError("image_shape is for convolutional networks: give channels too")
    if not 0 <= input_noise < 1:
        raise ValueError(f"input_noise must be in [0, 1), got {input_noise}")
    noise = {"input_noise": float(input_noise)} if input_noise else {}
    if log_inputs is None:
        log_inputs = default_log_inputs(likelihood, paired)
    logs = {"log_inputs": True} if log_inputs else {}  # absent: False (io.load's default)
    if int(n_conditions) != n_conditions or n_conditions < 0:
        raise ValueError(f"n_conditions must be an integer >= 0, got {n_conditions}")
    cond = {"n_conditions": int(n_conditions)} if n_conditions else {}
    one_hot = _one_hot_inputs(one_hot_inputs, likelihood, paired)
    classes = {"n_classes": dec.checked_n_classes(dec_opts["n_classes"])} if one_hot else {}
    enc_shape = (*shape, classes["n_classes"]) if one_hot else shape
    encoder = encoder_cls(input_shape=enc_shape, latent_dim=latent_dim, **sizes, **conv,
                          **noise, **logs, **cond, **classes)
    decoder = decoder_cls(latent_dim=latent_dim, output_shape=out_shape, **sizes, **conv,
                          **dec_opts, **cond)
    # a critic of (x, z) reads x as the encoder does
    extra = {k: v for k, v in {"shape": enc_shape, **sizes}.items()
             if k in inspect.signature(constructor).parameters}
    built = constructor(encoder, decoder, **extra, **hyper)
    built.build_spec = {
        "model": model,
        "likelihood": likelihood,
        "input_shape": list(shape),
        **({"output_shape": list(out_shape)} if out_shape != shape else {}),
        "latent_dim": int(latent_dim),
        "hidden": list(hidden),
        "activation": activation,
        **conv,
        **noise,
        **logs,
        **cond,
        # absent: the encoder of class indices (io.load's default), as saved before it was
        **({"one_hot_inputs": True} if one_hot else {}),
        **dec_opts,
        **hyper,
    }
    return built


def _one_hot_inputs(given: bool | None, likelihood: str, paired: bool) -> bool:
    """`one_hot_inputs` checked, its default (`default_one_hot_inputs`) for None."""
    if given is None:
        return default_one_hot_inputs(likelihood, paired)
    if not isinstance(given, bool):
        raise ValueError(f"one_hot_inputs must be True, False or None, got {given!r}")
    if given and (likelihood != "categorical" or paired):
        what = (f"the {likelihood!r} likelihood" if likelihood != "categorical"
                else "a paired model, whose inputs are other data than the decoder's classes")
        raise ValueError(f"one_hot_inputs=True is for the categorical likelihood of the "
                         f"inputs themselves, not {what}: leave it out")
    return given
