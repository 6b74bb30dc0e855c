"""Held-out scoring: log-likelihood per observed time step, with a standard error.

The unit every report uses is nats per *observed* time step. For real-valued
data a step counts as observed when at least one of its entries is not NaN (a
step whose entries are all missing contributes nothing to the likelihood); for
integer data (symbols, counts) every real step counts, i.e.
``batch.num_steps``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import SequenceBatch
from .contract import SequenceModel


@dataclass
class Score:
    """A held-out score.

    Attributes:
        log_prob: total nats over all observed steps.
        num_steps: number of observed time steps (see the module docstring).
        per_step: ``log_prob / num_steps``, nats per observed step.
        stderr: standard error of ``per_step`` over sequences (ratio
            estimator), ``None`` when there are fewer than two sequences.
        kind: ``model.likelihood_label(num_particles)`` — ``"exact"`` or the
            name of the bound.
        per_sequence: ``(N,)`` float64 CPU log-likelihood of each sequence.
    """

    log_prob: float
    num_steps: int
    per_step: float
    stderr: float | None
    kind: str
    per_sequence: Tensor


def observed_steps_per_sequence(batch: SequenceBatch) -> Tensor:
    """Number of observed steps of each sequence.

    Args:
        batch: ``values`` of shape ``(N, T, *event_shape)``.

    Returns:
        ``(N,)`` int64: for floating-point values, the real steps (``t <
        lengths[n]``) with at least one non-NaN entry; otherwise ``lengths``.
    """
    if not batch.values.is_floating_point():
        return batch.lengths.clone()
    observed = ~torch.isnan(batch.values)
    if observed.dim() > 2:
        observed = observed.flatten(2).any(-1)  # (N, T)
    return (observed & batch.mask).sum(-1).long()


def count_observed_steps(batch: SequenceBatch) -> int:
    """Total number of observed steps of ``batch`` (see :func:`observed_steps_per_sequence`)."""
    return int(observed_steps_per_sequence(batch).sum())


def ratio_standard_error(log_probs: Tensor, num_steps: Tensor) -> float | None:
    r"""Standard error of the ratio estimator :math:`r = \sum_n y_n / \sum_n x_n`.

    Treats sequences as i.i.d. draws of ``(y_n, x_n)`` (log-likelihood, number
    of steps) and uses the delta method:

    .. math:: \widehat{\mathrm{se}}(r)^2 = \frac{1}{N \bar x^2}\,
              \frac{1}{N-1} \sum_n (y_n - r x_n)^2 .

    Args:
        log_probs: ``(N,)`` per-sequence log-likelihoods.
        num_steps: ``(N,)`` per-sequence observed steps.

    Returns:
        The standard error, or ``None`` when ``N < 2``.
    """
    n = log_probs.shape[0]
    if n < 2:
        return None
    y = log_probs.double().cpu()
    x = num_steps.double().cpu()
    ratio = y.sum() / x.sum()
    residual_variance = ((y - ratio * x) ** 2).sum() / (n - 1)
    return math.sqrt(float(residual_variance) / (n * float(x.mean()) ** 2))


def score(
    model: SequenceModel,
    batch: SequenceBatch,
    *,
    batch_size: int | None = None,
    num_particles: int = 1,
    seed: int | None = 0,
) -> Score:
    """Scores ``batch`` under ``model.log_prob_batch`` (no gradients, model in eval mode).

    A stochastic bound (an ELBO, an IWAE bound) draws its samples from torch's
    global RNG; ``score`` runs inside :func:`torch.random.fork_rng` seeded with
    ``seed``, so the same model and batch always get the same score (early
    stopping on a bound is deterministic) and the caller's RNG stream is left
    untouched. Covariates reach the model through the batch.

    Args:
        model: a fitted :class:`SequenceModel`; its training mode is restored
            afterwards.
        batch: held-out sequences, on the model's device.
        batch_size: sequences per ``log_prob_batch`` call, to bound memory
            (``None``: all at once).
        num_particles: samples per sequence of a stochastic bound (passed to
            ``log_prob_batch``; exact likelihoods ignore it).
        seed: seed of the RNG the bound draws from (``None``: do not fork or
            seed; draw from the global stream).

    Returns:
        A :class:`Score` whose ``kind`` is ``model.likelihood_label(num_particles)``.

    Raises:
        ValueError: ``batch_size`` or ``num_particles`` is not positive,
            ``batch`` is empty or has no observed step, or ``log_prob_batch``
            returns the wrong shape.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
    if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
        raise ValueError(f"num_particles: expected a positive int, got {num_particles!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"seed: expected an int or None, got {seed!r}")
    num_sequences = batch.num_sequences
    if num_sequences == 0:
        raise ValueError("batch: expected at least one sequence, got none")
    steps = observed_steps_per_sequence(batch).cpu()
    total_steps = int(steps.sum())
    if total_steps == 0:
        raise ValueError("batch: has no observed time step to score")
    chunk = batch_size or num_sequences
    was_training = model.training
    model.eval()
    pieces = []
    devices = [batch.device] if batch.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    try:
        with rng, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, num_sequences, chunk):
                part = batch[start : start + chunk]
                log_probs = model.log_prob_batch(part, num_particles=num_particles)
                if log_probs.shape != (part.num_sequences,):
                    raise ValueError(
                        f"{type(model).__name__}.log_prob_batch: expected shape ({part.num_sequences},), "
                        f"got {tuple(log_probs.shape)}"
                    )
                pieces.append(log_probs.detach().double().cpu())
    finally:
        model.train(was_training)
    per_sequence = torch.cat(pieces)
    log_prob = float(per_sequence.sum())
    return Score(
        log_prob=log_prob,
        num_steps=total_steps,
        per_step=log_prob / total_steps,
        stderr=ratio_standard_error(per_sequence, steps),
        kind=model.likelihood_label(num_particles),
        per_sequence=per_sequence,
    )
