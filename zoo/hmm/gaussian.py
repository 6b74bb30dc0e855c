"""Gaussian emissions: :class:`GaussianHMM`, diagonal or full covariance, with NaN entries
marginalised exactly (the full-covariance density groups rows by missingness pattern), Normal
priors on the means and Gamma or Wishart priors on the precisions, and k-means++ seeding of
the means from the data."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from inference.batch import SequenceBatch
from inference.forecasting import ForecastDistribution
from zoo.params import BartlettWishart, constrain_tril, point_property, unconstrain_tril

from .base import Forecast, _generator_device, _VectorEmissionHMM


class GaussianHMM(_VectorEmissionHMM):
    """HMM with Gaussian emissions, diagonal or full covariance.

    Observations are ``(N, T, D)`` floats; NaN entries are missing and are
    marginalised exactly (the marginal of the observed coordinates). EM with
    ``covariance_type="full"`` supports whole missing rows, not partial ones.

    Example:
        >>> hmm = GaussianHMM.from_params(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        ...                               torch.tensor([[-1.0], [1.0]]), torch.tensor([[0.5], [0.5]]))
        >>> hmm.smooth(torch.tensor([[[-1.2], [0.9], [float("nan")]]])).shape
        torch.Size([1, 3, 2])
    """

    def __init__(
        self,
        num_states: int,
        dim: int,
        *,
        covariance_type: str = "diag",
        mean_prior_scale: float = 10.0,
        precision_shape: float = 1.0,
        precision_rate: float = 1e-3,
        **kwargs,
    ) -> None:
        if covariance_type not in ("diag", "full"):
            raise ValueError(f"covariance_type: expected 'diag' or 'full', got {covariance_type!r}")
        super().__init__(num_states, dim, **kwargs)
        self.covariance_type = covariance_type
        self.mean_prior_scale = float(mean_prior_scale)  # in units of the data's standard deviation
        self.precision_shape = float(precision_shape)
        self.precision_rate = float(precision_rate)  # in units of the data's variance
        self.emission_loc = nn.Parameter(
            torch.linspace(-1, 1, num_states).unsqueeze(-1).expand(num_states, dim).clone()
        )
        if covariance_type == "diag":
            self.log_scales = nn.Parameter(torch.zeros(num_states, dim))
        else:
            self.scale_tril_unconstrained = nn.Parameter(torch.zeros(num_states, dim, dim))
        if self.guide_type == "meanfield":
            self._ensure_variational_parameters()

    @classmethod
    def from_params(cls, initial, transition, means, covariances, **kwargs) -> GaussianHMM:
        """An HMM with ``means (K, D)`` and ``covariances`` ``(K, D)`` (diagonal) or ``(K, D, D)`` (full)."""
        means = torch.as_tensor(means)
        covariances = torch.as_tensor(covariances, dtype=means.dtype)
        if means.dim() != 2:
            raise ValueError(f"means: expected shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        if covariances.shape == (k, d):
            covariance_type = "diag"
        elif covariances.shape == (k, d, d):
            covariance_type = "full"
        else:
            raise ValueError(
                f"covariances: expected shape ({k}, {d}) (diagonal) or ({k}, {d}, {d}) (full), got {tuple(covariances.shape)}"
            )
        model = cls(k, d, covariance_type=covariance_type, **kwargs).to(means.dtype)
        model._set_chain(initial, transition)
        with torch.no_grad():
            model.emission_loc.data = means.clone()
            if covariance_type == "diag":
                if (covariances <= 0).any():
                    raise ValueError("covariances: expected positive variances")
                model.log_scales.data = 0.5 * covariances.log()
            else:
                model.scale_tril_unconstrained.data = unconstrain_tril(torch.linalg.cholesky(covariances))
            model._sync_variational_to_point()
        return model

    means = point_property("means", "``(K, D)`` state means.")

    @property
    def covariances(self) -> Tensor:
        """``(K, D)`` variances (diag) or ``(K, D, D)`` covariance matrices (full)."""
        precisions = self._point()["precisions"]
        return 1 / precisions if self.covariance_type == "diag" else torch.linalg.inv(precisions)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "covariance_type": self.covariance_type,
            "mean_prior_scale": self.mean_prior_scale,
            "precision_shape": self.precision_shape,
            "precision_rate": self.precision_rate,
        }

    def _num_emission_parameters(self) -> int:
        k, d = self.num_states, self.dim
        return k * d + (k * d if self.covariance_type == "diag" else k * d * (d + 1) // 2)

    def _emission_priors(self) -> dict[str, dist.Distribution]:
        k, d = self.num_states, self.dim
        mean = self.data_mean.to(self._dtype).expand(k, d)
        scale = (self.mean_prior_scale * self.data_var.to(self._dtype).sqrt()).expand(k, d)
        priors = {"means": dist.Normal(mean, scale).to_event(2)}
        if self.covariance_type == "diag":
            rate = (self.precision_rate * self.data_var.to(self._dtype)).expand(k, d)
            priors["precisions"] = dist.Gamma(torch.full_like(rate, self.precision_shape), rate).to_event(2)
        else:
            # Wishart on each precision matrix; df = D + 2 * shape - 1 matches the diagonal
            # case's Gamma(shape, rate) marginals on the diagonal of a 1x1 precision.
            df = torch.full((k,), d - 1 + 2 * self.precision_shape, dtype=self._dtype, device=self._device)
            scale_matrix = torch.diag_embed(1 / (2 * self.precision_rate * self.data_var.to(self._dtype))).expand(
                k, d, d
            )
            priors["precisions"] = dist.Wishart(df, covariance_matrix=scale_matrix).to_event(1)
        return priors

    def _scale_tril(self) -> Tensor:
        return constrain_tril(self.scale_tril_unconstrained)

    def _set_emission_value(self, name: str, value: Tensor) -> None:
        if name == "means":
            self.emission_loc.data.copy_(value)
        elif self.covariance_type == "diag":
            self.log_scales.data.copy_(-0.5 * value.log())
        else:
            covariance = torch.linalg.inv(value)
            covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
            self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.linalg.cholesky(covariance)))

    def _emission_site_dims(self) -> dict[str, tuple[str, ...]]:
        if self.covariance_type == "diag":
            return {"means": ("state", "dim"), "precisions": ("state", "dim")}
        return {"means": ("state", "dim"), "precisions": ("state", "dim", "dim_bis")}

    def state_label_features(self, values) -> Tensor:
        """State means ``(K, D)`` in units of the data's standard deviation."""
        means = torch.as_tensor(values["means"])
        return means / self.data_var.to(device=means.device, dtype=means.dtype).sqrt()

    def _emission_point(self) -> dict[str, Tensor]:
        if self.covariance_type == "diag":
            return {"means": self.emission_loc, "precisions": (-2 * self.log_scales).exp()}
        eye = torch.eye(self.dim, dtype=self._dtype, device=self._device)
        inverse_tril = torch.linalg.solve_triangular(self._scale_tril(), eye, upper=False)
        return {"means": self.emission_loc, "precisions": inverse_tril.transpose(-1, -2) @ inverse_tril}

    def _emission_log_prob(self, values: Tensor, params: dict[str, Tensor]) -> Tensor:
        observed, x = self._observed(values)
        means, precisions = params["means"], params["precisions"]
        o = observed.to(values.dtype)
        if self.covariance_type == "diag":
            # -0.5 * sum_d o_d [ (x_d - mu_kd)^2 lambda_kd - log lambda_kd + log 2 pi ], by matmuls: (N, T, D) @ (D, K)
            quadratic = (
                (o * x * x) @ precisions.T - 2 * (x * o) @ (means * precisions).T + o @ (means**2 * precisions).T
            )
            normalizer = o @ (precisions.log() - math.log(2 * math.pi)).T
            return -0.5 * (quadratic - normalizer)
        return _full_gaussian_log_prob(x, observed, means, precisions)

    def _emission_statistics(self, values: Tensor, state_marginals: Tensor) -> dict[str, Tensor]:
        """Expected emission statistics per state. Diagonal: ``"observed_weights"``,
        ``"weighted_sums"`` and ``"weighted_squares"``, each ``(K, D)`` (sums over the steps
        where coordinate ``d`` is observed of the state probability, times 1, ``x_d``,
        ``x_d^2``). Full: ``"observed_weights"`` ``(K,)``, ``"weighted_sums"`` ``(K, D)`` and
        ``"weighted_outer_products"`` ``(K, D, D)`` over fully observed steps (a step must be
        fully observed or fully missing)."""
        observed, x = self._observed(values)
        k, d = self.num_states, self.dim
        weights = state_marginals.reshape(-1, k).to(values.dtype)  # (NT, K)
        xf = x.reshape(-1, d)
        if self.covariance_type == "diag":
            o = observed.reshape(-1, d).to(values.dtype)
            return {
                "observed_weights": weights.T @ o,
                "weighted_sums": weights.T @ xf,
                "weighted_squares": weights.T @ (xf * xf),
            }
        complete = observed.reshape(-1, d).all(-1)
        partial = observed.reshape(-1, d).any(-1) & ~complete
        if partial.any():
            raise ValueError(
                "e_step: GaussianHMM with covariance_type='full' needs each row fully observed or fully "
                "missing for EM; fit it with method='svi' or use covariance_type='diag'"
            )
        weights = weights * complete.unsqueeze(-1).to(values.dtype)
        return {
            "observed_weights": weights.sum(0),
            "weighted_sums": weights.T @ xf,
            "weighted_outer_products": torch.einsum("nk,nd,ne->kde", weights, xf, xf),
        }

    def _emission_m_step(self, statistics: Mapping[str, Tensor], point) -> None:
        d = self.dim
        count, first = statistics["observed_weights"], statistics["weighted_sums"]
        dtype = first.dtype
        prior_mean = self.data_mean.to(dtype)
        prior_precision = 1 / (self.mean_prior_scale**2 * self.data_var.to(dtype))
        precision = point["precisions"].to(dtype)
        if self.covariance_type == "diag":
            second = statistics["weighted_squares"]
            # Conditional maximisation: means given the current precisions, then precisions given the new means.
            means = (precision * first + prior_precision * prior_mean) / (precision * count + prior_precision)
            squares = second - 2 * means * first + means**2 * count
            rate = self.precision_rate * self.data_var.to(dtype)
            variance = (rate + 0.5 * squares) / (self.precision_shape - 1 + 0.5 * count).clamp(min=1e-12)
            self.emission_loc.data.copy_(means.to(self._dtype))
            self.log_scales.data.copy_((0.5 * variance.clamp(min=1e-12).log()).to(self._dtype))
            return
        second = statistics["weighted_outer_products"]
        # means given current precisions under the N(m0, s0^2 I) prior
        system = count[:, None, None] * precision + prior_precision.diag_embed()
        rhs = (precision @ first.unsqueeze(-1)).squeeze(-1) + prior_precision * prior_mean
        means = torch.linalg.solve(system, rhs)
        scatter = (
            second
            - means.unsqueeze(-1) * first.unsqueeze(-2)
            - first.unsqueeze(-1) * means.unsqueeze(-2)
            + count[:, None, None] * means.unsqueeze(-1) * means.unsqueeze(-2)
        )
        # Wishart(df, W) prior on the precision: the posterior mode's inverse.
        prior_scatter = torch.diag_embed(2 * self.precision_rate * self.data_var.to(dtype))
        df = d - 1 + 2 * self.precision_shape
        covariance = (prior_scatter + scatter) / (df + count - d - 1).clamp(min=1e-12)[:, None, None]
        covariance = 0.5 * (covariance + covariance.transpose(-1, -2))
        self.emission_loc.data.copy_(means.to(self._dtype))
        self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.linalg.cholesky(covariance)).to(self._dtype))

    def _reset_emission(self, generator) -> None:
        """Means by k-means++ seeding on the data seen by ``initialize_from_data``
        (else the data mean plus standard-normal noise in data units); every
        state starts with the data's variance."""
        k, d = self.num_states, self.dim
        sd = self.data_var.to(self._dtype).sqrt()
        points = getattr(self, "_seed_points", None)
        if points is not None and points.shape[0] >= k:
            # Standardise so that dimensions on different scales count equally.
            points = points.to(self.data_mean)  # the model may have moved since initialize_from_data
            centres = _kmeans_plus_plus((points - self.data_mean) / self.data_var.sqrt(), k, generator)
            self.emission_loc.data.copy_((self.data_mean + centres * self.data_var.sqrt()).to(self._dtype))
        else:
            noise = torch.randn(k, d, generator=generator, dtype=self._dtype, device=_generator_device(generator))
            self.emission_loc.data.copy_(self.data_mean.to(self._dtype) + sd * noise.to(self._device))
        if self.covariance_type == "diag":
            self.log_scales.data.copy_(sd.log().expand(k, d))
        else:
            self.scale_tril_unconstrained.data.copy_(unconstrain_tril(torch.diag_embed(sd.expand(k, d))))

    def _sample_emission(self, states: Tensor, point, generator) -> Tensor:
        noise = torch.randn(
            *states.shape,
            self.dim,
            generator=generator,
            dtype=self._dtype,
            device=generator.device if generator is not None else self._device,
        ).to(self._device)
        if self.covariance_type == "diag":
            return point["means"][states] + noise * point["precisions"][states].rsqrt()
        tril = torch.linalg.cholesky(torch.linalg.inv(point["precisions"]))
        return point["means"][states] + (tril[states] @ noise.unsqueeze(-1)).squeeze(-1)

    def _observation_forecast(self, state_probs: Tensor) -> Forecast:
        point = self._point()
        means = point["means"]
        covariances = (
            torch.diag_embed(1 / point["precisions"])
            if self.covariance_type == "diag"
            else torch.linalg.inv(point["precisions"])
        )
        mean = state_probs @ means
        second = torch.einsum("nsk,kde->nsde", state_probs, covariances + means.unsqueeze(-1) * means.unsqueeze(-2))
        return Forecast(state_probs, mean=mean, covariance=second - mean.unsqueeze(-1) * mean.unsqueeze(-2))

    def forecast_distribution(
        self, history: SequenceBatch, steps: int, *, num_samples: int = 500, generator: torch.Generator | None = None
    ) -> ForecastDistribution:
        """The exact per-step marginals: a mixture over the forecast state probabilities of the
        states' Gaussians (each entry's marginal; nothing is sampled)."""
        state_probs = self.forecast(history.values, steps, history.lengths).state_probs  # (N, H, K)
        means = self.means.detach()  # (K, D)
        scales = self.covariances.detach().diagonal(dim1=-2, dim2=-1).sqrt()  # (K, D)
        shape = tuple(state_probs.shape[:2]) + tuple(means.shape)
        return ForecastDistribution(
            "mixture", weights=state_probs, means=means.expand(shape), scales=scales.expand(shape)
        )


