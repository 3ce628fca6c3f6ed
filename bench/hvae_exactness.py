"""What the exact HVAE gradient buys: aetk's gradient against a first-order one.

The first-order gradient treats every leapfrog force as a constant (the force computed
without `create_graph`, as pythae's HVAE does, but here with the correct momentum and
tempering), so it drops the second-order terms that make aetk's HVAE step about 1.2x
pythae's (see `vs_pythae.py`). For each step size: an HVAE 784-512-2 (Bernoulli, K=3,
beta0=0.3) trained 3 epochs on a seeded random 2,000 of the binarised MNIST 5k (the bundled
file is sorted by label: its first 2,000 rows are the digits 0-3), then both gradients on the
same batch of 256 of those and the same noise; prints the relative L2 difference of the
decoder's and the encoder's gradients. The losses agree to float32 rounding: only the gradients
differ.

Usage: python bench/hvae_exactness.py [--step-sizes 0.001,0.01,0.05] [--threads 2]
       [--device cpu]
"""

import argparse

import torch
from torch import Tensor

import aetk
from aetk.distributions import log_prob, standard_normal_log_prob
from aetk.hamiltonian import gaussian_log_prob, tempering

from common import add_device, mnist_5k


def first_order_loss(m: aetk.HVAE, x: Tensor) -> Tensor:
    """`-ELBO` of the same flow with every force `grad U(z)` detached from the graph."""

    def force(z: Tensor) -> Tensor:
        z = z.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(log_prob(m.decoder(z), x).sum(), z)
        return z.detach() - g

    q = m.encoder(x)
    z0 = q.rsample()
    gamma = torch.randn_like(z0)
    eps, beta0, n = m.step_size, m.beta0, m.n_leapfrog
    z, rho, g = z0, gamma * beta0**-0.5, force(z0)
    for k in range(1, n + 1):
        rho = rho - 0.5 * eps * g
        z = z + eps * rho
        g = force(z)
        rho = (rho - 0.5 * eps * g) * tempering(beta0, k, n)
    d = z.shape[-1]
    elbo = (log_prob(m.decoder(z), x) + standard_normal_log_prob(z)
            + gaussian_log_prob((rho * rho).sum(-1), 0.0, d) - q.log_prob(z0)
            - gaussian_log_prob((gamma * gamma).sum(-1), 0.0, d))
    return -elbo.mean()


def gradients(m: aetk.HVAE, loss_fn, x: Tensor) -> tuple[float, dict[str, Tensor]]:
    """The loss and the parameter gradients, with the same noise for every `loss_fn`."""
    torch.manual_seed(1)
    loss = loss_fn(m, x)
    m.zero_grad()
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def relative_difference(a: dict[str, Tensor], b: dict[str, Tensor], prefix: str) -> float:
    """`|a - b| / |a|` over the parameters whose names start with `prefix`."""
    keys = [k for k in a if k.startswith(prefix)]
    diff = sum((a[k] - b[k]).square().sum() for k in keys)
    return (diff / sum(a[k].square().sum() for k in keys)).sqrt().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--step-sizes", default="0.001,0.01,0.05")
    ap.add_argument("--threads", type=int, default=2)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = (mnist_5k()[0] > 127.5).float()
    data = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:2000]]
    data = data.to(args.device)
    x = data[:256]
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          "HVAE 784-512-2, K=3, beta0=0.3, 3 epochs on 2,000 images, gradients on 256")
    print("| step size | loss, exact | loss, first-order | decoder gradient difference "
          "| encoder gradient difference |\n|---|---|---|---|---|")
    for eps in (float(s) for s in args.step_sizes.split(",")):
        torch.manual_seed(0)
        m = aetk.build_model("hvae", "bernoulli", in_features=784, latent_dim=2, hidden=(512,),
                             step_size=eps)
        aetk.fit(m, data, epochs=3, batch_size=64, progress=False, device=args.device)
        m.train()
        l_ex, ex = gradients(m, lambda m, x: m.loss(x).loss, x)
        l_fo, fo = gradients(m, first_order_loss, x)
        print(f"| {eps:g} | {l_ex:.4f} | {l_fo:.4f} | "
              f"{relative_difference(ex, fo, 'decoder'):.2e} | "
              f"{relative_difference(ex, fo, 'encoder'):.2e} |", flush=True)


if __name__ == "__main__":
    main()
