r"""Series split in time on the command line: held-out scores given their history,
forecast columns, leave-future-out columns and the forecast fan of ``seqzoo fit``
and ``seqzoo compare``.

When the data are cut contiguously in time (one long series, or ``--split-by
time``), the validation part continues the training part and the test part
continues both. Scoring a held-out part from the model's initial state treats it
as a new series; what a user wants is how well the model predicts it *given the
past*,

.. math::

    \log p(x_\text{valid} \mid x_\text{train}), \qquad
    \log p(x_\text{test} \mid x_\text{train} ⧺ x_\text{valid}),

which :func:`inference.timeseries.conditional_log_prob` computes by the chain rule
(exact for HMMs, state-space models and RNNs; a difference of bounds, labelled,
for a model that reports a bound). :class:`Timeline` knows where each part sits
in its sequence; :func:`held_out_scores` gives the summary fields ``fit`` and
``compare`` record; :func:`validation_options` makes ``fit``'s early stopping use
the same conditional score; :func:`forecast_columns`, :func:`lfo_columns` and
:func:`write_forecast_fan` add the forecast scores, leave-future-out CV and the
fan of every model to a comparison.

The command line (:mod:`zoo.cli`) calls these in a few lines; the logic lives here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from inference.batch import SequenceBatch
from inference.scoring import Score, observed_steps_per_sequence, ratio_standard_error
from inference.timeseries import conditional_label, conditional_log_prob, prefix, rolling_origin

from .data import SequenceData, Splits

#: ``--score-from`` choices: the held-out parts given their history, or from the initial state.
SCORE_FROM = ("history", "start")
#: Contiguous blocks of one held-out sequence over which its standard error is taken.
NUM_BLOCKS = 20
#: The column label of each scoring.
LABEL_GIVEN_HISTORY = "nats/step given history"
LABEL_FROM_START = "nats/step from initial state"
#: Forecast defaults: the longer lead, origins, sample paths of sampled forecasts.
DEFAULT_HORIZON = 5
DEFAULT_FORECAST_ORIGINS = 100
DEFAULT_FORECAST_SAMPLES = 500
#: Without an explicit ``--forecast-origins``, forecast columns are skipped for longer series
#: (every origin conditions on its whole history, so the cost grows as origins x length).
AUTO_FORECAST_MAX_STEPS = 20_000
#: Suffix of the summary fields scored given the history (``test_log_likelihood_given_history``).
GIVEN_HISTORY = "_given_history"


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, *, compare: bool) -> None:
    """``--score-from`` (fit and compare); for compare also the forecast and LFO flags."""
    group = parser.add_argument_group("series split in time")
    group.add_argument(
        "--score-from",
        choices=list(SCORE_FROM),
        default="history",
        help="history (default): score each held-out part of a series split in time given the steps "
        "before it (train for valid, train+valid for test), and early-stop on that; start: "
        "score it from the initial state, as a new series",
    )
    if not compare:
        return
    group.add_argument(
        "--horizon",
        type=int,
        default=DEFAULT_HORIZON,
        help=f"forecast columns: the longer lead h (h=1 is always reported; default {DEFAULT_HORIZON})",
    )
    group.add_argument(
        "--forecast-origins",
        type=int,
        metavar="N",
        help=f"forecast columns: at most N forecast origins over the test part (default "
        f"{DEFAULT_FORECAST_ORIGINS}; without it the columns are skipped for series over "
        f"{AUTO_FORECAST_MAX_STEPS} steps); 0 = no forecast columns",
    )
    group.add_argument(
        "--forecast-samples",
        type=int,
        default=DEFAULT_FORECAST_SAMPLES,
        help=f"sample paths of models that forecast by sampling (RNNs; default {DEFAULT_FORECAST_SAMPLES})",
    )
    group.add_argument(
        "--lfo",
        action="store_true",
        help="add leave-future-out columns: elpd of the next --lfo-horizon steps from origins over the "
        "test part, its standard error and the number of refits",
    )
    group.add_argument("--lfo-horizon", type=int, default=1, help="LFO: steps scored per origin (default 1)")
    group.add_argument("--lfo-origins", type=int, default=50, help="LFO: at most this many origins (default 50)")
    group.add_argument(
        "--lfo-refit-every",
        type=int,
        default=0,
        metavar="K",
        help="LFO: refit the model on the history at every K-th origin (0, default: never; the model "
        "fit on the training part is conditioned on each longer history, exact for filters)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses bad forecast/LFO settings by their flags (raises ``ValueError``)."""
    for flag, value, least in (
        ("--horizon", getattr(args, "horizon", 1), 1),
        ("--forecast-samples", getattr(args, "forecast_samples", 2), 2),
        ("--lfo-horizon", getattr(args, "lfo_horizon", 1), 1),
        ("--lfo-origins", getattr(args, "lfo_origins", 1), 1),
        ("--lfo-refit-every", getattr(args, "lfo_refit_every", 0), 0),
    ):
        if value < least:
            raise ValueError(f"{flag}: expected an integer >= {least}, got {value}")
    origins = getattr(args, "forecast_origins", None)
    if origins is not None and origins < 0:
        raise ValueError(f"--forecast-origins: expected an integer >= 0, got {origins}")


