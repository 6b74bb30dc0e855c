r"""Linear-Gaussian state-space models (the lectures' "Gaussian HMM"): Kalman filtering as a Pyro model.

The generative model of one sequence of length :math:`L`, with state dimension ``d`` and
observation dimension ``p`` (matrices act on column vectors):

.. math::

    S_1 \sim \mathcal N(\mu_0, \Sigma_0), \qquad
    S_t \mid S_{t-1} \sim \mathcal N(A S_{t-1}, \Gamma), \qquad
    X_t \mid S_t \sim \mathcal N(B S_t, \Sigma),

with ``transition_matrix`` :math:`A` ``(d, d)``, ``observation_matrix`` :math:`B` ``(p, d)``,
``transition_cov`` :math:`\Gamma` ``(d, d)``, ``observation_cov`` :math:`\Sigma` ``(p, p)``,
``initial_mean`` :math:`\mu_0` ``(d,)`` and ``initial_cov`` :math:`\Sigma_0` ``(d, d)``. Each
of them is learned or held fixed; covariances are full or diagonal. With
``initial="diffuse"`` the prior of :math:`S_1` is the exact diffuse one (Durbin & Koopman,
2012, ch. 5: infinite variance, the initial terms of the likelihood handled exactly), and
:math:`\mu_0, \Sigma_0` are not learned (they only seed :meth:`LinearGaussianSSM.sample`).

Observations are ``(N, T, p)`` floats; NaN marks a missing entry (single entries or whole
rows), marginalised exactly by the kernels of :mod:`inference.kalman`.

Priors (``prior="weak"``), proper and scaled by the data seen by ``initialize_from_data``
(``v_j`` the variance of observed coordinate ``j``, ``s^2`` a rough state variance):
:math:`A_{ij} \sim \mathcal N(0, 1)`; :math:`B_{jk} \sim \mathcal N(0, 100\,\bar v / s^2)`;
covariances inverse-Wishart with ``df = dim + 1`` and scale ``2e-3`` times the data (or
state) variance, diagonal variances inverse-gamma(1, ``1e-3`` variance) — the same
marginals; :math:`\mu_0 \sim \mathcal N(0, 100\, m^2)` and :math:`\Sigma_0 \sim
\mathrm{IW}(d + 1, 2 m^2 I)` with :math:`m^2` the state's rough second moment.
``prior="none"`` puts no prior at all (improper flat sites): every fit is then maximum
likelihood.

The Pyro model has two forms (``latent=``):

* ``"marginal"`` — the states are integrated out by the Kalman filter: the model reads
  ``pyro.factor`` of the exact log-likelihood of each sequence;
* ``"sampled"`` — the states are one sample site ``"states"`` per sequence, of event shape
  ``(T, d)``, under a Gauss–Markov chain prior; the guide draws them from the exact
  smoothing posterior given the guide's parameters (forward filter, backward sample) and
  scores them by its backward conditionals, so the ELBO equals the exact log-likelihood
  for every draw (``states_guide="exact"``); or from a learned Markov Gaussian, the
  smoothing posterior of a linear-Gaussian model with its own parameters
  (``states_guide="learned"``), for which the ELBO is a bound.

Guides over the parameters: ``"map"`` (Delta sites at point values) or ``"meanfield"``
(Normal matrices and means, log-normal variances, inverse-Wishart full covariances). EM
(:meth:`LinearGaussianSSM.e_step` and :meth:`LinearGaussianSSM.m_step`, chained by the
contract's ``em_step``; Shumway & Stoffer, 1982; Ghahramani & Hinton, 1996) maximises the
same objective in closed form.

The package reads in four parts:

* :mod:`zoo.lgssm.parameters` — the six matrices declared (shape, constraint, learned /
  fixed / held, prior), one :class:`zoo.params.ParameterSpec` each;
* :mod:`zoo.lgssm.model` — :class:`LinearGaussianSSM`: constructors, generic parameter code
  over the specs, the Pyro model and guides, exact inference through :mod:`inference.kalman`;
* :mod:`zoo.lgssm.em` — the E-step's summed sufficient statistics and the M-step;
* :mod:`zoo.lgssm.distributions` — the state-path prior, the exact smoothing posterior and
  the observation density of the ``latent="sampled"`` form.

Example:
    >>> model = LinearGaussianSSM.local_level(level_var=1.0, noise_var=2.0, initial="prior")
    >>> batch = model.sample(2, 20, generator=torch.Generator().manual_seed(0))
    >>> model.log_prob(batch.values).shape, model.smooth(batch.values).smoothed_mean.shape
    (torch.Size([2]), torch.Size([2, 20, 1]))
"""

import torch  # noqa: F401  (the docstring examples, run by doctest in this namespace, use it)

from .distributions import _InverseWishart, _VectorToPositiveDefinite, positive_definite_matrix  # noqa: F401 (tests)
from .model import Imputation, LinearGaussianSSM
from .parameters import PARAMETER_NAMES

