"""Ex-post density estimation (Ghosh et al. 2020, "From variational to deterministic
autoencoders"): a Gaussian mixture fitted to a trained model's codes, to draw new codes
from. It lets autoencoders without a prior (AE, IRMAE) generate, and gives any model a
sampler that follows where its codes lie rather than where its prior says."""

from __future__ import annotations

import numpy as np
import torch

from .validate import as_tensor, positive_int


class CodeMixture:
    """A Gaussian mixture with full covariances (scikit-learn's `GaussianMixture`) fitted
    to codes `(N, d)`, e.g. `model.latent_mean(x_train)`; `n_components` (default 10, the
    paper's) is capped at N. `sample(n)` draws `n` codes in a random order (the mixture's
    own draws come grouped by component), in the codes' dtype and device; successive calls
    draw anew, and an object of the same codes and seed draws the same sequence."""

    def __init__(self, codes: torch.Tensor | np.ndarray, n_components: int = 10,
                 seed: int = 0) -> None:
        z = as_tensor(codes, None)
        if z.dim() != 2 or len(z) < 2 or not bool(torch.isfinite(z).all()):
            raise ValueError(f"need finite codes (N >= 2, d), got shape {tuple(z.shape)}"
                             + ("" if z.dim() != 2 or len(z) < 2 else " with non-finite values"))
        from sklearn.mixture import GaussianMixture  # here: 1.2 s of `import aetk` otherwise

        self.dtype, self.device = z.dtype, z.device
        self.rng = np.random.RandomState(seed)  # advanced by every draw
        k = min(positive_int(n_components, "n_components"), len(z))
        self.mixture = GaussianMixture(k, covariance_type="full", reg_covar=1e-6,
                                       random_state=self.rng)
        self.mixture.fit(z.detach().double().cpu().numpy())

    def sample(self, n: int) -> torch.Tensor:
        """`n` codes from the mixture, `(n, d)`."""
        z, _ = self.mixture.sample(positive_int(n, "n"))
        z = z[self.rng.permutation(n)]
        return torch.from_numpy(z).to(self.device, self.dtype)
