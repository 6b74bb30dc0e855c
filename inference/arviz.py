r"""Posterior export to ArviZ, PSIS-LOO for any posterior, and model comparison.

:func:`to_inference_data` turns any model of the zoo and its data into an
:class:`arviz.InferenceData`, from one of three kinds of posterior:

* an MCMC run (``fit(..., method="nuts")``: its :class:`~inference.fit.FitResult`
  or :class:`~inference.mcmc.MCMCResult`): every chain and draw;
* a fitted guide (``posterior="guide"``): ``num_draws`` independent draws of
  the parameter sites from the variational posterior, read from traces of
  ``model.guide`` (one chain);
* a point estimate (``posterior="point"`` or ``None``): one chain of one draw.

It depends on the :class:`~inference.contract.SequenceModel` contract only
(``parameter_sites``, ``set_parameter_values``, ``site_dims``, ``log_prob``,
``sample`` and, where the family has them, ``smooth`` and the state-label
hooks), so a new family plugs in by implementing those.

Groups:

* ``posterior`` — the parameter sites, dims ``(chain, draw, *site_dims)``
  (``state``, ``next_state``, ``symbol``, ``dim`` ...), state labels aligned
  across draws (:mod:`inference.labels`).
* ``log_likelihood`` — ``obs`` with dims ``(chain, draw, sequence)``: the
  log-likelihood of each **whole sequence** at each draw (read from a trace
  of ``model.model`` conditioned on the draw, or ``log_prob`` after
  ``set_parameter_values`` for models with enumerated state sites). The pointwise unit
  of PSIS-LOO/WAIC must be (approximately) exchangeable given the parameters;
  the time steps of one sequence are not (each depends on its past through
  the latent state), so leaving one step out is not leave-one-out
  cross-validation of anything a user cares about, and its importance ratios
  are wrong. Leaving out one sequence (or one document) is. With a single
  long sequence, LOO has one point and says nothing: split it into
  independent stretches first, or compare held-out log-likelihoods.
* ``posterior_predictive`` — ``obs`` replicated at ``num_predictive_draws``
  (thinned) draws: the model set to the draw, then ``model.sample`` with the
  observed number of sequences and length (NaN beyond each sequence's end when
  lengths differ). A point estimate is replicated ``num_predictive_draws``
  times at its one draw (the plug-in predictive).
* ``observed_data`` — ``obs`` with dims ``(sequence, time, *event)``.
* ``sample_stats`` — NUTS: ``diverging``, ``tree_depth``, ``n_steps``,
  ``step_size``, ``acceptance_rate``, ``lp``. Guide draws: ``log_q`` (log
  density of the draw under the guide), ``log_joint`` (log prior + log
  likelihood) and ``log_importance_ratio`` (their difference, used by
  :func:`loo` for the importance-sampling correction); plus ``elbo``
  (dims ``(fit_step,)``) when an SVI :class:`~inference.fit.FitResult` is given.
* ``posterior_states`` — latent-state summaries where the model has
  ``smooth``: ``state_probs`` ``(sequence, time, state)``, the smoothed
  marginals :math:`p(s_t \mid x)` averaged over the predictive draws (for
  models whose ``smooth`` returns several tensors, e.g. Kalman means and
  covariances, each ``(sequence, time, ...)`` field averaged, named
  ``smoothed_<field>``, with ``smoothed_cov`` the covariance of the mixture over
  draws: mean covariance plus covariance of the means); and, for
  MCMC runs that drew them, ``sampled_states`` ``(chain, draw, sequence, time)``
  from forward-filtering backward-sampling; for a guide or point posterior of a
  model with ``sample_states`` but no ``smooth`` (no closed-form state
  marginals, e.g. a deep Markov model, whose ``sample_states`` draws from its
  guide), ``sampled_states`` ``(chain, draw, sequence, time, latent)``: one
  path per kept draw (NaN past each sequence's end).

**ArviZ 1.x.** Everything is built with :func:`arviz.from_dict` plus
``InferenceData.add_groups`` for ``posterior_states``. In ArviZ 1.x
``InferenceData`` becomes an ``xarray.DataTree`` and ``from_dict`` takes one
nested mapping ``{"posterior": {...}, "log_likelihood": {...}}`` with
``dims``/``coords`` per variable; the extra group becomes a child node
(``datatree["posterior_states"] = ...``), and ``ELPDData``/``psislw`` move to
``arviz_stats`` (``loo``, ``psislw`` keep their meaning). The arrays and dims
built here carry over unchanged; only these call sites change.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine
from pyro.poutine.runtime import Message
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .batch import SequenceBatch
from .contract import SequenceModel
from .labels import align_state_labels

with warnings.catch_warnings():
    # ArviZ 0.2x warns at import about its coming 1.x refactor.
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az
    from arviz.stats.stats_utils import ELPDData

#: Pareto k above which importance sampling is unreliable (Vehtari et al., 2024).
PARETO_K_THRESHOLD = 0.7
#: Name of the observations in every group.
OBSERVED_NAME = "obs"


def _posterior_kind(posterior: Any) -> str:
    if posterior is None or (isinstance(posterior, str) and posterior == "point"):
        return "point"
    if isinstance(posterior, str):
        if posterior == "guide":
            return "guide"
        raise ValueError(
            f"posterior: expected a NUTS FitResult or MCMCResult, 'guide', 'point' or None, got {posterior!r}"
        )
    if getattr(posterior, "mcmc", None) is not None:
        return "nuts"
    if hasattr(posterior, "draws") and hasattr(posterior, "sample_stats"):
        return "nuts"
    raise ValueError(
        f"posterior: expected a NUTS FitResult or MCMCResult, 'guide', 'point' or None, "
        f"got {type(posterior).__name__} (a FitResult of method {getattr(posterior, 'method', '?')!r}?)"
    )


def _site_log_prob(site: Message) -> Tensor:
    """The log density of a sample site's value under its distribution (a sample site's ``fn``)."""
    return cast(pyro.distributions.Distribution, site["fn"]).log_prob(site["value"])


def _site_value(site: Message) -> Tensor:
    """The value of a sample site (drawn or observed: set on every sample site of a trace)."""
    value = site["value"]
    if value is None:
        raise ValueError(f"site {site['name']!r}: the trace holds no value")
    return value


def _guide_site_log_prob(site: Message) -> Tensor:
    return _site_log_prob(site).sum()


def draw_from_guide(
    model: SequenceModel, batch: SequenceBatch, num_draws: int, seed: int = 0
) -> tuple[dict[str, Tensor], Tensor]:
    """Draws of the parameter sites from the model's guide, read from traces.

    Args:
        model: the model (its ``guide`` must sample every parameter site).
        batch: passed to the guide.
        num_draws: independent draws.
        seed: Pyro seed.

    Returns:
        ``(draws, log_q)``: site name -> ``(num_draws, *site_shape)``, and the
        ``(num_draws,)`` log density of each draw under the guide (summed over
        the parameter sites).

    Raises:
        ValueError: the guide misses a parameter site.
    """
    sites = model.parameter_sites()
    draws: dict[str, list[Tensor]] = {name: [] for name in sites}
    log_q = []
    with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
        for _ in range(num_draws):
            trace = poutine.trace(model.guide).get_trace(batch)
            missing = [name for name in sites if name not in trace.nodes]
            if missing:
                raise ValueError(
                    f"model: the guide of {type(model).__name__} does not sample the parameter sites {missing}"
                )
            total = torch.zeros((), dtype=torch.float64)
            for name in sites:
                draws[name].append(_site_value(trace.nodes[name]).detach())
                total = total + _guide_site_log_prob(trace.nodes[name]).double().cpu()
            log_q.append(total)
    return {name: torch.stack(values) for name, values in draws.items()}, torch.stack(log_q)


def guide_is_point_mass(model: SequenceModel, batch: SequenceBatch) -> bool:
    """Whether the guide's parameter sites are all Delta (point) distributions."""
    sites = model.parameter_sites()
    if not sites:
        return True
    with torch.no_grad():
        trace = poutine.trace(model.guide).get_trace(batch)
    for name in sites:
        if name not in trace.nodes:
            return True
        fn = trace.nodes[name]["fn"]
        while hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if not isinstance(fn, pyro.distributions.Delta):
            return False
    return True


