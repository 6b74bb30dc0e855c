"""The discrete Kalman filter baseline: Gaussian states per slice, softmax emissions of the
slice's words, smoothed through a Laplace (Gaussian pseudo-observation) approximation."""

from __future__ import annotations

from typing import NamedTuple

import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from inference.kalman import kalman_smoother_varying_noise

__all__ = ["DiscreteKalmanFilter", "LaplacePosterior"]


# --------------------------------------------------------------------------
# The discrete Kalman filter: Gaussian states, softmax emissions
# --------------------------------------------------------------------------
class LaplacePosterior(NamedTuple):
    """Gaussian approximation of the slices' states.

    Attributes:
        filtered_mean: ``(T, D)``; filtered_cov: ``(T, D, D)``.
        smoothed_mean: ``(T, D)``; smoothed_cov: ``(T, D, D)``.
        pseudo_observations: ``(T, D)`` the Gaussian pseudo-observations :math:`y_t`.
        pseudo_cov: ``(T, D, D)`` their covariances :math:`R_t` (identity x inf where a slice has no word).
        log_normalizer: the log-marginal likelihood of the pseudo-observations (the Gaussian model's).
    """

    filtered_mean: Tensor
    filtered_cov: Tensor
    smoothed_mean: Tensor
    smoothed_cov: Tensor
    pseudo_observations: Tensor
    pseudo_cov: Tensor
    log_normalizer: Tensor


