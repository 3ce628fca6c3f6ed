"""Calibrated decoder variance for latent geometry ("Latent Space Oddity", Arvanitidis,
Hansen & Hauberg 2018): a Gaussian decoder's variance network extrapolates arbitrarily
away from the data, so its pull-back metric says nothing there. After training, the
variance is refitted as a radial-basis precision that falls to `zeta` away from the codes
(`aetk.decoders.RBFVarianceDecoder`), the mean untouched; the pull-back metric of the
result grows off the data, and its geodesics follow the codes.
"""

from __future__ import annotations

import copy

import torch
from torch import distributions as D
from tqdm.auto import tqdm

from .. import validate
from ..decoders import RBFVarianceDecoder
from ..models.base import Model
from ..nets import Conditioned
from ..validate import as_tensor
from .metrics import _base, no_fisher_metric, positive_number


def rbf_centres(codes: torch.Tensor, n_centres: int, bandwidth_scale: float = 1.0,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means centres `c_k` of the codes `(N, d)` and the bandwidths
    `lambda_k = 1 / (2 (a s_k)^2)`, `s_k` the mean distance of cluster k's codes to its
    centre and `a = bandwidth_scale`; a centre of one code takes the median spread, and
    a ValueError says when no cluster has one."""
    from sklearn.cluster import KMeans  # here: sklearn takes 1.2 s to import

    data = codes.detach().double().cpu().numpy()
    km = KMeans(n_centres, n_init=3, random_state=seed).fit(data)
    centres = torch.as_tensor(km.cluster_centers_, dtype=codes.dtype, device=codes.device)
    labels = torch.as_tensor(km.labels_, device=codes.device)
    dist = (codes - centres[labels]).norm(dim=-1)
    zeros = torch.zeros(n_centres, dtype=codes.dtype, device=codes.device)
    spread = zeros.index_add(0, labels, dist) / zeros.index_add(0, labels, torch.ones_like(dist))
    # a centre with one code has no spread: give it the median one
    if not bool((spread > 0).any()):  # the median of none is NaN, and so were the bandwidths
        raise ValueError(f"each of the {n_centres} RBF centres sits on its codes (as many "
                         f"centres as distinct codes among {len(codes)}): no cluster has a "
                         f"spread to set the bandwidths from; use fewer centres")
    spread = torch.where(spread > 0, spread, spread[spread > 0].median())
    return centres, 0.5 / (bandwidth_scale * spread) ** 2


def _not_gaussian(p: object) -> str:
    """Why `calibrate_variance` refuses the decoder's output `p`, and which metric to use."""
    if not isinstance(p, D.Distribution):
        return (f"calibrate_variance refits a Gaussian decoder's variance; this decoder "
                f"returns a {type(p).__name__}, not a distribution: its pull-back is the "
                "mean's (PullbackMetric(kind='mean'))")
    # aetk's private subclasses (the Bernoulli of targets in [0, 1]) by their family
    name = next(c.__name__ for c in type(_base(p)).__mro__ if not c.__name__.startswith("_"))
    why = no_fisher_metric(p)
    if why is not None:  # a Student-t, a Laplace, a mixture: the advice below led nowhere
        return (f"calibrate_variance refits a Gaussian decoder's variance, not a {name}'s; "
                f"a {name} has no Fisher pull-back either ({why}): its metric is the "
                "mean's (PullbackMetric(kind='mean')), which does not grow where the "
                "decoder is uncertain")
    return (f"calibrate_variance refits a Gaussian decoder's variance, not a {name}'s; for "
            f"a {name} decoder the Fisher pull-back (PullbackMetric(kind='fisher')) already "
            "accounts for the noise")


def calibrate_variance(model: Model, x: torch.Tensor, *, n_centres: int = 64,
                       bandwidth_scale: float = 1.0, zeta: float = 1e-2, epochs: int = 100,
                       batch_size: int = 256, lr: float = 0.05, seed: int = 0,
                       progress: bool = False, conditions: torch.Tensor | None = None
                       ) -> Model:
    """A copy of the trained `model` whose Gaussian decoder keeps its mean and takes an RBF
    precision fitted to `x`: maximum likelihood at codes drawn from q(z|x), `epochs` passes
    of Adam on `log W`, started where the RBF precision equals the decoder's own precision
    averaged over the codes. The original is untouched. The copy is not rebuilt by
    `aetk.load` (it was not made by `build_model`): save its `state_dict` with torch.
    A conditional model takes the `conditions (N, k)` of `x` (one row for all), or those
    of a `model.given` around the call; its copy, like the model, takes conditions from
    `given` (the RBF precision is one for all conditions)."""
    param = next(model.parameters())
    device = param.device
    x = as_tensor(x, param.dtype, device)
    validate.check_finite(x, "calibration")  # else k-means' error on the codes, not the data
    bandwidth_scale = positive_number(bandwidth_scale, "bandwidth_scale")  # 0: NaN metric
    lr = positive_number(lr, "lr")
    epochs = validate.positive_int(epochs, "epochs", 0)
    batch_size = validate.positive_int(batch_size, "batch_size")
    calibrated = copy.deepcopy(model).eval()
    # the conditions of a model.given around the call, taken out of the copy's networks,
    # where they would stay for good
    conditioned = [m for m in calibrated.modules() if isinstance(m, Conditioned)]
    around = next((m.conditions for m in conditioned if m.conditions is not None), None)
    for module in conditioned:
        module.conditions = None
    c = None
    if calibrated.n_conditions:
        if conditions is None and around is None:
            raise ValueError("this model is conditional: give conditions=c, the conditions "
                             f"(rows, {calibrated.n_conditions}) of x")
        c = as_tensor(around if conditions is None else conditions, param.dtype).to(device)
        c = c[None] if c.dim() == 1 else c
        c = c.expand(len(x), -1) if len(c) == 1 else c  # one row for all
        validate.check_conditions(c, calibrated.n_conditions, "conditions", len(x))
    elif conditions is not None:
        raise ValueError(f"this {type(model).__name__} takes no conditions")
    with torch.no_grad(), calibrated.given(c):
        q = calibrated.encode(x)
    with torch.no_grad(), calibrated.given(None if c is None else c[:2]):
        p = calibrated.decode(q.mean[:2] if isinstance(q, D.Distribution) else q[:2])
    if not isinstance(p, D.Distribution) or not isinstance(_base(p), D.Normal):
        raise ValueError(_not_gaussian(p))
    try:  # 8.0 as 8, as a count read from a file comes
        count = validate.positive_int(n_centres, "n_centres")
    except ValueError:
        count = 0
    if not 0 < count <= len(x):
        raise ValueError(f"n_centres must be an integer in [1, {len(x)}], got {n_centres!r}")
    n_centres = count
    codes = q.mean if isinstance(q, D.Distribution) else q
    scale = q.stddev if isinstance(q, D.Distribution) else torch.zeros_like(codes)
    centres, bandwidths = rbf_centres(codes, n_centres, bandwidth_scale, seed)
    rbf = RBFVarianceDecoder(calibrated.decoder, centres, bandwidths, x[0].numel(), zeta)
    with torch.no_grad(), calibrated.given(c):
        own = calibrated.decoder(codes).stddev.flatten(1).pow(-2).mean(0)  # (D,)
        reach = rbf.basis(codes).sum(1).mean()  # how much of W a typical code sees
        rbf.log_weight.copy_((own / reach).log().expand_as(rbf.log_weight))
    calibrated.decoder = rbf.to(device)
    calibrated.build_spec = None
    for module in (calibrated.encoder, calibrated.decoder.mean_decoder):
        module.requires_grad_(False)
    opt = torch.optim.Adam([calibrated.decoder.log_weight], lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for _ in tqdm(range(epochs), disable=not progress, desc="variance"):
        for idx in torch.randperm(len(x), generator=gen).to(device).split(batch_size):
            noise = torch.randn(len(idx), codes.shape[1], generator=gen, dtype=codes.dtype)
            z = codes[idx] + scale[idx] * noise.to(device)
            with calibrated.given(None if c is None else c[idx]):
                loss = -calibrated.decoder(z).log_prob(x[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return calibrated