# ---------------------------------------------------------------------------
# Where the held-out parts sit in time
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Timeline:
    """Sequences cut in time into train, valid and test parts.

    Attributes:
        series: the whole data ``(N, T, *event)`` the split was cut from.
        cuts: per sequence ``(train_end, valid_end)``: steps ``[0, train_end)`` train,
            ``[train_end, valid_end)`` validate, ``[valid_end, L_n)`` test.
        parts: which parts exist (a part with fraction 0 is absent).
    """

    series: SequenceBatch
    cuts: tuple[tuple[int, int], ...]
    parts: tuple[str, ...]

    @property
    def single(self) -> bool:
        """One sequence (the forecast and LFO columns need one)."""
        return self.series.num_sequences == 1

    def _bounds(self, part: str) -> list[tuple[int, int, int]]:
        """Per sequence ``(history_end == future_start, future_end)`` as ``(n, start, end)``."""
        if part not in ("valid", "test"):
            raise ValueError(f"part: expected 'valid' or 'test', got {part!r}")
        lengths = self.series.lengths.tolist()
        rows = []
        for n, ((first, second), length) in enumerate(zip(self.cuts, lengths)):
            start, end = (first, second) if part == "valid" else (second, length)
            if end > start:
                rows.append((n, start, end))
        return rows

    def history_and_future(self, part: str) -> tuple[SequenceBatch, SequenceBatch]:
        """``(history, future)`` of the sequences that give ``part`` a step, in the split's
        order: the history is every step before the part (train for valid, train ⧺ valid
        for test), the future the part itself."""
        histories, futures = [], []
        for n, start, end in self._bounds(part):
            sequence = self.series.values[n]
            histories.append(sequence[:start])
            futures.append(sequence[start:end])
        return SequenceBatch.from_sequences(histories), SequenceBatch.from_sequences(futures)

    def start(self, part: str) -> int:
        """First step of ``part`` in the single sequence."""
        if not self.single:
            raise ValueError("start: defined for one sequence only")
        return self.cuts[0][0] if part == "valid" else self.cuts[0][1]


