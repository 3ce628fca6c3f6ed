"""The HVAE flow through a piecewise linear decoder from its Jacobian at z_0
(`aetk.flow_affine`), against the same float64 references as the adjoint: autograd of a
hand flow whose force is differentiated again, finite differences of the flow, and the rows
that leave z_0's activation region (taken by `flow_adjoint.flow`) merged row by row."""

import types

import pytest
import torch
from test_flow_adjoint import (
    LATENT,
    close,
    data,
    f64,
    frozen_part_matches,
    matches_the_hand_flow,
    model,
    passes,
)
from torch import nn

import aetk
from aetk import flow_adjoint, flow_affine
from aetk.hamiltonian import FlowDiverged, FlowMonitor


@pytest.fixture
def left(monkeypatch) -> list[int]:
    """The number of rows each call hands to `flow_adjoint.flow`."""
    calls, exact = [], flow_adjoint.flow

    def counted(plan, x, *args):
        calls.append(len(x))
        return exact(plan, x, *args)

    monkeypatch.setattr(flow_adjoint, "flow", counted)
    return calls


CASES = [("bernoulli", "relu", ()), ("bernoulli", "relu", (8,)),
         ("bernoulli", "leaky_relu", (8, 5)), ("gaussian", "relu", (8, 5)),
         ("poisson", "relu", (8, 5)), ("gaussian_learned", "relu", (8, 5))]


@pytest.mark.parametrize("likelihood,activation,hidden", CASES)
@pytest.mark.parametrize("rows", ["inside", "some leave"])
def test_loss_and_gradients_equal_autograd_of_the_hand_flow(likelihood, activation, hidden,
                                                            rows, left):
    """Every row inside z_0's region (step size 1e-3), and some rows leaving it (0.05, or
    0.01 where learned sigmas diverge the flow at 0.02; 12 rows): the loss to 1e-12 and
    every gradient to 1e-9 of the hand flow's."""
    step_size = 1e-3 if rows == "inside" else 0.01 if likelihood == "gaussian_learned" else 0.05
    m = model(likelihood, activation, hidden, n_leapfrog=3, step_size=step_size, beta0=0.5)
    x = data(12)
    x = torch.poisson(3 * x) if likelihood == "poisson" else x
    assert flow_affine.applies(flow_adjoint.plan(m.decoder), LATENT)
    matches_the_hand_flow(m, x, "_PathBackward")
    if rows == "inside" or not hidden:  # a linear decoder has one region
        assert left == []
    else:
        assert len(left) == 1 and 0 < left[0] < len(x)


def test_per_dimension_step_sizes_and_a_deeper_network(left):
    m = model("bernoulli", "relu", (8, 6, 5), n_leapfrog=4, step_size=[0.08, 0.03], beta0=0.4)
    matches_the_hand_flow(m, data(12), "_PathBackward")
    assert len(left) == 1 and 0 < left[0] < 12


def test_the_flow_passes_gradcheck(left):
    """Finite differences of z_K, rho_K and log p(x|z_K) in z_0 and every weight, with rows
    inside z_0's region and rows leaving it."""
    m = model("bernoulli", "leaky_relu", hidden=(4, 3))
    plan = flow_adjoint.plan(m.decoder)
    x, z0 = data(6), torch.randn(6, LATENT, dtype=f64, requires_grad=True)
    rho0 = torch.randn(6, LATENT, dtype=f64)
    eps, beta0 = torch.tensor(0.1, dtype=f64), torch.tensor(0.4, dtype=f64)
    params = [p.detach().clone().requires_grad_() for lin in plan.layers
              for p in (lin.weight, lin.bias)]

    def run(z0, *ps):
        layers = [types.SimpleNamespace(weight=w, bias=b)
                  for w, b in zip(ps[::2], ps[1::2], strict=True)]
        return flow_affine.flow(plan._replace(layers=layers), x, z0, rho0, eps, beta0, 2,
                                FlowMonitor(eps))

    run(z0, *params)
    assert 0 < left[0] < 6
    assert torch.autograd.gradcheck(run, (z0, *params))


