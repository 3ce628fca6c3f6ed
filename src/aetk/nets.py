"""Small network builders shared by encoders, decoders and critics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    """An activation module from its name."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


_TRANSPOSES: ContextVar[dict[tuple[nn.Module, bool, bool], torch.Tensor] | None] = ContextVar(
    "aetk_shared_transposes", default=None)


@contextmanager
def shared_transposes() -> Iterator[None]:
    """Inside, each `Linear` transposes its weight once for all its calls (per grad and
    inference mode), not once per call: for the Hamiltonian flows, which evaluate the decoder
    and its differentiable gradient at every position."""
    token = _TRANSPOSES.set({})
    try:
        yield
    finally:
        _TRANSPOSES.reset(token)


NARROW = 16  # in_features up to which a Linear on the CPU multiplies a contiguous transpose


def narrow(weight: torch.Tensor) -> bool:
    """Whether products with this `(out, in)` weight are faster through a contiguous copy
    of its transpose: at most `NARROW` inputs, on the CPU (MKL; cuBLAS takes transposes as
    flags)."""
    return weight.shape[1] <= NARROW and weight.device.type == "cpu"


class Linear(nn.Linear):
    """`nn.Linear` that shares its weight's transpose inside `shared_transposes()`, and on
    the CPU multiplies a layer of at most `NARROW` inputs (a decoder's first layer) by a
    contiguous copy of the transposed weight.

    `F.linear` makes a new `weight.t()` node per call, where the outer backward sums that
    call's two weight gradients (the forward's and, under an exact force, the force's) out of
    place, then all calls' at the weight. Through one shared node the first sum allocates
    and the others add in place: an HVAE step (K=3, batch 64, decoder 2-512-784, one
    thread) went from 26.3 to 23.6 ms (36.2 to 31.7 on a slower run) alone in a fresh
    process, alternating with and without, and from 2,000 to 1,130 page faults
    (bench/vs_pythae.py's setting, 2026-12-03). Same operations otherwise, so the same
    numbers.

    The copy is for the backward: with a transposed view of a (512, 2) weight, MKL takes
    70-100 us for its weight gradient and 45-50 us for its input gradient at batch 64, with
    a contiguous (2, 512) one 10-20 and 15-30 us (2-10 inputs; 35 against 19 and 16 against
    17 us at 16; one thread, 2026-12-03). cuBLAS takes transposes as flags, so CUDA keeps
    the view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = _TRANSPOSES.get()
        thin = narrow(self.weight)
        if (cache is None and not thin) or x.dim() != 2:
            return F.linear(x, self.weight, self.bias)
        key = (self, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        wt = None if cache is None else cache.get(key)
        if wt is None:
            wt = self.weight.t().contiguous() if thin else self.weight.t()
            if cache is not None:
                cache[key] = wt
        return x @ wt if self.bias is None else torch.addmm(self.bias, x, wt)


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    act: str = "relu",
) -> nn.Sequential:
    """Linear layers of sizes `in -> hidden... (-> out)` with `act` between hidden layers.

    Without `out_features` the network ends with the last hidden activation (a trunk for heads).
    """
    widths = [in_features, *hidden, *([] if out_features is None else [out_features])]
    if any(int(w) != w or w < 1 for w in widths):
        sizes = " -> ".join(map(str, widths))
        raise ValueError(f"layer widths must be positive integers, got {sizes} "
                         "(input, hidden layers, output)")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [Linear(width, h), activation(act)]
        width = h
    if out_features is not None:
        layers.append(Linear(width, out_features))
    return nn.Sequential(*layers)


def resolve_shape(in_features: int | None, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The event shape of one data point from either `in_features` or `input_shape`."""
    if (in_features is None) == (input_shape is None):
        raise ValueError("give exactly one of in_features or input_shape")
    shape = (int(in_features),) if in_features is not None else tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"invalid input shape {shape}")
    return shape


def numel(shape: Sequence[int]) -> int:
    """Number of elements in one data point of this shape."""
    return math.prod(shape)


def image_layout(shape: Sequence[int], image_shape: Sequence[int] | None,
                 channels: Sequence[int]) -> tuple[int, int, int]:
    """`(C, H, W)` of the images behind data points of `shape`, for convolutions that halve
    H and W once per entry of `channels`: `image_shape` is `(H, W)` or `(C, H, W)`, or
    defaults to `shape` when that has two or three axes."""
    image = tuple(int(s) for s in (image_shape if image_shape is not None else shape))
    if len(image) not in (2, 3):
        raise ValueError(f"convolutional networks need image_shape (H, W) or (C, H, W); the data "
                         f"points have shape {tuple(shape)}")
    c, h, w = image if len(image) == 3 else (1, *image)
    if c * h * w != numel(shape):
        raise ValueError(f"image_shape {image} has {c * h * w} values but the data points "
                         f"{tuple(shape)} have {numel(shape)}")
    factor = 2 ** len(channels)
    if h % factor or w % factor:
        raise ValueError(f"{len(channels)} stride-2 convolutions need H and W divisible by "
                         f"{factor}, got {h} x {w}: use fewer channels entries")
    if any(int(n) != n or n < 1 for n in channels):
        raise ValueError(f"channels must be positive integers, got {list(channels)}")
    return c, h, w