def _same_values(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_floating_point():
        return bool(
            torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
        )
    return bool(torch.equal(a, b))


def timeline(data: SequenceData, splits: Splits, how: Mapping[str, Any]) -> Timeline | None:
    """The :class:`Timeline` of a split in time, or None when the held-out parts are
    whole sequences of their own (shuffled sequences, a data set's own split).

    Args:
        data: the data the split was cut from (``_data_and_splits``' first value).
        splits: its parts.
        how: ``{"split": [f_train, f_valid, f_test] | "own", "split_by": ...}`` as
            recorded in config.json.
    """
    fractions = how.get("split")
    if fractions == "own" or not isinstance(fractions, (list, tuple)) or len(fractions) != 3:
        return None
    if data.num_sequences != 1 and how.get("split_by") != "time":
        return None
    series = data.batch
    cuts = []
    for length in series.lengths.tolist():
        # The rule of zoo.data.split_data for a sequence cut in time.
        cuts.append((round(length * fractions[0]), round(length * (fractions[0] + fractions[1]))))
    parts = tuple(name for name, part in zip(("train", "valid", "test"), splits) if part is not None)
    result = Timeline(series, tuple(cuts), parts)
    for name in ("valid", "test"):
        part = getattr(splits, name)
        if part is None:
            continue
        _, future = result.history_and_future(name)
        if not (_same_values(future.lengths, part.batch.lengths) and _same_values(future.values, part.batch.values)):
            raise RuntimeError(f"timeline: the {name} part does not continue its history as split_data cut it")
    return result


# ---------------------------------------------------------------------------
# Scores given the history
# ---------------------------------------------------------------------------
def _steps_of(batch: SequenceBatch) -> Tensor:
    """``(N, T)`` bool: observed steps (real steps with a non-NaN entry)."""
    mask = batch.mask
    if batch.values.is_floating_point():
        observed = ~torch.isnan(batch.values)
        if observed.dim() > 2:
            observed = observed.flatten(2).any(-1)
        mask = mask & observed
    return mask


def block_boundaries(num_steps: int, num_blocks: int = NUM_BLOCKS) -> list[int]:
    """``[0, b_1, ..., T]``: ``min(num_blocks, T)`` contiguous blocks of near-equal length."""
    count = min(num_blocks, num_steps)
    sizes = [len(piece) for piece in torch.tensor_split(torch.arange(num_steps), count)]
    return [0] + torch.tensor(sizes).cumsum(0).tolist()


def block_standard_error(block_log_probs: Tensor, block_steps: Tensor) -> float | None:
    """Standard error of nats per step of one held-out sequence from its blocks' sums
    (ratio estimator over blocks; None with fewer than two blocks with steps).

    The one-step predictive terms of a sequence scored given its past are martingale
    differences under the model, so even one-step blocks are nearly uncorrelated;
    contiguous blocks keep what correlation a misspecified model leaves inside a block.
    """
    keep = block_steps > 0
    if int(keep.sum()) < 2:
        return None
    return ratio_standard_error(block_log_probs[keep], block_steps[keep])


def _evaluation_mode(model):
    class _Eval:
        def __enter__(self):
            self.was_training = model.training
            model.eval()

        def __exit__(self, *exc):
            model.train(self.was_training)
            return False

    return _Eval()


def conditional_blocks(
    log_prob: Callable[[SequenceBatch], Tensor],
    history: SequenceBatch,
    future: SequenceBatch,
    *,
    num_blocks: int = NUM_BLOCKS,
    per_step: Callable[[SequenceBatch], Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Block sums of the one-step conditional log-probabilities of one held-out sequence.

    With ``per_step`` (a family's ``(N, T)`` one-step scorer) the sequence
    ``history ⧺ future`` is scored once and its future terms summed per block;
    otherwise block ``k`` is :math:`\\log p(h ⧺ f_{1:b_k}) - \\log p(h ⧺ f_{1:b_{k-1}})`
    (chain rule, one ``log_prob`` of each prefix).

    Args:
        log_prob: ``batch -> (N,)`` log-likelihoods (exact, or a seeded bound).
        history, future: one sequence each.

    Returns:
        ``(log_probs (B,), observed steps (B,))`` of the ``B`` blocks.
    """
    length = int(future.lengths[0])
    start = int(history.lengths[0])
    bounds = block_boundaries(length, num_blocks)
    observed = _steps_of(future)[0, :length]
    steps = torch.tensor([int(observed[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])])
    full = SequenceBatch.from_sequences([torch.cat([history.values[0, :start], future.values[0, :length]], 0)])
    if per_step is not None:
        with torch.no_grad():
            terms = per_step(full)
        if terms is not None:
            terms = terms[0, start : start + length].detach().double().cpu()
            sums = torch.stack([terms[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
            return sums, steps
    prefix_log_probs = []
    for bound in bounds:
        end = start + bound
        prefix_log_probs.append(
            torch.zeros((), dtype=torch.float64) if end == 0 else log_prob(prefix(full, end))[0].double().cpu()
        )
    prefix_log_probs = torch.stack(prefix_log_probs)
    return prefix_log_probs[1:] - prefix_log_probs[:-1], steps


def _seeded(model, seed: int | None, num_particles: int = 1) -> Callable[[SequenceBatch], Tensor]:
    """``batch -> (N,)`` ``model.log_prob_batch`` with a bound's randomness seeded (common
    random numbers across the prefixes of one sequence)."""
    stochastic = not model.exact_likelihood and seed is not None

    def log_prob(batch: SequenceBatch) -> Tensor:
        batch = batch.to(next(model.parameters()).device)
        with torch.no_grad():
            if not stochastic:
                return (
                    model.log_prob_batch(batch)
                    if num_particles == 1
                    else model.log_prob_batch(batch, num_particles=num_particles)
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return model.log_prob_batch(batch, num_particles=num_particles)

    return log_prob


def conditional_score(
    model,
    history: SequenceBatch,
    future: SequenceBatch,
    *,
    seed: int | None = 0,
    num_particles: int = 1,
    standard_error: bool = True,
    per_step: Callable[[Any, SequenceBatch], Tensor | None] | None = None,
) -> Score:
    """Scores ``future`` given ``history`` as :func:`inference.scoring.score` scores a part.

    ``log_prob`` is :func:`inference.timeseries.conditional_log_prob` summed over the
    sequences; the standard error is the ratio estimator over sequences, or for one
    sequence over :data:`NUM_BLOCKS` contiguous blocks of it (:func:`conditional_blocks`).
    ``kind`` is ``"exact"`` or the bound-difference label of :func:`conditional_label`.

    Args:
        model: a fitted model.
        history, future: ``N`` sequences each, ``future[n]`` continuing ``history[n]``.
        per_step: the family's ``per_step_log_probs(model, batch)`` hook, if any.
    """
    device = next(model.parameters()).device
    history, future = history.to(device), future.to(device)
    steps = observed_steps_per_sequence(future).cpu()
    if int(steps.sum()) == 0:
        raise ValueError("future: has no observed time step to score")
    with _evaluation_mode(model):
        per_sequence = (
            conditional_log_prob(model, history, future, num_particles=num_particles, seed=seed).detach().double().cpu()
        )
        stderr = None
        if standard_error and future.num_sequences > 1:
            stderr = ratio_standard_error(per_sequence, steps)
        elif standard_error:
            hook = (lambda batch: per_step(model, batch.to(device))) if per_step is not None else None
            sums, block_steps = conditional_blocks(_seeded(model, seed, num_particles), history, future, per_step=hook)
            stderr = block_standard_error(sums, block_steps)
    log_prob = float(per_sequence.sum())
    total = int(steps.sum())
    return Score(
        log_prob=log_prob,
        num_steps=total,
        per_step=log_prob / total,
        stderr=stderr,
        kind=conditional_label(model),
        per_sequence=per_sequence,
    )


def _held_out_parts(timeline_: Timeline | None):
    """``(part, history, future)`` for the valid and test parts the timeline has (none without one)."""
    if timeline_ is None:
        return
    for part in ("valid", "test"):
        if part in timeline_.parts:
            yield (part, *timeline_.history_and_future(part))


def held_out_scores(model, family, timeline_: Timeline | None, device=None) -> dict[str, Any]:
    """Summary fields of the held-out parts scored given their history:
    ``{part}_log_likelihood_given_history``, ``{part}_stderr_given_history`` and
    ``{part}_steps_given_history`` for ``valid`` and ``test``, and
    ``likelihood_given_history`` (what the score is); empty without a timeline."""
    fields: dict[str, Any] = {}
    for part, history, future in _held_out_parts(timeline_):
        if future.num_sequences == 0:
            continue
        result = conditional_score(model, history, future, per_step=family.per_step_log_probs)
        fields[f"{part}_log_likelihood{GIVEN_HISTORY}"] = result.per_step
        fields[f"{part}_stderr{GIVEN_HISTORY}"] = result.stderr
        fields[f"{part}_steps{GIVEN_HISTORY}"] = result.num_steps
        fields[f"likelihood{GIVEN_HISTORY}"] = result.kind
    return fields


def baseline_held_out_scores(per_step: Callable[[SequenceBatch], Tensor], timeline_: Timeline | None) -> dict[str, Any]:
    """:func:`held_out_scores` for a count-table baseline whose ``per_step(batch)`` gives
    ``(T,)`` exact per-step log-probabilities of a one-sequence batch."""
    fields: dict[str, Any] = {}
    for part, history, future in _held_out_parts(timeline_):
        totals, steps, block_sums, block_steps = [], [], [], []
        for n in range(future.num_sequences):
            start, length = int(history.lengths[n]), int(future.lengths[n])
            whole = torch.cat([history.values[n, :start], future.values[n, :length]], 0)
            with torch.no_grad():
                terms = per_step(SequenceBatch.from_sequences([whole])).detach().double()[start : start + length]
            totals.append(terms.sum())
            steps.append(length)
            bounds = block_boundaries(length)
            block_sums += [terms[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])]
            block_steps += [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        totals_tensor, steps_tensor = torch.stack(totals), torch.tensor(steps)
        fields[f"{part}_log_likelihood{GIVEN_HISTORY}"] = float(totals_tensor.sum()) / int(steps_tensor.sum())
        fields[f"{part}_stderr{GIVEN_HISTORY}"] = (
            ratio_standard_error(totals_tensor, steps_tensor)
            if len(totals) > 1
            else block_standard_error(torch.stack(block_sums), torch.tensor(block_steps))
        )
        fields[f"{part}_steps{GIVEN_HISTORY}"] = int(steps_tensor.sum())
        fields[f"likelihood{GIVEN_HISTORY}"] = "exact"
    return fields


def validation_score(history: SequenceBatch) -> Callable[..., Score]:
    """A ``validation_score`` for the trainer (same signature as
    :func:`inference.scoring.score`) scoring the validation part given ``history``."""

    def score_given_history(
        model, valid: SequenceBatch, *, batch_size=None, num_particles: int = 1, seed: int | None = 0
    ) -> Score:
        return conditional_score(model, history, valid, seed=seed, num_particles=num_particles, standard_error=False)

    return score_given_history


def validation_options(timeline_: Timeline | None, method: str, has_valid: bool) -> dict[str, Any]:
    """Extra keywords of :func:`inference.fit.fit` so that early stopping on a series
    split in time scores the validation part given the training part (``{}`` otherwise)."""
    if timeline_ is None or not has_valid or "valid" not in timeline_.parts or method not in ("em", "svi"):
        return {}
    history, _ = timeline_.history_and_future("valid")
    return {"validation_score": validation_score(history)}


def score_from_note(score_from: str, timeline_: Timeline | None, rows: Sequence[dict] = ()) -> str:
    """One or two sentences for tables: how the held-out parts are scored, and which
    rows' given-history scores are differences of bounds."""
    if timeline_ is None:
        return "Held-out parts are whole sequences, scored from the initial state."
    if score_from == "start":
        return (
            "Held-out parts are scored from the initial state, as new series (--score-from start), "
            "not given the steps before them."
        )
    note = (
        "Held-out parts continue the training series in time and are scored given their history "
        "(valid given train, test given train ⧺ valid): log p(part | history) per step "
        f"({LABEL_GIVEN_HISTORY}); --score-from start scores them from the initial state instead."
    )
    bounds = {
        row["model"]: row[f"likelihood{GIVEN_HISTORY}"]
        for row in rows
        if row.get(f"likelihood{GIVEN_HISTORY}", "exact") != "exact"
    }
    if bounds:
        note += (
            " For a model that reports a bound the score given history is the bound of history ⧺ part minus "
            "the bound of the history: " + "; ".join(f"{model} ({kind})" for model, kind in bounds.items()) + "."
        )
    return note


def display_rows(rows: Sequence[dict], score_from: str) -> list[dict]:
    """Rows whose ``{part}_log_likelihood``/``_stderr``/``_bits_per_symbol`` show the
    given-history scores (for the table); the recorded rows keep both."""
    if score_from != "history":
        return [dict(row) for row in rows]
    shown = []
    for row in rows:
        row = dict(row)
        for part in ("valid", "test"):
            value = row.get(f"{part}_log_likelihood{GIVEN_HISTORY}")
            if value is None:
                continue
            row[f"{part}_log_likelihood"] = value
            row[f"{part}_stderr"] = row.get(f"{part}_stderr{GIVEN_HISTORY}")
            if f"{part}_bits_per_symbol" in row:
                row[f"{part}_bits_per_symbol"] = -value / math.log(2)
        # 'likelihood' stays what the train column is (an ELBO for a bound); the note
        # under the table says the held-out columns of a bound are a difference of bounds.
        shown.append(row)
    return shown


# ---------------------------------------------------------------------------
# Forecast columns, LFO columns, the fan
# ---------------------------------------------------------------------------
def _forecast_origins(args, timeline_: Timeline) -> tuple[int | None, str | None]:
    """``(max origins, None)`` or ``(None, why skipped)``."""
    origins = getattr(args, "forecast_origins", None)
    if origins == 0:
        return None, "--forecast-origins 0"
    length = int(timeline_.series.lengths[0])
    if origins is None:
        if length > AUTO_FORECAST_MAX_STEPS:
            return None, (
                f"series of {length} steps; forecasts condition every origin on its whole history, pass "
                f"--forecast-origins N to compute them"
            )
        origins = DEFAULT_FORECAST_ORIGINS
    return origins, None


def held_out_part(timeline_: Timeline) -> str | None:
    """The part forecasts and LFO score: test, else valid."""
    return "test" if "test" in timeline_.parts else ("valid" if "valid" in timeline_.parts else None)


def forecast_columns(model, timeline_: Timeline | None, args, kind: str) -> dict[str, Any]:
    """``{"forecast": {...}}``: h = 1 and h = ``--horizon`` forecast scores over the held-out
    steps (RMSE, CRPS, coverage of the central 50% and 90% intervals for real series;
    log-loss for symbols), or ``{"forecast_skipped": why}``."""
    from .forecasting import evaluate_forecasts

    if timeline_ is None or not timeline_.single:
        return {}
    part = held_out_part(timeline_)
    if part is None:
        return {}
    max_origins, why = _forecast_origins(args, timeline_)
    if why is not None:
        return {"forecast_skipped": why}
    if not model.supports("forecast_distribution"):
        return {"forecast_skipped": f"{type(model).__name__} does not forecast (no forecast_distribution)"}
    horizon = args.horizon
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    series = timeline_.series.to(next(model.parameters()).device)
    with _evaluation_mode(model):
        evaluation = evaluate_forecasts(
            model,
            series,
            test_start=timeline_.start(part),
            steps=horizon,
            num_samples=args.forecast_samples,
            generator=generator,
            max_origins=max_origins,
        )
    leads = sorted({1, horizon})
    return {
        "forecast": {
            "part": part,
            "horizon": horizon,
            "source": evaluation.source,
            "kind": kind,
            "leads": {str(lead): evaluation.summary(lead) for lead in leads},
        }
    }


def lfo_columns(
    model, family, timeline_: Timeline | None, args, refit: Callable[[SequenceBatch], Any] | None = None
) -> dict[str, Any]:
    """``{"lfo": {...}}``: rolling-origin leave-future-out CV over the held-out part,
    :math:`\\sum_i \\log p(x_{i+1:i+M} \\mid x_{1:i})` from at most ``--lfo-origins`` origins,
    refit at every ``--lfo-refit-every``-th origin (0: never, the model fit on the
    training part conditioned on each history), with its standard error."""
    if not getattr(args, "lfo", False) or timeline_ is None or not timeline_.single:
        return {}
    part = held_out_part(timeline_)
    if part is None:
        return {}
    length = int(timeline_.series.lengths[0])
    first = timeline_.start(part)
    horizon = args.lfo_horizon
    last = length - horizon
    if last < first:
        return {"lfo_skipped": f"the {part} part has fewer than --lfo-horizon {horizon} steps"}
    step = max(1, math.ceil((last - first + 1) / args.lfo_origins))
    refit_every = args.lfo_refit_every
    device = next(model.parameters()).device
    hook = family.per_step_log_probs
    with _evaluation_mode(model):
        result = rolling_origin(
            model,
            timeline_.series.to(device),
            first_origin=first,
            horizon=horizon,
            refit=refit if refit_every else None,
            refit_every=max(refit_every, 1),
            step=step,
            step_log_probs=hook if hook is not None else None,
        )
    return {
        "lfo": {
            "elpd": result.elpd,
            "se": result.se,
            "num_origins": int(result.origins.numel()),
            "horizon": horizon,
            "num_refits": result.num_refits,
            "refit_every": refit_every,
            "first_origin": first,
            "origin_step": step,
            "method": result.method,
        }
    }


def fan_forecast(model, timeline_: Timeline | None, args):
    """One model's forecast of the whole held-out part from its start, or None."""
    from .forecasting import forecast

    if timeline_ is None or not timeline_.single or not model.supports("forecast_distribution"):
        return None
    part = held_out_part(timeline_)
    if part is None:
        return None
    if _forecast_origins(args, timeline_)[1] is not None:
        return None
    origin = timeline_.start(part)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    with _evaluation_mode(model):
        prediction = forecast(
            model,
            prefix(timeline_.series.to(device), origin),
            int(timeline_.series.lengths[0]) - origin,
            num_samples=args.forecast_samples,
            generator=generator,
        )
    return None if prediction.kind == "categorical" else prediction


def write_forecast_fan(root, fans: Mapping[str, Any], timeline_: Timeline | None, data_spec: str) -> str | None:
    """Saves ``forecast_fan.png`` (every model's fan from the start of the held-out part
    on one figure) into the run directory ``root``; returns its file name or None."""
    from .data import time_axis
    from .forecasting import forecast_fan

    fans = {label: prediction for label, prediction in fans.items() if prediction is not None}
    if not fans or timeline_ is None:
        return None
    part = held_out_part(timeline_)
    try:
        axis = time_axis(data_spec)
    except (ValueError, ImportError):
        axis = None
    length = int(timeline_.series.lengths[0])
    times = axis.values if axis is not None and len(axis.values) == length and axis.values.dtype.kind == "f" else None
    figure = forecast_fan(
        timeline_.series,
        fans,
        origin=timeline_.start(part),
        time=times,
        title=f"{data_spec}: forecasts of the {part} part from its start",
        ylabel=(axis.units or "") if axis is not None else "",
    )
    root.save_figure("forecast_fan.png", figure)
    return "forecast_fan.png"


def forecast_markdown(rows: Sequence[dict]) -> str:
    """The forecast and LFO tables of a comparison (empty when no row has them)."""
    lines: list[str] = []
    forecasting = [row for row in rows if "forecast" in row]
    skipped = [row for row in rows if "forecast_skipped" in row]
    if forecasting:
        first = forecasting[0]["forecast"]
        leads = list(first["leads"])
        symbols = first["kind"] == "categorical"
        lines += [
            "",
            f"## Forecasts of the {first['part']} part",
            "",
            "From every origin with the true history (the model is not refit), scored on held-out steps only"
            + (
                ": log-loss in nats (lower is better)."
                if symbols
                else ": RMSE of the predictive mean and CRPS in the data's units (lower is better), empirical "
                "coverage of the central 50% and 90% predictive intervals (best near 0.5 and 0.9)."
            ),
            "",
        ]
        header = ["model"]
        for lead in leads:
            header += (
                [f"h={lead} log-loss"]
                if symbols
                else [f"h={lead} RMSE", f"h={lead} CRPS", f"h={lead} cov 50%", f"h={lead} cov 90%"]
            )
        header += ["forecast"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in forecasting:
            cells = [row["model"]]
            for lead in leads:
                values = row["forecast"]["leads"].get(lead, {})
                keys = ["log_loss"] if symbols else ["rmse", "crps", "coverage_50", "coverage_90"]
                for key in keys:
                    value = values.get(key)
                    cells.append(
                        "—"
                        if value is None or not math.isfinite(value)
                        else (f"{value:.2f}" if key.startswith("coverage") else f"{value:.4g}")
                    )
            cells.append(row["forecast"]["source"])
            lines.append("| " + " | ".join(cells) + " |")
    for row in skipped:
        lines += ["", f"Forecast columns skipped for {row['model']}: {row['forecast_skipped']}."]
    lfo = [row for row in rows if "lfo" in row]
    if lfo:
        spec = lfo[0]["lfo"]
        lines += [
            "",
            "## Leave-future-out cross-validation",
            "",
            f"elpd = Σ_i log p(x_(i+1..i+{spec['horizon']}) | x_(1..i)) over {spec['num_origins']} origins "
            f"from step {spec['first_origin']} every {spec['origin_step']} step(s); ± its standard error "
            "(√n·sd over origins); refits after the first fit (0: the model fit on the training part, "
            "conditioned on each longer history).",
            "",
            "| model | LFO elpd | ± se | origins | refits |",
            "|---|---|---|---|---|",
        ]
        for row in lfo:
            result = row["lfo"]
            se = result["se"]
            lines.append(
                f"| {row['model']} | {result['elpd']:.2f} | {se:.2f} | {result['num_origins']} | "
                f"{result['num_refits']} |"
                if se == se
                else f"| {row['model']} | {result['elpd']:.2f} | — | {result['num_origins']} | {result['num_refits']} |"
            )
    for row in rows:
        if "lfo_skipped" in row:
            lines += ["", f"LFO skipped for {row['model']}: {row['lfo_skipped']}."]
    return "\n".join(lines) + ("\n" if lines else "")


__all__ = [
    "GIVEN_HISTORY",
    "LABEL_FROM_START",
    "LABEL_GIVEN_HISTORY",
    "NUM_BLOCKS",
    "SCORE_FROM",
    "Timeline",
    "add_arguments",
    "baseline_held_out_scores",
    "block_boundaries",
    "block_standard_error",
    "check_arguments",
    "conditional_blocks",
    "conditional_score",
    "display_rows",
    "fan_forecast",
    "forecast_columns",
    "forecast_markdown",
    "held_out_part",
    "held_out_scores",
    "lfo_columns",
    "score_from_note",
    "timeline",
    "validation_options",
    "validation_score",
    "write_forecast_fan",
]