def test_rows_that_leave_take_the_adjoints_values_exactly(left):
    """The merged values of every row equal `flow_adjoint.flow`'s for the whole batch."""
    m = model("gaussian", "relu", (8, 5))
    plan = flow_adjoint.plan(m.decoder)
    x, z0, rho0 = data(12), torch.randn(12, LATENT, dtype=f64), torch.randn(12, LATENT, dtype=f64)
    eps, beta0 = torch.tensor([0.05, 0.1], dtype=f64), torch.tensor(0.5, dtype=f64)
    ours = flow_affine.flow(plan, x, z0, rho0, eps, beta0, 3, FlowMonitor(eps))
    assert 0 < left[0] < 12
    theirs = flow_adjoint.flow(plan, x, z0, rho0, eps, beta0, 3, FlowMonitor(eps))
    for a, b in zip(ours, theirs, strict=True):
        close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_a_frozen_part_leaves_the_others_gradients_exact(frozen, left):
    m = model("bernoulli", "relu", hidden=(8, 5), step_size=0.05)
    frozen_part_matches(m, data(12), frozen, "_PathBackward")
    assert 0 < left[0] < 12


def test_a_diverging_flow_is_said():
    with pytest.raises(FlowDiverged, match="smaller step_size"):
        model(step_size=50.0).loss(data())


@pytest.mark.parametrize("case", ["latent 3", "tanh"])
def test_other_networks_take_the_adjoint(case):
    """A latent space of 3 dimensions (where the adjoint is faster) or a smooth activation
    (no linear regions)."""
    if case == "tanh":
        m = model(activation="tanh")
    else:
        torch.manual_seed(1)
        m = aetk.build_model("hvae", "bernoulli", in_features=6, latent_dim=3, hidden=(8,)).double()
    loss = m.loss(data()).loss
    assert passes(loss, "_FlowBackward") and not passes(loss, "_PathBackward")


def _leave(network: nn.Sequential, zs: list[torch.Tensor]) -> torch.Tensor:
    """The rows (B,) whose activation pattern at some position differs from that at the
    first, from the network evaluated at each position."""
    def pattern(z):
        signs, h = [], z
        for lin, act in zip(network[0::2], network[1::2], strict=False):
            p = lin(h)
            signs.append(p > 0)
            h = act(p)
        return torch.cat(signs, -1)

    start = pattern(zs[0])
    return torch.stack([(pattern(z) != start).any(-1) for z in zs[1:]]).any(0)


def test_the_rows_that_leave_z0s_region_are_those_the_network_says(left):
    """The rows handed to `flow_adjoint.flow` are those whose exact positions (its own)
    have another activation pattern than z_0's, at any hidden layer."""
    m = model("bernoulli", "relu", (8, 6, 5))
    plan = flow_adjoint.plan(m.decoder)
    g = torch.Generator().manual_seed(3)
    x, z0, rho0 = data(16), *torch.randn(2, 16, LATENT, generator=g, dtype=f64)
    eps, beta0 = torch.tensor([0.05, 0.02], dtype=f64), torch.tensor(0.4, dtype=f64)
    with torch.no_grad():
        flow_affine.flow(plan, x, z0, rho0, eps, beta0, 4, FlowMonitor(eps))
        exact = FlowMonitor(eps)
        flow_adjoint.flow(plan, x, z0, rho0, eps, beta0, 4, exact)
        want = int(_leave(m.decoder.network, [z for z, *_ in exact.points]).sum())
    assert 0 < want < 16 and left[0] == want


def test_a_flow_that_diverges_after_leaving_z0s_region_is_said():
    """The rows that leave z_0's region are held there (their points stay finite in the
    first monitor), so their divergence shows in their own flow's."""
    m = model("gaussian", "relu", (8, 5), step_size=2.0)
    plan = flow_adjoint.plan(m.decoder)
    g = torch.Generator().manual_seed(3)
    x, z0, rho0 = data(8), *torch.randn(2, 8, LATENT, generator=g, dtype=f64)
    eps, beta0 = torch.tensor(2.0, dtype=f64), torch.tensor(0.5, dtype=f64)
    first = FlowMonitor(eps)
    with pytest.raises(FlowDiverged, match="smaller step_size"):
        flow_affine.flow(plan, x, z0, rho0, eps, beta0, 3, first)
    first.check()


def test_no_leapfrog_step_keeps_the_likelihoods_gradient():
    m = model("bernoulli", "relu", (8, 5), n_leapfrog=0, beta0=1.0)
    matches_the_hand_flow(m, data(), "_PathBackward")
