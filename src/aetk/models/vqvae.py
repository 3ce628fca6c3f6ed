"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation
Learning"): an autoencoder whose codes are snapped to the nearest of a learned codebook."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..centroids import select_centroids
from ..distributions import generate
from ..validate import positive_int
from .ae import AE
from .base import LossOutput

UPDATES = ("ema", "loss")


def perplexity(codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """`exp(-sum_k p_k log p_k)` of the codes' frequencies `p` in `codes`: 1 when one
    code takes every point, `n_codes` when all are used equally."""
    p = torch.bincount(codes, minlength=n_codes).double() / len(codes)
    return torch.exp(-torch.special.xlogy(p, p).sum())


class VQVAE(AE):
    """`L = -<log p(x|z_q)> + beta <||z_e - sg[e]||^2>` (`+ <||sg[z_e] - e||^2>` with
    `codebook_update="loss"`): `z_e = f(x)` the encoder's output, `e` the nearest of the
    `n_codes` codebook vectors, and `z_q = e` fed to the decoder with the straight-through
    gradient `z_q = z_e + sg[e - z_e]` (sg: no gradient). One code vector of `latent_dim`
    values per data point, with MLP or convolutional networks. The squared norms are
    summed over the latent values and averaged over the batch, the paper's per-point terms
    beside the log-likelihood summed over features.

    The codebook moves by one of two rules:

    - `"ema"` (default): after each training step, to exponential moving averages
      (`decay`) of the codes' counts `N_k` and of the sums `m_k` of the encoder outputs
      each code took: `e_k = m_k / N_k`, the counts Laplace-smoothed
      (`(N_k + epsilon) / (N + K epsilon) N`) so that an unused code keeps a finite value
      (the paper's appendix; the smoothing as in DeepMind's Sonnet). This is what
      practitioners use: each code steps towards the mean of its points, a k-means step
      whatever the learning rate, where Adam on the codebook term moves a code by about
      the learning rate whatever its error; no codebook term then enters the loss.
    - `"loss"`: the codebook is a parameter trained with the rest on the codebook term.

    Before the first epoch `on_fit_start` picks the codebook among the training points'
    encoder outputs by k-means++ seeding (on at most `centroids.MAX_POINTS` of them):
    spread over the codes the data have. A code that no training point has taken for
    `restart_after x n_codes` points (a code in use is taken about every `n_codes` points)
    is dead: nothing moves it back to the data, so after the training step it restarts at
    one of the batch's encoder outputs, distinct ones drawn with torch's generator (which
    `fit` seeds), with EMA count 1 as at the start; `restart_after=0` turns this off.
    Restarts within an epoch, not only at its end, matter: on small data sets the encoder's
    outputs move away from the starting codebook faster than the EMA follows, and every
    point falls to one code (on 700 digits, 11 steps per epoch, end-of-epoch restarts left
    the validation codes collapsed for three of four epochs; these, for none).

    Terms: `reconstruction`, `commitment` (`<||z_e - sg[e]||^2>`, weighted by `beta` in
    the loss), `codebook` (with `"loss"`), `perplexity` (of the batch's codes; logged, not
    minimised). `encode(x)` and `latent_mean(x)` give `z_q`, the decoder's input; `codes(x)`
    the indices. `sample` decodes codes drawn from their frequencies in the last training
    epoch (`code_frequencies`, saved with the model; a code's count restarts with it): at
    most `n_codes` distinct outputs.
    A learned prior over the codes (the paper's PixelCNN) is out of scope.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        n_codes: int = 128,
        beta: float = 0.25,
        codebook_update: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_after: float = 4.0,
    ) -> None:
        super().__init__(encoder, decoder)
        if int(n_codes) != n_codes or n_codes < 2:
            raise ValueError(f"n_codes must be an integer >= 2, got {n_codes}")
        if not 0 <= beta < math.inf:
            raise ValueError(f"the commitment weight beta must be >= 0, got {beta}")
        if codebook_update not in UPDATES:
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {codebook_update!r}")
        if not 0 <= decay < 1 or epsilon <= 0:
            raise ValueError(f"need 0 <= decay < 1 and epsilon > 0, got {decay} and {epsilon}")
        if not 0 <= restart_after < math.inf:
            raise ValueError(f"restart_after must be >= 0 (0: no restarts), got {restart_after}")
        self.n_codes, self.beta, self.codebook_update = int(n_codes), float(beta), codebook_update
        self.decay, self.epsilon = float(decay), float(epsilon)
        self.restart_after = float(restart_after)
        start = torch.zeros(self.n_codes, self.latent_dim)
        if codebook_update == "ema":
            self.register_buffer("codebook", start)
            self.register_buffer("cluster_size", torch.ones(self.n_codes))  # N_k
            self.register_buffer("embed_sum", start.clone())  # m_k
        else:
            self.codebook = nn.Parameter(start)
        self.register_buffer("has_codebook", torch.tensor(False))
        self.register_buffer("code_frequencies", torch.zeros(self.n_codes))
        self.register_buffer("points_since_used", torch.zeros(self.n_codes))
        self.register_buffer("epoch_counts", torch.zeros(self.n_codes), persistent=False)

    # Quantisation ------------------------------------------------------------------

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector of each row of `z_e (B, d)`: `(B,)`."""
        if not bool(self.has_codebook):
            raise RuntimeError("the VQ-VAE's codebook is not set: train with aetk.fit (its "
                               "on_fit_start picks it from the encoder outputs) or call "
                               "set_codebook")
        e = self.codebook.detach()
        dist = z_e.square().sum(-1, keepdim=True) - 2 * z_e @ e.T + e.square().sum(-1)
        return dist.argmin(-1)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The code index of each data point: a LongTensor `(B,)`."""
        return self.nearest(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """`z_q`, the codebook vector of each data point: what the decoder sees."""
        return self.codebook[self.nearest(self.encoder(x))]

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        """Put the codebook at `vectors (n_codes, d)` (and the EMA counts at 1 each)."""
        self.codebook.copy_(vectors)
        if self.codebook_update == "ema":
            self.embed_sum.copy_(vectors)
            self.cluster_size.fill_(1.0)
        self.has_codebook.fill_(True)

    # Loss and training -------------------------------------------------------------

    def quantised_loss(self, x: torch.Tensor, z_e: torch.Tensor) -> LossOutput:
        """The loss of `x` from its encoder outputs `z_e`; its `aux` holds `z_e` (detached)
        and the `codes` they took."""
        codes = self.nearest(z_e.detach())
        e = self.codebook[codes]
        z_q = z_e + (e - z_e).detach()  # the value of e, the gradient of z_e
        rec = self.reconstruction(z_q, x)
        commitment = (z_e - e.detach()).square().sum(-1).mean()
        loss = rec + self.beta * commitment
        terms = {"reconstruction": rec, "commitment": commitment}
        if self.codebook_update == "loss":
            terms["codebook"] = (z_e.detach() - e).square().sum(-1).mean()
            loss = loss + terms["codebook"]
        terms["perplexity"] = perplexity(codes, self.n_codes).to(rec.dtype)
        return LossOutput(loss, terms, {"z_e": z_e.detach(), "codes": codes})

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        return self.quantised_loss(x if target is None else target, self.encoder(x))

    def training_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                      target: torch.Tensor | None = None) -> LossOutput:
        """A gradient step on the loss, then on the same encoder outputs the codebook's EMA
        step (with `"ema"`) and the restart of dead codes; the codes taken are counted."""
        (opt,) = optimizers.values()
        opt.zero_grad(set_to_none=True)
        out = self.loss(x) if target is None else self.loss(x, target)
        out.loss.backward()
        opt.step()
        z_e, codes = out.aux["z_e"], out.aux["codes"]
        if self.codebook_update == "ema":
            self.ema_update(z_e, codes)
        self.epoch_counts += torch.bincount(codes, minlength=self.n_codes)
        self.points_since_used += len(x)
        self.points_since_used[codes] = 0
        if self.restart_after:
            self.restart_dead_codes(z_e)
        return out

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, codes: torch.Tensor) -> None:
        """`N_k <- decay N_k + (1 - decay) n_k`, `m_k <- decay m_k + (1 - decay) sum_{i:
        code k} z_e,i`, `e_k = m_k / ((N_k + epsilon) / (N + K epsilon) N)`, `N = sum_k N_k`,
        for the batch's encoder outputs `z_e (B, d)` and their codes."""
        one_hot = F.one_hot(codes, self.n_codes).to(z_e.dtype)
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(one_hot.T @ z_e, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (n + self.n_codes * self.epsilon) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def on_fit_start(self, train: torch.Tensor, n_train: int | None = None) -> None:
        """Pick the codebook among the training points' encoder outputs by k-means++
        seeding (unless already set)."""
        if bool(self.has_codebook):
            return
        if len(train) < self.n_codes:
            raise ValueError(f"cannot start {self.n_codes} codes from {len(train)} training "
                             "points: lower n_codes")
        with torch.no_grad():  # one pass: what is given per row (conditions) lines up
            z_e = self.encoder(train)
        seed = int(torch.randint(2**31 - 1, ()))  # fit seeds torch
        self.set_codebook(z_e[select_centroids(z_e, self.n_codes, "kmeans++", seed)])

    def on_epoch_end(self, epoch: int) -> None:
        """Keep the epoch's code frequencies, for `sample`."""
        total = self.epoch_counts.sum()
        if total > 0:  # a training step since the last epoch
            self.code_frequencies.copy_(self.epoch_counts / total)
        self.epoch_counts.zero_()

    @torch.no_grad()
    def restart_dead_codes(self, z_e: torch.Tensor) -> int:
        """Move the codes no point has taken for `restart_after x n_codes` points to
        distinct rows of `z_e (B, d)` (as many as it has); returns how many moved."""
        dead = (self.points_since_used >= self.restart_after * self.n_codes).nonzero()[:, 0]
        if not len(dead):
            return 0
        pick = torch.randperm(len(z_e))[:len(dead)].to(z_e.device)
        dead, points = dead[:len(pick)], z_e[pick]
        self.codebook[dead] = points
        if self.codebook_update == "ema":
            self.embed_sum[dead] = points
            self.cluster_size[dead] = 1.0
        self.points_since_used[dead] = 0
        self.epoch_counts[dead] = 0  # the frequencies count a code where it is
        return len(dead)

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True,
               total_count: torch.Tensor | float | None = None) -> torch.Tensor:
        """`n` new data points decoded from codes drawn by their frequencies in the last
        training epoch: the decoder's point prediction, or a draw with `mean_only=False`; a
        multinomial decoder's at the totals `total_count`, one per sample or one for all."""
        n = positive_int(n, "n")
        if not bool(self.code_frequencies.sum() > 0):
            raise RuntimeError("no code frequencies yet: train the VQ-VAE with aetk.fit first")
        codes = torch.multinomial(self.code_frequencies, n, replacement=True)
        p = self.decoder(self.codebook[codes])
        return generate(p, mean_only, total_count)
