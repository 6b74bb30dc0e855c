r"""EM for the linear-Gaussian state-space model (Shumway & Stoffer, 1982; Ghahramani &
Hinton, 1996), split as the contract asks: :meth:`LinearGaussianEM.e_step` runs the RTS
smoother and returns sufficient statistics summed over sequences (so statistics of
mini-batches or processes add up), :meth:`LinearGaussianEM.m_step` maximises from those
sums alone; the contract's ``em_step`` chains the two.

The M-step is a conditional maximisation (ECM; Meng & Rubin, 1993) of each learned block
given the others: ``A`` given ``Γ`` then ``Γ``; ``B`` given ``Σ`` then ``Σ``; ``μ0`` given
``Σ0`` then ``Σ0``. Each update maximises the expected complete-data log-likelihood plus log
prior (MAP with ``prior="weak"``), so the objective never decreases. A full learned ``Σ``
needs every step fully observed or fully missing (a diagonal one handles any missing entries).

Statistics (float64, ``E`` the smoothing expectation, sums over sequences ``n`` and real steps):

* always ``"log_likelihood"`` ``()``;
* with a learned ``A`` or ``Γ``: ``"transition_count"`` ``()`` :math:`\sum_n (L_n - 1)`,
  ``"previous_state_outer"`` :math:`\sum_{t \ge 2} E[s_{t-1} s_{t-1}^\top]`,
  ``"current_state_outer"`` :math:`\sum_{t \ge 2} E[s_t s_t^\top]` and
  ``"lag_state_outer"`` :math:`\sum_{t \ge 2} E[s_t s_{t-1}^\top]`, each ``(d, d)``;
* with a learned ``B`` or ``Σ``, if the observation update is diagonal (a learned diagonal
  ``Σ`` or a fixed diagonal one): ``"observed_count"`` ``(p,)`` (steps where ``x_j`` is
  observed), ``"observed_state_outer"`` ``(p, d, d)`` :math:`\sum o_{tj} E[s_t s_t^\top]`,
  ``"observation_state_cross"`` ``(p, d)`` :math:`\sum o_{tj} x_{tj} E[s_t]` and
  ``"observation_squares"`` ``(p,)`` :math:`\sum o_{tj} x_{tj}^2`; otherwise the same over
  fully observed steps: ``"observed_count"`` ``()``, ``"observed_state_outer"`` ``(d, d)``,
  ``"observation_state_cross"`` ``(p, d)`` and ``"observation_outer"`` ``(p, p)``
  :math:`\sum x_t x_t^\top`;
* with a learned ``μ0`` or ``Σ0``: ``"initial_count"`` ``()`` (non-empty sequences),
  ``"initial_state_sum"`` ``(d,)`` :math:`\sum E[s_1]` and ``"initial_state_outer"``
  ``(d, d)`` :math:`\sum E[s_1 s_1^\top]`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from inference import kalman
from inference.batch import SequenceBatch
from inference.validation import valid_mask
from zoo.params import Constraint, symmetrise

from .parameters import INITIAL_MEAN_SCALE, OBSERVATION_SCALE, TRANSITION_SCALE

__all__ = ["LinearGaussianEM"]


def _solve_sylvester(left_cov: Tensor, right_gram: Tensor, rhs: Tensor, ridge: float) -> Tensor:
    """``X`` with ``X @ right_gram + ridge * left_cov @ X = rhs`` (both matrices symmetric
    positive (semi)definite; the ridge-regression M-step of a Gaussian prior on ``X``)."""
    if ridge == 0:
        return torch.linalg.solve(right_gram, rhs.transpose(-1, -2)).transpose(-1, -2)
    left_values, left_vectors = torch.linalg.eigh(left_cov)
    right_values, right_vectors = torch.linalg.eigh(right_gram)
    rotated = left_vectors.T @ rhs @ right_vectors
    rotated = rotated / (right_values[None, :] + ridge * left_values[:, None])
    return left_vectors @ rotated @ right_vectors.T


class LinearGaussianEM:
    """EM of :class:`zoo.lgssm.LinearGaussianSSM` (a mixin: it reads the model's specs,
    priors, point values and kernel adapter)."""

    def _check_em(self, caller: str) -> None:
        if self.guide_type != "map":
            raise ValueError(
                f"{caller}: EM fits point estimates; build the model with guide='map' (or fit meanfield by SVI)"
            )

    def _learned_names(self) -> set[str]:
        return {spec.name for spec in self._specs.values() if spec.learned}

    def _diagonal_observation_update(self, obs_cov: Tensor) -> bool:
        """Whether rows of ``B`` and entries of ``Σ`` separate (a diagonal ``Σ``, learned or fixed)."""
        spec = self._specs["observation_cov"]
        if spec.learned:
            return spec.constraint is Constraint.POSITIVE_DIAG
        return bool(torch.equal(obs_cov, torch.diag_embed(obs_cov.diagonal())))

    # -- E-step ----------------------------------------------------------------------------
    def e_step(self, batch: SequenceBatch) -> dict[str, Tensor]:
        """RTS smoother at the point parameters (in float64) and the sufficient statistics of
        ``batch`` summed over its sequences (keys in the module docstring of :mod:`zoo.lgssm.em`)."""
        self._check_em("e_step")
        with torch.no_grad():
            values, lengths = self._inputs(batch.values, batch.lengths)
            params = {name: value.double() for name, value in self._point().items()}
            values = values.double()
            smoothed = self._call_kernel(kalman.rts_smoother, values, lengths, params)
            learned = self._learned_names()
            valid = valid_mask(lengths, values.shape[1])
            mean, cov, lag_one = smoothed.smoothed_mean, smoothed.smoothed_cov, smoothed.lag_one_cov  # zero on padding
            second = cov + mean[..., :, None] * mean[..., None, :]  # E[s_t s_t^T]
            statistics = {"log_likelihood": smoothed.log_normalizer.sum()}
            if learned & {"transition_matrix", "transition_cov"}:
                later = valid[:, 1:].double()[..., None, None]
                statistics.update(
                    {
                        "transition_count": (lengths - 1).clamp(min=0).sum().double(),
                        "previous_state_outer": (second[:, :-1] * later).sum((0, 1)),
                        "current_state_outer": second[:, 1:].sum((0, 1)),
                        "lag_state_outer": (lag_one[:, 1:] + mean[:, 1:, :, None] * mean[:, :-1, None, :]).sum((0, 1)),
                    }
                )
            if learned & {"observation_matrix", "observation_cov"}:
                statistics.update(self._observation_statistics(params, values, valid, mean, second))
            if learned & {"initial_mean", "initial_cov"}:
                nonempty = lengths > 0
                statistics.update(
                    {
                        "initial_count": nonempty.sum().double(),
                        "initial_state_sum": mean[nonempty, 0].sum(0),
                        "initial_state_outer": second[nonempty, 0].sum(0),
                    }
                )
        return statistics

    def _observation_statistics(self, params, values, valid, mean, second) -> dict[str, Tensor]:
        observed = ~values.isnan() & valid[..., None]
        o = observed.double()
        filled = torch.where(observed, values, torch.zeros((), dtype=values.dtype, device=values.device))
        if self._diagonal_observation_update(params["observation_cov"]):
            # Rows of B and entries of a diagonal Sigma separate: each uses the steps where it is observed.
            return {
                "observed_count": o.sum((0, 1)),
                "observed_state_outer": torch.einsum("ntj,ntde->jde", o, second),
                "observation_state_cross": torch.einsum("ntj,ntd->jd", filled, mean),
                "observation_squares": filled.square().sum((0, 1)),
            }
        complete = observed.all(-1)
        if (observed.any(-1) & ~complete).any():
            raise ValueError(
                "e_step: a full observation covariance needs each step fully observed or fully "
                "missing for EM; fit it with method='svi' or use observation_cov_type='diag'"
            )
        w = complete.double()
        return {
            "observed_count": w.sum(),
            "observed_state_outer": torch.einsum("nt,ntde->de", w, second),
            "observation_state_cross": torch.einsum("nt,ntj,ntd->jd", w, filled, mean),
            "observation_outer": torch.einsum("nt,ntj,ntk->jk", w, filled, filled),
        }

    # -- M-step ----------------------------------------------------------------------------
    def m_step(self, statistics: Mapping[str, Tensor]) -> None:
        """Sets the learned matrices to the ECM update from summed :meth:`e_step` statistics."""
        self._check_em("m_step")
        with torch.no_grad():
            params = {name: value.double() for name, value in self._point().items()}
            new = self._maximise(params, statistics)
            self.set_values({name: value.to(self._dtype) for name, value in new.items()})

    def _maximise(self, params: dict[str, Tensor], statistics: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The ECM updates of the learned matrices (float64)."""
        d = self.state_dim
        learned = self._learned_names()
        weak = self.prior_type == "weak"
        priors = self._priors() if weak else {}
        state_var, state_second = (v.double() for v in self._state_scale())
        new: dict[str, Tensor] = {}

        if learned & {"transition_matrix", "transition_cov"}:
            s00, s11 = statistics["previous_state_outer"], statistics["current_state_outer"]
            s10 = statistics["lag_state_outer"]
            num_transitions = float(statistics["transition_count"])
            transition = params["transition_matrix"]
            transition_cov = params["transition_cov"]
            if "transition_matrix" in learned and num_transitions > 0:
                ridge = 1 / TRANSITION_SCALE**2 if weak else 0.0
                transition = _solve_sylvester(transition_cov, s00, s10, ridge)
                new["transition_matrix"] = transition
            if "transition_cov" in learned and num_transitions > 0:
                scatter = s11 - transition @ s10.T - s10 @ transition.T + transition @ s00 @ transition.T
                new["transition_cov"] = self._covariance_update(
                    "transition_cov", symmetrise(scatter), num_transitions, priors
                )

        if learned & {"observation_matrix", "observation_cov"}:
            new.update(self._observation_update(params, statistics, learned, priors, state_var))

        if learned & {"initial_mean", "initial_cov"}:
            count = float(statistics["initial_count"])
            total, outer = statistics["initial_state_sum"], statistics["initial_state_outer"]
            initial_mean, initial_cov = params["initial_mean"], params["initial_cov"]
            if "initial_mean" in learned and count > 0:
                if weak:
                    ridge = 1 / (INITIAL_MEAN_SCALE**2 * state_second)
                    eye = torch.eye(d, dtype=total.dtype, device=total.device)
                    initial_mean = torch.linalg.solve(count * eye + ridge * initial_cov, total)
                else:
                    initial_mean = total / count
                new["initial_mean"] = initial_mean
            if "initial_cov" in learned and count > 0:
                # sum_n E[(s_1 - mu)(s_1 - mu)^T]
                scatter = (
                    outer
                    - initial_mean[:, None] * total[None, :]
                    - total[:, None] * initial_mean[None, :]
                    + count * initial_mean[:, None] * initial_mean[None, :]
                )
                new["initial_cov"] = self._covariance_update("initial_cov", symmetrise(scatter), count, priors)
        return new

    def _covariance_update(self, name: str, scatter: Tensor, count: float, priors) -> Tensor:
        """Mode of the covariance given an expected scatter matrix over ``count`` terms, under its
        prior (inverse-Wishart or inverse-gamma) or none."""
        spec = self._specs[name]
        dim = scatter.shape[-1]
        if spec.constraint is Constraint.POSITIVE_DIAG:
            variance = scatter.diagonal()
            if spec.site in priors:
                prior = priors[spec.site].base_dist
                variance = (prior.rate.double() + 0.5 * variance) / (prior.concentration.double() + 1 + 0.5 * count)
            else:
                variance = variance / count
            return torch.diag_embed(variance.clamp(min=1e-12))
        if spec.site in priors:
            prior = priors[spec.site]
            psi = (prior.scale_tril @ prior.scale_tril.T).double()
            cov = (psi + scatter) / (float(prior.df) + dim + 1 + count)
        else:
            cov = scatter / count
        return symmetrise(cov) + 1e-12 * torch.eye(dim, dtype=cov.dtype, device=cov.device) * cov.diagonal().mean()

    def _observation_update(self, params, statistics, learned, priors, state_var) -> dict[str, Tensor]:
        weak = self.prior_type == "weak"
        obs_matrix, obs_cov = params["observation_matrix"], params["observation_cov"]
        ridge = 1 / (OBSERVATION_SCALE**2 * float(self.data_var.double().mean() / state_var)) if weak else 0.0
        gram, cross = statistics["observed_state_outer"], statistics["observation_state_cross"]
        new = {}
        if self._diagonal_observation_update(obs_cov):
            counts = statistics["observed_count"]  # (p,)
            variances = obs_cov.diagonal()
            if "observation_matrix" in learned:
                eye = torch.eye(self.state_dim, dtype=gram.dtype, device=gram.device)
                obs_matrix = torch.linalg.solve(gram + ridge * variances[:, None, None] * eye, cross)
                new["observation_matrix"] = obs_matrix
            if "observation_cov" in learned:
                squares = statistics["observation_squares"]
                scatter = (
                    squares
                    - 2 * (obs_matrix * cross).sum(-1)
                    + torch.einsum("jd,jde,je->j", obs_matrix, gram, obs_matrix)
                )
                site = self._specs["observation_cov"].site
                if site in priors:
                    prior = priors[site].base_dist
                    variance = (prior.rate.double() + 0.5 * scatter) / (prior.concentration.double() + 1 + 0.5 * counts)
                else:
                    variance = scatter / counts.clamp(min=1)
                new["observation_cov"] = torch.diag_embed(variance.clamp(min=1e-12))
            return new
        count = float(statistics["observed_count"])
        if "observation_matrix" in learned and count > 0:
            obs_matrix = _solve_sylvester(obs_cov, gram, cross, ridge)
            new["observation_matrix"] = obs_matrix
        if "observation_cov" in learned and count > 0:
            squares = statistics["observation_outer"]
            scatter = squares - obs_matrix @ cross.T - cross @ obs_matrix.T + obs_matrix @ gram @ obs_matrix.T
            new["observation_cov"] = self._covariance_update("observation_cov", symmetrise(scatter), count, priors)
        return new