def _conditioned_log_likelihood(
    model: SequenceModel, batch: SequenceBatch, values: Mapping[str, Tensor]
) -> Tensor | None:
    """``(N,)`` log-likelihood of each sequence read from a trace of ``model.model``
    with the parameter sites conditioned on ``values``: the sum of the
    observed sites' log densities over every dimension but the ``sequences``
    plate. Exact whatever the guide (a mean-field guide's point is only close
    to a written value). ``None`` when the trace holds a latent site (states
    enumerated as sample sites) or an observed site outside the plate; the
    caller then uses ``set_parameter_values`` and ``log_prob``."""
    if not model.exact_likelihood or model.has_enumerated_sites:
        return None
    trace = poutine.trace(poutine.condition(model.model, data=dict(values))).get_trace(batch)
    total = torch.zeros(batch.num_sequences, dtype=torch.float64)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in values or site_is_subsample(site):
            continue
        if not site["is_observed"]:
            return None
        frame = next((f for f in site["cond_indep_stack"] if f.name == "sequences"), None)
        if (
            frame is None
            or frame.dim is None  # a sequential plate: no dimension to read the sequences along
            or (frame.size != batch.num_sequences and frame.size != (batch.population or batch.num_sequences))
        ):
            return None
        log_prob = _site_log_prob(site)
        if site["mask"] is not None:
            log_prob = torch.where(
                torch.as_tensor(site["mask"]).expand_as(log_prob), log_prob, torch.zeros_like(log_prob)
            )
        if log_prob.dim() < -frame.dim or log_prob.shape[frame.dim] != batch.num_sequences:
            return None
        total = total + log_prob.movedim(frame.dim, 0).reshape(batch.num_sequences, -1).sum(-1).double().cpu()
    return total


