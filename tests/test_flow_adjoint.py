"""The HVAE flow's written-out adjoint (`aetk.flow_adjoint`) against independent float64
references: the whole loss and every parameter gradient against autograd of a hand flow
whose force is differentiated again (create_graph), finite differences (gradcheck) of the
flow itself, and the cases that must take the autograd flow instead. The affine path
(`aetk.flow_affine`, tests/test_flow_affine.py) is off here: these latent-2 ReLU models
would take it."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk
from aetk import flow_adjoint, flow_affine
from aetk.hamiltonian import FlowDiverged, FlowMonitor

F, LATENT, B = 6, 2, 5
f64 = torch.float64


@pytest.fixture(autouse=True)
def adjoint_only(monkeypatch):
    monkeypatch.setattr(flow_affine, "MAX_LATENT", 0)


def close(actual, desired, **kw) -> None:
    np.testing.assert_allclose(*(v.detach().numpy() if isinstance(v, torch.Tensor) else v
                                 for v in (actual, desired)), **kw)


def model(likelihood="bernoulli", activation="relu", hidden=(8,), **kw) -> aetk.HVAE:
    torch.manual_seed(1)
    extra = {"sigma": 0.7} if likelihood == "gaussian" else {}
    m = aetk.build_model("hvae", likelihood, in_features=F, latent_dim=LATENT, hidden=hidden,
                         activation=activation, **extra, **kw).double()
    with torch.no_grad():  # forces that vary visibly over the latent space
        for p in m.parameters():
            p.mul_(2.0)
    return m


def data(n: int = B) -> torch.Tensor:
    return torch.rand(n, F, generator=torch.Generator().manual_seed(0), dtype=f64)


def passes(loss: torch.Tensor, node_type: str) -> bool:
    """Whether the loss's graph has a node of that type."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == node_type:
            return True
        todo.extend(n for n, _ in node.next_functions)
    return False


def takes_adjoint(loss: torch.Tensor) -> bool:
    """Whether the loss's graph passes the written-out adjoint."""
    return passes(loss, "_FlowBackward")