def _kmeans_plus_plus(points: Tensor, num_centres: int, generator: torch.Generator | None) -> Tensor:
    """``(num_centres, D)`` rows of ``points (M, D)``: the first uniformly at random, each
    next with probability proportional to its squared distance to the nearest centre
    chosen so far (Arthur and Vassilvitskii, 2007)."""
    device = _generator_device(generator)
    first = int(torch.randint(points.shape[0], (1,), generator=generator, device=device))
    centres = [points[first]]
    nearest = ((points - centres[0]) ** 2).sum(-1)  # (M,)
    for _ in range(1, num_centres):
        # All points on the chosen centres: any pick is as good as another.
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        index = int(torch.multinomial(weights.to(device), 1, generator=generator))
        centres.append(points[index])
        nearest = torch.minimum(nearest, ((points - points[index]) ** 2).sum(-1))
    return torch.stack(centres)


#: Kept under its former name (tests and pickles refer to it); defined in :mod:`zoo.params`.
_BartlettWishart = BartlettWishart


def _full_gaussian_log_prob(x: Tensor, observed: Tensor, means: Tensor, precisions: Tensor) -> Tensor:
    """``(N, T, K)`` log densities of the observed coordinates of each row
    under full-covariance Gaussians; rows are grouped by missingness pattern."""
    n, t, d = x.shape
    k = means.shape[0]
    flat_x, flat_observed = x.reshape(-1, d), observed.reshape(-1, d)
    if bool(flat_observed.all()):
        # No missing entry: one batched density (the common case, kept free of grouping).
        law = dist.MultivariateNormal(means, precision_matrix=precisions)
        return law.log_prob(flat_x.unsqueeze(-2)).reshape(n, t, k)
    result = torch.zeros(n * t, k, dtype=x.dtype, device=x.device)
    covariances = torch.linalg.inv(precisions)
    if d < 63:
        # Each pattern as the integer with bit j set when coordinate j is observed:
        # a 1-D unique is an order of magnitude faster than torch.unique(dim=0).
        bits = 2 ** torch.arange(d, device=x.device)
        codes, inverse = torch.unique((flat_observed.long() * bits).sum(-1), return_inverse=True)
        patterns = (codes.unsqueeze(-1) & bits) != 0
    else:
        patterns, inverse = torch.unique(flat_observed, dim=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        if not pattern.any():
            continue  # a fully missing row contributes nothing
        rows = inverse == index
        dims = pattern.nonzero().squeeze(-1)
        if pattern.all():
            law = dist.MultivariateNormal(means, precision_matrix=precisions)
        else:
            sub = covariances[:, dims][:, :, dims]
            law = dist.MultivariateNormal(means[:, dims], covariance_matrix=sub)
        result[rows] = law.log_prob(flat_x[rows][:, dims].unsqueeze(-2))
    return result.reshape(n, t, k)
