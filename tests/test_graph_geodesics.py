"""Graph-initialised geodesics: shortest paths through a metric-weighted neighbourhood graph
(`aetk.geometry.graph_curves`) as the energy minimiser's start, against closed-form
lengths, and `aetk geodesics --init graph`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.datasets import load_digits

import aetk
from aetk import cli, storage
from aetk.geometry import (
    Metric,
    PullbackMetric,
    curve_length,
    distance_matrix,
    fit_geodesics,
    graph_curves,
    metric_for,
)
from aetk.geometry import fit as fit_module
from aetk.geometry.metrics import grid_points

from helpers import digits, half_plane_pairs, hyperbolic_distance, poincare

torch.set_num_threads(1)

# conformal metric G = f(z)^2 I with f = 1 + A exp(-(|z| / R)^P): a steep, smooth disc of
# height about A and radius about R between the endpoints (-a, 0) and (a, 0)
A, P, R, a = 20.0, 100, 1.0, 2.0
OBSTACLE = Metric(lambda z: ((1 + A * torch.exp(-(z.norm(dim=-1) / R) ** P)) ** 2)[:, None, None]
                  * torch.eye(2, dtype=z.dtype))


def detour(r: float) -> float:
    """The shortest Euclidean path from (-a, 0) to (a, 0) around the disc of radius r:
    two tangents and the arc between them."""
    return 2 * math.sqrt(a**2 - r**2) + r * (math.pi - 2 * math.acos(r / a))


def radius_where(f_minus_1: float) -> float:
    """The radius at which f = 1 + f_minus_1 (f falls with the radius)."""
    return R * math.log(A / f_minus_1) ** (1 / P)


def grid(bounds: tuple, n: tuple) -> torch.Tensor:
    return grid_points(OBSTACLE, bounds, n, "test")[2].double()


def test_graph_start_goes_around_a_ridge_the_line_cannot_cross() -> None:
    """The straight line is a symmetric saddle: its fit stays on it (y = 0 exactly) and
    pays the obstacle. The graph start goes around, and its fit lies in the bracket of the
    true distance: at least detour(r_lo), where f >= pi / 2 inside r_lo (a path through
    the disc then pays more than the arc it replaces, at most pi / 2 of its chord), and at
    most f(r_hi) detour(r_hi), a path around the circle r_hi where f <= 1 + 1e-4. The
    bracket is 0.3 % wide. Slack: 1e-3 below, as the discrete curve's chords (31 of
    length ~0.15) cut the arc by h^2 / 8 and shorten it by theta^2 / 24 ~ 1e-3 of its
    length; 1e-4 above for the optimiser's tolerance (a polygon with its vertices on the
    circle r_hi is a discrete competitor, so the discrete optimum obeys the upper bound)."""
    z0 = torch.tensor([[-a, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[a, 0.0]], dtype=torch.float64)
    nodes = grid(((-2.5, 2.5), (-2.0, 2.0)), (21, 17))
    graph = graph_curves(OBSTACLE, z0, z1, nodes, k=8, n_points=32)
    assert graph.found.all() and graph.points.shape == (1, 32, 2)
    assert torch.equal(graph.points[:, 0], z0) and torch.equal(graph.points[:, -1], z1)

    line = fit_geodesics(OBSTACLE, z0, z1, n_points=32)
    assert line.points[..., 1].abs().max() == 0 and line.converged.all()
    lower, upper = detour(radius_where(math.pi / 2 - 1)), (1 + 1e-4) * detour(radius_where(1e-4))
    assert line.length.item() > 5 * upper  # stuck on the ridge

    fit = fit_geodesics(OBSTACLE, z0, z1, n_points=32, init="graph", nodes=nodes, graph_k=8)
    assert lower * (1 - 1e-3) <= fit.length.item() <= upper * (1 + 1e-4), (lower, upper)
    assert fit.converged.all() and not fit.fell_back.any() and not fit.kept_init.any()
    assert fit.length.item() < fit.init_length.item() <= graph.length.item() * 1.01
    # around the disc: no point inside the radius where f reaches pi / 2
    assert fit.points.norm(dim=-1).min() > radius_where(math.pi / 2 - 1) * (1 - 0.01)
    assert fit.points[..., 1].abs().max() > 0.9 * R


def test_hyperbolic_half_plane() -> None:
    """The graph path's length bounds the hyperbolic distance from above (the trapezoid
    rule overestimates each edge: the speed 1 / y along a segment is convex), and the
    fit from it is within 1 % of arccosh(1 + |z1 - z0|^2 / (2 y0 y1))."""
    metric = poincare()
    z0, z1 = half_plane_pairs()
    exact = hyperbolic_distance(z0, z1)
    nodes = grid_points(metric, ((-2.5, 2.5), (0.1, 3.5)), (21, 18), "test")[2].double()
    graph = graph_curves(metric, z0, z1, nodes, k=8, n_points=32)
    assert graph.found.all() and (graph.length >= exact).all()
    assert (graph.length < 1.1 * exact).all()
    # (0, 1) to (0, 3) runs up the grid's column x = 0, resampled at equal steps of the
    # mean of the hyperbolic and Euclidean arc fractions, log(y) / log(3) and (y - 1) / 2
    # (to 2e-3: the edges' trapezoid lengths, 0.2 long)
    s = torch.linspace(0, 1, 32, dtype=torch.float64)
    assert (graph.points[3, :, 0] == 0).all()
    y = graph.points[3, :, 1]
    torch.testing.assert_close((y.log() / math.log(3) + (y - 1) / 2) / 2, s, rtol=0, atol=2e-3)
    fit = fit_geodesics(metric, z0, z1, n_points=32, init=graph.points)
    torch.testing.assert_close(fit.length, exact, rtol=1e-2, atol=0)
    assert (fit.length <= fit.init_length).all() and fit.converged.all()
    # distance_matrix passes the graph start on (nodes include its points)
    z = torch.cat([z0[:2], z1[:1]])
    dist = distance_matrix(metric, z, n_points=32, init="graph", nodes=nodes, graph_k=8)
    i, j = torch.triu_indices(3, 3, offset=1)
    torch.testing.assert_close(dist[i, j], hyperbolic_distance(z[i], z[j]), rtol=1e-2, atol=0)
    with pytest.raises(ValueError, match="init='graph' needs nodes"):
        distance_matrix(metric, z, init="graph")


def test_flat_metrics() -> None:
    """Euclidean coordinates: a graph path is no shorter than the straight line, and the
    fit from it returns the line's length. Polar coordinates G = diag(1, r^2), where the
    straight coordinate line is 10-17 % too long: the fit from the graph start reaches
    the same discrete geodesic as the fit from the line (1e-6) and the Cartesian distance
    to the discretisation error (O(h^2), 2.3e-4 at 32 points: tolerance 1e-3)."""
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    gen = torch.Generator().manual_seed(0)
    nodes = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 4 - 2
    z0, z1 = torch.tensor([[-1.5, -1.0], [0.3, 1.2]]), torch.tensor([[1.2, 1.4], [-0.4, -1.1]])
    z0, z1 = z0.double(), z1.double()
    euclid = (z1 - z0).norm(dim=-1)
    graph = graph_curves(eye, z0, z1, nodes, k=6, n_points=32)
    assert (graph.length >= euclid).all() and (graph.length > 1.01 * euclid).any()
    fit = fit_geodesics(eye, z0, z1, n_points=32, init=graph.points)
    # the optimiser's own curve, not the straight line put back in its place
    assert not (fit.fell_back | fit.kept_init).any()
    torch.testing.assert_close(fit.length, euclid, rtol=1e-6, atol=0)

    polar = Metric(lambda z: torch.diag_embed(torch.stack([torch.ones_like(z[:, 0]),
                                                           z[:, 0] ** 2], -1)))
    z0 = torch.tensor([[1.0, 0.0], [1.5, -0.5], [2.0, 1.0]], dtype=torch.float64)
    z1 = torch.tensor([[2.0, 1.2], [1.0, 1.0], [0.8, -0.6]], dtype=torch.float64)

    def cartesian(z: torch.Tensor) -> torch.Tensor:
        return z[:, :1] * torch.stack([z[:, 1].cos(), z[:, 1].sin()], -1)

    distance = (cartesian(z1) - cartesian(z0)).norm(dim=-1)
    nodes = grid_points(polar, ((0.5, 2.5), (-1.0, 1.5)), (15, 15), "test")[2].double()
    graph = graph_curves(polar, z0, z1, nodes, k=8, n_points=32)
    assert (graph.length >= distance).all()
    from_graph = fit_geodesics(polar, z0, z1, n_points=32, init=graph.points, tol=1e-8)
    from_line = fit_geodesics(polar, z0, z1, n_points=32, tol=1e-8)
    assert (from_line.line_length > 1.05 * distance).all()
    assert not (from_graph.fell_back | from_graph.kept_init).any()
    torch.testing.assert_close(from_graph.length, from_line.length, rtol=1e-6, atol=0)
    torch.testing.assert_close(from_graph.length, distance, rtol=1e-3, atol=0)


def _two_clusters() -> torch.Tensor:
    """Twelve nodes: six random points in the unit square, and the same six 10 to the right."""
    gen = torch.Generator().manual_seed(1)
    cluster = torch.rand(6, 2, generator=gen, dtype=torch.float64)
    return torch.cat([cluster, cluster + torch.tensor([10.0, 0.0], dtype=torch.float64)])


def test_pairs_the_graph_does_not_join_get_the_straight_line() -> None:
    """Two clusters 10 apart, 2 neighbours each: no edge between them."""
    nodes = _two_clusters()
    z0 = torch.tensor([[0.5, 0.5], [0.2, 0.2]], dtype=torch.float64)
    z1 = torch.tensor([[10.5, 0.5], [0.9, 0.8]], dtype=torch.float64)
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    graph = graph_curves(eye, z0, z1, nodes, k=2, n_points=5)
    assert graph.found.tolist() == [False, True]
    assert graph.length[0] == math.inf and math.isfinite(graph.length[1])
    s = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(graph.points[0], (1 - s) * z0[0] + s * z1[0])
    fit = fit_geodesics(eye, z0, z1, n_points=5, init="graph", nodes=nodes, graph_k=2)
    torch.testing.assert_close(fit.init_length[0], fit.line_length[0])
    # the resampled path's points lie on the graph path: its chords are no longer
    assert fit.init_length[1] <= graph.length[1] * (1 + 1e-12)


def test_a_pairs_path_does_not_depend_on_the_other_pairs() -> None:
    """The endpoints were vertices like the nodes: the other pairs' endpoints took the
    nodes' neighbour slots and bridged gaps. Two clusters 10 apart, 2 neighbours each: the
    pair from one to the other was joined in a batch with a pair between them (through
    its endpoints), not alone. On a ReLU VAE's pull-back (digits), 24 of 30 pairs' graph
    paths differed alone and in the batch, by up to 16 %, and the fits from them by up to
    0.3 %; now each path, and the fit from it, is the same alone as in any batch."""
    nodes = _two_clusters()
    z0 = torch.tensor([[0.5, 0.5], [4.0, 0.5]], dtype=torch.float64)
    z1 = torch.tensor([[10.5, 0.5], [7.0, 0.5]], dtype=torch.float64)
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    both = graph_curves(eye, z0, z1, nodes, k=2, n_points=5)
    alone = graph_curves(eye, z0[:1], z1[:1], nodes, k=2, n_points=5)
    assert alone.found.tolist() == [False] and both.found.tolist() == [False, True]

    metric = relu_pullback(0)
    g = torch.Generator().manual_seed(0)
    nodes, z0, z1 = (1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
                     for n in (300, 12, 12))
    batch = graph_curves(metric, z0, z1, nodes, k=10, n_points=16)
    fit = fit_geodesics(metric, z0, z1, n_points=16, init="graph", nodes=nodes)
    for i in range(len(z0)):
        one = graph_curves(metric, z0[i:i + 1], z1[i:i + 1], nodes, k=10, n_points=16)
        assert torch.equal(one.points[0], batch.points[i]) and one.length == batch.length[i]
        single = fit_geodesics(metric, z0[i:i + 1], z1[i:i + 1], n_points=16, init="graph",
                               nodes=nodes)
        assert torch.equal(single.points[0], fit.points[i])


def test_resampled_paths_keep_to_the_graph_path() -> None:
    """The start is the graph path resampled, not a shortcut: next to the disc, a costly
    ring (f up to 200) around the start point crowds metric arc length there. Resampled at
    equal metric arc length alone, 14 of 16 points fell inside the ring and the last chord
    ran straight through the disc (length 100 on a 4,000-point refinement, against the
    path's 61). Measured on such a refinement, the start's length must be the path's."""
    def f(z: torch.Tensor) -> torch.Tensor:
        ring = 200 * torch.exp(-((z - torch.tensor([-a, 0.0], dtype=z.dtype)).norm(dim=-1)
                                 / 0.3) ** 8)
        return 1 + A * torch.exp(-(z.norm(dim=-1) / R) ** P) + ring

    metric = Metric(lambda z: (f(z) ** 2)[:, None, None] * torch.eye(2, dtype=z.dtype))
    z0, z1 = (torch.tensor([[x, 0.0]], dtype=torch.float64) for x in (-a, a))
    nodes = grid_points(metric, ((-2.5, 2.5), (-2.0, 2.0)), (41, 33), "test")[2].double()
    graph = graph_curves(metric, z0, z1, nodes, k=8, n_points=16)
    fine = torch.nn.functional.interpolate(graph.points.transpose(1, 2), size=4000,
                                           mode="linear", align_corners=True).transpose(1, 2)
    torch.testing.assert_close(curve_length(metric, fine), graph.length, rtol=0.01, atol=0)

    # a metric that vanishes between the endpoints (a decoder constant there): the path is
    # all zero-length edges, and its points stay spread along it, not piled at one end
    flat = Metric(lambda z: (z[:, 0].abs() > 0.5).to(z.dtype)[:, None, None]
                  * torch.eye(2, dtype=z.dtype))
    nodes = torch.tensor([[-0.4, 0.0], [-0.2, 0.0], [0.0, 0.0], [0.2, 0.0], [0.4, 0.0]],
                         dtype=torch.float64)
    zero = graph_curves(flat, torch.tensor([[-0.45, 0.0]], dtype=torch.float64),
                        torch.tensor([[0.45, 0.0]], dtype=torch.float64), nodes, k=2,
                        n_points=5)
    assert zero.length.item() == 0
    torch.testing.assert_close(zero.points[0, :, 0],
                               torch.linspace(-0.45, 0.45, 5, dtype=torch.float64))


def test_endpoints_within_the_larger_reach_are_joined_directly() -> None:
    """A pair's direct edge needs the gap within the larger of its endpoints' reaches
    (distances to their k-th nearest node): from (0, 0), whose 3 nodes lie within 0.15
    below it, to (0, 1), which reaches them at 1.15, the gap 1 is within 1.15 though not
    0.15. The path is that edge, of length 1 in the flat metric; within the smaller reach
    only, it went through a node, sqrt(0.02) + sqrt(1.22) = 1.246."""
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    nodes = torch.tensor([[0.1, -0.1], [-0.1, -0.1], [0.0, -0.15]], dtype=torch.float64)
    z0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    graph = graph_curves(eye, z0, z1, nodes, k=3, n_points=5)
    assert graph.found.tolist() == [True]
    torch.testing.assert_close(graph.length, torch.ones(1, dtype=torch.float64))
    s = torch.linspace(0, 1, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(graph.points[0], (1 - s) * z0[0] + s * z1[0])


def test_edge_lengths_and_resampling_by_hand() -> None:
    """Conformal f(z) = 1 + z1^2 on the points 0, 0.5, 1 of the z1-axis: each edge's length
    is the trapezoid rule of f over its `subdivisions` pieces, a path's the sum over its
    edges; the middle of 3 points sits where the mean of the metric and Euclidean arc
    fractions is 1/2. Two pairs of different sources, one of them backwards."""
    metric = Metric(lambda z: ((1 + z[:, 0] ** 2) ** 2)[:, None, None]
                    * torch.eye(2, dtype=z.dtype))

    def edge(u: float, v: float, n: int = 3) -> float:
        f = 1 + np.linspace(u, v, n + 1) ** 2
        return abs(v - u) / n * (f[:-1] + f[1:]).sum() / 2

    z0 = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[1.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    graph = graph_curves(metric, z0, z1, torch.tensor([[0.5, 0.0]], dtype=torch.float64),
                         k=1, n_points=3, subdivisions=3)
    first, second = edge(0, 0.5), edge(0.5, 1)
    torch.testing.assert_close(graph.length, torch.tensor([first + second, second],
                                                          dtype=torch.float64))
    # arc fractions (metric + Euclidean) at 0, 0.5, 1 are 0, a, 2: the middle, at 1, lies
    # on the second edge
    a = first / (first + second) + 0.5
    middle = torch.tensor([[0.5 + 0.5 * (1 - a) / (2 - a), 0.0], [0.75, 0.0]],
                          dtype=torch.float64)
    torch.testing.assert_close(graph.points[:, 1], middle)
    torch.testing.assert_close(graph.points[:, 0], z0, rtol=0, atol=0)
    torch.testing.assert_close(graph.points[:, 2], z1, rtol=0, atol=0)


def test_equal_endpoints_and_coinciding_nodes() -> None:
    """A pair from a point to itself is a constant curve of length zero; nodes at the
    endpoints (duplicate vertices) change nothing."""
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    graph = graph_curves(eye, z, z.flip(0), torch.cat([z, z]), k=1, n_points=4)
    torch.testing.assert_close(graph.length, torch.ones(2, dtype=torch.float64))
    same = graph_curves(eye, z[:1], z[:1], z, k=3, n_points=4)
    assert same.length.item() == 0 and (same.points == z[0]).all()


def test_graph_shows_progress_over_its_edges(capsys: pytest.CaptureFixture) -> None:
    """progress=True: a bar over the edges whose metric lengths are computed (none by
    default), the same paths either way."""
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    nodes = torch.rand(30, 2, generator=torch.Generator().manual_seed(0))
    z0, z1 = torch.zeros(2, 2), torch.ones(2, 2)
    quiet = graph_curves(eye, z0, z1, nodes, k=3, n_points=5, chunk_size=16)
    assert capsys.readouterr().err == ""
    shown = graph_curves(eye, z0, z1, nodes, k=3, n_points=5, chunk_size=16, progress=True)
    err = capsys.readouterr().err
    n = int(re.search(r"graph edges: 100%\S* (\d+)/(\d+)", err).group(1))
    assert n > 30 and f"{n}/{n}" in err, err
    torch.testing.assert_close(shown.points, quiet.points)


def test_bad_inputs() -> None:
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    z0, z1, nodes = torch.zeros(2, 2), torch.ones(2, 2), torch.rand(10, 2)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        graph_curves(eye, z0, z1, nodes, k=0)
    with pytest.raises(ValueError, match=r"nodes must be \(M, 2\)"):
        graph_curves(eye, z0, z1, torch.rand(10, 3))
    with pytest.raises(ValueError, match="nodes must be finite"):
        graph_curves(eye, z0, z1, torch.cat([nodes, torch.tensor([[math.nan, 0.0]])]))
    with pytest.raises(ValueError, match=r"z_start \(2, 2\) and z_end \(3, 2\) differ"):
        graph_curves(eye, z0, torch.ones(3, 2), nodes)
    # pairs (2, 4, d) were flattened to 8 rows: 8 lengths for a (2, 4) question
    for fit in (lambda a, b: graph_curves(eye, a, b, nodes), lambda a, b: fit_geodesics(eye, a, b)):
        with pytest.raises(ValueError, match=r"z_start must be one point \(d,\) or rows of "
                                             r"points \(B, d\), got \(2, 4, 2\)"):
            fit(torch.zeros(2, 4, 2), torch.ones(2, 4, 2))
        with pytest.raises(ValueError, match=r"z_end must be .* got \(1, 1, 2\)"):
            fit(torch.zeros(2), torch.ones(1, 1, 2))
    three_d = Metric(eye._fn)
    three_d.model = SimpleNamespace(latent_dim=3)  # what latent_dim reads off a model
    with pytest.raises(ValueError, match="the metric's latent space has 3"):
        graph_curves(three_d, z0, z1, nodes)

    line = torch.linspace(0, 1, 6)[:, None].expand(6, 2).unsqueeze(0).expand(2, -1, -1)
    fit_geodesics(eye, z0, z1, n_points=6, init=line, max_iter=2)  # accepted as it is
    with pytest.raises(ValueError, match="init's first points must be z_start"):
        fit_geodesics(eye, z0 + 0.1, z1, n_points=6, init=line)
    with pytest.raises(ValueError, match="init's last points must be z_end"):
        fit_geodesics(eye, z0, z1 * 2, n_points=6, init=line)
    with pytest.raises(ValueError, match=r"init must be curves of shape \(2, 8, 2\)"):
        fit_geodesics(eye, z0, z1, n_points=8, init=line)
    with pytest.raises(ValueError, match="init applies to discrete curves"):
        fit_geodesics(eye, z0, z1, n_points=6, init=line, curve="neural")
    with pytest.raises(ValueError, match="init='graph' needs nodes"):
        fit_geodesics(eye, z0, z1, init="graph")
    with pytest.raises(ValueError, match="pass init='graph' with them"):
        fit_geodesics(eye, z0, z1, nodes=nodes)
    with pytest.raises(ValueError, match="also_line fits from the line besides a given"):
        fit_geodesics(eye, z0, z1, also_line=True)
    with pytest.raises(ValueError, match="init must be None, 'line', 'graph'"):
        fit_geodesics(eye, z0, z1, init="grid")


def relu_pullback(seed: int) -> Metric:
    """The pull-back of a random 2-32-32-12 ReLU network's Gaussian mean: a rough metric,
    piecewise constant between the network's linear regions."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 12)).double()
    return PullbackMetric(lambda z: torch.distributions.Independent(
        torch.distributions.Normal(net(z), 1.0), 1))


def test_also_line_keeps_the_shorter_fit_of_each_pair() -> None:
    """On a rough pull-back the line's and the graph's starts reach different local minima,
    each the shorter for some pairs (here 3 and 3 of 20, by 1-3 %); `also_line` returns,
    pair by pair, the shorter of the two separate fits, and says which (`from_init`)."""
    metric = relu_pullback(0)
    g = torch.Generator().manual_seed(3)
    nodes, z0, z1 = (1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
                     for n in (400, 20, 20))
    line = fit_geodesics(metric, z0, z1, n_points=24)
    graph = fit_geodesics(metric, z0, z1, n_points=24, init="graph", nodes=nodes)
    both = fit_geodesics(metric, z0, z1, n_points=24, init="graph", nodes=nodes,
                         also_line=True)
    ratio = graph.length / line.length
    assert int((ratio < 0.99).sum()) >= 2 and int((ratio > 1.01).sum()) >= 2
    torch.testing.assert_close(both.length, torch.minimum(line.length, graph.length),
                               rtol=1e-9, atol=0)
    assert torch.equal(both.from_init, graph.length < line.length)
    chosen = torch.where(both.from_init[:, None, None], graph.points, line.points)
    torch.testing.assert_close(both.points, chosen, rtol=0, atol=1e-9)
    torch.testing.assert_close(both.length, curve_length(metric, both.points), rtol=1e-9,
                               atol=0)
    torch.testing.assert_close(both.init_length,
                               torch.where(both.from_init, graph.init_length, line.line_length))
    assert torch.equal(both.fell_back, torch.where(both.from_init, graph.fell_back,
                                                   line.fell_back))
    assert not both.kept_init[~both.from_init].any()


def test_never_longer_than_the_line_or_the_initial_curve(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """An optimiser that makes things worse (every curve pushed 5 up): the initial curve
    comes back where it beats the line (`kept_init`), the line where it does not."""
    def worse(fn, x, **kwargs):
        x = x.clone()
        x[:, 1::2] += 5
        return x, torch.zeros(len(x), dtype=torch.bool), torch.ones(len(x), dtype=torch.long)

    monkeypatch.setattr(fit_module, "_lbfgs", worse)
    z0 = torch.tensor([[-a, 0.0], [-a, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[a, 0.0], [a, 0.0]], dtype=torch.float64)
    s = torch.linspace(0, 1, 32, dtype=torch.float64)
    # over the disc (shorter than the line through it), and far around it (longer)
    init = torch.stack([torch.stack([-a * torch.cos(math.pi * s), h * torch.sin(math.pi * s)],
                                    -1) for h in (1.5, 40.0)])
    fit = fit_geodesics(OBSTACLE, z0, z1, n_points=32, init=init)
    assert fit.kept_init.tolist() == [True, False] and fit.fell_back.tolist() == [False, True]
    torch.testing.assert_close(fit.points[0], init[0])
    torch.testing.assert_close(fit.length, torch.stack([fit.init_length[0],
                                                        fit.line_length[1]]))
    assert fit.init_length[0] < fit.line_length[0] < fit.init_length[1]

    # a start that is the line itself (the graph did not join the pair): the line came
    # back, and that is what the flags say
    eye = Metric(lambda z: torch.eye(2, dtype=z.dtype).expand(len(z), 2, 2))
    line = fit_geodesics(eye, z0[:1], z1[:1], n_points=32, init=fit_module._line(
        z0[:1], z1[:1], s))
    assert line.fell_back.tolist() == [True] and line.kept_init.tolist() == [False]
    assert line.length.item() == line.line_length.item() == 2 * a
    # a NaN fit is never returned
    monkeypatch.setattr(fit_module, "_lbfgs", lambda fn, x, **kwargs: (
        torch.full_like(x, math.nan), torch.zeros(len(x), dtype=torch.bool),
        torch.ones(len(x), dtype=torch.long)))
    nan = fit_geodesics(OBSTACLE, z0, z1, n_points=32, init=init)
    assert nan.kept_init.tolist() == [True, False] and nan.fell_back.tolist() == [False, True]
    assert nan.length.isfinite().all()
    assert fit_geodesics(OBSTACLE, z0, z1, n_points=32).fell_back.all()


@pytest.fixture(scope="module")
def rhvae_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A small RHVAE (one epoch on 240 digits) and a latent store of its codes, written by
    hand: what `aetk geodesics` reads."""
    d = tmp_path_factory.mktemp("graph_cli")
    torch.manual_seed(0)
    x, _ = digits(n=240)
    labels = load_digits().target[:240]
    model = aetk.build_model("rhvae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,),
                             centroids=16)
    aetk.fit(model, x, epochs=1, batch_size=32, seed=0, progress=False, device="cpu")
    model.save(d / "model")
    with torch.no_grad():
        z = model.encode(x).mean.numpy()
    split = (np.arange(240) % 4 == 0).astype(np.int8)  # a quarter for validation
    ds = xr.Dataset({"z_mean": (("sample", "latent"), z), "split": (("sample",), split),
                     "label": (("sample",), labels)},
                    coords={"sample": np.arange(240), "latent": np.arange(2)},
                    attrs={"label_kind": "categorical"})
    storage.write_zarr(ds, d / "latent.zarr")
    return d, z


def test_cli_graph_start(rhvae_run: tuple[Path, np.ndarray], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--init graph`: the store holds the graph paths' lengths, computed on all the codes,
    and the fits started from them; with more codes than GRAPH_NODES a seeded subset."""
    d, z = rhvae_run
    common = ["geodesics", "--model", str(d / "model"), "--latent", str(d / "latent.zarr"),
              "--n-pairs", "4", "--n-points", "10", "--grid-size", "3", "--spray", "0",
              "--device", "cpu"]  # where the in-process references fit
    assert cli.main([*common, "--init", "graph", "--graph-neighbours", "6",
                     "--out", str(tmp_path / "geo.zarr")]) == 0
    geo = storage.read_zarr(tmp_path / "geo.zarr")
    settings = geo.attrs["settings"]
    assert (settings["init"], settings["graph_neighbours"], settings["graph_nodes"]) == (
        "graph", 6, 240)
    start, end = geo["start_index"].values, geo["end_index"].values
    metric = metric_for(aetk.load(d / "model"))
    z0, z1 = torch.from_numpy(z[start]), torch.from_numpy(z[end])
    graph = graph_curves(metric, z0, z1, torch.from_numpy(z), k=6, n_points=10)
    np.testing.assert_allclose(geo["graph_length"].values, graph.length.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(geo["graph_found"].values, graph.found.numpy())
    fit = fit_geodesics(metric, z0, z1, n_points=10, init=graph.points)
    np.testing.assert_allclose(geo["points"].values, fit.points.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(geo["kept_init"].values, fit.kept_init.numpy())
    assert (geo["length"] <= geo["line_length"]).all()

    monkeypatch.setattr("aetk.cli.geodesics.GRAPH_NODES", 50)
    assert cli.main([*common, "--init", "graph", "--out", str(tmp_path / "few.zarr")]) == 0
    few = storage.read_zarr(tmp_path / "few.zarr")
    assert few.attrs["settings"]["graph_nodes"] == 50
    assert (few["graph_length"] != geo["graph_length"]).any()

    assert cli.main([*common, "--init", "line", "--out", str(tmp_path / "line.zarr")]) == 0
    line = storage.read_zarr(tmp_path / "line.zarr")
    assert line.attrs["settings"]["init"] == "line" and "graph_length" not in line
    assert "graph_neighbours" not in line.attrs["settings"]
    assert "from_graph" not in line and "from_graph" not in geo

    # both starts (the graph still of GRAPH_NODES = 50 codes, as `few`'s): each pair's
    # shorter fit, and which start gave it
    assert cli.main([*common, "--init", "both", "--out", str(tmp_path / "both.zarr")]) == 0
    both = storage.read_zarr(tmp_path / "both.zarr")
    assert both.attrs["settings"]["init"] == "both"
    np.testing.assert_allclose(both["graph_length"].values, few["graph_length"].values)
    np.testing.assert_allclose(both["length"].values,
                               np.minimum(few["length"].values, line["length"].values),
                               rtol=1e-5)
    apart = np.abs(few["length"].values / line["length"].values - 1) > 1e-4  # no near-ties
    np.testing.assert_array_equal(both["from_graph"].values[apart],
                                  (few["length"].values < line["length"].values)[apart])


def test_cli_refuses_a_graph_without_neighbours(rhvae_run: tuple[Path, np.ndarray],
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    d, _ = rhvae_run
    out = tmp_path / "geo.zarr"
    with pytest.raises(SystemExit) as stop:  # refused while parsing, as every count option
        cli.main(["geodesics", "--model", str(d / "model"), "--latent",
                  str(d / "latent.zarr"), "--init", "graph", "--graph-neighbours", "0",
                  "--out", str(out)])
    assert stop.value.code == 2
    assert ("argument --graph-neighbours: must be an integer >= 1, got '0'"
            in capsys.readouterr().err)
    assert not out.exists()