class DiscreteKalmanFilter(PyroModule):
    r"""Gaussian states per slice with softmax emissions of the slice's words.

    :math:`S_0 \sim N(m_0, P_0)`, :math:`S_t \mid S_{t-1} \sim N(A S_{t-1}, \Gamma)`,
    :math:`W_t \mid S_t \sim \mathrm{Multinomial}(n_t, \mathrm{softmax}(B S_t))`.

    Args:
        emission_matrix: ``(V, D)`` :math:`B`.
        transition_matrix: ``(D, D)`` :math:`A` (identity when None).
        transition_cov: ``(D, D)`` :math:`\Gamma` (0.01 I when None).
        initial_cov: ``(D, D)`` :math:`P_0` (I when None); :math:`m_0 = 0`.
        learn: names of the parameters to learn by gradient on the Laplace evidence
            (any of ``"emission_matrix"``, ``"transition_matrix"``, ``"transition_cov"``); others are fixed.

    Example:
        >>> dkf = DiscreteKalmanFilter(torch.randn(20, 2))
        >>> counts = dkf.sample(5, words_per_slice=30)[1]
        >>> dkf.smooth(counts).smoothed_mean.shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        emission_matrix: Tensor,
        transition_matrix: Tensor | None = None,
        transition_cov: Tensor | None = None,
        initial_cov: Tensor | None = None,
        learn: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if emission_matrix.dim() != 2:
            raise ValueError(f"emission_matrix: expected (V, D), got {tuple(emission_matrix.shape)}")
        V, D = emission_matrix.shape
        unknown = set(learn) - {"emission_matrix", "transition_matrix", "transition_cov"}
        if unknown:
            raise ValueError(f"learn: unknown parameter names {sorted(unknown)}")
        A = torch.eye(D) if transition_matrix is None else transition_matrix
        Q = 0.01 * torch.eye(D) if transition_cov is None else transition_cov
        P0 = torch.eye(D) if initial_cov is None else initial_cov
        for name, value in (("transition_matrix", A), ("transition_cov", Q), ("initial_cov", P0)):
            if value.shape != (D, D):
                raise ValueError(f"{name}: expected ({D}, {D}), got {tuple(value.shape)}")
        self.emission_matrix = nn.Parameter(emission_matrix.clone(), requires_grad="emission_matrix" in learn)
        self.transition_matrix = nn.Parameter(A.clone(), requires_grad="transition_matrix" in learn)
        if "transition_cov" in learn:
            self.transition_cov = PyroParam(Q.clone(), constraint=constraints.positive_definite)
        else:
            self.register_buffer("transition_cov", Q.clone())
        self.register_buffer("initial_cov", P0.clone())

    @property
    def state_dim(self) -> int:
        return self.emission_matrix.shape[1]

    def gaussian_approximation(self, counts: Tensor, linearization_points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Laplace approximation of each slice's softmax log-likelihood at ``linearization_points``.

        The second-order expansion of :math:`c_t^\top B s - n_t \log\sum_v e^{(Bs)_v}` about
        :math:`s^*` is, up to a constant, :math:`\log N(y_t; s, R_t)` with
        :math:`R_t = H_t^{-1}`, :math:`H_t = n_t B^\top(\mathrm{diag}\,\pi_t - \pi_t\pi_t^\top)B`,
        :math:`y_t = s^* + R_t B^\top(c_t - n_t \pi_t)`, :math:`\pi_t = \mathrm{softmax}(B s^*)`.

        Args:
            counts: ``(T, V)`` word counts of each slice.
            linearization_points: ``(T, D)``.

        Returns:
            ``(y (T, D), R (T, D, D), observed (T,) bool)``; a slice without words is unobserved.
        """
        B = self.emission_matrix
        probs = torch.softmax(linearization_points @ B.T, -1)  # (T, V)
        totals = counts.sum(-1)  # (T,)
        gradient = (counts - totals[:, None] * probs) @ B  # (T, D)
        curvature = torch.einsum("tv,vd,ve->tde", probs, B, B) - torch.einsum("td,te->tde", probs @ B, probs @ B)
        precision = totals[:, None, None] * curvature + 1e-9 * torch.eye(self.state_dim, dtype=B.dtype)
        observed = totals > 0
        safe_precision = torch.where(observed[:, None, None], precision, torch.eye(self.state_dim, dtype=B.dtype))
        pseudo_cov = torch.linalg.inv(safe_precision)
        pseudo_obs = linearization_points + (pseudo_cov @ gradient.unsqueeze(-1)).squeeze(-1)
        return pseudo_obs, pseudo_cov, observed

    def smooth(
        self,
        counts: Tensor,
        *,
        num_iterations: int = 10,
        linearization_points: Tensor | None = None,
        tolerance: float = 1e-6,
    ) -> LaplacePosterior:
        """Laplace posterior of the states given ``(T, V)`` slice word counts.

        Linearises every slice at ``linearization_points`` (default: the prior mean 0), filters and
        smooths the pseudo-observations, and (``num_iterations`` > 1) re-linearises at the smoothed
        means until they move less than ``tolerance``. With ``num_iterations=1`` this is one Kalman
        filter and smoother pass on fixed pseudo-observations.
        """
        if counts.dim() != 2 or counts.shape[1] != self.emission_matrix.shape[0]:
            raise ValueError(f"counts: expected (T, {self.emission_matrix.shape[0]}), got {tuple(counts.shape)}")
        counts = counts.to(self.emission_matrix.dtype)
        points = (
            counts.new_zeros(counts.shape[0], self.state_dim) if linearization_points is None else linearization_points
        )
        for _ in range(max(1, num_iterations)):
            y, R, observed = self.gaussian_approximation(counts, points)
            filtered_mean, filtered_cov, smoothed_mean, smoothed_cov, log_normalizer = kalman_smoother_varying_noise(
                self.transition_matrix,
                self.transition_cov,
                counts.new_zeros(self.state_dim),
                self.initial_cov,
                y,
                R,
                observed,
            )
            moved = float((smoothed_mean - points).abs().max())
            points = smoothed_mean.detach()
            if moved < tolerance:
                break
        return LaplacePosterior(filtered_mean, filtered_cov, smoothed_mean, smoothed_cov, y, R, log_normalizer)

    def sample(
        self, num_slices: int, words_per_slice: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draws ``(states (T, D), counts (T, V))`` from the model."""
        with torch.no_grad():
            D = self.state_dim
            chol_q, chol_0 = torch.linalg.cholesky(self.transition_cov), torch.linalg.cholesky(self.initial_cov)
            state = chol_0 @ torch.randn(D, generator=generator)
            states, counts = [], []
            for t in range(num_slices):
                if t > 0:
                    state = self.transition_matrix @ state + chol_q @ torch.randn(D, generator=generator)
                states.append(state)
                words = torch.multinomial(
                    torch.softmax(self.emission_matrix @ state, -1),
                    words_per_slice,
                    replacement=True,
                    generator=generator,
                )
                counts.append(torch.bincount(words, minlength=self.emission_matrix.shape[0]))
            return torch.stack(states), torch.stack(counts).to(self.emission_matrix.dtype)