# The public classes' home is this package (doctest, pickles and reprs name zoo.lgssm).
LinearGaussianSSM.__module__ = Imputation.__module__ = __name__

__all__ = ["Imputation", "LinearGaussianSSM", "PARAMETER_NAMES", "positive_definite_matrix"]


# -- command-line registration ------------------------------------------------
# What `seqzoo` needs to offer this family (see zoo/registry.py and docs/families.md).
import numpy as np  # noqa: E402  (this block stands on its own imports)

from zoo.registry import Family, UsageError, register  # noqa: E402

#: Choices of each setting (the first is the default), as the flags and a compare spec give them.
_CLI_CHOICES = {
    "transition": ("learned", "identity"),
    "observation": ("learned", "identity"),
    "covariance": ("diag", "full"),
    "initial": ("diffuse", "prior"),
    "prior": ("weak", "none"),
    "guide": ("map", "meanfield"),
    "latent": ("marginal", "sampled"),
}


def _add_cli_arguments(group) -> None:
    group.add_argument("--state-dim", type=int, required=True, metavar="D", help="dimension d of the latent state")
    group.add_argument(
        "--transition",
        choices=["learned", "identity"],
        default="learned",
        help="state transition matrix A: learned, or fixed to I (random walk)",
    )
    group.add_argument(
        "--observation",
        choices=["learned", "identity"],
        default="learned",
        help="observation matrix B: learned, or fixed to I (needs --state-dim = number of series)",
    )
    group.add_argument(
        "--covariance", choices=["diag", "full"], default="diag", help="form of the noise covariances Γ and Σ"
    )
    group.add_argument(
        "--initial",
        choices=["diffuse", "prior"],
        default="diffuse",
        help="initial state: exact diffuse initialisation, or a learned Gaussian prior",
    )
    group.add_argument(
        "--prior", choices=["weak", "none"], default="weak", help="weak priors on the parameters (MAP), or none (MLE)"
    )
    group.add_argument("--guide", choices=["map", "meanfield"], default="map")
    group.add_argument(
        "--latent",
        choices=["marginal", "sampled"],
        default="marginal",
        help="svi: states integrated out by the Kalman filter, or sampled with a structured guide",
    )


def _cli_settings(args) -> dict[str, str]:
    return {"state_dim": str(args.state_dim), **{name: getattr(args, name) for name in _CLI_CHOICES}}


def _build_from_settings(data, settings: dict[str, str]) -> LinearGaussianSSM:
    """A linear-Gaussian state-space model with ``state_dim`` states over the data's ``p`` real series.

    ``transition="identity"`` fixes ``A = I`` (random-walk states); ``observation="identity"``
    fixes ``B = I`` (needs ``state_dim == p``); ``covariance`` is the form of both noise
    covariances Γ and Σ.
    """
    if data.kind == "categorical":
        raise UsageError(
            f"fit lgssm: needs real-valued data, but {data.source} holds categorical data (use --kind real for a numeric CSV)"
        )
    try:
        state_dim = int(settings.get("state_dim", 1))
    except ValueError:
        raise UsageError(f"lgssm: state_dim must be an integer, got {settings['state_dim']!r}") from None
    if state_dim < 1:
        raise UsageError(f"--state-dim: expected a positive integer, got {state_dim!r}")
    chosen = {name: settings.get(name, allowed[0]) for name, allowed in _CLI_CHOICES.items()}
    for name, value in chosen.items():
        if value not in _CLI_CHOICES[name]:
            raise UsageError(f"--{name}: expected one of {', '.join(_CLI_CHOICES[name])}, got {value!r}")
    if chosen["latent"] == "sampled" and chosen["initial"] == "diffuse":
        raise UsageError("--latent sampled: the states need a proper prior on the first one; add --initial prior")
    obs_dim = data.dim
    dtype = data.batch.values.dtype
    fixed = {}
    if chosen["transition"] == "identity":
        fixed["transition_matrix"] = torch.eye(state_dim, dtype=dtype)
    if chosen["observation"] == "identity":
        if state_dim != obs_dim:
            raise UsageError(
                f"--observation identity: needs --state-dim equal to the number of series ({obs_dim}), got {state_dim}"
            )
        fixed["observation_matrix"] = torch.eye(obs_dim, dtype=dtype)
    model = LinearGaussianSSM(
        state_dim,
        obs_dim,
        transition_cov_type=chosen["covariance"],
        observation_cov_type=chosen["covariance"],
        initial=chosen["initial"],
        prior=chosen["prior"],
        guide=chosen["guide"],
        latent=chosen["latent"],
        fixed=fixed or None,
    )
    return model.to(dtype=dtype)


def _time_axis_of(data):
    """The data's own time axis (:func:`zoo.data.time_axis`: years and units of a built-in
    series), or None when it has none or it does not match the series."""
    from zoo.data import time_axis

    try:
        axis = time_axis(data.source)
    except (ValueError, OSError, ImportError):
        return None
    if axis is None or not np.issubdtype(axis.values.dtype, np.number) or len(axis.values) < int(data.batch.lengths[0]):
        return None
    return axis