def ref_loss(m: aetk.HVAE, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The HVAE loss by hand: leapfrog steps on U(z) = -log p(x|z) - log p(z) with the
    decoder's own torch distribution and autograd forces kept differentiable."""
    torch.manual_seed(seed)
    q = m.encoder(x)
    z0 = z = q.rsample()
    if not z.requires_grad:  # a frozen encoder: the forces still differentiate in z
        z0 = z = z.detach().requires_grad_()
    gamma = torch.randn_like(z)
    beta0, K, eps = float(m.beta0), m.n_leapfrog, m.step_size.detach()
    rho = gamma / math.sqrt(beta0)
    normal = D.Independent(D.Normal(torch.zeros(LATENT, dtype=f64), 1.0), 1)

    def dU(z):
        U = -(m.decoder(z).log_prob(x) + normal.log_prob(z))
        return torch.autograd.grad(U.sum(), z, create_graph=True)[0]

    def s(k):  # 1/sqrt(beta_k)
        return (1 - 1 / math.sqrt(beta0)) * (k / K) ** 2 + 1 / math.sqrt(beta0)

    for k in range(1, K + 1):
        rho = rho - eps / 2 * dU(z)
        z = z + eps * rho
        rho = (rho - eps / 2 * dU(z)) * s(k) / s(k - 1)
    elbo = (m.decoder(z).log_prob(x) + normal.log_prob(z) + normal.log_prob(rho)
            - q.log_prob(z0) - normal.log_prob(gamma))
    return -elbo.mean()


def grads(m: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    m.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def matches_the_hand_flow(m: aetk.HVAE, x: torch.Tensor, node_type: str = "_FlowBackward"
                          ) -> None:
    """The model's loss (through the adjoint, or the node type given) and every parameter
    gradient against `ref_loss`: the loss to 1e-12, the gradients (all non-zero) to 1e-9."""
    torch.manual_seed(4)
    loss = m.loss(x).loss
    assert passes(loss, node_type)
    want_loss = ref_loss(m, x, 4)
    close(loss.item(), want_loss.item(), rtol=1e-12)
    got, want = grads(m, loss), grads(m, want_loss)
    assert set(got) == set(want) and all(v.abs().max() > 0 for v in want.values())
    for k in want:
        close(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("likelihood,activation,hidden", [
    ("bernoulli", "relu", (8,)), ("bernoulli", "tanh", (8, 5)),
    ("bernoulli", "leaky_relu", (8, 5)), ("gaussian", "relu", (8, 5)),
    ("gaussian", "tanh", (8,)), ("poisson", "relu", (8, 5)), ("poisson", "tanh", (8,)),
    ("gaussian_learned", "relu", (8, 5)), ("gaussian_learned", "tanh", (8,)),
])
def test_loss_and_gradients_equal_autograd_of_the_hand_flow(likelihood, activation, hidden):
    m = model(likelihood, activation, hidden, n_leapfrog=3, step_size=[0.2, 0.1], beta0=0.5)
    x = torch.poisson(3 * data()) if likelihood == "poisson" else data()
    assert flow_adjoint.plan(m.decoder) is not None
    matches_the_hand_flow(m, x)


@pytest.mark.parametrize("likelihood,activation", [
    ("bernoulli", "relu"), ("gaussian", "tanh"), ("poisson", "tanh"), ("gaussian_learned", "tanh")])
def test_the_flow_passes_gradcheck(likelihood, activation):
    """Finite differences of z_K, rho_K and log p(x|z_K) in z_0 and every weight."""
    m = model(likelihood, activation, hidden=(4, 3))
    plan = flow_adjoint.plan(m.decoder)
    x = torch.poisson(3 * data(3)) if likelihood == "poisson" else data(3)
    z0 = torch.randn(3, LATENT, dtype=f64, requires_grad=True)
    rho0 = torch.randn(3, LATENT, dtype=f64)
    params = [t for lin in plan.layers for t in (lin.weight, lin.bias)]
    eps, beta0 = torch.tensor(0.3, dtype=f64), torch.tensor(0.4, dtype=f64)

    inputs = (z0, *(p.detach().clone().requires_grad_() for p in params))
    assert torch.autograd.gradcheck(
        lambda z0, *ps: flow_adjoint._Flow.apply(
            (plan, x, rho0, eps, beta0, 2, FlowMonitor(eps)), z0, *ps), inputs)


class LaplaceDecoder(aetk.decoders.Decoder):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, 8), nn.ReLU(), nn.Linear(8, F))

    def forward(self, z):
        return D.Independent(D.Laplace(self.net(z), 0.7), 1)


@pytest.mark.parametrize("case", ["gelu", "negative binomial", "user decoder", "hook",
                                  "learned step size", "conditional", "autocast"])
def test_other_decoders_and_settings_take_the_autograd_flow(case):
    """No written adjoint where it would not compute the same function: another
    activation, likelihood or decoder, a hook (it must run at every position), a learned
    step size (its gradient), a conditional network, autocast (its casts). The autograd
    flow trains them."""
    x, calls, c = data(), [], None
    if case == "gelu":
        m = model(activation="gelu")
    elif case == "negative binomial":
        m, x = model("negative_binomial"), torch.poisson(3 * data())
    elif case == "user decoder":
        m = aetk.HVAE(model().encoder, LaplaceDecoder().double())
    elif case == "hook":
        m = model()
        m.decoder.network[0].register_forward_hook(lambda *a: calls.append(1))
    elif case == "learned step size":
        m = model(learn_step_size=True)
    elif case == "conditional":
        m, c = model(n_conditions=2), torch.rand(B, 2, dtype=f64)
    elif case == "autocast":
        m = model().float()
        x = x.float()
    assert flow_adjoint.plan(m.decoder) is None or case in ("learned step size", "autocast")
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m.loss(x).loss
    elif c is None:
        loss = m.loss(x).loss
    else:
        with m.given(c):
            loss = m.loss(x).loss
    assert not takes_adjoint(loss)
    g = grads(m, loss)
    assert g and all(torch.isfinite(v).all() for v in g.values())
    if case == "hook":
        assert len(calls) == m.n_leapfrog + 1  # the decoder ran at each position


def test_a_diverging_flow_is_said_and_differentiating_twice_is_refused():
    m = model(step_size=50.0)
    with pytest.raises(FlowDiverged, match="smaller step_size"):
        m.loss(data())
    m = model()
    loss = m.loss(data()).loss
    assert takes_adjoint(loss)
    (g,) = torch.autograd.grad(loss, m.decoder.network[0].weight, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_a_frozen_part_leaves_the_others_gradients_exact(frozen):
    """With the encoder frozen (z_0 needs no gradient) or the decoder frozen (its weights
    need none), the gradients that remain equal the hand flow's; the frozen part gets none."""
    frozen_part_matches(model(activation="tanh", hidden=(8, 5)), data(), frozen)


def frozen_part_matches(m: aetk.HVAE, x: torch.Tensor, frozen: str,
                        node_type: str = "_FlowBackward") -> None:
    """With the model's `frozen` part frozen, its loss passes `node_type`, the gradients
    that remain equal the hand flow's to 1e-9, and the frozen part gets none."""
    getattr(m, frozen).requires_grad_(False)
    torch.manual_seed(4)
    loss = m.loss(x).loss
    assert passes(loss, node_type)
    got, want = grads(m, loss), grads(m, ref_loss(m, x, 4))
    assert got and set(got) == set(want)
    assert all(p.grad is None for p in getattr(m, frozen).parameters())
    for k in want:
        close(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The adjoint overwrites only its own rows: a second backward adds the same again."""
    m, x = model(activation="tanh", hidden=(8, 5)), data()
    loss = m.loss(x).loss
    loss.backward(retain_graph=True)
    once = {k: p.grad.clone() for k, p in m.named_parameters()}
    loss.backward()
    for k, p in m.named_parameters():
        close(p.grad, 2 * once[k], rtol=1e-14, err_msg=k)


def test_learned_sigma_clamped_at_its_bounds_has_the_clamps_gradients():
    """log sigma beyond `LOG_SIGMA_RANGE` for some values: the clamp passes no gradient
    there, in the force and in its adjoint, as autograd's."""
    m = model("gaussian_learned", "tanh", n_leapfrog=2, step_size=0.2, beta0=0.5)
    with torch.no_grad():
        m.decoder.network[-1].bias[F:F + 3] = 9.0  # three features' log sigma > 4
    matches_the_hand_flow(m, data())


def test_no_leapfrog_step_keeps_the_likelihoods_gradient():
    """K=0 (beta0=1): the flow is z_0 itself, and log p(x|z_0)'s gradient passes the
    adjoint at that one position."""
    matches_the_hand_flow(model("bernoulli", "tanh", (8, 5), n_leapfrog=0, beta0=1.0), data())
