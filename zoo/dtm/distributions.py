"""The Gaussian chains over time slices: the random-walk prior (:class:`RandomWalkNormal`), the
Markov guide (:class:`MarkovNormal`) and their closed-form KL divergence (:func:`markov_normal_kl`,
registered with ``torch.distributions.kl``)."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.kl import register_kl

__all__ = ["MarkovNormal", "RandomWalkNormal", "markov_normal_kl"]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------
# Gaussian chains over slices: the random-walk prior and the Markov guide
# --------------------------------------------------------------------------
class RandomWalkNormal(TorchDistribution):
    r"""A Gaussian random walk over ``S`` slices of ``D`` independent coordinates.

    :math:`x_0 \sim N(0, \sigma_0^2)`, :math:`x_t \mid x_{t-1} \sim N(x_{t-1}, \gamma^2)`,
    elementwise. ``event_shape`` is ``(S, D)``.

    Args:
        initial_scale: :math:`\sigma_0` (float or broadcastable to ``(D,)``).
        drift_scale: :math:`\gamma` (the random walk's step scale).
        num_slices: ``S``.
        dim: ``D``.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = False

    def __init__(
        self, initial_scale: float | Tensor, drift_scale: float | Tensor, num_slices: int, dim: int, validate_args=None
    ) -> None:
        self.initial_scale = torch.as_tensor(initial_scale, dtype=torch.get_default_dtype())
        self.drift_scale = torch.as_tensor(drift_scale, dtype=torch.get_default_dtype())
        self.num_slices, self.dim = int(num_slices), int(dim)
        super().__init__(torch.Size(), torch.Size((self.num_slices, self.dim)), validate_args=validate_args)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.event_shape
        with torch.no_grad():
            steps = torch.randn(shape)
            steps[..., :1, :] *= self.initial_scale
            steps[..., 1:, :] *= self.drift_scale
            return steps.cumsum(-2)

    def log_prob(self, value: Tensor) -> Tensor:
        first = dist.Normal(0.0, self.initial_scale).log_prob(value[..., 0, :]).sum(-1)
        steps = dist.Normal(0.0, self.drift_scale).log_prob(value[..., 1:, :] - value[..., :-1, :]).sum((-2, -1))
        return first + steps


class MarkovNormal(TorchDistribution):
    r"""A Gauss-Markov chain over ``S`` slices, elementwise over ``D`` coordinates.

    :math:`x_0 = m_0 + s_0 \epsilon_0`,
    :math:`x_t = m_t + \rho_t (x_{t-1} - m_{t-1}) + s_t \epsilon_t`. Means are
    ``loc``; marginal variances :math:`v_t = \rho_t^2 v_{t-1} + s_t^2`.
    ``event_shape`` is ``(S, D)``.

    Args:
        loc: ``(S, D)`` means :math:`m`.
        scale: ``(S, D)`` positive innovation scales :math:`s`.
        coupling: ``(S, D)`` coefficients :math:`\rho` (row 0 unused).
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "coupling": constraints.real}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, coupling: Tensor, validate_args=None) -> None:
        if loc.dim() != 2 or scale.shape != loc.shape or coupling.shape != loc.shape:
            raise ValueError(
                f"loc, scale, coupling: expected equal (S, D) shapes, got {tuple(loc.shape)}, "
                f"{tuple(scale.shape)}, {tuple(coupling.shape)}"
            )
        self.loc, self.scale, self.coupling = loc, scale, coupling
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        noise = self.scale * torch.randn(torch.Size(sample_shape) + self.event_shape, dtype=self.loc.dtype)
        deviations = [noise[..., 0, :]]
        for t in range(1, self.event_shape[0]):
            deviations.append(self.coupling[t] * deviations[-1] + noise[..., t, :])
        return self.loc + torch.stack(deviations, -2)

    def log_prob(self, value: Tensor) -> Tensor:
        deviation = value - self.loc
        innovation = torch.cat(
            [deviation[..., :1, :], deviation[..., 1:, :] - self.coupling[1:] * deviation[..., :-1, :]], -2
        )
        return dist.Normal(0.0, self.scale).log_prob(innovation).sum((-2, -1))

    def marginal_variance(self) -> Tensor:
        """``(S, D)`` marginal variances :math:`v_t`."""
        variances = [self.scale[0] ** 2]
        for t in range(1, self.event_shape[0]):
            variances.append(self.coupling[t] ** 2 * variances[-1] + self.scale[t] ** 2)
        return torch.stack(variances, 0)

    def entropy(self) -> Tensor:
        return (0.5 * (1 + _LOG_2PI) + self.scale.log()).sum()


def markov_normal_kl(q: MarkovNormal, p: RandomWalkNormal) -> Tensor:
    r"""Closed-form :math:`\mathrm{KL}(q \,\|\, p)` of a Markov guide from a random-walk prior.

    :math:`E_q[(x_t - x_{t-1})^2] = (m_t - m_{t-1})^2 + v_t + v_{t-1} - 2 \rho_t v_{t-1}
    = (m_t - m_{t-1})^2 + s_t^2 + (1 - \rho_t)^2 v_{t-1}`.
    """
    variance = q.marginal_variance()  # (S, D)
    s0, g = p.initial_scale, p.drift_scale
    first = 0.5 * (2 * torch.log(s0 * torch.ones_like(q.loc[0])) + _LOG_2PI) + (q.loc[0] ** 2 + variance[0]) / (
        2 * s0**2
    )
    # v_t + v_{t-1} - 2 rho_t v_{t-1} = s_t^2 + (1 - rho_t)^2 v_{t-1}: no cancellation when gamma is tiny
    cross = (q.loc[1:] - q.loc[:-1]) ** 2 + q.scale[1:] ** 2 + (1 - q.coupling[1:]) ** 2 * variance[:-1]
    steps = 0.5 * (2 * torch.log(g * torch.ones_like(cross)) + _LOG_2PI) + cross / (2 * g**2)
    return first.sum() + steps.sum() - q.entropy()


register_kl(MarkovNormal, RandomWalkNormal)(markov_normal_kl)