def _times(axis, start: int, stop: int, end: int) -> tuple[np.ndarray, np.ndarray, str]:
    """History times ``(stop - start,)``, forecast times ``(end - stop,)`` and the axis label:
    the data's own times (continued at their last spacing past the data's end), else step numbers."""
    if axis is None:
        return np.arange(start, stop), np.arange(stop, end), "time step"
    values = np.asarray(axis.values, dtype=np.float64)
    spacing = values[-1] - values[-2] if len(values) > 1 else 1.0
    extended = np.concatenate([values, values[-1] + spacing * np.arange(1, max(0, end - len(values)) + 1)])
    return extended[start:stop], extended[stop:end], axis.label


def _plot_states_and_forecast(
    run, model: LinearGaussianSSM, splits, data, max_history: int = 1000, max_horizon: int = 200
) -> None:
    """``smoothed_states.png`` (smoothed and filtered states, smoothed signal, 90% bands) on
    the end of the training series, and ``forecast.png`` from there over the held-out steps.

    One series (the data is one sequence): the history is the training part and the
    forecast covers the validation and test parts that follow it in time. Many sequences:
    the first sequence of the validation part (else training), its first 80% as history.
    """
    from zoo import plots  # matplotlib only when a figure is drawn

    if data.num_sequences == 1:
        series = data.batch.values[0, : int(data.batch.lengths[0])]
        history_length = int(splits.train.batch.lengths[0])
    else:
        part = splits.valid if splits.valid is not None and splits.valid.batch.num_steps else splits.train
        series = part.batch.values[0, : int(part.batch.lengths[0])]
        history_length = max(1, int(0.8 * len(series)))
    start = max(0, history_length - max_history)
    horizon = min(max_horizon, len(series) - history_length)
    device = next(model.parameters()).device
    history = series[start:history_length].to(device)[None]
    steps = horizon if horizon > 0 else min(max_horizon, max(10, (history_length - start) // 5))
    # The data's own time column (the Nile's years, with units) for one series; step numbers otherwise.
    axis = _time_axis_of(data) if data.num_sequences == 1 else None
    time, future_time, time_label = _times(axis, start, history_length, history_length + steps)
    units = axis.units if axis is not None else None
    names = data.series_names
    with torch.no_grad():
        smoothed = model.smooth(history)
        filtered = model.filter(history)
        matrix = model.observation_matrix
        signal_mean = (smoothed.smoothed_mean[0] @ matrix.T).cpu().numpy()
        signal_var = torch.diagonal(matrix @ smoothed.smoothed_cov[0] @ matrix.T, dim1=-2, dim2=-1)
        state_var = torch.diagonal(smoothed.smoothed_cov[0], dim1=-2, dim2=-1)
        identity_observation = matrix.shape[0] == matrix.shape[1] and torch.allclose(
            matrix, torch.eye(len(matrix), dtype=matrix.dtype, device=device)
        )
    observed = history[0].cpu().numpy()
    figure = plots.state_bands(
        time,
        smoothed.smoothed_mean[0].cpu().numpy(),
        state_var.clamp_min(0).sqrt().cpu().numpy(),
        filtered_mean=filtered.filtered_mean[0].cpu().numpy(),
        signal_mean=None if identity_observation else signal_mean,
        signal_std=None if identity_observation else signal_var.clamp_min(0).sqrt().cpu().numpy(),
        observed=observed,
        series_names=names,
        title=f"{model.family}: smoothed states, 90% bands ({data.source})",
        time_label=time_label,
        units=units,
    )
    run.save_figure("smoothed_states.png", figure)
    with torch.no_grad():
        prediction = model.forecast(history, steps)
    mean = prediction.observation_mean[0].cpu().numpy()
    std = torch.diagonal(prediction.observation_cov[0], dim1=-2, dim2=-1).clamp_min(0).sqrt().cpu().numpy()
    actual = series[history_length : history_length + steps].cpu().numpy() if horizon > 0 else None
    figure = plots.forecast_bands(
        time,
        observed,
        future_time,
        mean,
        std,
        actual=actual,
        series_names=names,
        time_label=time_label,
        units=units,
        title=f"{model.family}: {steps}-step forecast with 90% bands ({data.source})",
    )
    run.save_figure("forecast.png", figure)


register(
    Family(
        name="lgssm",
        help="linear-Gaussian state-space model (Kalman filter)",
        add_arguments=_add_cli_arguments,
        settings_from_args=_cli_settings,
        build=_build_from_settings,
        label=lambda settings: f"lgssm-d{settings.get('state_dim', 1)}",
        model_classes=(LinearGaussianSSM,),
        data_kinds=("real", "count"),
        plots=_plot_states_and_forecast,
    )
)
