"""DeepOBS's noisy quadratic `quadratic_deep` (Schneider et al. 2019): a 100-dimensional quadratic whose Hessian
has 90% of its eigenvalues in (0, 1) and 10% in (30, 60), in a random basis, every example a noisy shift of its
centre. All of it is generated from the seed; nothing is downloaded.

The loss of parameters theta on an example x is 0.5 (theta - x)^T H (theta - x) with x ~ N(0, I); its
expectation is 0.5 theta^T H theta + 0.5 tr(H), least at theta = 0, where it is the floor 0.5 tr(H)."""
from __future__ import annotations

import torch
from torch import nn

DIMENSION = 100


def hessian(seed: int, dimension: int = DIMENSION) -> torch.Tensor:
    """Q diag(lambda) Q^T: lambda 90% uniform in (0, 1), 10% in (30, 60); Q a random rotation."""
    generator = torch.Generator().manual_seed(seed)
    large = dimension // 10
    eigenvalues = torch.cat([torch.rand(dimension - large, generator=generator, dtype=torch.float64),
                             30 + 30 * torch.rand(large, generator=generator, dtype=torch.float64)])
    rotation, _ = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator, dtype=torch.float64))
    return (rotation * eigenvalues) @ rotation.T


class NoisyQuadratic(nn.Module):
    """The parameters theta (started at 1, as DeepOBS does) and the loss of each example: a model that is its
    own loss (training.objective.OWN_LOSS)."""

    def __init__(self, seed: int, dimension: int = DIMENSION) -> None:
        super().__init__()
        self.register_buffer("hessian", hessian(seed, dimension).float())
        self.theta = nn.Parameter(torch.ones(dimension))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        shifted = self.theta - noise
        return 0.5 * ((shifted @ self.hessian) * shifted).sum(-1)

    @property
    def floor(self) -> float:
        """The least expected loss, 0.5 tr(H)."""
        return 0.5 * float(self.hessian.trace())


def noise_batch(generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of examples: (noise, placeholder targets); the model scores itself."""
    return torch.randn(batch_size, DIMENSION, generator=generator), torch.zeros(batch_size)
