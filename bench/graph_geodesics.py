"""Does starting geodesic fits from shortest graph paths find shorter curves than starting
from the straight line, on a real RHVAE metric or a decoder's pull-back, and what does it
cost? A bundled data set (`--data digits`: scikit-learn's 1,797 8 x 8 digits / 16;
`mnist5k`: the pipeline's default, MNIST 5k binarised at 0.5), a seeded 90/10 split, an
RHVAE with a Bernoulli decoder as the pipeline builds it (latent 2, 256-256 MLPs, 64
centroids; its own metric), or with `--model vae` a VAE and its decoder's pull-back metric
(`--activation`: ReLU's pull-back is rough, tanh's smooth), `--epochs` epochs of Adam.
Geodesics (`--points` points, defaults otherwise) between `--pairs` random pairs of
validation codes of different digits, from the straight line and from the graph start
(`aetk.geometry.graph_curves`: the `--neighbours`-nearest-neighbour graph of the training
codes, at most `--max-nodes` of them, as `aetk geodesics --init graph` builds it). Prints,
per pair, the relative length reduction `1 - L_graph / L_line` of the graph start's result
over the line start's (median, max, the fraction of pairs shorter by more than 1 %, and by
how much where the line start was the shorter), both starts' mean length over the straight
line's, their fits' convergence and iterations, how many graph paths were found and kept,
and the seconds to build the graph and for each fit; and the same for `also_line=True`,
which fits from both starts and keeps each pair's shorter result.

Usage: python bench/graph_geodesics.py [--data digits] [--model rhvae] [--activation relu]
       [--epochs 20] [--pairs 100]
       [--points 32] [--neighbours 10] [--max-nodes 4000] [--threads 1] [--seed 0]
"""

import argparse
import time

import numpy as np
import torch

import aetk
from aetk.data import load_bundled
from aetk.geometry import GeodesicResult, fit_geodesics, graph_curves, metric_for


def codes(name: str, kind: str, activation: str, epochs: int, seed: int
          ) -> tuple[aetk.Model, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """A trained model, its training and validation codes, the validation labels and the
    training seconds."""
    raw = load_bundled(name)
    x = torch.as_tensor(raw.x, dtype=torch.float32)
    x = x / 16.0 if name == "digits" else (x > 127.5).float()
    labels = torch.as_tensor(raw.labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = len(x) // 10
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    model = aetk.build_model(kind, "bernoulli", in_features=x.shape[1], latent_dim=2,
                             hidden=(256, 256), activation=activation)
    start = time.perf_counter()
    aetk.fit(model, x[train], epochs=epochs, batch_size=128, seed=seed, progress=False,
             device="cpu")
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        z = model.encode(x).mean
    return model, z[train], z[val], labels[val], seconds


def fit_row(name: str, res: GeodesicResult, seconds: float) -> str:
    ratio = (res.length / res.line_length).mean().item()
    return (f"| {name} | {seconds:.2f} | {ratio:.4f} | {res.converged.float().mean().item():.2f} "
            f"| {res.iterations.float().mean().item():.1f} | {int(res.fell_back.sum())} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=("digits", "mnist5k"), default="digits")
    ap.add_argument("--model", choices=("rhvae", "vae"), default="rhvae")
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--points", type=int, default=32)
    ap.add_argument("--neighbours", type=int, default=10)
    ap.add_argument("--max-nodes", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, z_train, z_val, y_val, train_s = codes(args.data, args.model, args.activation,
                                                    args.epochs, args.seed)
    metric = metric_for(model)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.data}: "
          f"{args.model} ({args.activation}) trained {args.epochs} epochs on {len(z_train)} "
          f"images in {train_s:.0f} s; "
          f"{args.pairs} validation pairs, {args.points} points per curve")

    rng = np.random.default_rng(args.seed)
    i, j = rng.integers(len(z_val), size=(2, 20 * args.pairs))
    keep = np.flatnonzero(y_val[i].numpy() != y_val[j].numpy())[:args.pairs]
    z0, z1 = z_val[i[keep]], z_val[j[keep]]
    nodes = z_train
    if len(nodes) > args.max_nodes:
        nodes = nodes[np.sort(rng.choice(len(nodes), args.max_nodes, replace=False))]

    start = time.perf_counter()
    line = fit_geodesics(metric, z0, z1, n_points=args.points)
    line_s = time.perf_counter() - start
    start = time.perf_counter()
    graph = graph_curves(metric, z0, z1, nodes, k=args.neighbours, n_points=args.points)
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    fit = fit_geodesics(metric, z0, z1, n_points=args.points, init=graph.points)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    both = fit_geodesics(metric, z0, z1, n_points=args.points, init=graph.points,
                         also_line=True)
    both_s = time.perf_counter() - start

    gain = 1 - fit.length / line.length
    print(f"graph of {len(nodes)} training codes and the endpoints, k = {args.neighbours}: "
          f"built and searched in {graph_s:.2f} s, {int(graph.found.sum())}/{len(z0)} pairs "
          f"joined")
    print("| start | fit s | mean L / L_line | converged | mean iterations | fell back |")
    print("|---|---|---|---|---|---|")
    print(fit_row("straight line", line, line_s))
    print(fit_row("graph", fit, fit_s))
    print(fit_row("both (also_line)", both, both_s))
    print(f"graph start vs line start, 1 - L_graph / L_line: median {gain.median().item():.4f},"
          f" max {gain.max().item():.4f}; shorter by > 1 %: "
          f"{(gain > 0.01).float().mean().item():.2f} of the pairs; longer by > 1 %: "
          f"{(gain < -0.01).float().mean().item():.2f} (worst {gain.min().item():.4f}); "
          f"initial graph curve kept: {int(fit.kept_init.sum())}; graph path / fitted length "
          f"median {(graph.length / fit.length).median().item():.3f}")
    gain = 1 - both.length / line.length
    print(f"both starts vs line start: median {gain.median().item():.4f}, max "
          f"{gain.max().item():.4f}; shorter by > 1 %: {(gain > 0.01).float().mean().item():.2f}"
          f" of the pairs; the graph start's result kept for "
          f"{int(both.from_init.sum())}")


if __name__ == "__main__":
    main()
