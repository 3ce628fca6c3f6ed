"""What the built-in penalties (`aetk.penalties`) cost and do on the bundled MNIST 5k: a
VAE with a 2-dimensional latent space trained without a penalty and with each built-in.

Binarised MNIST 5k, the seeded 4,500/500 split of `common.split_5k`, Bernoulli decoder,
256-256 MLPs, batch 128, Adam 1e-3, `--epochs` epochs (default 20), seed 0. Per run:
the time of a training step on one batch of 128 from the same weights (the best of 5
rounds of 30 steps that alternate between the runs) and its ratio to the step without a
penalty, validation log
p(x) (`aetk.log_marginal`, 200 importance samples), the median and smallest posterior
standard deviation, and of the decoder's Jacobian J at the validation codes the mean
squared Frobenius norm (the trace of the pull-back metric J^T J) and the 5-95% spread of
its log volume 1/2 log det J^T J.

Usage: python bench/penalties.py [--epochs 20] [--threads 2] [--device cpu]
"""

import copy
import time

import torch

import aetk

from common import mnist_5k, split_5k, sync, training_args

RUNS = {
    "none": [],
    "latent_l2 (weight 1)": [aetk.LatentL2(1.0)],
    "min_variance (sigma_min 0.2, weight 10)": [aetk.MinVariance(0.2, 10.0)],
    "entropy (weight -1)": [aetk.Entropy(-1.0)],
    "decoder_jacobian (weight 0.01)": [aetk.DecoderJacobian(0.01)],
}


def jacobian_stats(model: aetk.Model, z: torch.Tensor) -> tuple[float, float]:
    """Mean ||J||_F^2 and the 5-95% range of 1/2 log det J^T J at the codes `z (N, 2)`."""
    jac = torch.func.vmap(torch.func.jacrev(lambda v: model.decode(v[None]).mean[0]))(z)
    log_volume = 0.5 * torch.linalg.slogdet(jac.transpose(1, 2) @ jac)[1]
    lo, hi = torch.quantile(log_volume, torch.tensor([0.05, 0.95], device=z.device))
    return jac.square().sum((1, 2)).mean().item(), (hi - lo).item()


def step_times(model: aetk.Model, x: torch.Tensor, device: torch.device, rounds: int = 5,
               steps: int = 30) -> dict[str, float]:
    """Seconds per training step on the batch `x` of copies of `model`, one with each run's
    penalties: the best of `rounds` rounds that alternate between them (the machine's noise
    hits them alike; the same weights, so that only the penalties differ)."""
    copies = {name: copy.deepcopy(model).train() for name in RUNS}
    optimizers = {name: m.configure_optimizers(1e-3) for name, m in copies.items()}
    best = dict.fromkeys(RUNS, float("inf"))
    for _ in range(rounds):
        for name, m in copies.items():
            with aetk.penalized(m, RUNS[name]):
                m.training_step(x, optimizers[name])
                sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    m.training_step(x, optimizers[name])
                sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    args, device = training_args(2)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    val = val.to(device)
    rows = {}
    for name, penalties in RUNS.items():
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=2,
                                 hidden=(256, 256))
        aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0, progress=False,
                 device=device, penalties=penalties)
        torch.manual_seed(1)
        with torch.no_grad():
            q = model.encode(val)
            log_px = aetk.log_marginal(model, val, n_samples=200).mean().item()
        frob, spread = jacobian_stats(model, q.mean)
        if name == "none":
            plain = model
        rows[name] = (f"{log_px:.1f} | {q.stddev.median():.3f} ({q.stddev.min():.3f}) | "
                      f"{frob:.1f} | {spread:.2f}")
    times = step_times(plain, train[:128].to(device), device)
    print("| penalty | ms/step | vs none | val log p(x) | sigma median (min) | "
          "mean ||J||_F^2 | log-volume spread |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {1e3 * times[name]:.2f} | {times[name] / times['none']:.2f}x | "
              f"{row} |")


if __name__ == "__main__":
    main()