def _state_summaries(output: Any, batch: SequenceBatch) -> dict[str, Tensor]:
    """The per-step tensors of ``model.smooth``: a tensor ``(N, T, K)`` becomes
    ``state_probs``; a NamedTuple's ``(N, T, ...)`` fields keep their names
    (prefixed ``smoothed_``), and a ``smoothed_mean`` also yields its outer
    product, to turn averaged covariances into the mixture's covariance."""
    if isinstance(output, Tensor):
        fields = {"state_probs": output}
    elif hasattr(output, "_asdict"):
        fields = {
            key if key.startswith("smoothed") else f"smoothed_{key}": value for key, value in output._asdict().items()
        }
    else:
        return {}
    summaries = {}
    for key, value in fields.items():
        if (
            isinstance(value, Tensor)
            and value.dim() >= 2
            and tuple(value.shape[:2]) == (batch.num_sequences, batch.max_length)
        ):
            summaries[key] = value.detach().double().cpu()
    if "smoothed_mean" in summaries:
        mean = summaries["smoothed_mean"]
        summaries["_mean_outer"] = mean.unsqueeze(-1) * mean.unsqueeze(-2)
    return summaries


def _numpy(value: Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


def _event_dims(batch: SequenceBatch) -> list[str]:
    return [f"obs_dim_{i}" if i else "obs_dim" for i in range(len(batch.event_shape))]


def _observations(batch: SequenceBatch, ragged: bool) -> np.ndarray:
    values = batch.values.detach().cpu()
    if not ragged:
        return values.numpy()
    values = values.to(torch.float64).clone()
    mask = batch.mask.cpu()
    values[~mask] = math.nan
    return values.numpy()


def _thin(num_chains: int, num_draws: int, wanted: int | None) -> np.ndarray:
    """Draw indices (per chain) of at most ``wanted`` evenly spaced draws."""
    if wanted is None or wanted >= num_draws:
        return np.arange(num_draws)
    return np.unique(np.linspace(0, num_draws - 1, max(wanted, 1)).round().astype(int))


def to_inference_data(
    model: SequenceModel,
    data: SequenceBatch,
    posterior: Any = None,
    *,
    num_draws: int = 500,
    num_predictive_draws: int | None = 100,
    fit_result: Any = None,
    align_labels: bool = True,
    log_likelihood: bool = True,
    posterior_predictive: bool = True,
    states: bool = True,
    seed: int = 0,
) -> az.InferenceData:
    """Exports a model, its data and a posterior to ArviZ (see the module docstring).

    Args:
        model: any model of the zoo. Its parameters are restored afterwards.
        data: the observed sequences.
        posterior: a NUTS :class:`~inference.fit.FitResult` or
            :class:`~inference.mcmc.MCMCResult`, ``"guide"``, or ``"point"``/``None``.
        num_draws: guide draws (``posterior="guide"``).
        num_predictive_draws: draws per chain (evenly thinned) at which
            replicated data and state marginals are computed (``None``: all).
        fit_result: an SVI/EM :class:`~inference.fit.FitResult` whose history
            goes into ``sample_stats`` (``elbo`` for SVI, ``em_objective`` for EM).
        align_labels: relabel the states of guide draws to one ordering
            (NUTS draws are aligned by the sampler).
        log_likelihood: add the ``log_likelihood`` group.
        posterior_predictive: add the ``posterior_predictive`` group.
        states: add the ``posterior_states`` group (where the model has ``smooth``).
        seed: seed of guide draws and replicated data.

    Returns:
        An :class:`arviz.InferenceData` with the groups above; ``attrs`` name the
        model class, the posterior kind (``nuts``, ``guide``, ``point``) and the
        log-likelihood unit (``sequence``).
    """
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model: expected a SequenceModel, got {type(model).__name__}")
    if not isinstance(data, SequenceBatch):
        raise TypeError(f"data: expected a SequenceBatch, got {type(data).__name__}")
    kind = _posterior_kind(posterior)
    saved_state = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.eval()
    try:
        return _export(
            model,
            data,
            posterior,
            kind,
            num_draws=num_draws,
            num_predictive_draws=num_predictive_draws,
            fit_result=fit_result,
            align_labels=align_labels,
            add_log_likelihood=log_likelihood,
            add_predictive=posterior_predictive,
            add_states=states,
            seed=seed,
        )
    finally:
        model.load_state_dict(saved_state)
        model.train(was_training)


def _export(
    model,
    data,
    posterior,
    kind,
    *,
    num_draws,
    num_predictive_draws,
    fit_result,
    align_labels,
    add_log_likelihood,
    add_predictive,
    add_states,
    seed,
):
    sites = model.parameter_sites()
    site_dims = model.site_dims()
    sample_stats: dict[str, np.ndarray] = {}
    sampled_states = None
    if kind == "nuts":
        mcmc = posterior.mcmc if getattr(posterior, "mcmc", None) is not None else posterior
        draws = dict(mcmc.draws)
        sample_stats = {name: _numpy(value) for name, value in mcmc.sample_stats.items()}
        sampled_states = mcmc.states
    elif kind == "guide":
        if num_draws < 1:
            raise ValueError(f"num_draws: expected a positive int, got {num_draws!r}")
        flat, log_q = draw_from_guide(model, data, num_draws, seed=seed)
        draws = {name: value.unsqueeze(0) for name, value in flat.items()}
        if align_labels:
            draws, _ = align_state_labels(model, draws)
        sample_stats["log_q"] = _numpy(log_q).reshape(1, -1)
    else:
        draws = {name: value.unsqueeze(0).unsqueeze(0) for name, value in model.parameter_values().items()}
    if draws:
        num_chains, per_chain = next(iter(draws.values())).shape[:2]
    else:
        num_chains, per_chain = 1, 1

    def set_draw(chain: int, index: int) -> None:
        if draws:
            model.set_parameter_values({name: value[chain, index] for name, value in draws.items()})

    ragged = bool((data.lengths != data.max_length).any())
    event_dims = _event_dims(data)
    dims: dict[str, list[str]] = {name: list(site_dims.get(name, ())) for name in draws}
    dims[OBSERVED_NAME] = ["sequence", "time", *event_dims]
    log_likelihood = None
    if add_log_likelihood:
        values = np.empty((num_chains, per_chain, data.num_sequences))
        with torch.no_grad():
            for chain in range(num_chains):
                for index in range(per_chain):
                    draw = {name: value[chain, index] for name, value in draws.items()}
                    exact = _conditioned_log_likelihood(model, data, draw)
                    if exact is None:
                        set_draw(chain, index)
                        exact = model.log_prob(data.values, data.lengths)
                    values[chain, index] = _numpy(exact.double())
        log_likelihood = {OBSERVED_NAME: values}
        if kind == "guide":
            log_prior = np.zeros((num_chains, per_chain))
            points = model.parameter_values()
            for name, prior in sites.items():
                log_prior += _numpy(prior.log_prob(draws[name].to(points[name])).double())
            sample_stats["log_joint"] = log_prior + values.sum(-1)
            sample_stats["log_importance_ratio"] = sample_stats["log_joint"] - sample_stats["log_q"]
    kept = _thin(num_chains, per_chain, num_predictive_draws)
    if kind == "point":
        # One draw: replicate the data num_predictive_draws times at it (plug-in predictive).
        kept = np.arange(num_predictive_draws or 1)
    predictive = None
    smoothed: dict[str, np.ndarray] = {}
    smooths = model.supports("smooth")
    if add_predictive or (add_states and smooths):
        replicated: list[np.ndarray] = []
        generator = torch.Generator(device=data.device).manual_seed(seed)
        sums: dict[str, Tensor] = {}
        count = 0
        with torch.no_grad():
            for chain in range(num_chains):
                chain_replicated = []
                for index in kept:
                    set_draw(chain, 0 if kind == "point" else int(index))
                    if add_predictive:
                        sample = model.sample(data.num_sequences, data.max_length, generator=generator)
                        chain_replicated.append(
                            _observations(SequenceBatch(sample.values, data.lengths.to(sample.values.device)), ragged)
                        )
                    if add_states and smooths and (kind != "point" or count == 0):
                        for key, value in _state_summaries(model.smooth(data.values, data.lengths), data).items():
                            sums[key] = sums.get(key, 0) + value
                        count += 1
                if chain_replicated:
                    replicated.append(np.stack(chain_replicated))
        if add_predictive:
            predictive = {OBSERVED_NAME: np.stack(replicated)}
        averaged = {key: value / count for key, value in sums.items()}
        if "smoothed_mean" in averaged and "smoothed_cov" in averaged and "_mean_outer" in averaged:
            # Law of total covariance over the draws: E[Cov] + E[m m^T] - E[m] E[m]^T.
            mean = averaged["smoothed_mean"]
            averaged["smoothed_cov"] = (
                averaged["smoothed_cov"] + averaged["_mean_outer"] - mean.unsqueeze(-1) * mean.unsqueeze(-2)
            )
        smoothed = {key: _numpy(value) for key, value in averaged.items() if not key.startswith("_")}
    if add_states and kind != "nuts" and model.supports("sample_states") and not smooths:
        # No closed-form state marginals: posterior state paths, one per kept draw (a point estimate: all at once).
        generator = torch.Generator(device=data.device).manual_seed(seed + 1)
        with torch.no_grad():
            if kind == "point":
                sampled_states = model.sample_states(
                    data.values, data.lengths, num_samples=len(kept), generator=generator
                ).unsqueeze(0)
            else:
                chains = []
                for chain in range(num_chains):
                    paths = []
                    for index in kept:
                        set_draw(chain, int(index))
                        paths.append(
                            model.sample_states(data.values, data.lengths, num_samples=1, generator=generator)[0]
                        )
                    chains.append(torch.stack(paths))
                sampled_states = torch.stack(chains)
    coords: dict[str, Any] = {"sequence": np.arange(data.num_sequences), "time": np.arange(data.max_length)}
    if fit_result is not None and getattr(fit_result, "history", None) and fit_result.method in ("svi", "em"):
        trace = np.array([record["objective"] for record in fit_result.history], dtype=float)
    else:
        trace = None
    attrs = {
        "model_class": type(model).__name__,
        "family": model.family,
        "posterior_kind": kind,
        "log_likelihood_unit": "sequence",
        "likelihood_kind": model.likelihood_kind,
    }
    with warnings.catch_warnings():
        # from_dict warns when a group has fewer draws than dimensions (a point estimate: one draw).
        warnings.simplefilter("ignore", UserWarning)
        idata = az.from_dict(
            posterior={name: _numpy(value) for name, value in draws.items()} or None,
            log_likelihood=log_likelihood,
            posterior_predictive=predictive,
            observed_data={OBSERVED_NAME: _observations(data, ragged)},
            sample_stats=sample_stats or None,
            coords=coords,
            dims=dims,
            attrs=attrs,
        )
    if predictive is not None and len(kept) != per_chain:
        idata.posterior_predictive = idata.posterior_predictive.assign_coords(draw=kept)
    if log_likelihood is not None:
        idata.log_likelihood[OBSERVED_NAME] = idata.log_likelihood[OBSERVED_NAME].rename(
            {dim: "sequence" for dim in idata.log_likelihood[OBSERVED_NAME].dims if dim not in ("chain", "draw")}
        )
    if trace is not None:
        name = "elbo" if fit_result.method == "svi" else "em_objective"
        if not hasattr(idata, "sample_stats"):
            idata.add_groups({"sample_stats": xr.Dataset(coords={"chain": [0], "draw": np.arange(per_chain)})})
        idata.sample_stats[name] = xr.DataArray(trace, dims=["fit_step"])
    state_vars = {}
    for key, array in smoothed.items():
        names = ["state"] if key == "state_probs" else ["latent", "latent_bis"]
        extra = [names[i] if i < len(names) else f"{key}_dim_{i}" for i in range(array.ndim - 2)]
        state_vars[key] = xr.DataArray(array, dims=["sequence", "time", *extra])
    if sampled_states is not None:
        extra = ["latent", "latent_bis"][: sampled_states.dim() - 4]
        state_vars["sampled_states"] = xr.DataArray(
            _numpy(sampled_states), dims=["chain", "draw", "sequence", "time", *extra]
        )
    if state_vars:
        idata.add_groups(
            {
                "posterior_states": xr.Dataset(
                    state_vars, coords={"sequence": np.arange(data.num_sequences), "time": np.arange(data.max_length)}
                )
            }
        )
    return idata


# -- PSIS-LOO and comparison ----------------------------------------------------
def _stacked_log_likelihood(idata) -> np.ndarray:
    """``(S, N)`` log-likelihood, draws stacked chain-major."""
    array = idata.log_likelihood[OBSERVED_NAME].transpose("chain", "draw", ...).values
    return array.reshape(-1, array.shape[-1])


def importance_sampling_khat(idata) -> float:
    r"""Pareto :math:`\hat k` of the importance ratios :math:`p(\theta, x) / q(\theta)`
    of guide draws (Yao et al., 2018, "Yes, but did it work?").

    Below 0.5 the guide is close to the posterior; 0.5-0.7 usable with the
    correction; above 0.7 the guide is too narrow (or otherwise far from the
    posterior) for any importance-sampling correction, LOO included, to be trusted.
    """
    if "log_importance_ratio" not in getattr(idata, "sample_stats", {}):
        raise ValueError("idata: has no sample_stats.log_importance_ratio; export guide draws (posterior='guide')")
    ratios = idata.sample_stats["log_importance_ratio"].values.reshape(1, -1)
    _, khat = az.psislw(ratios.copy(), reff=1.0)
    return float(np.asarray(khat).reshape(-1)[0])


def loo(idata, *, warn: bool = True) -> ELPDData:
    r"""PSIS-LOO over sequences, for NUTS draws and for guide draws alike.

    MCMC draws: :func:`arviz.loo` (pointwise). Guide draws :math:`\theta_s \sim q`:
    the importance ratios for leaving sequence :math:`i` out are
    :math:`p(\theta_s \mid x_{-i}) / q(\theta_s) \propto p(\theta_s, x) / (q(\theta_s) p(x_i \mid \theta_s))`
    (Magnusson et al., 2019), Pareto-smoothed per sequence; the full-data
    ``lppd`` uses the smoothed ratios :math:`p(\theta_s, x)/q(\theta_s)`. The
    Pareto :math:`\hat k` of those ratios (:func:`importance_sampling_khat`)
    says whether the guide can be corrected at all: above 0.7 it is too narrow
    and the LOO estimate is not reliable (a warning says so).

    Args:
        idata: from :func:`to_inference_data` with a ``log_likelihood`` group and
            more than one draw.
        warn: warn when a Pareto :math:`\hat k` exceeds the threshold.

    Returns:
        A pointwise :class:`ELPDData` (``elpd_loo``, ``se``, ``p_loo``,
        ``loo_i``, ``pareto_k`` ...) that :func:`arviz.compare` accepts.
    """
    if not hasattr(idata, "log_likelihood"):
        raise ValueError("idata: has no log_likelihood group; export with log_likelihood=True")
    log_lik = _stacked_log_likelihood(idata)
    num_samples, num_points = log_lik.shape
    if num_samples < 2:
        raise ValueError("idata: LOO needs posterior draws; a point estimate has one draw (use NUTS or a guide)")
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "log_importance_ratio" not in stats:
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", UserWarning)
            return az.loo(idata, pointwise=True)
    log_ratio = stats["log_importance_ratio"].values.reshape(-1)
    good_k = min(1 - 1 / np.log10(num_samples), PARETO_K_THRESHOLD)
    full_weights, full_k = az.psislw(log_ratio.reshape(1, -1).copy(), reff=1.0)
    full_weights = np.asarray(full_weights).reshape(-1)
    loo_weights, pareto_k = az.psislw((log_ratio[None, :] - log_lik.T).copy(), reff=1.0)  # (N, S)
    loo_weights, pareto_k = np.asarray(loo_weights), np.asarray(pareto_k)
    loo_i = _logsumexp(loo_weights + log_lik.T, axis=-1)
    lppd_i = _logsumexp(full_weights[None, :] + log_lik.T, axis=-1)
    khat = float(np.asarray(full_k).reshape(-1)[0])
    warning = bool(np.any(pareto_k > good_k) or khat > good_k)
    if warn and khat > good_k:
        warnings.warn(
            f"loo: the Pareto k of the guide's importance ratios is {khat:.2f} > {good_k:.2f}: the guide is "
            f"too narrow (or too far from the posterior) for the importance-sampling correction to be reliable"
        )
    elif warn and warning:
        warnings.warn(f"loo: Pareto k > {good_k:.2f} for some sequences; their leave-one-out estimates are unreliable")
    sequences = idata.log_likelihood[OBSERVED_NAME].coords["sequence"].values
    return ELPDData(
        data=[
            float(loo_i.sum()),
            float((num_points * np.var(loo_i)) ** 0.5),
            float(lppd_i.sum() - loo_i.sum()),
            num_samples,
            num_points,
            warning,
            xr.DataArray(loo_i, dims=["sequence"], coords={"sequence": sequences}, name="loo_i"),
            xr.DataArray(pareto_k, dims=["sequence"], coords={"sequence": sequences}),
            "log",
            good_k,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    peak = values.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return (peak + np.log(np.exp(values - peak).sum(axis=axis, keepdims=True))).squeeze(axis)


def compare(models: Mapping[str, Any], *, warn: bool = True):
    """:func:`arviz.compare` of models fitted to the same sequences, on their
    per-sequence PSIS-LOO (:func:`loo`, guide draws corrected by importance sampling).

    Args:
        models: name -> InferenceData from :func:`to_inference_data` (or a
            pointwise ELPDData), all on the same sequences.
        warn: passed to :func:`loo`.

    Returns:
        The :func:`arviz.compare` table (rank, elpd_loo, p_loo, elpd_diff, weight, se, dse, warning).

    Raises:
        ValueError: fewer than two models, or models scored on different numbers of sequences.
    """
    if len(models) < 2:
        raise ValueError(f"models: expected at least two models to compare, got {len(models)}")
    elpds = {name: value if isinstance(value, ELPDData) else loo(value, warn=warn) for name, value in models.items()}
    points = {name: int(value["n_data_points"]) for name, value in elpds.items()}
    if len(set(points.values())) != 1:
        raise ValueError(f"models: compare needs the same sequences for every model, got numbers of sequences {points}")
    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore", UserWarning)
        return az.compare(elpds, ic="loo")