class _Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


class ClassesAsChannels(nn.Module):
    """One-hot rows `(B, *shape, k)` of images `(C, H, W)` of k classes -> images
    `(B, k * C, H, W)`, channel `k_i * C + c` the class k_i of channel c: the classes as
    channels, for convolutions (the mirror of the decoders' class-major blocks)."""

    def __init__(self, image: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        self.image, self.n_classes = tuple(image), int(n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.image
        x = x.reshape(len(x), c, h, w, self.n_classes).movedim(-1, 1)
        return x.reshape(len(x), self.n_classes * c, h, w)

    def extra_repr(self) -> str:
        return f"image={self.image}, n_classes={self.n_classes}"


class _ImageBlocks(nn.Module):
    """`(B, blocks * width * C, H, W)` -> `(B, blocks * C * H * W * width)`: each block an
    image in the data's element order, with a trailing `width` axis (categorical classes)."""

    def __init__(self, blocks: int, width: int) -> None:
        super().__init__()
        self.blocks, self.width = blocks, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = x.reshape(b, self.blocks, self.width, -1, h, w)
        return x.permute(0, 1, 3, 4, 5, 2).flatten(1)


def conv_encoder(image: tuple[int, int, int], channels: Sequence[int], hidden: Sequence[int],
                 out_features: int, act: str = "relu", n_conditions: int = 0
                 ) -> nn.Sequential:
    """Data points -> images `(C, H, W)` -> 4x4 stride-2 convolutions with `channels`
    (each halves H and W) -> an MLP `hidden -> out_features` (the layout of
    AutoEncoderToolkit.jl's MNIST examples), which also sees `n_conditions` conditions
    (`Conditioned`) when there are any."""
    c, h, w = image
    layers: list[nn.Module] = [_Reshape(c, h, w)]
    for n in channels:
        layers += [nn.Conv2d(c, n, 4, stride=2, padding=1), activation(act)]
        c, h, w = n, h // 2, w // 2
    head = mlp(c * h * w + n_conditions, hidden, out_features, act)
    return nn.Sequential(*layers, nn.Flatten(),
                         Conditioned(head, n_conditions) if n_conditions else head)


def conv_decoder(latent_dim: int, image: tuple[int, int, int], channels: Sequence[int],
                 hidden: Sequence[int], blocks: int, width: int = 1, act: str = "relu"
                 ) -> nn.Sequential:
    """The mirror of `conv_encoder`: an MLP from z to `channels[-1]` feature maps at
    `(H, W) / 2^len(channels)`, 4x4 stride-2 transposed convolutions back to `(H, W)`, and
    `blocks` parameter images of `width` values per element, flat as the decoders expect."""
    c, h, w = image
    factor = 2 ** len(channels)
    sizes = [*channels[::-1], blocks * width * c]
    layers: list[nn.Module] = [
        mlp(latent_dim, [*hidden, sizes[0] * (h // factor) * (w // factor)], None, act),
        _Reshape(sizes[0], h // factor, w // factor),
    ]
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.ConvTranspose2d(n_in, n_out, 4, stride=2, padding=1))
        if k < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers, _ImageBlocks(blocks, width))


class MaskingNoise(nn.Module):
    """Sets each input value to 0 with probability `p` while training, and passes inputs
    through unchanged in evaluation: the masking noise of denoising autoencoders (Vincent
    et al. 2008). Unlike `nn.Dropout` it does not rescale the values it keeps, so the
    encoder sees data-like inputs."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"the masking probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x, dtype=torch.float32) >= self.p).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"



class LogInputs(nn.Module):
    """`log(1 + |x|)`: for counts `log(1 + x)`, what an encoder of counts sees, so that a
    sample with 100 times the counts of another does not drive its first layer 100 times
    as hard (scVI's `log_variational`). Data must not be negative (`Model.check_data`);
    the absolute value keeps a gradient for what learning moves below 0 (the VampPrior's
    pseudo-inputs), which a clamp at 0 would freeze there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not x.abs(): its gradient at 0 is 0, and sparse pseudo-inputs start at 0
        return torch.log1p(torch.where(x < 0, -x, x))

@contextmanager
def attribute_set(modules: Sequence[nn.Module], name: str, value: Any) -> Iterator[None]:
    """Within the block, attribute `name` of each of `modules` is `value`; afterwards each
    has its own again."""
    before = [getattr(m, name) for m in modules]
    for m in modules:
        setattr(m, name, value)
    try:
        yield
    finally:
        for m, b in zip(modules, before, strict=True):
            setattr(m, name, b)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `module` is in evaluation mode (no dropout or input noise, batch
    norm's running statistics); afterwards each submodule has its own mode again: what
    the methods that read a trained model (reconstructions, codes, metrics) run in."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def clean_inputs(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the `MaskingNoise` layers in `module` pass their inputs through,
    also while training: for what the model computes from data points that are not the
    batch's (the RHVAE's centroids), where the noise would only add randomness."""
    with attribute_set([m for m in module.modules() if isinstance(m, MaskingNoise)],
                       "training", False):
        yield module


class Conditioned(nn.Module):
    """`network(cat(x, c))`: a network that also sees the conditions `c` (one-hot classes
    or covariates, `(B, n_conditions)`) of a conditional model, set by `Model.given`.

    The last `event_dims` axes of the input are flattened first. Conditions of one row
    apply to every input; `B` rows apply to inputs of `B` rows, or of `S * B` rows stacked
    sample-major (S draws of the batch, as `distributions.log_lik_of_draws` stacks them).
    """

    def __init__(self, network: nn.Module, n_conditions: int, event_dims: int = 1) -> None:
        super().__init__()
        if int(n_conditions) != n_conditions or n_conditions < 1:
            raise ValueError(f"n_conditions must be a positive integer, got {n_conditions}")
        self.network, self.n_conditions = network, int(n_conditions)
        self.event_dims = int(event_dims)
        self.conditions: torch.Tensor | None = None  # set by Model.given, never saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conditions
        if c is None:
            raise RuntimeError("this network is conditional: call the model inside "
                               "`with model.given(c):`, with c the (B, n_conditions) conditions")
        lead = x.shape[:x.dim() - self.event_dims]
        rows = x.reshape(math.prod(lead), -1)
        n, m = len(rows), len(c)
        if m != 1 and n != m:
            if n % m:
                raise ValueError(f"conditions for {m} rows, but the network got {n} inputs "
                                 "(conditions need 1 row, the batch's rows, or a divisor "
                                 "of the inputs for sample-major stacks of the batch)")
            c = c.repeat(n // m, 1)
        out = self.network(torch.cat([rows, c.expand(n, -1).to(rows.dtype)], dim=-1))
        return out.reshape(*lead, *out.shape[1:])

    def extra_repr(self) -> str:
        return f"n_conditions={self.n_conditions}"


class SequenceEncoderNet(nn.Module):
    """Token sequences `(B, T)` of integers in `[0, vocab)` (as floats too, as `fit` hands
    them over, or one-hot `(B, T, vocab)`) -> `(B, n_out)`: an embedding, a GRU, and its
    last hidden state through a linear layer. The `network` of an encoder for sequence
    data (`GaussianEncoder(SequenceEncoderNet(vocab, 2 * d), latent_dim=d)`)."""

    def __init__(self, vocab: int, n_out: int, *, embedding: int = 32, hidden: int = 128,
                 layers: int = 1) -> None:
        super().__init__()
        self.vocab = int(vocab)
        self.embed = nn.Embedding(self.vocab, embedding)
        self.gru = nn.GRU(embedding, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.argmax(-1) if x.dim() == 3 else x.long()
        _, h = self.gru(self.embed(tokens))
        return self.out(h[-1])


class SequenceDecoderNet(nn.Module):
    """`z (..., latent_dim)` -> logits `(..., length * vocab)` for a `CategoricalDecoder`
    with `out_features=length, n_classes=vocab`: z sets the GRU's initial state and is its
    input at every step. Without teacher forcing the positions are independent given z,
    so p(x|z) stays a product of categoricals and every model's loss applies as it is.
    On CUDA, cuDNN's GRU has no double backward, which the HVAE's and RHVAE's exact forces
    need: train those inside `torch.backends.cudnn.flags(enabled=False)`."""

    def __init__(self, latent_dim: int, vocab: int, length: int, *, hidden: int = 128,
                 layers: int = 1) -> None:
        super().__init__()
        self.length, self.vocab, self.layers = int(length), int(vocab), int(layers)
        self.start = nn.Linear(latent_dim, hidden * self.layers)
        self.gru = nn.GRU(latent_dim, hidden, num_layers=self.layers, batch_first=True)
        self.out = nn.Linear(hidden, self.vocab)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead, rows = z.shape[:-1], z.reshape(-1, z.shape[-1])
        h0 = torch.tanh(self.start(rows)).reshape(len(rows), self.layers, -1).transpose(0, 1)
        steps, _ = self.gru(rows.unsqueeze(1).expand(-1, self.length, -1), h0.contiguous())
        return self.out(steps).reshape(*lead, self.length * self.vocab)
