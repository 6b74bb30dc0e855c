r"""Time-series evaluation: held-out scores given their history, and
leave-future-out cross-validation.

When the data are one long series split in time, the held-out part should be
scored as :math:`\log p(x_{L+1:L+H} \mid x_{1:L})`, not as a new series from the
initial state. Every function here reaches a model only through the contract
(``log_prob_batch``; ``set_parameter_values`` for posterior draws), so it is
generic over families, by the chain rule

.. math::

    \log p(x_{L+1:L+H} \mid x_{1:L}) = \log p(x_{1:L+H}) - \log p(x_{1:L}).

For a model whose ``exact_likelihood`` is True (HMMs, linear-Gaussian
state-space models, RNNs) this is the exact conditional log-likelihood. For a
model that reports a bound (an ELBO), it is a *difference of two bounds*, which
is neither a bound nor exact; :func:`conditional_label` says so.

Leave-future-out cross-validation (LFO-CV, Bürkner, Gabry & Vehtari 2020,
*Approximate leave-future-out cross-validation for Bayesian time series models*,
J. Stat. Comput. Simul. 90(14)) scores, at each origin :math:`i`, the next
:math:`M` steps given the first :math:`i`:
:math:`\mathrm{elpd} = \sum_i \log p(x_{i+1:i+M} \mid x_{1:i})`.

* :func:`rolling_origin` — point estimates: refit (a callable) at some origins,
  condition on the longer history at the others.
* :func:`psis_lfo` — a posterior given as draws: Pareto-smoothed importance
  sampling (:func:`arviz.psislw`) reweights the draws of the last fit to each new
  origin, and refits only where the Pareto :math:`\hat k` exceeds its threshold.

Shapes: a series batch is a :class:`~inference.batch.SequenceBatch` with
``values`` ``(N, T, *event)``; per-step scores are ``(N, T)``, zero on padding
and on steps that are not scored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .batch import SequenceBatch
from .contract import SequenceModel

#: Callable giving ``(N, T)`` per-step log-likelihoods of a batch, or None when the
#: model has no per-step form (the family registry's ``per_step_log_probs`` hook).
StepLogProbs = Callable[[SequenceModel, SequenceBatch], "Tensor | None"]

#: Prefixes scored per ``log_prob_batch`` call by :func:`step_log_likelihoods`.
_PREFIXES_PER_CALL = 2048


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------
def _as_batch(value, name: str) -> SequenceBatch:
    if isinstance(value, SequenceBatch):
        return value
    if isinstance(value, Tensor):
        if value.dim() < 2:
            raise ValueError(
                f"{name}: expected a SequenceBatch or a (N, T, ...) tensor, got shape {tuple(value.shape)}"
            )
        return SequenceBatch.from_tensor(value)
    raise TypeError(f"{name}: expected a SequenceBatch or a tensor, got {type(value).__name__}")


def _with_parent_fields(batch: SequenceBatch, parent: SequenceBatch) -> SequenceBatch:
    """``batch`` carrying ``parent``'s per-sequence covariates and index where the
    batch type has them (:class:`~inference.batch.SequenceBatch` subclasses), so a family that reads them scores the
    pieces of a sequence as that sequence."""
    fields = {}
    for name in ("covariates", "index"):
        if hasattr(parent, name) and getattr(parent, name) is not None:
            fields[name] = getattr(parent, name)
    return replace(batch, **fields) if fields else batch


def concatenate_in_time(history: SequenceBatch, future: SequenceBatch) -> SequenceBatch:
    """Each history sequence followed by its future: ``(N, T_h + T_f, *event)``.

    Args:
        history: ``N`` sequences (lengths may be 0).
        future: ``N`` sequences of the same event shape.
    """
    history, future = _as_batch(history, "history"), _as_batch(future, "future")
    if history.num_sequences != future.num_sequences:
        raise ValueError(
            f"history and future: expected the same number of sequences, got "
            f"{history.num_sequences} and {future.num_sequences}"
        )
    if history.event_shape != future.event_shape:
        raise ValueError(
            f"history and future: expected one event shape, got {tuple(history.event_shape)} and "
            f"{tuple(future.event_shape)}"
        )
    if history.values.dtype != future.values.dtype:
        future = replace(future, values=future.values.to(history.values.dtype))
    pieces = [torch.cat([h, f], 0) for h, f in zip(history.sequences(), future.sequences())]
    return _with_parent_fields(SequenceBatch.from_sequences(pieces), history)


def prefix(batch: SequenceBatch, length: int) -> SequenceBatch:
    """The first ``length`` steps of every sequence (shorter sequences whole)."""
    batch = _as_batch(batch, "batch")
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length: expected a non-negative int, got {length!r}")
    lengths = batch.lengths.clamp(max=length)
    return (
        replace(batch, values=batch.values[:, : max(length, 0)], lengths=lengths)
        if length < batch.max_length
        else batch
    )


def split_in_time(batch: SequenceBatch, origin: int, horizon: int | None = None) -> tuple[SequenceBatch, SequenceBatch]:
    """``(history, future)``: steps ``[0, origin)`` and ``[origin, origin + horizon)``
    of every sequence (``horizon=None``: to the end)."""
    batch = _as_batch(batch, "batch")
    if not isinstance(origin, int) or origin < 0:
        raise ValueError(f"origin: expected a non-negative int, got {origin!r}")
    if horizon is not None and (not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"horizon: expected a positive int or None, got {horizon!r}")
    stop = batch.max_length if horizon is None else origin + horizon
    history = prefix(batch, origin)
    future_lengths = (batch.lengths.clamp(max=stop) - origin).clamp(min=0)
    future = replace(batch, values=batch.values[:, origin:stop], lengths=future_lengths)
    return history, future


# ---------------------------------------------------------------------------
# Conditional scores
# ---------------------------------------------------------------------------
def _log_prob_batch(model: SequenceModel, batch: SequenceBatch, num_particles: int) -> Tensor:
    if num_particles == 1:
        return model.log_prob_batch(batch)
    return model.log_prob_batch(batch, num_particles=num_particles)


def conditional_label(model: SequenceModel) -> str:
    """What :func:`conditional_log_prob` returns for ``model``: ``"exact"`` or a
    labelled bound difference."""
    if model.exact_likelihood:
        return "exact"
    kind = model.likelihood_kind
    return f"difference of {kind} bounds (not a bound)"


def conditional_log_prob(
    model: SequenceModel, history, future, *, num_particles: int = 1, seed: int | None = 0
) -> Tensor:
    r"""``(N,)`` :math:`\log p(\text{future} \mid \text{history})` by the chain rule,
    :math:`\log p(\text{history} ⧺ \text{future}) - \log p(\text{history})`.

    Exact for a model with ``exact_likelihood``; for a bound (``ELBO``, IWAE) it is
    the difference of the two bounds, labelled by :func:`conditional_label`. Both
    terms of a stochastic bound are evaluated under the same seed (common random
    numbers) inside :func:`torch.random.fork_rng`.

    Args:
        model: any :class:`SequenceModel`.
        history: ``N`` sequences (a :class:`SequenceBatch` or a ``(N, T_h, ...)`` tensor);
            a length-0 history has log-probability 0.
        future: ``N`` sequences that continue them.
        num_particles: passed to ``log_prob_batch`` for stochastic bounds.
        seed: seed of the bound's randomness (``None``: the global RNG as it is).

    Returns:
        ``(N,)`` nats.
    """
    history, future = _as_batch(history, "history"), _as_batch(future, "future")
    full = concatenate_in_time(history, future)
    stochastic = not model.exact_likelihood and seed is not None

    def evaluate(batch: SequenceBatch) -> Tensor:
        if not stochastic:
            return _log_prob_batch(model, batch, num_particles)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _log_prob_batch(model, batch, num_particles)

    with torch.no_grad():
        total = evaluate(full)
        past = torch.zeros_like(total)
        nonempty = history.lengths > 0
        if bool(nonempty.any()):
            index = nonempty.nonzero().squeeze(-1)
            past[index] = evaluate(history[index])
    return total - past


def unconditional_log_prob(model: SequenceModel, future, *, num_particles: int = 1) -> Tensor:
    """``(N,)`` log-probability of ``future`` scored as new series from the initial
    state (what a contiguous split scores without its history)."""
    future = _as_batch(future, "future")
    with torch.no_grad():
        return _log_prob_batch(model, future, num_particles)


def step_log_likelihoods(
    model: SequenceModel, batch, *, start: int = 0, step_log_probs: StepLogProbs | None = None
) -> Tensor:
    r"""``(N, T)`` one-step predictive log-densities :math:`\log p(x_t \mid x_{<t})`.

    Steps before ``start`` and padding hold 0. With ``step_log_probs`` (a family's
    per-step scorer, e.g. ``RecurrentModel.log_prob_steps`` or the Kalman filter's
    step terms) that returns a tensor, that is used; otherwise every prefix
    :math:`x_{1:t}`, ``t = start .. L``, is scored with ``log_prob_batch`` and the
    terms are the increments of the prefixes' log-likelihoods (chain rule; exact
    for exact models, ``O(T^2)`` work).

    Args:
        model: any :class:`SequenceModel` with an exact ``log_prob_batch``.
        batch: ``(N, T, *event)`` sequences.
        start: first step to score (0-based).
        step_log_probs: optional per-step scorer ``(model, batch) -> (N, T) | None``.
    """
    batch = _as_batch(batch, "batch")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start: expected a non-negative int, got {start!r}")
    n, length = batch.num_sequences, batch.max_length
    steps = torch.arange(length, device=batch.device)
    scored = (steps >= start) & batch.mask  # (N, T)
    with torch.no_grad():
        if step_log_probs is not None:
            per_step = step_log_probs(model, batch)
            if per_step is not None:
                if per_step.shape != (n, length):
                    raise ValueError(f"step_log_probs: expected shape ({n}, {length}), got {tuple(per_step.shape)}")
                return torch.where(scored, per_step, torch.zeros_like(per_step))
        # Prefix x_{1:t} for t = start .. L_n of every sequence; term t = lp(1:t+1) - lp(1:t).
        owners, ends = [], []
        for i, stop in enumerate(batch.lengths.tolist()):
            if stop > start:
                for prefix_end in range(start, stop + 1):
                    owners.append(i)
                    ends.append(prefix_end)
        log_probs = []
        out_dtype = None
        for first in range(0, len(ends), _PREFIXES_PER_CALL):
            owner = torch.tensor(owners[first : first + _PREFIXES_PER_CALL], device=batch.device)
            end = torch.tensor(ends[first : first + _PREFIXES_PER_CALL], device=batch.device)
            longest = max(int(end.max()), 1)
            # Indexing the batch keeps its per-sequence covariates aligned with the prefixes.
            pieces = replace(batch[owner], values=batch.values[owner, :longest], lengths=end)
            values = torch.zeros(len(end), dtype=torch.float64, device=batch.device)
            positive = end > 0
            if bool(positive.any()):
                index = positive.nonzero().squeeze(-1)
                scores = model.log_prob_batch(pieces[index])
                out_dtype = out_dtype or scores.dtype
                values[index] = scores.to(torch.float64)
            log_probs.append(values)
        dtype = out_dtype or (batch.values.dtype if batch.values.is_floating_point() else torch.get_default_dtype())
        result = torch.zeros(n, length, dtype=torch.float64, device=batch.device)
        if log_probs:
            prefix_log_probs = torch.cat(log_probs)
            owner = torch.tensor(owners, device=batch.device)
            end = torch.tensor(ends, device=batch.device)
            # Consecutive prefixes of one owner: increments are the step terms.
            same = owner[1:] == owner[:-1]
            increments = prefix_log_probs[1:] - prefix_log_probs[:-1]
            result[owner[1:][same], end[:-1][same]] = increments[same]
        return torch.where(scored, result, torch.zeros_like(result)).to(dtype)


def conditional_log_prob_steps(
    model: SequenceModel, history, future, *, step_log_probs: StepLogProbs | None = None
) -> Tensor:
    r"""``(N, T_f)`` per-step :math:`\log p(f_t \mid \text{history}, f_{<t})` (0 on the
    future's padding); sums to :func:`conditional_log_prob` for exact models."""
    history, future = _as_batch(history, "history"), _as_batch(future, "future")
    full = concatenate_in_time(history, future)
    per_step = step_log_likelihoods(model, full, step_log_probs=step_log_probs)  # (N, T_h + T_f)
    n = full.num_sequences
    columns = history.lengths.unsqueeze(-1) + torch.arange(future.max_length, device=full.device)  # (N, T_f)
    columns = columns.clamp(max=max(full.max_length - 1, 0))
    gathered = per_step.gather(1, columns) if full.max_length else per_step.new_zeros(n, future.max_length)
    return torch.where(future.mask, gathered, torch.zeros_like(gathered))


# ---------------------------------------------------------------------------
# Leave-future-out cross-validation
# ---------------------------------------------------------------------------
class LFOResult(NamedTuple):
    """Leave-future-out cross-validation of one series.

    Attributes:
        elpd: :math:`\\sum_i \\log p(x_{i+1:i+M} \\mid x_{1:i})`, nats.
        se: its standard error, :math:`\\sqrt{n}\\,\\mathrm{sd}(\\mathrm{elpd}_i)` over the
            ``n`` origins (as ``loo`` reports it).
        pointwise: ``(n,)`` the terms :math:`\\mathrm{elpd}_i`.
        origins: ``(n,)`` long, :math:`i` = steps observed before each scored block.
        horizon: :math:`M`, the steps scored at each origin.
        pareto_k: ``(n,)`` the Pareto :math:`\\hat k` of the importance weights at each
            origin; at a refit origin the one that triggered the refit (NaN at the first
            fit, with ``k_threshold <= 0``, and for point-estimate rolling origins).
        refit_origins: origins at which the model was (re)fit, the first fit included.
        num_refits: refits after the first fit (``len(refit_origins) - 1``).
        method: ``"exact"`` / ``"psis"`` / ``"rolling origin (point)"``.
    """

    elpd: float
    se: float
    pointwise: Tensor
    origins: Tensor
    horizon: int
    pareto_k: Tensor
    refit_origins: tuple[int, ...]
    num_refits: int
    method: str


def _check_origins(length: int, first_origin: int, horizon: int, last_origin: int | None, step: int) -> list[int]:
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon: expected a positive int, got {horizon!r}")
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step: expected a positive int, got {step!r}")
    last = length - horizon if last_origin is None else last_origin
    if not isinstance(first_origin, int) or not 0 <= first_origin <= last:
        raise ValueError(
            f"first_origin: expected an int in [0, {last}] (series of {length} steps, horizon "
            f"{horizon}), got {first_origin!r}"
        )
    if last > length - horizon:
        raise ValueError(
            f"last_origin: at most {length - horizon} for {length} steps and horizon {horizon}, got {last}"
        )
    return list(range(first_origin, last + 1, step))


def _summary(pointwise: Tensor) -> tuple[float, float]:
    n = pointwise.numel()
    elpd = float(pointwise.sum())
    se = float(math.sqrt(n) * pointwise.std(unbiased=True)) if n > 1 else float("nan")
    return elpd, se


def _series_length(series: SequenceBatch) -> int:
    if series.num_sequences < 1:
        raise ValueError("series: expected at least one sequence")
    lengths = series.lengths.unique()
    if lengths.numel() != 1:
        raise ValueError(
            f"series: expected sequences of one length for leave-future-out evaluation, got lengths "
            f"{sorted(series.lengths.tolist())}"
        )
    return int(lengths[0])


def rolling_origin(
    model: SequenceModel,
    series,
    *,
    first_origin: int,
    horizon: int = 1,
    refit: Callable[[SequenceBatch], SequenceModel] | None = None,
    refit_every: int = 1,
    last_origin: int | None = None,
    step: int = 1,
    step_log_probs: StepLogProbs | None = None,
) -> LFOResult:
    r"""Rolling-origin (leave-future-out) evaluation of a point-estimate model.

    At each origin :math:`i` (``first_origin``, ``first_origin + step``, ...) the next
    ``horizon`` steps are scored given the first :math:`i`,
    :math:`\log p(x_{i+1:i+M} \mid x_{1:i})` (summed over the ``N`` sequences, which
    share the time axis). With ``refit``, the model is refit on :math:`x_{1:i}` at the
    first origin and then at every ``refit_every``-th origin; at the origins between,
    the last fit is conditioned on the longer history (an exact update for models
    whose predictive is a filter: HMMs, Kalman models, RNNs). Without ``refit``,
    ``model`` is used at every origin (it should have been fit on at most
    ``x_{1:first_origin}`` for an honest score).

    Args:
        model: the fitted model (used when ``refit`` is None).
        series: ``(N, T, *event)`` sequences of one length ``T``.
        first_origin: steps observed before the first scored block.
        horizon: :math:`M`, steps scored per origin.
        refit: ``history -> fitted model``.
        refit_every: refit at every ``refit_every``-th origin (1: every origin).
        last_origin: default ``T - horizon``.
        step: distance between origins.
        step_log_probs: optional per-step scorer (see :func:`step_log_likelihoods`).
    """
    series = _as_batch(series, "series")
    length = _series_length(series)
    origins = _check_origins(length, first_origin, horizon, last_origin, step)
    if not isinstance(refit_every, int) or refit_every < 1:
        raise ValueError(f"refit_every: expected a positive int, got {refit_every!r}")
    terms, refits = [], []
    current = model
    per_step = None
    for position, origin in enumerate(origins):
        if refit is not None and position % refit_every == 0:
            current = refit(prefix(series, origin))
            refits.append(origin)
            per_step = None
        if per_step is None:
            # One pass over the whole series scores every later origin of this fit.
            per_step = step_log_likelihoods(current, series, start=origin, step_log_probs=step_log_probs)
        terms.append(per_step[:, origin : origin + horizon].sum())
    pointwise = torch.stack(terms).to(torch.float64).cpu()
    elpd, se = _summary(pointwise)
    return LFOResult(
        elpd,
        se,
        pointwise,
        torch.tensor(origins),
        horizon,
        torch.full((len(origins),), float("nan"), dtype=torch.float64),
        tuple(refits),
        max(len(refits) - 1, 0),
        "rolling origin (point)",
    )


def posterior_step_log_likelihoods(
    model: SequenceModel, series, draws: Mapping[str, Tensor], *, step_log_probs: StepLogProbs | None = None
) -> Tensor:
    r"""``(S, T)`` one-step log-likelihoods :math:`\log p(x_t \mid x_{<t}, \theta_s)` of a
    series under each of ``S`` posterior draws, summed over its ``N`` sequences.

    Each draw is written into the model with ``set_parameter_values``; the model's
    point values are restored afterwards.

    Args:
        model: a model with parameter sites (``parameter_sites()`` not empty).
        series: ``(N, T, *event)``.
        draws: site name -> ``(S, *site_shape)`` values.
    """
    series = _as_batch(series, "series")
    if not draws:
        raise ValueError("draws: expected at least one parameter site, got none")
    sizes = {name: value.shape[0] for name, value in draws.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"draws: expected the same number of draws for every site, got {sizes}")
    unknown = set(draws) - set(model.parameter_sites())
    if unknown:
        raise ValueError(
            f"draws: sites {sorted(unknown)} are not parameter sites of {type(model).__name__} "
            f"(which has {list(model.parameter_sites())})"
        )
    saved = {name: value.detach().clone() for name, value in model.parameter_values().items()}
    rows = []
    try:
        for s in range(next(iter(sizes.values()))):
            model.set_parameter_values({name: value[s] for name, value in draws.items()})
            rows.append(step_log_likelihoods(model, series, step_log_probs=step_log_probs).sum(0))
    finally:
        model.set_parameter_values(saved)
    return torch.stack(rows).to(torch.float64)


def _psis(log_ratios: Tensor) -> tuple[Tensor, float]:
    """Normalised Pareto-smoothed log weights ``(S,)`` and :math:`\\hat k` (:func:`arviz.psislw`)."""
    import arviz as az

    with warnings.catch_warnings():
        # k-hat is reported and acted on by the caller; ArviZ's own warning about it is redundant.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        log_weights, k_hat = az.psislw(log_ratios.cpu().numpy().astype(np.float64))
    return torch.as_tensor(np.asarray(log_weights), dtype=torch.float64), float(k_hat)


def psis_lfo(
    fit_posterior: Callable[[int], Tensor],
    num_steps: int,
    *,
    first_origin: int,
    horizon: int = 1,
    k_threshold: float = 0.7,
    last_origin: int | None = None,
) -> LFOResult:
    r"""Approximate leave-future-out cross-validation by Pareto-smoothed importance
    sampling (PSIS-LFO, Bürkner, Gabry & Vehtari 2020, Algorithm 1).

    The posterior is fit on :math:`x_{1:i^\star}` with :math:`i^\star` = ``first_origin``.
    At each later origin :math:`i` its ``S`` draws are reweighted by
    :math:`\log r_s = \sum_{t=i^\star+1}^{i} \log p(x_t \mid x_{<t}, \theta_s)`, smoothed by
    PSIS; when the Pareto :math:`\hat k` exceeds ``k_threshold`` the posterior is refit
    on :math:`x_{1:i}` and :math:`i^\star = i`. The term is

    .. math::

        \mathrm{elpd}_i = \log \sum_s w_s \exp \sum_{t=i+1}^{i+M} \log p(x_t \mid x_{<t}, \theta_s),

    with normalised smoothed weights :math:`w_s` (:math:`1/S` just after a fit, which
    makes it the exact LFO term there).

    ``k_threshold <= 0`` refits at every origin (exact LFO-CV): with few new steps the
    likelihood ratios are bounded and :math:`\hat k` is often negative, so "exceeds 0"
    would not be a refit rule.

    Args:
        fit_posterior: ``i -> (S, T)``: fits the posterior on the first ``i`` steps and
            returns :math:`\log p(x_t \mid x_{<t}, \theta_s)` for every step ``t`` of the
            series and draw ``s`` (see :func:`posterior_step_log_likelihoods`; the steps
            after ``i`` are what LFO scores and reweights by).
        num_steps: ``T``.
        first_origin: :math:`L`, steps in the first fit.
        horizon: :math:`M`.
        k_threshold: refit where :math:`\hat k` > this (0.7 in the paper).
        last_origin: default ``T - M``.

    Returns:
        :class:`LFOResult` with ``method="psis"`` (``"exact"`` for ``k_threshold <= 0``).
    """
    origins = _check_origins(num_steps, first_origin, horizon, last_origin, 1)
    refit_always = k_threshold <= 0
    terms, k_hats, refits = [], [], []
    step_terms = None
    fit_origin = 0  # the origin of the current fit (read only once step_terms is set)
    for origin in origins:
        weights = None
        k_hat = float("nan")
        if step_terms is not None and origin > fit_origin and not refit_always:
            log_ratios = step_terms[:, fit_origin:origin].sum(-1)
            log_weights, k_hat = _psis(log_ratios)
            if k_hat <= k_threshold:
                weights = log_weights
        if weights is None and (step_terms is None or origin > fit_origin):
            # k_hat stays what triggered the refit (NaN for the first fit and for k_threshold <= 0).
            step_terms = _check_step_terms(fit_posterior(origin), num_steps)
            fit_origin = origin
            refits.append(origin)
        assert step_terms is not None  # the first origin always fits
        predictive = step_terms[:, origin : origin + horizon].sum(-1)  # (S,)
        if weights is None:
            weights = torch.full_like(predictive, -math.log(predictive.numel()))
        terms.append(torch.logsumexp(weights + predictive, 0))
        k_hats.append(k_hat)
    pointwise = torch.stack(terms)
    elpd, se = _summary(pointwise)
    return LFOResult(
        elpd,
        se,
        pointwise,
        torch.tensor(origins),
        horizon,
        torch.tensor(k_hats, dtype=torch.float64),
        tuple(refits),
        len(refits) - 1,
        "exact" if refit_always else "psis",
    )


def _check_step_terms(step_terms: Tensor, num_steps: int) -> Tensor:
    if not isinstance(step_terms, Tensor) or step_terms.dim() != 2 or step_terms.shape[1] != num_steps:
        shape = tuple(step_terms.shape) if isinstance(step_terms, Tensor) else type(step_terms).__name__
        raise ValueError(f"fit_posterior: expected an (S, {num_steps}) tensor of per-step log-likelihoods, got {shape}")
    if not torch.isfinite(step_terms).all():
        raise ValueError("fit_posterior: per-step log-likelihoods must be finite")
    return step_terms.to(torch.float64).cpu()


def psis_lfo_model(
    model: SequenceModel,
    series,
    fit_draws: Callable[[SequenceBatch], Mapping[str, Tensor]],
    *,
    first_origin: int,
    horizon: int = 1,
    k_threshold: float = 0.7,
    last_origin: int | None = None,
    step_log_probs: StepLogProbs | None = None,
) -> LFOResult:
    """:func:`psis_lfo` for a model with parameter sites whose posterior is fit by
    ``fit_draws(history) -> {site: (S, ...) draws}`` (NUTS, a guide's samples, ...)."""
    series = _as_batch(series, "series")
    length = _series_length(series)

    def fit_posterior(origin: int) -> Tensor:
        draws = fit_draws(prefix(series, origin))
        return posterior_step_log_likelihoods(model, series, draws, step_log_probs=step_log_probs)

    return psis_lfo(
        fit_posterior,
        length,
        first_origin=first_origin,
        horizon=horizon,
        k_threshold=k_threshold,
        last_origin=last_origin,
    )


def per_step_summary(log_probs: Tensor, num_steps: int) -> float:
    """Nats per step of summed log-probabilities over ``num_steps`` scored steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")
    return float(log_probs.sum()) / num_steps


__all__ = [
    "LFOResult",
    "StepLogProbs",
    "concatenate_in_time",
    "conditional_label",
    "conditional_log_prob",
    "conditional_log_prob_steps",
    "per_step_summary",
    "posterior_step_log_likelihoods",
    "prefix",
    "psis_lfo",
    "psis_lfo_model",
    "rolling_origin",
    "split_in_time",
    "step_log_likelihoods",
    "unconditional_log_prob",
]
